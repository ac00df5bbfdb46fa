package identity

import (
	"strings"
	"testing"
)

// TestParseCgroup covers each runtime's and driver's cgroup naming, as
// /proc/PID/cgroup shows it on real hosts.
func TestParseCgroup(t *testing.T) {
	id := strings.Repeat("0123456789abcdef", 4)
	uid := "8f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8"
	uidU := strings.ReplaceAll(uid, "-", "_")
	// A static pod's uid: kubelet hashes its manifest (no dashes, so the
	// systemd driver spells it the same).
	static := "6d5f8e0c2b1a49387f6e5d4c3b2a1908"
	for _, tc := range []struct {
		name, path string
		want       Cgroup
	}{
		{"systemd driver, burstable, containerd",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id + ".scope",
			Cgroup{Runtime: "containerd", ContainerID: id, PodUID: uid}},
		{"systemd driver, besteffort, cri-o with crun's leaf",
			"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id + ".scope/container",
			Cgroup{Runtime: "cri-o", ContainerID: id, PodUID: uid}},
		{"systemd driver, guaranteed (no QoS level), docker",
			"/kubepods.slice/kubepods-pod" + uidU + ".slice/docker-" + id + ".scope",
			Cgroup{Runtime: "docker", ContainerID: id, PodUID: uid}},
		{"cgroupfs driver, burstable", "/kubepods/burstable/pod" + uid + "/" + id, Cgroup{ContainerID: id, PodUID: uid}},
		{"cgroupfs driver, guaranteed", "/kubepods/pod" + uid + "/" + id, Cgroup{ContainerID: id, PodUID: uid}},
		{"cgroupfs driver, static pod", "/kubepods/burstable/pod" + static + "/" + id, Cgroup{ContainerID: id, PodUID: static}},
		{"systemd driver, static pod",
			"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice/cri-containerd-" + id + ".scope",
			Cgroup{Runtime: "containerd", ContainerID: id, PodUID: static}},
		{"a uid of neither shape is no pod", "/kubepods/burstable/pod" + static[:31] + "/" + id, Cgroup{}},
		{"plain containerd", "/default/myapp", Cgroup{Runtime: "containerd", Namespace: "default", ContainerID: "myapp"}},
		{"containerd k8s.io namespace", "/k8s.io/" + id, Cgroup{Runtime: "containerd", Namespace: "k8s.io", ContainerID: id}},
		{"docker cgroupfs", "/docker/" + id, Cgroup{Runtime: "docker", ContainerID: id}},
		{"docker systemd", "/system.slice/docker-" + id + ".scope", Cgroup{Runtime: "docker", ContainerID: id}},
		{"podman", "/machine.slice/libpod-" + id + ".scope/container", Cgroup{Runtime: "podman", ContainerID: id}},
		{"rootless podman", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope", Cgroup{Runtime: "podman", ContainerID: id}},
		{"podman's conmon is no container", "/machine.slice/libpod-conmon-" + id + ".scope", Cgroup{}},
		{"inside a cgroup namespace", "/../../kubepods/burstable/pod" + uid + "/" + id, Cgroup{ContainerID: id, PodUID: uid}},
		{"a pod's own cgroup is no container", "/kubepods/burstable/pod" + uid, Cgroup{}},
		{"a QoS cgroup is no container", "/kubepods/burstable", Cgroup{}},
		{"host root", "/", Cgroup{}},
		{"host service", "/system.slice/sshd.service", Cgroup{}},
		{"login session", "/user.slice/user-0.slice/session-3.scope", Cgroup{}},
		{"init", "/init.scope", Cgroup{}},
		{"empty", "", Cgroup{}},
		{"cri-o, cgroupfs driver", "/kubepods/besteffort/pod" + uid + "/crio-" + id, Cgroup{Runtime: "cri-o", ContainerID: id, PodUID: uid}},
		{"podman's cgroupfs manager", "/libpod_parent/libpod-" + id, Cgroup{Runtime: "podman", ContainerID: id}},
		{"a host service in a slice of its own", "/runtime.slice/kubelet.service", Cgroup{}},
		{"a scope in a slice of its own", "/machine.slice/machine-qemu.scope", Cgroup{}},
	} {
		if got := ParseCgroup(tc.path); got != tc.want {
			t.Errorf("%s: ParseCgroup(%q) = %+v, want %+v", tc.name, tc.path, got, tc.want)
		}
	}
}

// TestProcCgroup picks the cgroup that names a container from a
// /proc/PID/cgroup text: the v2 path, or the v1 freezer's where the v2 path
// is the root (v1-only runtimes on hybrid hosts) or absent.
func TestProcCgroup(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"0::/kubepods/burstable/pod1/c1\n", "/kubepods/burstable/pod1/c1"},
		{"12:freezer:/default/x\n1:name=systemd:/default/x\n0::/default/x\n", "/default/x"},
		{"12:freezer:/v1only\n3:cpu:/other\n", "/v1only"},
		{"12:freezer:/default/x\n0::/\n", "/default/x"},
		{"0::/with:colons\n", "/with:colons"},
		{"", ""},
	} {
		if got := ProcCgroup([]byte(tc.text)); got != tc.want {
			t.Errorf("ProcCgroup(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

// TestParseCgroupHostileNesting builds the cgroups a container can make
// below its own (with a writable or delegated cgroupfs), named after
// another container of another pod: each resolves to the outer container,
// with the nesting recorded, never to the container it names.
func TestParseCgroupHostileNesting(t *testing.T) {
	mine := strings.Repeat("a", 64)
	other := strings.Repeat("b", 64)
	uid := "11111111-2222-3333-4444-555555555555"
	uidU := strings.ReplaceAll(uid, "-", "_")
	outerFS := "/kubepods/burstable/pod" + uid + "/" + mine
	outerSD := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + mine + ".scope"
	for _, tc := range []struct {
		name, path string
		want       Cgroup
	}{
		{"crio scope below a cgroupfs container", outerFS + "/crio-" + other + ".scope",
			Cgroup{ContainerID: mine, PodUID: uid, Nested: "/crio-" + other + ".scope"}},
		{"docker scope below a systemd container", outerSD + "/docker-" + other + ".scope",
			Cgroup{Runtime: "containerd", ContainerID: mine, PodUID: uid, Nested: "/docker-" + other + ".scope"}},
		{"libpod scope with crun's leaf below", outerSD + "/x/libpod-" + other + ".scope/container",
			Cgroup{Runtime: "containerd", ContainerID: mine, PodUID: uid, Nested: "/x/libpod-" + other + ".scope/container"}},
		{"a whole kubelet layout below", outerFS + "/kubepods/burstable/pod" + strings.Repeat("9", 8) + "-0000-0000-0000-000000000000/" + other,
			Cgroup{ContainerID: mine, PodUID: uid, Nested: "/kubepods/burstable/pod99999999-0000-0000-0000-000000000000/" + other}},
		{"docker's layout below a docker container", "/docker/" + mine + "/docker/" + other,
			Cgroup{Runtime: "docker", ContainerID: mine, Nested: "/docker/" + other}},
		{"a podman scope below a plain containerd container", "/default/app/libpod-" + other + ".scope", Cgroup{}},
		{"a docker scope in a host service", "/system.slice/foo.service/docker-" + other + ".scope", Cgroup{}},
		{"a crio scope in a login session", "/user.slice/user-0.slice/session-1.scope/crio-" + other + ".scope", Cgroup{}},
	} {
		if got := ParseCgroup(tc.path); got != tc.want {
			t.Errorf("%s: ParseCgroup(%q) = %+v, want %+v", tc.name, tc.path, got, tc.want)
		}
	}
}
