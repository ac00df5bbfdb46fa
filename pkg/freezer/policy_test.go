package freezer

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestPolicy(t *testing.T) {
	const (
		id   = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		uid  = "8e1e6f4c-6b1a-4a2e-9d3c-0f5e2b7a9c41"
		uidu = "8e1e6f4c_6b1a_4a2e_9d3c_0f5e2b7a9c41"
		self = "/kubepods/burstable/pod" + uid + "/fedcba9876543210"
	)
	def := DefaultPolicy(self)
	custom := Policy{
		Allow: []*regexp.Regexp{regexp.MustCompile(`^/corecatch-test-[0-9]+$`), regexp.MustCompile(`^/default/`)},
		Deny:  []*regexp.Regexp{regexp.MustCompile(`^/default/keep`)},
		Self:  "/system.slice/corecatch.service",
	}
	sysd := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidu + ".slice/"
	for _, c := range []struct {
		p      Policy
		path   string
		reason string // "" means allowed
	}{
		{def, "/", "root cgroup"},
		{def, "", "not a cgroup path"},
		{def, "default/x", "not a cgroup path"},
		{def, "/default/../x", "not a cgroup path"},
		{def, "/default/x/", "not a cgroup path"},
		{def, self, "the agent's own cgroup"},
		{def, "/kubepods/burstable/pod" + uid, "the agent's own cgroup"},
		{def, "/kubepods/burstable", "the agent's own cgroup"},
		{def, "/kubepods", "the agent's own cgroup"},
		{def, "/kubepods/burstable/pod" + uid + "/" + id, ""}, // the agent's sidecar
		{def, "/system.slice", "system service"},
		{def, "/system.slice/containerd.service", "system service"},
		{def, "/system.slice/docker-" + id + ".scope", "system service"},
		{def, "/user.slice/user-0.slice/session-3.scope", "system service"},
		{def, "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id + ".scope", "system service"},
		{def, "/init.scope", "system service"},
		{def, "/" + holdName, "the holding cgroup"},
		// kubelet, cgroupfs driver.
		{def, "/kubepods/besteffort/pod" + uid + "/" + id, ""},
		{def, "/kubepods/pod" + uid + "/" + id, ""}, // guaranteed
		{def, "/kubepods/besteffort", `denied by ^/kubepods(\.slice)?(/[^/]+)?$`},
		{def, "/kubepods/pod" + uid, `denied by ^/kubepods(\.slice)?(/[^/]+)?$`},
		{def, "/kubepods/besteffort/pod" + uid, "not a container cgroup"},
		{def, "/kubepods/besteffort/pod" + uid + "/" + id + "/sub", "not a container cgroup"},
		// kubelet, systemd driver.
		{def, sysd + "cri-containerd-" + id + ".scope", ""},
		{def, sysd + "crio-" + id + ".scope", ""},
		{def, sysd + "crio-" + id + ".scope/container", ""},
		{def, sysd + "docker-" + id + ".scope", ""},
		{def, "/kubepods.slice/kubepods-pod" + uidu + ".slice/cri-containerd-" + id + ".scope", ""},
		{def, sysd + "crio-conmon-" + id + ".scope", "a systemd unit, not a container"},
		{def, strings.TrimSuffix(sysd, "/"), "a systemd unit, not a container"},
		{def, "/kubepods.slice/kubepods-burstable.slice", `denied by ^/kubepods(\.slice)?(/[^/]+)?$`},
		{def, "/kubepods.slice", `denied by ^/kubepods(\.slice)?(/[^/]+)?$`},
		// docker, podman, containerd.
		{def, "/docker/" + id, ""},
		{def, "/docker", "not a container cgroup"},
		{def, "/machine.slice/libpod-" + id + ".scope", ""},
		{def, "/machine.slice/libpod-" + id + ".scope/container", ""},
		{def, "/default/mycontainer", ""},
		{def, "/k8s.io/" + id, ""},
		{def, "/default", "not a container cgroup"},
		{def, "/default/mycontainer/sub", "not a container cgroup"},
		// Host units outside system.slice and user.slice look like
		// containerd's /<namespace>/<id>; none is a container.
		{def, "/runtime.slice/kubelet.service", "a systemd unit, not a container"},
		{def, "/runtime.slice/containerd.service", "a systemd unit, not a container"},
		{def, "/machine.slice/machine-qemu-1-vm.scope", "a systemd unit, not a container"},
		{def, "/machine.slice/libpod-conmon-" + id + ".scope", "a systemd unit, not a container"},
		{def, "/machine.slice/systemd-nspawn@web.service", "a systemd unit, not a container"},
		{def, "/app.slice/app-worker.slice", "a systemd unit, not a container"},
		{def, "/system-getty.slice/getty@tty1.service", "a systemd unit, not a container"},
		{def, "/podruntime.slice/run-r1.mount", "a systemd unit, not a container"},
		{def, "/default/" + strings.Repeat("x", 77), "not a container cgroup"},
		{def, "/default/" + strings.Repeat("x", 76), ""},
		{def, "/moby/" + id, ""},
		{def, "/custom.slice/libpod-" + id + ".scope", ""},
		// A caller's own lists.
		{custom, "/corecatch-test-42", ""},
		{custom, "/default/x/y", ""},
		{custom, "/default/keep-me", "denied by ^/default/keep"},
		{custom, "/docker/" + id, "not a container cgroup"},
		{custom, "/system.slice", "the agent's own cgroup"},
		{custom, "/system.slice/other.service", "system service"},
		{custom, "/", "root cgroup"},
	} {
		err := c.p.Check(c.path)
		got := ""
		if err != nil {
			got = err.Error()
			var d *DeniedError
			if !errors.As(err, &d) {
				t.Errorf("Check(%q) returned %T, want *DeniedError", c.path, err)
			}
		}
		if got != c.reason {
			t.Errorf("Check(%q) = %q, want %q", c.path, got, c.reason)
		}
	}
}
