package harness

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// KubeDir returns the directory `make kube` builds kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet and kubectl into: the
// cache named by tools/kube's version and the hash of its go.mod and go.sum,
// as the Makefile names it. Without it a test skips, except under CI=true.
func KubeDir(t testing.TB) string {
	t.Helper()
	mod, err1 := os.ReadFile(filepath.Join(RepoRoot(), "tools/kube/go.mod"))
	sum, err2 := os.ReadFile(filepath.Join(RepoRoot(), "tools/kube/go.sum"))
	if err1 != nil || err2 != nil {
		t.Fatalf("tools/kube: %v %v", err1, err2)
	}
	version := ""
	for _, line := range strings.Split(string(mod), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "k8s.io/kubernetes" {
			version = f[1]
			break
		}
	}
	h := sha256.Sum256(append(mod, sum...))
	cache := os.Getenv("KUBE_CACHE")
	if cache == "" {
		cache = "/var/cache/corecatch"
	}
	dir := filepath.Join(cache, "kube-"+version+"-"+hex.EncodeToString(h[:])[:12])
	if _, err := os.Stat(filepath.Join(dir, "kubelet")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s: %v, and CI=true forbids skipping: run `make kube`", dir, err)
		}
		t.Skipf("no %s: run `make kube` (about 15 minutes cold)", dir)
	}
	return dir
}

// ServiceIP is the cluster's "kubernetes" Service address. No kube-proxy
// runs, so the API server listens on it itself (port 443), on the loopback
// device: a pod on the host's network reaches it as in-cluster clients do.
const ServiceIP = "10.254.0.1"

// Cluster is a real single-node Kubernetes: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and a kubelet on the caller's
// CRI runtime, with certificates made for it. Pods must use the host's
// network (no CNI) and tolerate node.kubernetes.io/not-ready (the runtime
// reports no pod network).
type Cluster struct {
	t   testing.TB
	Dir string
	// Kubeconfig is an admin's (system:masters); Node the kubelet's node
	// name; StaticPods kubelet's manifests directory.
	Kubeconfig string
	Node       string
	StaticPods string
	bin        string
	procs      []*exec.Cmd
	logs       map[string]string
}

// StartCluster starts the cluster on the CRI at criSocket and waits until
// its node is registered. Everything it starts is stopped, its mounts
// (kubelet's volumes) unmounted and its cgroups removed when the test
// ends, even when it fails. The caller holds the privileged lock.
func StartCluster(t testing.TB, criSocket string) *Cluster {
	t.Helper()
	RequireRoot(t)
	bin := KubeDir(t)
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatal("etcd is missing: run make deps (Debian's etcd-server)")
	}
	dir, err := os.MkdirTemp("", "cck")
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, Dir: dir, bin: bin, Node: "cc-node", StaticPods: filepath.Join(dir, "manifests"), logs: map[string]string{}}
	t.Cleanup(c.stop)
	for _, d := range []string{"pki", "manifests", "kubelet", "pods", "etcd"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("ip", "addr", "add", ServiceIP+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add %s dev lo: %v\n%s", ServiceIP, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "addr", "del", ServiceIP+"/32", "dev", "lo").Run() })
	pki := c.certs()

	etcdPort, peerPort := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	c.run("etcd", etcd, "--name", "cc", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", peerPort),
		"--initial-cluster", fmt.Sprintf("cc=http://127.0.0.1:%d", peerPort))
	c.run("kube-apiserver", filepath.Join(bin, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", ServiceIP, "--advertise-address", ServiceIP, "--secure-port", "443",
		"--service-cluster-ip-range", "10.254.0.0/24",
		"--tls-cert-file", pki["apiserver.crt"], "--tls-private-key-file", pki["apiserver.key"],
		"--client-ca-file", pki["ca.crt"],
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", pki["sa.pub"], "--service-account-signing-key-file", pki["sa.key"],
		"--authorization-mode", "Node,RBAC", "--allow-privileged",
		"--kubelet-preferred-address-types", "InternalIP", // kubectl logs: the node's name resolves nowhere
		"--cert-dir", filepath.Join(dir, "pki"))
	c.Kubeconfig = c.kubeconfig("admin", pki["ca.crt"], pki["admin.crt"], pki["admin.key"])
	if err := c.wait(60*time.Second, "the API server", "get", "--raw", "/readyz"); err != nil {
		t.Fatal(err)
	}
	c.run("kube-controller-manager", filepath.Join(bin, "kube-controller-manager"),
		"--kubeconfig", c.Kubeconfig, "--authentication-kubeconfig", c.Kubeconfig, "--authorization-kubeconfig", c.Kubeconfig,
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(freePort(t)),
		"--service-account-private-key-file", pki["sa.key"], "--root-ca-file", pki["ca.crt"])
	c.run("kube-scheduler", filepath.Join(bin, "kube-scheduler"),
		"--kubeconfig", c.Kubeconfig, "--authentication-kubeconfig", c.Kubeconfig, "--authorization-kubeconfig", c.Kubeconfig,
		"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(freePort(t)))

	kubeletConfig := filepath.Join(dir, "kubelet.yaml")
	cfg := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
staticPodPath: %s
fileCheckFrequency: 2s
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
address: %s
port: %d
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
makeIPTablesUtilChains: false
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
`, c.StaticPods, criSocket, filepath.Join(dir, "pods"), ServiceIP, freePort(t))
	if err := os.WriteFile(kubeletConfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	c.run("kubelet", filepath.Join(bin, "kubelet"), "--config", kubeletConfig, "--kubeconfig", c.Kubeconfig,
		"--root-dir", filepath.Join(dir, "kubelet"), "--hostname-override", c.Node, "--node-ip", ServiceIP)
	if err := c.wait(90*time.Second, "node "+c.Node, "get", "node", c.Node); err != nil {
		t.Fatal(err)
	}
	if err := c.wait(60*time.Second, "the default service account", "-n", "default", "get", "serviceaccount", "default"); err != nil {
		t.Fatal(err)
	}
	return c
}

// Kubectl runs kubectl with the admin's kubeconfig, failing the test on
// error, and returns its output.
func (c *Cluster) Kubectl(args ...string) string {
	c.t.Helper()
	out, err := c.TryKubectl(args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TryKubectl runs kubectl and returns its combined output and error.
func (c *Cluster) TryKubectl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", c.Kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Env is the environment that makes kubectl and helm use the cluster.
func (c *Cluster) Env() []string {
	return append(os.Environ(), "KUBECONFIG="+c.Kubeconfig, "PATH="+c.bin+":"+os.Getenv("PATH"))
}

// wait runs kubectl until it succeeds, up to d.
func (c *Cluster) wait(d time.Duration, what string, args ...string) error {
	deadline := time.Now().Add(d)
	for {
		out, err := c.TryKubectl(args...)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up within %s: %v\n%s\n%s", what, d, err, out, c.tails())
		}
		time.Sleep(time.Second)
	}
}

// run starts one of the cluster's processes, its output in Dir/name.log.
func (c *Cluster) run(name, bin string, args ...string) {
	c.t.Helper()
	log := filepath.Join(c.Dir, name+".log")
	f, err := os.Create(log)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		c.t.Fatalf("start %s: %v", name, err)
	}
	f.Close()
	c.procs = append(c.procs, cmd)
	c.logs[name] = log
}

// tails returns the end of each process's log, for failures.
func (c *Cluster) tails() string {
	var b strings.Builder
	names := make([]string, 0, len(c.logs))
	for n := range c.logs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data, _ := os.ReadFile(c.logs[n])
		if len(data) > 3000 {
			data = data[len(data)-3000:]
		}
		fmt.Fprintf(&b, "--- %s:\n%s\n", n, data)
	}
	return b.String()
}

// stop deletes what kubelet runs (so that the runtime stops the pods),
// stops the processes in reverse order, unmounts kubelet's volumes and
// removes the cluster's directory.
func (c *Cluster) stop() {
	if c.t.Failed() {
		c.t.Logf("the cluster's logs:\n%s", c.tails())
	}
	if len(c.procs) > 0 && c.Kubeconfig != "" {
		// Static pods first: kubelet stops them when their manifests go.
		entries, _ := os.ReadDir(c.StaticPods)
		for _, e := range entries {
			os.Remove(filepath.Join(c.StaticPods, e.Name()))
		}
		c.TryKubectl("delete", "--all-namespaces", "--all", "deployments,daemonsets,replicasets", "--wait=false")
		c.TryKubectl("delete", "--all-namespaces", "--all", "pods", "--grace-period=10", "--timeout=60s")
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			out, err := c.TryKubectl("get", "pods", "--all-namespaces", "--no-headers")
			if err == nil && strings.TrimSpace(out) == "" || strings.Contains(out, "No resources found") {
				break
			}
			time.Sleep(time.Second)
		}
	}
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		p.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { p.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			p.Process.Kill()
			<-done
		}
	}
	UnmountUnder(c.Dir)
	os.RemoveAll(c.Dir)
}

// UnmountUnder detaches every mount at or below dir, deepest first.
func UnmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 {
			// Mount points are octal-escaped; a temporary directory's need not.
			if p := fields[4]; p == dir || strings.HasPrefix(p, dir+"/") {
				points = append(points, p)
			}
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		unix.Unmount(p, unix.MNT_DETACH)
	}
}

// freePort returns a loopback TCP port nobody listens on.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// certs makes the cluster's CA, the API server's serving certificate, an
// admin's client certificate and the service-account signing key, and
// returns their files by name.
func (c *Cluster) certs() map[string]string {
	c.t.Helper()
	files := map[string]string{}
	write := func(name, typ string, der []byte) {
		p := filepath.Join(c.Dir, "pki", name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			c.t.Fatal(err)
		}
		files[name] = p
	}
	key := func(name string) *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			c.t.Fatal(err)
		}
		der, _ := x509.MarshalECPrivateKey(k)
		write(name+".key", "EC PRIVATE KEY", der)
		return k
	}
	now := time.Now()
	caKey := key("ca")
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "corecatch-test-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		c.t.Fatal(err)
	}
	write("ca.crt", "CERTIFICATE", caDER)
	ca, _ = x509.ParseCertificate(caDER)
	sign := func(name string, tmpl *x509.Certificate) {
		k := key(name)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			c.t.Fatal(err)
		}
		write(name+".crt", "CERTIFICATE", der)
	}
	sign("apiserver", &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.ParseIP(ServiceIP), net.ParseIP("127.0.0.1")}})
	sign("admin", &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	saKey := key("sa")
	pub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	write("sa.pub", "PUBLIC KEY", pub)
	return files
}

// kubeconfig writes a kubeconfig for the API server with a client
// certificate.
func (c *Cluster) kubeconfig(user, ca, crt, key string) string {
	c.t.Helper()
	p := filepath.Join(c.Dir, user+".kubeconfig")
	var b bytes.Buffer
	fmt.Fprintf(&b, `apiVersion: v1
kind: Config
clusters:
- name: cc
  cluster: {server: "https://%s:443", certificate-authority: %q}
users:
- name: %s
  user: {client-certificate: %q, client-key: %q}
contexts:
- name: cc
  context: {cluster: cc, user: %s}
current-context: cc
`, ServiceIP, ca, user, crt, key, user)
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		c.t.Fatal(err)
	}
	return p
}
