// Package freezer keeps a crashing container still while the kernel streams
// its core: the container's other processes, its files and its root
// filesystem stay as they were at the crash, for the bundle and for whoever
// debugs it. Freezing a cgroup that holds the dumping process cuts its core
// short (measured, v1 and v2 alike), so the crasher is first moved to a
// holding cgroup, and only then is the container's cgroup frozen. Policy
// keeps the freezer away from anything but containers.
package freezer

import (
	"path"
	"regexp"
	"strings"
)

// Policy decides which cgroups the freezer may freeze. Freezing the wrong
// cgroup stops a node service, a whole class of pods or the agent itself
// (which could then never thaw anything), so some cgroups are refused
// whatever Allow says: the root, system.slice, user.slice, init.scope, the
// holding cgroup, the agent's own cgroup and its ancestors. Deny wins over
// Allow; a path no Allow expression matches is refused too.
type Policy struct {
	// Allow holds expressions over the cgroup path (as /proc/PID/cgroup
	// shows it) of the cgroups that may be frozen: containers only, by
	// default.
	Allow []*regexp.Regexp
	// Deny holds expressions over the cgroup path that must never be
	// frozen even when Allow matches, for operators who know better.
	Deny []*regexp.Regexp
	// Self is the agent's own cgroup path: it and its ancestors are never
	// frozen, because a frozen agent cannot thaw.
	Self string
}

// DeniedError is the error Check returns: its text is the reason recorded
// for a cgroup left unfrozen, and its type tells a refusal by policy apart
// from a freeze that failed.
type DeniedError struct {
	Reason string
}

// Error returns the reason, as the agent records it.
func (e *DeniedError) Error() string { return e.Reason }

// holdName is the cgroup, directly under a hierarchy's root, that crashing
// processes are moved to so that freezing their container does not cut
// their cores. It is never frozen.
const holdName = "corecatch.hold"

// Container cgroup paths, as the runtimes name them. Each names one
// container, never a pod, a QoS class or a slice shared by many.
var defaultAllow = []string{
	// kubelet's cgroupfs driver: /kubepods[/qos]/pod<uid>/<container id>.
	`^/kubepods(/besteffort|/burstable|/guaranteed)?/pod[0-9a-f_-]+/[0-9A-Za-z_.-]+$`,
	// kubelet's systemd driver; crun adds a /container leaf on cgroup v2.
	`^/kubepods\.slice(/kubepods-(besteffort|burstable|guaranteed)\.slice)?/kubepods(-(besteffort|burstable|guaranteed))?-pod[0-9a-f_]+\.slice/(cri-containerd|crio|docker)-[0-9a-f]+\.scope(/container)?$`,
	// docker's cgroupfs driver.
	`^/docker/[0-9a-f]{64}$`,
	// podman (machine.slice or a custom parent; crun's /container leaf).
	`^(/[^/]+)*/libpod-[0-9a-f]{64}\.scope(/container)?$`,
	// containerd without Kubernetes: /<namespace>/<container id>, both
	// containerd identifiers (an id at most 76 characters; Check refuses
	// systemd unit names, which look alike).
	`^/[A-Za-z0-9]+([._-][A-Za-z0-9]+)*/[A-Za-z0-9]([._-]?[A-Za-z0-9]){0,75}$`,
}

// unitSuffix ends the name of a systemd unit; runtimeScope is the only kind
// of scope a runtime makes for a container.
var (
	unitSuffix   = regexp.MustCompile(`\.(slice|service|scope|socket|mount|automount|swap|target|path|timer|device)$`)
	runtimeScope = regexp.MustCompile(`^(cri-containerd|crio|docker|libpod)-[0-9a-f]{64}\.scope$`)
)

// hostUnit reports whether a cgroup path is, or lies inside, a systemd
// unit that no runtime made for a container: a service, socket, mount...,
// a scope other than a runtime's container scope, or a slice (which only
// groups others). A runtime's scope may lie inside slices.
func hostUnit(cgroupPath string) bool {
	parts := strings.Split(cgroupPath[1:], "/")
	for i, c := range parts {
		m := unitSuffix.FindStringSubmatch(c)
		switch {
		case m == nil:
		case m[1] == "slice":
			if i == len(parts)-1 {
				return true
			}
		case m[1] == "scope":
			if !runtimeScope.MatchString(c) {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// The containerd form above also matches kubelet's QoS and guaranteed-pod
// cgroups, which hold many containers.
var defaultDeny = []string{
	`^/kubepods(\.slice)?(/[^/]+)?$`,
}

// DefaultPolicy returns the policy that allows container cgroups only.
// self is the agent's own cgroup path as /proc/self/cgroup shows it in the
// hierarchy whose paths will be passed to Check.
func DefaultPolicy(self string) Policy {
	return Policy{Allow: compile(defaultAllow), Deny: compile(defaultDeny), Self: self}
}

func compile(exprs []string) []*regexp.Regexp {
	res := make([]*regexp.Regexp, len(exprs))
	for i, e := range exprs {
		res[i] = regexp.MustCompile(e)
	}
	return res
}

// Check returns nil when cgroupPath may be frozen, or a *DeniedError whose
// text says why not.
func (p Policy) Check(cgroupPath string) error {
	deny := func(reason string) error { return &DeniedError{Reason: reason} }
	switch {
	case !strings.HasPrefix(cgroupPath, "/") || path.Clean(cgroupPath) != cgroupPath:
		return deny("not a cgroup path")
	case cgroupPath == "/":
		return deny("root cgroup")
	case p.Self != "" && (p.Self == cgroupPath || strings.HasPrefix(p.Self, cgroupPath+"/")):
		return deny("the agent's own cgroup")
	case cgroupPath == "/"+holdName:
		return deny("the holding cgroup")
	}
	switch strings.SplitN(cgroupPath, "/", 3)[1] {
	case "system.slice", "user.slice", "init.scope":
		return deny("system service")
	}
	for _, re := range p.Deny {
		if re.MatchString(cgroupPath) {
			return deny("denied by " + re.String())
		}
	}
	if hostUnit(cgroupPath) {
		return deny("a systemd unit, not a container")
	}
	for _, re := range p.Allow {
		if re.MatchString(cgroupPath) {
			return nil
		}
	}
	return deny("not a container cgroup")
}
