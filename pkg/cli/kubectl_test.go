package cli

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestSplitKubeFlags takes kubectl's flags out of a plugin's arguments and
// leaves the subcommand's own -n and --namespace alone.
func TestSplitKubeFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want kubeFlags
		rest []string
	}{
		{[]string{"ls"}, kubeFlags{namespace: "corecatch"}, []string{"ls"}},
		{[]string{"-n", "crash", "ls"}, kubeFlags{namespace: "crash"}, []string{"ls"}},
		{[]string{"-ncrash", "--context=prod", "ls"}, kubeFlags{namespace: "crash", context: "prod"}, []string{"ls"}},
		{[]string{"--namespace=crash", "--kubeconfig", "/k", "pull", "ID", "-o", "d"}, kubeFlags{namespace: "crash", kubeconfig: "/k"}, []string{"pull", "ID", "-o", "d"}},
		{[]string{"ls", "--namespace", "shop", "-n", "5", "--context", "prod"}, kubeFlags{namespace: "corecatch", context: "prod"}, []string{"ls", "--namespace", "shop", "-n", "5"}},
		{[]string{"--store", "s3://b", "ls"}, kubeFlags{namespace: "corecatch"}, []string{"--store", "s3://b", "ls"}},
		{[]string{"debug", "ID", "--", "--context", "x"}, kubeFlags{namespace: "corecatch"}, []string{"debug", "ID", "--", "--context", "x"}},
	} {
		k, rest, err := splitKubeFlags(tc.args)
		if err != nil || k != tc.want || !reflect.DeepEqual(rest, tc.rest) {
			t.Errorf("splitKubeFlags(%q) = %+v, %q, %v; want %+v, %q", tc.args, k, rest, err, tc.want, tc.rest)
		}
	}
	if _, _, err := splitKubeFlags([]string{"ls", "--context"}); err == nil {
		t.Error("a flag without its value was accepted")
	}
}

// TestKubeconfigChoice: the cluster is the one kubectl would talk to:
// $KUBECONFIG, then --kubeconfig over it; the current context, then
// --context over it.
func TestKubeconfigChoice(t *testing.T) {
	dir := t.TempDir()
	write := func(name, ctx string) string {
		p := filepath.Join(dir, name)
		cfg := `apiVersion: v1
kind: Config
current-context: ` + ctx + `
clusters:
- name: a
  cluster: {server: "https://a.` + name + `:6443"}
- name: b
  cluster: {server: "https://b.` + name + `:6443"}
contexts:
- name: a
  context: {cluster: a, user: u}
- name: b
  context: {cluster: b, user: u}
users:
- name: u
  user: {token: t}
`
		if err := os.WriteFile(p, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env, flag := write("env", "a"), write("flag", "b")
	t.Setenv("KUBECONFIG", env)
	t.Setenv("HOME", dir)
	for _, tc := range []struct {
		k    kubeFlags
		want string
	}{
		{kubeFlags{}, "https://a.env:6443"},
		{kubeFlags{context: "b"}, "https://b.env:6443"},
		{kubeFlags{kubeconfig: flag}, "https://b.flag:6443"},
		{kubeFlags{kubeconfig: flag, context: "a"}, "https://a.flag:6443"},
	} {
		rc, err := tc.k.restConfig()
		if err != nil || rc.Host != tc.want {
			t.Errorf("%+v: host %v, %v; want %s", tc.k, rc, err, tc.want)
		}
	}
	if _, err := (kubeFlags{context: "nope"}).restConfig(); err == nil || !strings.Contains(err.Error(), "--context") {
		t.Errorf("an unknown context: %v", err)
	}
}

// TestReadClusterStore reads the store's URL and S3 settings from the
// chart's ConfigMap and the keys from the Secret its DaemonSet names, as
// the chart renders them (fake clientset: a real cluster comes with the
// kube tests).
func TestReadClusterStore(t *testing.T) {
	labels := map[string]string{"app.kubernetes.io/name": "corecatch", "app.kubernetes.io/instance": "corecatch"}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: "crash", Labels: labels}
	}
	fromSecret := func(name, key string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: name}, Key: key}}
	}
	cs := fake.NewClientset(
		&corev1.ConfigMap{ObjectMeta: meta("corecatch"), Data: map[string]string{"config.yaml": `store: s3://crash-bundles/prod
spool: /var/lib/corecatch/spool
s3:
  endpoint: https://obs.cn-north-4.myhuaweicloud.com
  region: cn-north-4
  credentials_file: /etc/corecatch/s3
  sts: true
`}},
		&appsv1.DaemonSet{ObjectMeta: meta("corecatch"), Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			Containers: []corev1.Container{{Name: "agent", Env: []corev1.EnvVar{
				{Name: "NODE_NAME"},
				{Name: "AWS_ACCESS_KEY_ID", ValueFrom: fromSecret("corecatch-obs", "access_key_id")},
				{Name: "AWS_SECRET_ACCESS_KEY", ValueFrom: fromSecret("corecatch-obs", "secret_access_key")},
			}}}}}}},
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "corecatch-obs", Namespace: "crash"},
			Data: map[string][]byte{"access_key_id": []byte("AK"), "secret_access_key": []byte("SK")}},
	)
	cl, err := readClusterStore(t.Context(), cs, "crash")
	if err != nil {
		t.Fatal(err)
	}
	c := cl.config
	if c.Store != "s3://crash-bundles/prod" || c.S3.Endpoint != "https://obs.cn-north-4.myhuaweicloud.com" || c.S3.Region != "cn-north-4" {
		t.Errorf("config %+v, S3 %+v", c, c.S3)
	}
	if c.S3.CredentialsFile != "" || c.S3.STS {
		t.Errorf("the pod's credentials file and STS were kept: %+v", c.S3)
	}
	if cl.keys.AccessKeyID != "AK" || cl.keys.SecretAccessKey != "SK" {
		t.Errorf("keys %+v, want AK/SK from the Secret", cl.keys)
	}
	if _, err := readClusterStore(t.Context(), cs, "elsewhere"); err == nil || !strings.Contains(err.Error(), "-n") {
		t.Errorf("a namespace without the chart: %v", err)
	}
}

// TestPluginName: installed as kubectl-corecatch the binary calls itself
// `kubectl corecatch`, takes kubectl's flags, and with --config reads that
// file instead of the cluster.
func TestPluginName(t *testing.T) {
	var out, errOut strings.Builder
	if code := Main([]string{"/usr/local/bin/" + PluginName, "-n", "crash", "--help"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, &errOut)
	}
	if !strings.Contains(out.String(), "kubectl corecatch [command]") || !strings.Contains(out.String(), "--namespace") {
		t.Errorf("help as a plugin:\n%s", &out)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(cfg, []byte("store: file://"+t.TempDir()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	if code := Main([]string{PluginName, "--config", cfg, "ls"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "TIME") {
		t.Errorf("kubectl corecatch --config FILE ls: exit %d, %q, %s", code, &out, &errOut)
	}
}
