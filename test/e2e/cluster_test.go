package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/kube"
	"github.com/corecatch/corecatch/test/harness"
)

// The image of corecatch the cluster runs, under two tags for the upgrade.
const clusterImage = "docker.io/corecatch/corecatch"

// kubeCluster is the real single-node cluster with corecatch's images, the
// app image and helm pointed at it.
type kubeCluster struct {
	*harness.Cluster
	cri  *containerd
	helm string
	// dir holds the chart's host paths (data, run, bin), short for the
	// 127-byte core_pattern.
	dir string
}

// startKube starts a private containerd with the CRI settings this VM needs
// (startCRI: criConfig, the pause and app images), imports corecatch's image
// (built without Docker, as tags e2e1 and e2e2), and starts the cluster on
// it. It holds the privileged lock: the chart's agent changes core_pattern,
// which the harness restores, byte for byte, whatever happens.
func startKube(t *testing.T) *kubeCluster {
	t.Helper()
	harness.Privileged(t)
	helm := harness.Helm(t)
	harness.KubeDir(t) // skips (or fails under CI=true) before anything starts
	dir := harness.TempDir(t, "cck")
	c := startCRI(t, dir)
	// After the cluster has stopped: what kubelet's pods left, if anything.
	t.Cleanup(func() { clearCgroup("/kubepods") })
	root, layout := harness.CorecatchRootfs(t, filepath.Join(dir, "image"), harness.Binary(t))
	archive := filepath.Join(dir, "corecatch.oci.tar")
	for _, tag := range []string{"e2e1", "e2e2"} {
		if err := harness.WriteOCIArchive(archive, root, clusterImage+":"+tag, layout.Entrypoint, layout.Cmd); err != nil {
			t.Fatal(err)
		}
		if out, err := c.try("-n", "k8s.io", "images", "import", archive); err != nil {
			t.Fatalf("ctr images import: %v\n%s", err, out)
		}
	}
	os.RemoveAll(filepath.Join(dir, "image"))
	os.Remove(archive)
	k := &kubeCluster{Cluster: harness.StartCluster(t, c.addr), cri: c.containerd, helm: helm, dir: dir}
	return k
}

// helmRun runs helm against the cluster and returns its output.
func (k *kubeCluster) helmRun(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(k.helm, args...)
	cmd.Dir = harness.RepoRoot()
	cmd.Env = k.Env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// chartValues are the --set flags of the test's release: its image, the
// private containerd's socket, host paths under the test's directory, the
// host's network, and no Prometheus Operator objects (no CRDs here).
func (k *kubeCluster) chartValues(tag string) []string {
	return []string{
		"--set", "image.repository=" + clusterImage, "--set", "image.tag=" + tag, "--set", "image.pullPolicy=Never",
		"--set", "criSocket=" + k.cri.addr,
		"--set", "host.dataDir=" + filepath.Join(k.dir, "data"), "--set", "host.runDir=" + filepath.Join(k.dir, "run"),
		"--set", "host.binDir=" + filepath.Join(k.dir, "bin"),
		"--set", "hostNetwork=true", "--set", "serviceMonitor.enabled=false", "--set", "prometheusRule.enabled=false",
	}
}

// waitFor polls f every second until it returns "", up to d.
func waitFor(t *testing.T, d time.Duration, what string, f func() string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		why := f()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not within %s: %s", what, d, why)
		}
		time.Sleep(time.Second)
	}
}

// TestKubernetes runs the chart under a real kubelet: `helm install` makes
// the DaemonSet's agent put the helper on the host and set core_pattern; a
// Deployment's crash gives a bundle naming its pod, namespace and
// Deployment, and a Warning Event on the Pod that kubectl shows; a static
// pod's crash gives a bundle naming its pod; `helm upgrade` to a new tag
// loses no crash; `helm uninstall` restores core_pattern and
// core_pipe_limit byte for byte and removes the helper from the host.
func TestKubernetes(t *testing.T) {
	k := startKube(t)
	// What the node has before the chart: a pattern of its own, so that
	// a restore is told from a default (the harness puts the real one
	// back at the end).
	saved := map[string][]byte{"core_pattern": []byte("core.%e.%p.e2e\n"), "core_pipe_limit": []byte("3\n")}
	for f, v := range saved {
		if err := os.WriteFile("/proc/sys/kernel/"+f, v, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.RemoveAll(crashState)
	t.Cleanup(func() { os.RemoveAll(crashState) })
	helper := filepath.Join(k.dir, "bin", "corecatch")
	k.helmRun(t, append([]string{"install", "corecatch", harness.Chart, "-n", "corecatch", "--create-namespace", "--wait", "--timeout", "3m"},
		k.chartValues("e2e1")...)...)
	waitFor(t, 60*time.Second, "the agent's helper in core_pattern", func() string {
		pattern, _ := os.ReadFile("/proc/sys/kernel/core_pattern")
		if _, err := os.Stat(helper); err != nil || !bytes.HasPrefix(pattern, []byte("|"+helper+" ")) {
			return fmt.Sprintf("core_pattern %q, helper %v", pattern, err)
		}
		return ""
	})
	n := harness.Attach(t, k.dir, k.hostConfig(t), filepath.Join(k.dir, "data", "bundles"), filepath.Join(k.dir, "data", "spool"))

	// A Deployment whose container crashes once.
	k.apply(t, crasherDeployment("shop", "checkout", crashOnce))
	m := k.waitBundle(t, n, func(m *bundle.Metadata) bool {
		return m.Pod != nil && m.Pod.Namespace == "shop" && strings.HasPrefix(m.Pod.Name, "checkout-")
	})
	if m.Workload == nil || *m.Workload != (bundle.Workload{Kind: "Deployment", Name: "checkout"}) {
		t.Errorf("workload %+v, want Deployment/checkout", m.Workload)
	}
	if m.IdentitySource != bundle.IdentityCRI {
		t.Errorf("identity_source %q (%s)", m.IdentitySource, m.IdentityReason)
	}
	// The Event, as kubectl shows it.
	waitFor(t, 90*time.Second, "the CoreDumped Event in kubectl describe pod", func() string {
		out, _ := k.TryKubectl("-n", "shop", "describe", "pod", m.Pod.Name)
		if !regexp.MustCompile(`Warning\s+`+kube.Reason+`\s`).MatchString(out) || !strings.Contains(out, "corecatch pull "+m.ID) {
			return out
		}
		return ""
	})
	events := k.Kubectl("-n", "shop", "get", "events", "--field-selector", "reason="+kube.Reason)
	if !strings.Contains(events, "Warning") || !strings.Contains(events, "pod/"+m.Pod.Name) || !strings.Contains(events, "corecatch pull "+m.ID) ||
		!strings.Contains(events, m.SignalName) {
		t.Errorf("kubectl get events:\n%s\nwant a Warning %s on pod/%s naming %s and corecatch pull %s", events, kube.Reason, m.Pod.Name, m.SignalName, m.ID)
	}

	// A static pod from kubelet's manifests directory.
	static := crasherPod("static-crasher", "default")
	if err := os.WriteFile(filepath.Join(k.StaticPods, "static-crasher.yaml"), []byte(static), 0o644); err != nil {
		t.Fatal(err)
	}
	sm := k.waitBundle(t, n, func(m *bundle.Metadata) bool {
		return m.Pod != nil && m.Pod.Name == "static-crasher-"+k.Node
	})
	if len(sm.Pod.UID) != 32 || sm.Pod.Namespace != "default" {
		t.Errorf("static pod %+v: want namespace default and kubelet's 32-hex-digit uid", sm.Pod)
	}

	// helm upgrade to a new tag while a pod crashes every second: the old
	// agent leaves the helper to the next one, so every crash has its
	// bundle.
	if err := os.WriteFile(filepath.Join(crashState, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	k.apply(t, crasherDeployment("batch", "looper", crashLoop))
	crashes := func() int {
		data, _ := os.ReadFile(filepath.Join(crashState, "crashes"))
		return strings.Count(string(data), "\n")
	}
	waitFor(t, 2*time.Minute, "the looper's first crashes", func() string {
		if crashes() < 3 {
			return fmt.Sprintf("%d crashes", crashes())
		}
		return ""
	})
	k.helmRun(t, append([]string{"upgrade", "corecatch", harness.Chart, "-n", "corecatch", "--wait", "--timeout", "3m"}, k.chartValues("e2e2")...)...)
	k.Kubectl("-n", "corecatch", "rollout", "status", "daemonset/corecatch", "--timeout", "2m")
	if img := k.Kubectl("-n", "corecatch", "get", "pods", "-o", "jsonpath={.items[*].spec.containers[0].image}"); img != clusterImage+":e2e2" {
		t.Errorf("the agent runs %q after the upgrade, want %s:e2e2", img, clusterImage)
	}
	if logs := k.Kubectl("-n", "corecatch", "logs", "daemonset/corecatch"); !strings.Contains(logs, "a previous agent left corecatch installed") {
		t.Errorf("the new agent did not take the node over from the old one (no repair in its log):\n%s", logs)
	}
	time.Sleep(3 * time.Second)
	os.Remove(filepath.Join(crashState, "go"))
	time.Sleep(3 * time.Second) // the last one crashes
	total := crashes()
	var looped int
	waitFor(t, 2*time.Minute, "a bundle for every crash across the upgrade", func() string {
		looped = 0
		for _, m := range n.Bundles() {
			if m.Pod != nil && m.Pod.Namespace == "batch" {
				looped++
			}
		}
		if looped < total {
			return fmt.Sprintf("%d bundles of %d crashes", looped, total)
		}
		return ""
	})
	t.Logf("helm upgrade: %d crashes, %d bundles", total, looped)

	k.helmRun(t, "uninstall", "corecatch", "-n", "corecatch", "--wait", "--timeout", "2m")
	waitFor(t, 60*time.Second, "core_pattern and core_pipe_limit restored", func() string {
		for f, want := range saved {
			if got, _ := os.ReadFile("/proc/sys/kernel/" + f); !bytes.Equal(got, want) {
				return fmt.Sprintf("%s is %q, was %q", f, got, want)
			}
		}
		if _, err := os.Stat(helper); err == nil {
			return helper + " is still on the host"
		}
		return ""
	})

	// The README's Deploy commands, as written, on the same cluster: only
	// what this machine lacks is added to helm install (no registry, no
	// CNI, no Prometheus Operator: the README says which flags), and
	// Huawei Cloud OBS and Feishu stay unreachable (the agent queues
	// uploads and cards; the crash is still collected and on its Pod).
	k.Kubectl("delete", "namespace", "corecatch", "--timeout", "2m")
	k.readmeDeploy(t)
	k.Kubectl("-n", "corecatch", "rollout", "status", "daemonset/corecatch", "--timeout", "3m")
	k.apply(t, crasherDeployment("docs", "readme", crashOnce))
	waitFor(t, 3*time.Minute, "the CoreDumped Event of the README's install", func() string {
		out, _ := k.TryKubectl("-n", "docs", "get", "events", "--field-selector", "reason="+kube.Reason)
		if !strings.Contains(out, "corecatch pull ") {
			return out
		}
		return ""
	})
	k.helmRun(t, "uninstall", "corecatch", "-n", "corecatch", "--wait", "--timeout", "2m")
}

// readmeDeploy runs the README's "Deploy it" commands with bash, helm
// install given the test's values on top.
func (k *kubeCluster) readmeDeploy(t *testing.T) {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(harness.RepoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)## Deploy it \\(Kubernetes\\).*?```\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no Deploy section with a command block")
	}
	extra := k.chartValues("e2e1")
	var cmds []string
	for _, line := range strings.Split(strings.ReplaceAll(string(m[1]), "\\\n", " "), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		if strings.HasPrefix(line, "helm install ") {
			line += " " + strings.Join(extra, " ")
		}
		cmds = append(cmds, line)
	}
	if len(cmds) != 4 {
		t.Fatalf("the README's Deploy block has %d commands, want kubectl create namespace, two secrets and helm install:\n%s", len(cmds), m[1])
	}
	for _, line := range cmds {
		cmd := exec.Command("bash", "-c", line)
		cmd.Dir = harness.RepoRoot()
		cmd.Env = append(k.Env(), "PATH="+filepath.Dir(k.helm)+":"+harness.KubeDir(t)+":"+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("README: %s: %v\n%s", line, err, out)
		}
	}
}

// hostConfig writes the config the agent's pod uses, as the host sees it
// (for `corecatch ls` on the store).
func (k *kubeCluster) hostConfig(t *testing.T) string {
	t.Helper()
	p := filepath.Join(k.dir, "config.yaml")
	cfg := fmt.Sprintf("store: file://%s/data/bundles\nspool: %s/data/spool\n", k.dir, k.dir)
	if err := os.WriteFile(p, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// apply gives kubectl apply a manifest.
func (k *kubeCluster) apply(t *testing.T, manifest string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(harness.KubeDir(t), "kubectl"), "--kubeconfig", k.Kubeconfig, "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(manifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s\n%s", err, out, manifest)
	}
}

// waitBundle waits up to 3 minutes for a bundle that match selects.
func (k *kubeCluster) waitBundle(t *testing.T, n *harness.Node, match func(*bundle.Metadata) bool) *bundle.Metadata {
	t.Helper()
	var found *bundle.Metadata
	waitFor(t, 3*time.Minute, "the crash's bundle", func() string {
		list := n.Bundles()
		for _, m := range list {
			if match(m) {
				found = m
				return ""
			}
		}
		out, _ := k.TryKubectl("get", "pods", "-A", "-o", "wide")
		return fmt.Sprintf("%d bundles, none matches; pods:\n%s", len(list), out)
	})
	return found
}

// crashState is the host directory where crashers remember they crashed.
const crashState = "/run/corecatch-e2e-state"

// crashOnce crashes (SIGSEGV) the first time the container starts on this
// node (a hostPath remembers) and then sleeps.
const crashOnce = "if [ ! -e /state/$(POD) ]; then : > /state/$(POD); exec /lim_mem 1 fill; fi; exec sleep 2147483647"

// crashLoop runs a crasher every second while /state/go exists, noting
// each in /state/crashes first.
const crashLoop = "while [ -e /state/go ]; do echo $(POD) >> /state/crashes; /lim_mem 1 fill; sleep 1; done; exec sleep 2147483647"

// crasherSpec is a pod spec whose container runs command.
func crasherSpec(indent, command string) string {
	spec := `hostNetwork: true
tolerations:
- operator: Exists
containers:
- name: app
  image: ` + appImage + `
  imagePullPolicy: Never
  command: ["/bin/sh", "-c", "` + command + `"]
  env:
  - name: POD
    valueFrom: {fieldRef: {fieldPath: metadata.name}}
  volumeMounts:
  - {name: state, mountPath: /state}
volumes:
- name: state
  hostPath: {path: ` + crashState + `, type: DirectoryOrCreate}
`
	return indent + strings.ReplaceAll(strings.TrimSuffix(spec, "\n"), "\n", "\n"+indent) + "\n"
}

// crasherDeployment is a Deployment of one crashing pod in a new namespace.
func crasherDeployment(namespace, name, command string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata:
      labels: {app: %[2]s}
    spec:
%[3]s`, namespace, name, crasherSpec("      ", command))
}

// crasherPod is a bare pod manifest (a static pod's).
func crasherPod(name, namespace string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s}
spec:
%s`, name, namespace, crasherSpec("  ", crashOnce))
}
