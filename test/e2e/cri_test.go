package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/test/harness"
)

// Images the CRI tests import: no registry is reachable, so both are built
// from busybox-static and imported as OCI archives.
const (
	pauseImage = "docker.io/corecatch/pause:e2e"
	appImage   = "docker.io/corecatch/app:e2e"
)

// criConfig turns containerd's CRI plugin on as a kubelet node has it with
// the cgroupfs driver, with what this VM needs: an oom_score_adj no lower
// than the VM allows, our own pause image, no AppArmor, and CNI left to
// the test's directory (pods use the host's network). runc keeps its state
// there too.
const criConfig = `[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "` + pauseImage + `"
  restrict_oom_score_adj = true
  disable_cgroup = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "%[1]s/cni"
    bin_dir = "%[1]s/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "%[1]s/runc"
`

// cri is a private containerd with its CRI plugin, the pause and app
// images imported, and CRI clients on its socket.
type cri struct {
	*containerd
	rt  runtimeapi.RuntimeServiceClient
	img runtimeapi.ImageServiceClient
	// appID is the app image's id, which kubelet puts in a container's
	// config instead of the name the pod spec says.
	appID string
}

// startCRI starts containerd with its CRI plugin, imports the pause image
// and an app image of busybox and a static lim_mem at /lim_mem, and waits
// until the CRI API answers and knows both images.
func startCRI(t *testing.T, dir string) *cri {
	t.Helper()
	c := &cri{containerd: startContainerd(t, criConfig)}
	conn, err := grpc.NewClient("unix://"+c.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c.rt, c.img = runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)

	pause := busyboxRoot(t, filepath.Join(dir, "pause"))
	c.importImage(t, pause, pauseImage, "/bin/sleep", "2147483647")
	app := busyboxRoot(t, filepath.Join(dir, "app"))
	harness.CC(t, app, "lim_mem", []string{"lim_mem.c"}, "-static", "-O2")
	// The mount point of the hostPath volume the crash waits on.
	if err := os.Mkdir(filepath.Join(app, "trigger"), 0o755); err != nil {
		t.Fatal(err)
	}
	c.importImage(t, app, appImage, "/bin/sh")
	if err := c.ready(); err != nil {
		t.Fatal(err)
	}
	// The CRI plugin learns of imported images from containerd's events.
	err = within(20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		image, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: appImage}})
		if image.GetImage() == nil {
			return fmt.Errorf("the CRI API does not know %s: %v", appImage, err)
		}
		c.appID = image.Image.Id
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// ready waits until the CRI API says the runtime can run containers (its
// network is not ready without CNI, which host-network pods do not need).
func (c *cri) ready() error {
	return within(20*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		status, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
		for _, cond := range status.GetStatus().GetConditions() {
			if cond.Type == runtimeapi.RuntimeReady && cond.Status {
				return nil
			}
		}
		return fmt.Errorf("the CRI runtime is not ready: %v %v", status, err)
	})
}

// importImage writes rootfs as a one-layer OCI image archive named ref
// with the given entrypoint, and imports it into the CRI's namespace
// (k8s.io) with ctr.
func (c *cri) importImage(t *testing.T, rootfs, ref string, entrypoint ...string) {
	t.Helper()
	file := rootfs + ".oci.tar"
	if err := harness.WriteOCIArchive(file, rootfs, ref, entrypoint, nil); err != nil {
		t.Fatal(err)
	}
	if out, err := c.try("-n", "k8s.io", "images", "import", file); err != nil {
		t.Fatalf("ctr images import %s: %v\n%s", file, err, out)
	}
}

// criPod is a pod of one container, "app", made through the CRI as kubelet
// makes it, whose shell says hello on stdout and then waits on a fifo
// before it execs the crasher.
type criPod struct {
	name, namespace, uid string
	labels               map[string]string // the pod's own labels
	annotations          map[string]string // its corecatch.io/ annotations
	sandbox, container   string
	cgroup               string // the container's cgroup path
	log                  string // the container's log on the host
	fifo                 string // what the container waits on
	pid                  int    // the container's shell, then the crasher
}

// runPod runs a pod with the given labels (besides kubelet's own) and
// annotations (kubelet passes a pod's to its sandbox) through the CRI,
// with its cgroup under /kubepods/burstable and the host's network, waits until its container runs and has said hello, and returns
// it. The test's cleanup stops and removes it through the CRI, restarting
// containerd if the test stopped it, and removes its cgroups.
func (c *cri) runPod(t *testing.T, dir, name, namespace string, labels, annotations map[string]string) *criPod {
	t.Helper()
	return c.runPodWith(t, dir, name, namespace, labels, annotations, "/lim_mem 1 fill")
}

// runPodExec is runPod whose container execs program (a shell command
// line) once released, with the given mounts besides its trigger.
func (c *cri) runPodExec(t *testing.T, dir, name, namespace string, labels map[string]string, program string, mounts ...*runtimeapi.Mount) *criPod {
	t.Helper()
	return c.runPodWith(t, dir, name, namespace, labels, nil, program, mounts...)
}

// runPodWith is runPodExec with the pod's annotations.
func (c *cri) runPodWith(t *testing.T, dir, name, namespace string, labels, annotations map[string]string, program string, mounts ...*runtimeapi.Mount) *criPod {
	t.Helper()
	p := &criPod{name: name, namespace: namespace, uid: newUID(t), labels: labels}
	for k, v := range annotations {
		if strings.HasPrefix(k, "corecatch.io/") {
			if p.annotations == nil {
				p.annotations = map[string]string{}
			}
			p.annotations[k] = v
		}
	}
	dir = filepath.Join(dir, namespace+"_"+name+"_"+p.uid) // kubelet's /var/log/pods/<ns>_<name>_<uid>
	trigger := filepath.Join(dir, "trigger")
	if err := os.MkdirAll(trigger, 0o755); err != nil {
		t.Fatal(err)
	}
	p.fifo = filepath.Join(trigger, "go")
	if err := unix.Mkfifo(p.fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	parent := "/kubepods/burstable/pod" + p.uid
	t.Cleanup(func() {
		if c.cmd == nil {
			if err := c.start(); err != nil {
				t.Errorf("restart containerd to remove pod %s: %v", p.name, err)
			} else if err := c.ready(); err != nil {
				t.Error(err)
			}
		}
		if p.sandbox != "" {
			// containerd 1.6 may fail to stop a container whose exit it
			// is still handling ("ttrpc: closed"); kubelet retries too.
			err := within(10*time.Second, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.sandbox}); err != nil {
					return fmt.Errorf("stop pod %s: %w", p.name, err)
				}
				if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.sandbox}); err != nil {
					return fmt.Errorf("remove pod %s: %w", p.name, err)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
		if t.Failed() {
			log, _ := os.ReadFile(p.log)
			t.Logf("pod %s/%s's container log:\n%s", p.namespace, p.name, log)
		}
		clearCgroup(parent)
	})

	kubelet := map[string]string{
		"io.kubernetes.pod.name":      name,
		"io.kubernetes.pod.namespace": namespace,
		"io.kubernetes.pod.uid":       p.uid,
	}
	sandboxLabels := maps.Clone(labels) // kubelet's own win, as in kubelet
	maps.Copy(sandboxLabels, kubelet)
	namespaces := &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_NODE,
		Pid:     runtimeapi.NamespaceMode_CONTAINER,
		Ipc:     runtimeapi.NamespaceMode_POD,
	}
	sandboxConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: namespace, Uid: p.uid},
		LogDirectory: dir,
		Labels:       sandboxLabels,
		Annotations:  annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent:    parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: namespaces},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sandbox, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandboxConfig})
	if err != nil {
		t.Fatalf("run pod %s/%s: %v", namespace, name, err)
	}
	p.sandbox = sandbox.PodSandboxId
	containerLabels := maps.Clone(kubelet)
	containerLabels["io.kubernetes.container.name"] = "app"
	created, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: p.sandbox,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			// As kubelet does: the image's id, and the name the pod spec
			// said aside.
			Image:   &runtimeapi.ImageSpec{Image: c.appID, UserSpecifiedImage: appImage},
			Command: []string{"/bin/sh", "-c", "echo hello from the app; read x < /trigger/go; exec " + program},
			LogPath: "app/0.log",
			Labels:  containerLabels,
			Mounts:  append([]*runtimeapi.Mount{{ContainerPath: "/trigger", HostPath: trigger}}, mounts...),
			Linux: &runtimeapi.LinuxContainerConfig{
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: namespaces},
			},
		},
		SandboxConfig: sandboxConfig,
	})
	if err != nil {
		t.Fatalf("create pod %s/%s's container: %v", namespace, name, err)
	}
	p.container = created.ContainerId
	p.cgroup = parent + "/" + p.container
	p.log = filepath.Join(dir, "app", "0.log")
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: p.container}); err != nil {
		t.Fatalf("start pod %s/%s's container: %v", namespace, name, err)
	}

	cgroupDir := filepath.Join(freezeHiers(t)[0].root, p.cgroup)
	err = within(20*time.Second, func() error {
		p.pid = procsNamed(cgroupDir)["sh"]
		log, _ := os.ReadFile(p.log)
		if p.pid == 0 || !strings.Contains(string(log), "hello from the app") {
			return fmt.Errorf("pod %s/%s: no shell in %s (%v) or no hello in %s", namespace, name, cgroupDir, procsNamed(cgroupDir), p.log)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// crash lets the pod's container exec its crasher and returns the bundle.
func (p *criPod) crash(t *testing.T, n *harness.Node) *bundle.Metadata {
	t.Helper()
	releaseFifo(t, p.fifo, time.Now().Add(10*time.Second))
	m := n.WaitBundle(p.pid)
	if m.Cgroup != p.cgroup {
		t.Errorf("bundle's cgroup %q, want the container's %q", m.Cgroup, p.cgroup)
	}
	if m.Comm != "lim_mem" || m.Signal != int(syscall.SIGSEGV) {
		t.Errorf("bundle of %s killed by %d, want lim_mem killed by SIGSEGV", m.Comm, m.Signal)
	}
	return m
}

// newUID returns a random pod UID in the form Kubernetes gives them.
func newUID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// criNode installs corecatch with the CRI endpoint of a private containerd
// that runs the CRI plugin and has the test images. containerd starts after
// Install, so that it and its pods are gone before the harness lets
// another privileged test run.
func criNode(t *testing.T) (*harness.Node, *cri) {
	t.Helper()
	n := harness.Install(t, "")
	c := startCRI(t, n.Dir)
	limReconfigure(t, n, "identity:\n  cri_endpoint: unix://"+c.addr+"\n")
	return n, c
}

// checkPod checks the pod section of a bundle against the pod.
func checkPod(t *testing.T, m *bundle.Metadata, p *criPod) {
	t.Helper()
	want := bundle.Pod{Name: p.name, Namespace: p.namespace, UID: p.uid, Labels: p.labels, Annotations: p.annotations}
	if len(want.Labels) == 0 {
		want.Labels = nil
	}
	if m.Pod == nil || !reflect.DeepEqual(*m.Pod, want) {
		t.Errorf("pod %+v, want %+v", m.Pod, want)
	}
}

// TestIdentityCRI crashes the app of a Deployment's pod, made through
// containerd's CRI as kubelet makes it: the bundle names the container
// (id, name, image, runtime), the pod and the Deployment from the CRI API,
// and holds the tail of the container's log.
func TestIdentityCRI(t *testing.T) {
	n, c := criNode(t)
	p := c.runPod(t, n.Dir, "checkout-5d8f7c9b4d-x7k2p", "shop",
		map[string]string{"app": "checkout", "pod-template-hash": "5d8f7c9b4d"}, nil)
	m := p.crash(t, n)

	if m.IdentitySource != bundle.IdentityCRI {
		t.Errorf("identity_source %q (reason %q), want %q", m.IdentitySource, m.IdentityReason, bundle.IdentityCRI)
	}
	want := bundle.Container{ID: p.container, Name: "app", Image: appImage, Runtime: "containerd"}
	if m.Container == nil || *m.Container != want {
		t.Errorf("container %+v, want %+v", m.Container, want)
	}
	checkPod(t, m, p)
	if w := (bundle.Workload{Kind: "Deployment", Name: "checkout"}); m.Workload == nil || *m.Workload != w {
		t.Errorf("workload %+v, want %+v", m.Workload, w)
	}
	log, err := os.ReadFile(filepath.Join(n.BundleDir(m.ID), bundle.ContainerLog))
	if err != nil {
		t.Errorf("no container log in the bundle: %v", err)
	} else if !strings.Contains(string(log), "hello from the app") {
		t.Errorf("the bundle's container.log does not hold the app's hello:\n%s", log)
	}
}

// TestIdentitySameNameTwoNamespaces crashes pods of the same name in two
// namespaces: each bundle names its own namespace, pod UID and container.
func TestIdentitySameNameTwoNamespaces(t *testing.T) {
	n, c := criNode(t)
	labels := map[string]string{"app": "api", "pod-template-hash": "7c9d8b6f5c"}
	pods := []*criPod{
		c.runPod(t, n.Dir, "api-7c9d8b6f5c-q2w4z", "team-a", labels, nil),
		c.runPod(t, n.Dir, "api-7c9d8b6f5c-q2w4z", "team-b", labels, nil),
	}
	for _, p := range pods {
		m := p.crash(t, n)
		checkPod(t, m, p)
		if m.Container == nil || m.Container.ID != p.container {
			t.Errorf("%s: container %+v, want id %s", p.namespace, m.Container, p.container)
		}
	}
}

// TestIdentityRuntimeGone stops containerd before the crash (the container
// lives on under its shim): the bundle's identity comes from the cgroup
// path alone, with the reason why not from the CRI.
func TestIdentityRuntimeGone(t *testing.T) {
	n, c := criNode(t)
	p := c.runPod(t, n.Dir, "worker-6b8d9c7f4b-m5n8r", "batch",
		map[string]string{"app": "worker", "pod-template-hash": "6b8d9c7f4b"}, nil)
	c.stop()
	if err := syscall.Kill(p.pid, 0); err != nil {
		t.Fatalf("the container's shell %d did not outlive containerd: %v", p.pid, err)
	}
	m := p.crash(t, n)

	if m.IdentitySource != bundle.IdentityCgroup || m.IdentityReason == "" {
		t.Errorf("identity_source %q, reason %q: want %q with a reason", m.IdentitySource, m.IdentityReason, bundle.IdentityCgroup)
	}
	if m.Container == nil || m.Container.ID != p.container {
		t.Errorf("container %+v, want id %s", m.Container, p.container)
	}
	if m.Pod == nil || m.Pod.UID != p.uid {
		t.Errorf("pod %+v, want uid %s", m.Pod, p.uid)
	}
}

// TestPodAnnotations crashes pods that chose through annotations (and a
// namespace through pods.namespaces) what corecatch does, with the agent
// running: corecatch.io/collect "false" keeps metadata and the backtrace
// but no core, also by its namespace's default, which an annotation
// overrides; corecatch.io/freeze "false" leaves the container running
// while its core streams. A refused core's container is frozen only when
// its freeze began before the crash was decided (the decision does not
// wait for it, and nothing is read of the container once it is made).
func TestPodAnnotations(t *testing.T) {
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccann-%d.sock", os.Getpid()))
	n := harness.Install(t, "socket: "+socket+"\n")
	t.Cleanup(func() { os.Remove(socket) })
	c := startCRI(t, n.Dir)
	limReconfigure(t, n, "socket: "+socket+"\nidentity:\n  cri_endpoint: unix://"+c.addr+
		"\npods:\n  namespaces:\n  - namespace: \"vault-*\"\n    collect: false\n")
	startAgent(t, n, socket)
	labels := map[string]string{"app": "keys", "pod-template-hash": "6f7d9c8b5d"}
	for _, tc := range []struct {
		namespace   string
		annotations map[string]string
		core        bool // kept
		frozen      bool
	}{
		{"payments", map[string]string{config.AnnotationCollect: "false", "other.io/x": "y"}, false, true},
		{"vault-eu", nil, false, true},
		{"vault-us", map[string]string{config.AnnotationCollect: "true"}, true, true},
		{"cache", map[string]string{config.AnnotationFreeze: "false"}, true, false},
	} {
		p := c.runPod(t, n.Dir, "keys-6f7d9c8b5d-z9x8c", tc.namespace, labels, tc.annotations)
		m := p.crash(t, n)
		checkPod(t, m, p)
		_, err := os.Stat(filepath.Join(n.BundleDir(m.ID), bundle.CoreFile))
		if kept := err == nil; kept != tc.core || (tc.core != (m.Core.TruncateReason != bundle.ReasonPodPolicy)) {
			t.Errorf("%s %v: core kept %v (truncate_reason %q), want %v", tc.namespace, tc.annotations, kept, m.Core.TruncateReason, tc.core)
		}
		if m.Title == "" || len(m.Backtrace) == 0 {
			t.Errorf("%s: no title or backtrace (%q, %d frames): the metadata must stay whole without the core", tc.namespace, m.Title, len(m.Backtrace))
		}
		switch {
		case m.Freeze == nil:
			t.Errorf("%s %v: no freeze record", tc.namespace, tc.annotations)
		case !tc.frozen:
			if m.Freeze.Frozen || !strings.Contains(m.Freeze.Reason, config.AnnotationFreeze) {
				t.Errorf("%s: freeze %+v, want not frozen, for a reason that names the annotation", tc.namespace, m.Freeze)
			}
		case tc.core && !m.Freeze.Frozen:
			t.Errorf("%s %v: freeze %+v, want frozen while its core streamed", tc.namespace, tc.annotations, m.Freeze)
		case !m.Freeze.Frozen && !strings.Contains(m.Freeze.Reason, "let go first"):
			t.Errorf("%s %v: freeze %+v, want frozen, or not because the crash was decided first", tc.namespace, tc.annotations, m.Freeze)
		}
	}
}
