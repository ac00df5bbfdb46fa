package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// Chart is where the Helm chart lives in the repository.
const Chart = "deploy/helm/corecatch"

// Helm returns the helm binary `make` builds (bin/helm). Without it a test
// skips, except under CI=true, where the chart must be checked.
func Helm(t testing.TB) string {
	t.Helper()
	path := filepath.Join(RepoRoot(), "bin", "helm")
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v, and CI=true forbids skipping: run `make bin/helm`", path, err)
		}
		t.Skipf("no %s: run `make bin/helm`", path)
	}
	return path
}

// RenderChart runs `helm template corecatch` on the chart in namespace
// corecatch with extra helm arguments (-f FILE, --set K=V) and returns the
// rendered manifests.
func RenderChart(t testing.TB, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(Helm(t), append([]string{"template", "corecatch", Chart, "--namespace", "corecatch"}, args...)...)
	cmd.Dir = RepoRoot()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helm template %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return out
}

// Manifests are the objects of rendered manifests, each decoded into its
// API type with unknown fields rejected, as the API server's strict field
// validation does.
type Manifests struct {
	// Objects holds every object in order: *corev1.ConfigMap,
	// *appsv1.DaemonSet, *monitoringv1.ServiceMonitor, ...
	Objects []any
}

// kinds are the API types manifests may hold, by apiVersion and kind. The
// Prometheus Operator's come from its own API module, so that their
// fields are checked as strictly as the core ones.
var kinds = map[string]func() any{
	"v1/Namespace":                       func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":                  func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                       func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                          func() any { return &corev1.Secret{} },
	"v1/Service":                         func() any { return &corev1.Service{} },
	"apps/v1/DaemonSet":                  func() any { return &appsv1.DaemonSet{} },
	"networking.k8s.io/v1/NetworkPolicy": func() any { return &networkingv1.NetworkPolicy{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":        func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": func() any { return &rbacv1.ClusterRoleBinding{} },
	"monitoring.coreos.com/v1/ServiceMonitor":         func() any { return &monitoringv1.ServiceMonitor{} },
	"monitoring.coreos.com/v1/PrometheusRule":         func() any { return &monitoringv1.PrometheusRule{} },
}

// separator is YAML's document separator, at the start of a line.
var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// DecodeManifests splits multi-document YAML and decodes every object
// strictly; an unknown kind or field, or a duplicate key, is an error.
func DecodeManifests(data []byte) (*Manifests, error) {
	m := &Manifests{}
	for i, doc := range separator.Split(string(data), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if tm.Kind == "" && tm.APIVersion == "" {
			continue // comments only
		}
		newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
		if !ok {
			return nil, fmt.Errorf("document %d: unexpected %s %s", i, tm.APIVersion, tm.Kind)
		}
		obj := newObj()
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			return nil, fmt.Errorf("document %d (%s %s): %w", i, tm.APIVersion, tm.Kind, err)
		}
		m.Objects = append(m.Objects, obj)
	}
	return m, nil
}

// DaemonSet returns the one DaemonSet, or nil.
func (m *Manifests) DaemonSet() *appsv1.DaemonSet {
	for _, o := range m.Objects {
		if ds, ok := o.(*appsv1.DaemonSet); ok {
			return ds
		}
	}
	return nil
}

// ConfigMap returns the ConfigMap named name, or nil.
func (m *Manifests) ConfigMap(name string) *corev1.ConfigMap {
	for _, o := range m.Objects {
		if cm, ok := o.(*corev1.ConfigMap); ok && cm.Name == name {
			return cm
		}
	}
	return nil
}

// NetworkPolicy returns the one NetworkPolicy, or nil.
func (m *Manifests) NetworkPolicy() *networkingv1.NetworkPolicy {
	for _, o := range m.Objects {
		if np, ok := o.(*networkingv1.NetworkPolicy); ok {
			return np
		}
	}
	return nil
}

// Volume returns the pod volume named name, or nil.
func Volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}
