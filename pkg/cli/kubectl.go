package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/store"
)

// PluginName is the binary's name as a kubectl plugin: kubectl runs
// kubectl-corecatch for `kubectl corecatch ...`.
const PluginName = "kubectl-corecatch"

// DefaultKubeNamespace is where the chart is installed unless -n says
// otherwise.
const DefaultKubeNamespace = "corecatch"

// chartSelector picks the chart's objects (deploy/helm/corecatch's
// selector labels).
const chartSelector = "app.kubernetes.io/name=corecatch"

// kubeFlags are kubectl's flags that say which cluster, and which
// namespace of it, holds the chart whose store the plugin reads.
type kubeFlags struct {
	kubeconfig, context, namespace string
}

// splitKubeFlags takes kubectl's flags out of a plugin's arguments:
// --kubeconfig and --context anywhere, --namespace/-n only before the
// subcommand (after it, -n and --namespace are the subcommand's own, as in
// `kubectl corecatch -n corecatch ls --namespace shop`).
func splitKubeFlags(args []string) (kubeFlags, []string, error) {
	k := kubeFlags{namespace: DefaultKubeNamespace}
	var rest []string
	sub := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = append(rest, args[i:]...)
			break
		}
		var dst *string
		name, value, inline := strings.Cut(a, "=")
		switch {
		case name == "--kubeconfig":
			dst = &k.kubeconfig
		case name == "--context":
			dst = &k.context
		case !sub && (name == "--namespace" || name == "-n"):
			dst = &k.namespace
		case !sub && strings.HasPrefix(a, "-n") && len(a) > 2:
			dst, value, inline = &k.namespace, a[2:], true
		}
		if dst == nil {
			if !strings.HasPrefix(a, "-") {
				sub = true
			}
			rest = append(rest, a)
			continue
		}
		if !inline {
			if i+1 == len(args) {
				return k, nil, fmt.Errorf("flag %s needs a value", a)
			}
			i++
			value = args[i]
		}
		*dst = value
	}
	return k, rest, nil
}

// clientset connects to the cluster as kubectl would: $KUBECONFIG or
// ~/.kube/config unless --kubeconfig, its current context unless
// --context.
func (k kubeFlags) clientset() (kubernetes.Interface, error) {
	rc, err := k.restConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}

func (k kubeFlags) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	rc, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w (pass --kubeconfig or --context, or set KUBECONFIG)", err)
	}
	return rc, nil
}

// clusterStore is what the chart in a namespace says about its store: the
// config in its ConfigMap, and the S3 keys in the Secret its DaemonSet
// gives the agent.
type clusterStore struct {
	config *config.Config
	keys   store.S3Options // the keys only
}

// readClusterStore reads the chart's ConfigMap and Secret in ns.
func readClusterStore(ctx context.Context, cs kubernetes.Interface, ns string) (*clusterStore, error) {
	cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: chartSelector})
	if err != nil {
		return nil, fmt.Errorf("read corecatch's ConfigMap in namespace %s: %w (pass -n with the chart's namespace)", ns, err)
	}
	var found []corev1.ConfigMap
	for _, cm := range cms.Items {
		if _, ok := cm.Data["config.yaml"]; ok {
			found = append(found, cm)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("no corecatch ConfigMap (label %s, key config.yaml) in namespace %s: pass -n with the chart's namespace", chartSelector, ns)
	case 1:
	default:
		var names []string
		for _, cm := range found {
			names = append(names, cm.Name)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("several corecatch releases in namespace %s (%s): pass --config with the one you want", ns, strings.Join(names, ", "))
	}
	cm := found[0]
	c, err := config.Parse([]byte(cm.Data["config.yaml"]), "ConfigMap "+ns+"/"+cm.Name)
	if err != nil {
		return nil, err
	}
	// The agent's credentials file and STS are the pod's, not this
	// machine's.
	c.S3.CredentialsFile, c.S3.STS = "", false
	out := &clusterStore{config: c}
	sel := chartSelector + ",app.kubernetes.io/instance=" + cm.Labels["app.kubernetes.io/instance"]
	dss, err := cs.AppsV1().DaemonSets(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, fmt.Errorf("read corecatch's DaemonSet in namespace %s: %w", ns, err)
	}
	for _, ds := range dss.Items {
		for _, ctr := range ds.Spec.Template.Spec.Containers {
			for _, env := range ctr.Env {
				var dst *string
				switch env.Name {
				case "AWS_ACCESS_KEY_ID":
					dst = &out.keys.AccessKeyID
				case "AWS_SECRET_ACCESS_KEY":
					dst = &out.keys.SecretAccessKey
				case "AWS_SESSION_TOKEN":
					dst = &out.keys.SessionToken
				default:
					continue
				}
				if env.Value != "" {
					*dst = env.Value
					continue
				}
				ref := env.ValueFrom
				if ref == nil || ref.SecretKeyRef == nil {
					continue
				}
				sec, err := cs.CoreV1().Secrets(ns).Get(ctx, ref.SecretKeyRef.Name, metav1.GetOptions{})
				if err != nil {
					return nil, fmt.Errorf("read Secret %s/%s, which holds the store's credentials: %w (ask for get on secrets there)", ns, ref.SecretKeyRef.Name, err)
				}
				*dst = string(sec.Data[ref.SecretKeyRef.Key])
			}
		}
	}
	return out, nil
}
