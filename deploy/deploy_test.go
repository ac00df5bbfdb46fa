// Package deploy_test checks what a cluster gets: every object the Helm
// chart renders, with each platform's values, decodes strictly into its API
// type; the DaemonSet has what the agent needs and its config agrees with
// its mounts; the chart carries the dashboard and the alert rules exactly;
// and the Dockerfile builds the binary as `make build` does, and the image
// built without Docker has its layout. It needs helm
// (`make bin/helm`) for the values files, never root.
package deploy_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/yaml"

	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/sysctl"
	"github.com/corecatch/corecatch/test/harness"
)

const manifestsFile = "deploy/manifests/corecatch.yaml"

func read(t *testing.T, rel string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(harness.RepoRoot(), rel))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func decode(t *testing.T, data []byte) *harness.Manifests {
	t.Helper()
	m, err := harness.DecodeManifests(data)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestManifests checks the committed plain manifests (`make check-chart`
// fails when they are not what the chart renders): every object strictly,
// the Namespace they create, and the rest as for any values.
func TestManifests(t *testing.T) {
	m := decode(t, read(t, manifestsFile))
	if ns, ok := m.Objects[0].(*corev1.Namespace); !ok || ns.Name != "corecatch" {
		t.Errorf("the first object is %T, want the Namespace corecatch (created before what lives in it)", m.Objects[0])
	}
	checkDeployment(t, m, true)
}

// TestValuesFiles renders the chart with each platform's values.
func TestValuesFiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(harness.RepoRoot(), harness.Chart, "values-*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no values files beside the chart's values.yaml (%v)", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			m := decode(t, harness.RenderChart(t, "-f", f))
			// The S3/OBS store's keys (s3.endpoint, s3.region) come with
			// the S3 store; until it is merged only the objects are
			// checked for the OBS example.
			checkDeployment(t, m, name != "values-obs.yaml")
		})
	}
	gke := decode(t, harness.RenderChart(t, "-f", filepath.Join(harness.RepoRoot(), harness.Chart, "values-gke-cos.yaml")))
	if cfg := agentConfig(t, gke); !strings.HasPrefix(cfg.Host.BinDir, "/home/kubernetes/bin/") {
		t.Errorf("values-gke-cos.yaml: host.bin_dir %q, want under /home/kubernetes/bin (COS executes nothing else)", cfg.Host.BinDir)
	}
	crio := decode(t, harness.RenderChart(t, "-f", filepath.Join(harness.RepoRoot(), harness.Chart, "values-crio-openshift.yaml")))
	if sc := agentContainer(t, crio).SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
		t.Errorf("values-crio-openshift.yaml: the agent is not privileged (OpenShift's privileged SCC is what admits it)")
	}
}

// TestSecrets renders the chart with the Feishu and OBS secrets: they reach
// the agent as files and environment, and the config names the files.
func TestSecrets(t *testing.T) {
	m := decode(t, harness.RenderChart(t, "--set", "feishu.existingSecret=ff,obs.existingSecret=oo,alertmanager.url=http://am:9093"))
	checkDeployment(t, m, true)
	c := agentContainer(t, m)
	ds := m.DaemonSet()
	v := harness.Volume(&ds.Spec.Template.Spec, "feishu")
	if v == nil || v.Secret == nil || v.Secret.SecretName != "ff" {
		t.Fatalf("no volume of Secret ff: %+v", v)
	}
	mount := mountOf(c, "feishu")
	cfg := agentConfig(t, m)
	if len(cfg.Notify.Feishu) != 1 || cfg.Notify.Feishu[0].WebhookFile != filepath.Join(mount.MountPath, "webhook") ||
		cfg.Notify.Feishu[0].SecretFile != filepath.Join(mount.MountPath, "secret") {
		t.Errorf("notify.feishu %+v does not read the Secret mounted at %s", cfg.Notify.Feishu, mount.MountPath)
	}
	if cfg.Notify.Alertmanager.URL != "http://am:9093" {
		t.Errorf("notify.alertmanager.url %q", cfg.Notify.Alertmanager.URL)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			env[e.Name] = e.ValueFrom.SecretKeyRef.Name + "/" + e.ValueFrom.SecretKeyRef.Key
		}
	}
	if env["AWS_ACCESS_KEY_ID"] != "oo/access_key_id" || env["AWS_SECRET_ACCESS_KEY"] != "oo/secret_access_key" {
		t.Errorf("OBS credentials from the Secret: %v", env)
	}
}

// TestNetworkPolicy renders the chart with the bridge and the
// NetworkPolicy on: the policy selects the agent's pods and admits the
// scrapers to the metrics port only and Alertmanager to the bridge's only;
// the bridge listens on its container port with the token of its mounted
// Secret. Without the values, neither is rendered.
func TestNetworkPolicy(t *testing.T) {
	if m := decode(t, read(t, manifestsFile)); m.NetworkPolicy() != nil || agentConfig(t, m).Notify.Bridge.Listen != "" {
		t.Error("the default manifests have a NetworkPolicy or a bridge: both are opt-in")
	}
	values := filepath.Join(harness.RepoRoot(), harness.Chart, "values-networkpolicy.yaml")
	m := decode(t, harness.RenderChart(t, "-f", values))
	np := m.NetworkPolicy()
	if np == nil {
		t.Fatal("values-networkpolicy.yaml renders no NetworkPolicy")
	}
	ds := m.DaemonSet()
	if !reflect.DeepEqual(np.Spec.PodSelector.MatchLabels, ds.Spec.Selector.MatchLabels) {
		t.Errorf("the policy selects %v, the DaemonSet's pods are %v", np.Spec.PodSelector.MatchLabels, ds.Spec.Selector.MatchLabels)
	}
	if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
		t.Errorf("policyTypes %v, want Ingress", np.Spec.PolicyTypes)
	}
	ports := map[string]int32{}
	for _, p := range agentContainer(t, m).Ports {
		ports[p.Name] = p.ContainerPort
	}
	want := map[int32]string{ports["metrics"]: "prometheus", ports["bridge"]: "alertmanager"}
	if len(np.Spec.Ingress) != 2 {
		t.Fatalf("%d ingress rules, want 2 (scrapers, Alertmanager)", len(np.Spec.Ingress))
	}
	for _, r := range np.Spec.Ingress {
		if len(r.Ports) != 1 || len(r.From) != 1 || r.From[0].PodSelector == nil || r.From[0].NamespaceSelector == nil {
			t.Errorf("rule %+v: want one port, from pods of a namespace", r)
			continue
		}
		port := r.Ports[0].Port.IntVal
		if peer := r.From[0].PodSelector.MatchLabels["app.kubernetes.io/name"]; want[port] != peer || peer == "" {
			t.Errorf("port %d admits %s, want %s", port, peer, want[port])
		}
	}
	cfg := agentConfig(t, m)
	if cfg.Notify.Bridge.Listen != fmt.Sprintf(":%d", ports["bridge"]) || ports["bridge"] == 0 {
		t.Errorf("notify.bridge.listen %q, but the container's bridge port is %d", cfg.Notify.Bridge.Listen, ports["bridge"])
	}
	if mount := mountOf(agentContainer(t, m), "bridge-token"); mount == nil || cfg.Notify.Bridge.TokenFile != filepath.Join(mount.MountPath, "token") {
		t.Errorf("notify.bridge.token_file %q is not the mounted Secret's token (%+v)", cfg.Notify.Bridge.TokenFile, mount)
	}
	if v := harness.Volume(&ds.Spec.Template.Spec, "bridge-token"); v == nil || v.Secret == nil || v.Secret.SecretName != "corecatch-bridge" {
		t.Errorf("no volume of Secret corecatch-bridge: %+v", v)
	}
}

// TestChartCarriesDashboardAndRules: the chart reads the dashboard and the
// PrometheusRule from their files in the repository (files/ links to
// them), so they cannot drift; check that what it renders is them.
func TestChartCarriesDashboardAndRules(t *testing.T) {
	m := decode(t, read(t, manifestsFile))
	dash := m.ConfigMap("corecatch-dashboard")
	if dash == nil {
		t.Fatal("no dashboard ConfigMap")
	}
	if dash.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard labels %v: Grafana's sidecar looks for grafana_dashboard: \"1\"", dash.Labels)
	}
	if want := string(read(t, "dashboards/corecatch.json")); dash.Data["corecatch.json"] != want {
		t.Errorf("the dashboard ConfigMap is not dashboards/corecatch.json byte for byte")
	}

	var want monitoringv1.PrometheusRule
	if err := yaml.UnmarshalStrict(read(t, "deploy/prometheus/corecatch-prometheusrule.yaml"), &want); err != nil {
		t.Fatal(err)
	}
	var got *monitoringv1.PrometheusRule
	for _, o := range m.Objects {
		if pr, ok := o.(*monitoringv1.PrometheusRule); ok {
			got = pr
		}
	}
	if got == nil {
		t.Fatal("no PrometheusRule")
	}
	if !reflect.DeepEqual(got.Spec, want.Spec) {
		a, _ := json.MarshalIndent(got.Spec, "", " ")
		b, _ := json.MarshalIndent(want.Spec, "", " ")
		t.Errorf("the chart's PrometheusRule spec differs from deploy/prometheus's:\n%s\nwant\n%s", a, b)
	}
}

func agentContainer(t *testing.T, m *harness.Manifests) *corev1.Container {
	t.Helper()
	ds := m.DaemonSet()
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	for i, c := range ds.Spec.Template.Spec.Containers {
		if c.Name == "agent" {
			return &ds.Spec.Template.Spec.Containers[i]
		}
	}
	t.Fatal("the DaemonSet has no container named agent")
	return nil
}

func mountOf(c *corev1.Container, volume string) *corev1.VolumeMount {
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == volume {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// agentConfig parses the ConfigMap's config.yaml as the agent does.
func agentConfig(t *testing.T, m *harness.Manifests) *config.Config {
	t.Helper()
	cm := m.ConfigMap("corecatch")
	if cm == nil {
		t.Fatal("no ConfigMap corecatch")
	}
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(cm.Data["config.yaml"]), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, true)
	if err != nil {
		t.Fatalf("the ConfigMap's config.yaml: %v\n%s", err, cm.Data["config.yaml"])
	}
	return cfg
}

// hostMounts maps each hostPath volume's host path to where the agent's
// container mounts it.
func hostMounts(t *testing.T, ds *appsv1.DaemonSet, c *corev1.Container) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, vm := range c.VolumeMounts {
		v := harness.Volume(&ds.Spec.Template.Spec, vm.Name)
		if v == nil {
			t.Errorf("volume mount %s has no volume", vm.Name)
			continue
		}
		if v.HostPath != nil {
			m[v.HostPath.Path] = vm.MountPath
		}
	}
	return m
}

// samePathMounted reports whether path lies under a host directory that the
// container mounts at its host path (helper and agent open it alike).
func samePathMounted(mounts map[string]string, path string) bool {
	for host, in := range mounts {
		if host == in && (path == host || strings.HasPrefix(path, host+"/")) {
			return true
		}
	}
	return false
}

// checkDeployment checks the DaemonSet that every values file must give,
// and, with withConfig, that its config.yaml loads and agrees with the
// mounts.
func checkDeployment(t *testing.T, m *harness.Manifests, withConfig bool) {
	t.Helper()
	ds := m.DaemonSet()
	c := agentContainer(t, m)
	pod := &ds.Spec.Template.Spec
	if !pod.HostPID {
		t.Error("hostPID is off: the agent must see crashed processes and PID 1's cgroup namespace")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool {
		return tl.Operator == corev1.TolerationOpExists && tl.Key == "" && tl.Effect == ""
	}) {
		t.Errorf("tolerations %+v do not admit every node", pod.Tolerations)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := c.Resources.Requests[r]; !ok || q.IsZero() {
			t.Errorf("no %s request", r)
		}
	}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || q.Cmp(c.Resources.Requests[corev1.ResourceMemory]) <= 0 {
		t.Errorf("memory limit %v, want one above the request", q.String())
	}
	if sc := c.SecurityContext; sc == nil {
		t.Error("no securityContext")
	} else if sc.Privileged == nil || !*sc.Privileged {
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("capabilities %+v: drop ALL, then add what the agent needs", sc.Capabilities)
		} else {
			for _, want := range []corev1.Capability{"SYS_ADMIN", "BPF", "PERFMON", "SYS_PTRACE", "SYS_CHROOT", "SYS_NICE"} {
				if !slices.Contains(sc.Capabilities.Add, want) {
					t.Errorf("capability %s not added: %v", want, sc.Capabilities.Add)
				}
			}
		}
	}
	if len(c.Args) == 0 || c.Args[0] != "agent" || !slices.Contains(c.Args, "--node=$(NODE_NAME)") {
		t.Errorf("args %q: want agent, with --node=$(NODE_NAME)", c.Args)
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Error("NODE_NAME does not come from spec.nodeName")
	}
	mounts := hostMounts(t, ds, c)
	for _, host := range []string{"/proc/sys/kernel", "/sys/fs/cgroup", "/sys/kernel/btf"} {
		if _, ok := mounts[host]; !ok {
			t.Errorf("no hostPath mount of %s", host)
		}
	}
	if !withConfig {
		return
	}

	cfg := agentConfig(t, m)
	if got := mounts["/proc/sys/kernel"]; cfg.Host.ProcSysKernel != got {
		t.Errorf("host.proc_sys_kernel %q, but the host's /proc/sys/kernel is mounted at %q", cfg.Host.ProcSysKernel, got)
	}
	if got, ok := mounts[cfg.Host.BinDir]; !ok || cfg.Host.BinMountDir() != got {
		t.Errorf("host.bin_dir %q is mounted at %q, but host.bin_mount says %q", cfg.Host.BinDir, got, cfg.Host.BinMountDir())
	}
	cri := strings.TrimPrefix(cfg.Identity.CRIEndpoint, "unix://")
	store := strings.TrimPrefix(cfg.Store, "file://")
	for _, p := range []struct{ key, path string }{
		{"spool", cfg.Spool}, {"socket", cfg.Socket}, {"identity.cri_endpoint", cri}, {"store", store},
	} {
		if !samePathMounted(mounts, p.path) {
			t.Errorf("%s %s is not in a host directory mounted at its own path: the kernel-run helper would not find it", p.key, p.path)
		}
	}
	pattern, err := sysctl.Pattern(filepath.Join(cfg.Host.BinDir, sysctl.HelperName), filepath.Join(cfg.Spool, "collect.yaml"), collector.PatternArgs)
	if err != nil {
		t.Error(err)
	} else if !sysctl.IsOurs([]byte(pattern)) {
		t.Errorf("core_pattern %q would not be recognised as corecatch's after a restart", pattern)
	}
}

// TestDockerfile: no Docker engine runs here, so the image is not built in
// CI; this checks what can be checked without one. The build stage builds
// the binary with `make build`'s flags (static, trimmed, versioned), the
// image carries gdb and elfutils, and runs `corecatch agent`.
func TestDockerfile(t *testing.T) {
	df := string(read(t, "Dockerfile"))
	mk := string(read(t, "Makefile"))
	ldflags := regexp.MustCompile(`(?m)^LDFLAGS\s*:=\s*(.*)$`).FindStringSubmatch(mk)
	build := regexp.MustCompile(`(?m)^build:\n\t(.*)$`).FindStringSubmatch(mk)
	if ldflags == nil || build == nil {
		t.Fatal("the Makefile has no LDFLAGS or build rule")
	}
	// make build's command with its variables as the Dockerfile spells
	// them ($(VAR) -> ${VAR}, double quotes for the shell to expand them,
	// the binary at /out).
	want := strings.ReplaceAll(build[1], "$(LDFLAGS)", ldflags[1])
	want = strings.NewReplacer("$(GO)", "go", "$(BIN)", "/out/corecatch", "$(VERSION)", "${VERSION}", "'", `"`).Replace(want)
	if !strings.Contains(df, want) {
		t.Errorf("the Dockerfile does not build as make build does; want the line\n  %s", want)
	}
	for _, s := range []string{"FROM --platform=$BUILDPLATFORM golang:", "GOARCH=${TARGETARCH}", " gdb ", " elfutils", `ENTRYPOINT ["/usr/local/bin/corecatch"]`, `CMD ["agent"]`} {
		if !strings.Contains(df, s) {
			t.Errorf("the Dockerfile lacks %q", s)
		}
	}
}

// TestPodEventsRBAC checks the least RBAC the agent's Pod Events and its
// hand-over at a rolling update need (get pods and daemonsets, create and
// patch events), bound to its service account, whose token
// is mounted only then; podEvents=false renders no RBAC and no token.
func TestPodEventsRBAC(t *testing.T) {
	for _, on := range []bool{true, false} {
		m := decode(t, harness.RenderChart(t, "--set", "podEvents="+strconv.FormatBool(on)))
		var role *rbacv1.ClusterRole
		var binding *rbacv1.ClusterRoleBinding
		var sa *corev1.ServiceAccount
		for _, o := range m.Objects {
			switch o := o.(type) {
			case *rbacv1.ClusterRole:
				role = o
			case *rbacv1.ClusterRoleBinding:
				binding = o
			case *corev1.ServiceAccount:
				sa = o
			}
		}
		ds := m.DaemonSet()
		if sa == nil || sa.AutomountServiceAccountToken == nil || *sa.AutomountServiceAccountToken != on ||
			ds.Spec.Template.Spec.AutomountServiceAccountToken == nil || *ds.Spec.Template.Spec.AutomountServiceAccountToken != on {
			t.Errorf("podEvents=%v: the service account's token must be mounted exactly when Events are on", on)
		}
		if !on {
			if role != nil || binding != nil {
				t.Error("podEvents=false still renders RBAC")
			}
			continue
		}
		want := []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
			{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
		}
		if role == nil || !reflect.DeepEqual(role.Rules, want) {
			t.Fatalf("ClusterRole %+v, want exactly the rules %+v", role, want)
		}
		if binding == nil || binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 ||
			binding.Subjects[0].Kind != "ServiceAccount" || binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != "corecatch" {
			t.Errorf("ClusterRoleBinding %+v does not bind the ClusterRole to the agent's service account", binding)
		}
	}
}
