// Package identity answers an SRE's first question about a crash: whose is
// it? It reads the crasher's cgroup path, which the kernel keeps for every
// process and containers cannot forge, for the runtime, the container id and
// the pod uid, and asks the runtime's CRI API for names, image, namespace and
// the owning workload. It never uses the hostname (%h): pods share names
// across namespaces, and hostNetwork pods carry the node's.
package identity

import (
	"path"
	"regexp"
	"strings"
)

// Cgroup is what a cgroup path alone says about a process.
type Cgroup struct {
	// Runtime is "containerd", "cri-o", "docker" or "podman"; empty for a
	// process that runs in no container.
	Runtime string
	// ContainerID is the runtime's id of the container.
	ContainerID string
	// PodUID is the Kubernetes pod's uid, for kubelet-made cgroups.
	PodUID string
	// Namespace is containerd's namespace for containers it runs itself
	// (/<namespace>/<id>), not a Kubernetes namespace.
	Namespace string
	// Nested is the path below the container's cgroup where the process
	// was, when the container made cgroups of its own; empty otherwise.
	Nested string
}

// Every pattern is anchored at the root of the hierarchy, in the layout
// kubelet or the runtime makes: a container may create cgroups below its
// own (with a delegated or writable cgroupfs), and a name it picks there,
// such as "docker-<another container's id>.scope", must never make it pass
// for that other container. A process in such a nested cgroup is the
// outer container's, and Cgroup.Nested says where below it it was.
var (
	// kubelet's cgroupfs driver: /kubepods[/<qos>]/pod<uid>/<id> (CRI-O
	// names it crio-<id>). A pod's uid is a UUID, or for a static pod
	// (kubelet's manifests directory) the 32 hex digits of its manifest's
	// hash.
	kubeCgroupfs = regexp.MustCompile(`^/kubepods(?:/(?:besteffort|burstable|guaranteed))?/pod([0-9a-f-]{36}|[0-9a-f]{32})/(crio-)?([0-9a-f]{64})(/.*)?$`)
	// kubelet's systemd driver: .../kubepods[-<qos>]-pod<uid with _>.slice/<runtime>-<id>.scope,
	// with crun's /container leaf on cgroup v2.
	kubeSystemd = regexp.MustCompile(`^/kubepods\.slice(?:/kubepods-(?:besteffort|burstable|guaranteed)\.slice)?/kubepods(?:-(?:besteffort|burstable|guaranteed))?-pod([0-9a-f_]{36}|[0-9a-f]{32})\.slice/(cri-containerd|crio|docker)-([0-9a-f]{64})\.scope(/.*)?$`)
	// docker's cgroupfs and systemd drivers.
	docker     = regexp.MustCompile(`^/docker/([0-9a-f]{64})(/.*)?$`)
	dockerUnit = regexp.MustCompile(`^/system\.slice/docker-([0-9a-f]{64})\.scope(/.*)?$`)
	// podman: rootful (machine.slice), rootless (the user's manager) and
	// its cgroupfs manager.
	podman = regexp.MustCompile(`^(?:/machine\.slice|/user\.slice/user-[0-9]+\.slice/user@[0-9]+\.service(?:/user\.slice)?)/libpod-([0-9a-f]{64})\.scope(/.*)?$|^/libpod_parent/libpod-([0-9a-f]{64})(/.*)?$`)
	// containerd without Kubernetes: /<namespace>/<id>, both containerd
	// identifiers.
	containerd = regexp.MustCompile(`^/([A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)/([A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)$`)
	// systemd units, which containerd's names never are: a host service
	// such as /runtime.slice/kubelet.service is no container.
	systemdUnit = regexp.MustCompile(`\.(?:slice|service|scope|socket|mount|automount|swap|target|path|timer|device)$`)
)

// runtimeOfUnit maps the systemd driver's scope prefix to the runtime.
var runtimeOfUnit = map[string]string{"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}

// nested returns the part of a path below a container's cgroup, without
// crun's /container leaf, which is the container itself.
func nested(rest string) string {
	if rest == "/container" {
		return ""
	}
	return rest
}

// ParseCgroup reads a cgroup path as /proc/PID/cgroup shows it (the "0::"
// line, or a v1 line on v1-only hosts). Paths read inside a cgroup
// namespace start with "/.." components up to that namespace's root; they
// are dropped, since container cgroups are recognised by their own names.
func ParseCgroup(p string) Cgroup {
	for strings.HasPrefix(p, "/..") {
		p = strings.TrimPrefix(p, "/..")
	}
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	p = path.Clean(p)
	if m := kubeCgroupfs.FindStringSubmatch(p); m != nil {
		cg := Cgroup{PodUID: m[1], ContainerID: m[3], Nested: m[4]}
		if m[2] != "" {
			cg.Runtime = "cri-o"
		}
		return cg
	}
	if m := kubeSystemd.FindStringSubmatch(p); m != nil {
		return Cgroup{PodUID: strings.ReplaceAll(m[1], "_", "-"), Runtime: runtimeOfUnit[m[2]], ContainerID: m[3], Nested: nested(m[4])}
	}
	if m := docker.FindStringSubmatch(p); m != nil {
		return Cgroup{Runtime: "docker", ContainerID: m[1], Nested: m[2]}
	}
	if m := dockerUnit.FindStringSubmatch(p); m != nil {
		return Cgroup{Runtime: "docker", ContainerID: m[1], Nested: m[2]}
	}
	if m := podman.FindStringSubmatch(p); m != nil {
		if m[1] != "" {
			return Cgroup{Runtime: "podman", ContainerID: m[1], Nested: nested(m[2])}
		}
		return Cgroup{Runtime: "podman", ContainerID: m[3], Nested: m[4]}
	}
	if top := strings.SplitN(p, "/", 3)[1]; top == "system.slice" || top == "user.slice" || top == "init.scope" || top == "kubepods" || top == "kubepods.slice" || top == "machine.slice" {
		return Cgroup{}
	}
	if m := containerd.FindStringSubmatch(p); m != nil && len(m[2]) <= 76 && !systemdUnit.MatchString(m[1]) && !systemdUnit.MatchString(m[2]) {
		return Cgroup{Runtime: "containerd", Namespace: m[1], ContainerID: m[2]}
	}
	return Cgroup{}
}

// ProcCgroup returns a process's cgroup from a /proc/PID/cgroup text: the
// v2 ("0::") path, unless it is the root (v1-only hosts, or hybrid ones
// whose runtime places containers in v1 hierarchies only), then the v1
// freezer path.
func ProcCgroup(data []byte) string {
	v2, v1 := "", ""
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "freezer" {
				v1 = parts[2]
			}
		}
	}
	if (v2 == "" || v2 == "/") && v1 != "" {
		return v1
	}
	return v2
}
