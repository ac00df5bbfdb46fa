package collector

import (
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestProcRequest reads this process as the coredump socket's intake reads
// a crasher: its ids, name and RLIMIT_CORE, with the eBPF event's facts,
// both from its pidfd (the event gives the name and namespace pid) and
// from /proc/PID/status (no event).
func TestProcRequest(t *testing.T) {
	at := time.Unix(1700000000, 5e8)
	for _, tc := range []struct {
		name string
		req  Request
	}{
		{"event", Request{PID: os.Getpid(), TID: 7, Signal: 11, Time: at, NSPID: os.Getpid(), Comm: []byte("crasher"), CommExact: true}},
		{"status", Request{PID: os.Getpid(), TID: 7, Signal: 11, Time: at}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := procRequest(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if r.PID != os.Getpid() || r.TID != 7 || r.Signal != 11 || !r.Time.Equal(time.Unix(1700000000, 0)) {
				t.Errorf("request %+v: the event's facts not kept", r)
			}
			if r.UID != os.Getuid() || r.GID != os.Getgid() || len(r.Comm) == 0 || r.Dumpable != 1 || r.NSPID != os.Getpid() {
				t.Errorf("request %+v: uid %d gid %d, ns pid %d, a name and dumpable 1 wanted", r, os.Getuid(), os.Getgid(), os.Getpid())
			}
			if tc.req.CommExact && string(r.Comm) != "crasher" {
				t.Errorf("name %q: the event's was not kept", r.Comm)
			}
			if r.RlimitCore < -1 {
				t.Errorf("rlimit %d", r.RlimitCore)
			}
		})
	}
}

// TestRlimitCore: the limit prlimit gives is the one /proc/PID/limits
// says, unlimited as -1.
func TestRlimitCore(t *testing.T) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &lim); err != nil {
		t.Fatal(err)
	}
	want := int64(-1)
	if lim.Cur != unix.RLIM_INFINITY {
		want = int64(lim.Cur)
	}
	dir := fmt.Sprintf("/proc/%d", os.Getpid())
	if got := rlimitCore(os.Getpid(), dir); got != want {
		t.Errorf("rlimitCore = %d, want %d", got, want)
	}
	if got := rlimitCore(-5, dir); got != want {
		t.Errorf("rlimitCore from /proc/PID/limits = %d, want %d", got, want)
	}
}
