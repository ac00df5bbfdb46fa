package identity

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// DefaultEndpoints are the CRI sockets of the usual runtimes, tried in
// order when none is configured: containerd, CRI-O, k3s's containerd.
var DefaultEndpoints = []string{
	"unix:///run/containerd/containerd.sock",
	"unix:///var/run/crio/crio.sock",
	"unix:///run/k3s/containerd/containerd.sock",
}

// Pod labels kubelet puts on every container, which name its pod without a
// second call.
const (
	labelPodName      = "io.kubernetes.pod.name"
	labelPodNamespace = "io.kubernetes.pod.namespace"
	labelPodUID       = "io.kubernetes.pod.uid"
	// annotationPrefix is corecatch's own pod annotations' (config.Pods).
	annotationPrefix = "corecatch.io/"
)

// Identity is everything known about a crashed process's container.
type Identity struct {
	Container *bundle.Container `json:"container"`
	Pod       *bundle.Pod       `json:"pod,omitempty"`
	Workload  *bundle.Workload  `json:"workload,omitempty"`
	// Source is bundle.IdentityCRI, IdentityCgroup or IdentityNone, and
	// Reason says why not more.
	Source string `json:"source"`
	Reason string `json:"reason,omitempty"`
	// LogPath is the container's log file on the host, from its CRI status.
	LogPath string `json:"log_path,omitempty"`
}

// Resolve finds the identity of the process in cgroupPath: from the cgroup
// alone, then, for a container, from the cache or the runtime's CRI API at
// endpoint (empty: the first of DefaultEndpoints that exists). The runtime
// being unreachable is no error: the identity then comes from the cgroup,
// with the reason.
func Resolve(ctx context.Context, cgroupPath, endpoint string, timeout time.Duration, cache Cache) *Identity {
	cg := ParseCgroup(cgroupPath)
	if cg.ContainerID == "" {
		return &Identity{Source: bundle.IdentityNone, Reason: fmt.Sprintf("cgroup %q is not a container's", cgroupPath)}
	}
	id := &Identity{
		Container: &bundle.Container{ID: cg.ContainerID, Runtime: cg.Runtime},
		Source:    bundle.IdentityCgroup,
	}
	if cg.PodUID != "" {
		id.Pod = &bundle.Pod{UID: cg.PodUID}
	}
	defer id.noteNested(cg)
	if cg.Runtime == "docker" || cg.Runtime == "podman" {
		id.Reason = cg.Runtime + " containers have no CRI API to ask"
		return id
	}
	if cached, ok := cache.Get(cg.ContainerID); ok && samePod(cg, cached) {
		*id = *cached
		return id
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := id.fromCRI(ctx, endpoint, cg.PodUID); err != nil {
		id.Reason = err.Error()
	}
	cache.Put(id)
	return id
}

// samePod reports whether a cached identity belongs to the pod the cgroup
// names (any, when the cgroup names none).
func samePod(cg Cgroup, id *Identity) bool {
	return cg.PodUID == "" || (id.Pod != nil && id.Pod.UID == cg.PodUID)
}

// noteNested records, after the rest, that the process was in a cgroup the
// container made below its own: it is that container's, whatever the name.
func (id *Identity) noteNested(cg Cgroup) {
	if cg.Nested == "" {
		return
	}
	note := fmt.Sprintf("the process was in %q, a cgroup the container made below its own", cg.Nested)
	if id.Reason != "" {
		note = id.Reason + "; " + note
	}
	id.Reason = note
}

// checkPodUID refuses a runtime's answer about a container whose pod is
// not the one its cgroup names: the cgroup path is the kernel's and cannot
// be forged, the runtime's labels answer for whatever id was asked, so a
// mismatch means the id was not this container's to claim.
func checkPodUID(cgroupUID string, labels map[string]string) error {
	if cgroupUID == "" || labels[labelPodUID] == cgroupUID {
		return nil
	}
	return fmt.Errorf("the runtime says container is pod %q's but its cgroup is pod %q's: its answer (names, log) is not used", labels[labelPodUID], cgroupUID)
}

// endpointPath returns the socket path of a unix:// endpoint, or the
// first default one that exists.
func endpointPath(endpoint string) (string, error) {
	candidates := DefaultEndpoints
	if endpoint != "" {
		candidates = []string{endpoint}
	}
	for _, e := range candidates {
		p, ok := strings.CutPrefix(e, "unix://")
		if !ok {
			return "", fmt.Errorf("CRI endpoint %q: only unix:// sockets are supported", e)
		}
		if _, err := os.Stat(p); err == nil || endpoint != "" {
			return p, nil
		}
	}
	return "", fmt.Errorf("no CRI socket at %s; set identity.cri_endpoint", strings.Join(DefaultEndpoints, ", "))
}

// fromCRI fills the identity from the runtime, unless the runtime places
// the container in another pod than podUID (from the cgroup; empty when it
// names none).
func (id *Identity) fromCRI(ctx context.Context, endpoint, podUID string) error {
	sock, err := endpointPath(endpoint)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("passthrough:///"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		return fmt.Errorf("CRI %s: %w", sock, err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	st, err := rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id.Container.ID})
	if err != nil {
		return fmt.Errorf("CRI %s: container %s: %w", sock, id.Container.ID, err)
	}
	cs := st.GetStatus()
	if cs == nil {
		return errors.New("CRI: empty container status")
	}
	labels := cs.GetLabels()
	if err := checkPodUID(podUID, labels); err != nil {
		return fmt.Errorf("CRI %s: container %s: %w", sock, id.Container.ID, err)
	}
	id.Source = bundle.IdentityCRI
	id.Container.Name = cs.GetMetadata().GetName()
	id.Container.Image = cs.GetImage().GetImage()
	if id.Container.Image == "" {
		id.Container.Image = cs.GetImageRef()
	}
	id.LogPath = cs.GetLogPath()
	if v, err := rt.Version(ctx, &runtimeapi.VersionRequest{}); err == nil && v.GetRuntimeName() != "" {
		id.Container.Runtime = v.GetRuntimeName()
	}
	pod := &bundle.Pod{Name: labels[labelPodName], Namespace: labels[labelPodNamespace], UID: labels[labelPodUID]}
	if pod.Name == "" && pod.UID == "" {
		id.Reason = "the container has no pod labels: not made by kubelet"
		return nil
	}
	id.Pod = pod
	// The pod's own labels say which controller made it; its corecatch.io/
	// annotations what to do with its crash.
	podLabels := map[string]string{}
	list, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{Id: id.Container.ID}})
	if err == nil && len(list.GetContainers()) == 1 {
		sb, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: list.GetContainers()[0].GetPodSandboxId()})
		if err == nil {
			podLabels = sb.GetStatus().GetLabels()
			for k, v := range sb.GetStatus().GetAnnotations() {
				if strings.HasPrefix(k, annotationPrefix) {
					if pod.Annotations == nil {
						pod.Annotations = map[string]string{}
					}
					pod.Annotations[k] = v
				}
			}
		}
	}
	id.Workload, id.Reason = Workload(pod.Name, podLabels)
	for k, v := range podLabels {
		if !strings.HasPrefix(k, "io.kubernetes.") {
			if pod.Labels == nil {
				pod.Labels = map[string]string{}
			}
			pod.Labels[k] = v
		}
	}
	return nil
}

// LogTail returns the last max bytes of the container's log file.
func (id *Identity) LogTail(max int64) ([]byte, error) {
	if id.LogPath == "" {
		return nil, nil
	}
	f, err := os.Open(id.LogPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() > max {
		if _, err := f.Seek(st.Size()-max, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(io.LimitReader(f, max))
}
