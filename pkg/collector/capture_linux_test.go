package collector

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
)

func TestNSPID(t *testing.T) {
	for _, tc := range []struct {
		text string
		want int
	}{
		{"Name:\tx\nNSpid:\t4242\t17\t1\nPPid:\t1\n", 1},
		{"NSpid:\t4242\n", 4242},
		{"Name:\tx\n", 0},
	} {
		if got := nsPID([]byte(tc.text)); got != tc.want {
			t.Errorf("nsPID(%q) = %d, want %d", tc.text, got, tc.want)
		}
	}
}

func TestMountTypes(t *testing.T) {
	info := "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n" +
		"97 22 0:52 / /mnt/f rw,nosuid shared:50 - fuse.sshfs host:/ rw,user_id=0\n" +
		"98 22 0:53 / /mnt/n rw - nfs4 srv:/x rw\n" +
		"bogus line\n"
	got := mountTypes([]byte(info))
	want := map[int]string{22: "ext4", 97: "fuse.sshfs", 98: "nfs4"}
	if len(got) != len(want) {
		t.Fatalf("mountTypes = %v, want %v", got, want)
	}
	for id, fs := range want {
		if got[id] != fs {
			t.Errorf("mount %d: %q, want %q", id, got[id], fs)
		}
	}
	for fs, network := range map[string]bool{"fuse": true, "fuseblk": true, "fuse.sshfs": true, "nfs4": true, "cifs": true, "9p": true, "ceph": true,
		"ext4": false, "overlay": false, "tmpfs": false, "fusectl": false} {
		if isNetworkFS(fs) != network {
			t.Errorf("isNetworkFS(%q) = %v, want %v", fs, !network, network)
		}
	}
}

// TestStallReader: bytes the writer sends are read; once nothing comes for
// the stall bound the reader gives up, and stays given up.
func TestStallReader(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	sr := &stallReader{f: r, stall: 50 * time.Millisecond}
	w.Write([]byte("core"))
	buf := make([]byte, 16)
	if n, err := sr.Read(buf); err != nil || string(buf[:n]) != "core" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	if _, err := sr.Read(buf); !errors.Is(err, errStalled) {
		t.Fatalf("Read of a silent pipe = %v, want errStalled", err)
	}
	w.Write([]byte("late"))
	if _, err := sr.Read(buf); !errors.Is(err, errStalled) {
		t.Errorf("Read after the stall = %v, want errStalled still", err)
	}
}

// TestHsErrAfterAbort: a metadata-only capture looks for a JVM's error log
// only in a crash of SIGABRT, how a JVM that wrote one dies.
func TestHsErrAfterAbort(t *testing.T) {
	dir := t.TempDir()
	const ns = 4242
	if err := os.WriteFile(filepath.Join(dir, bundle.HsErrLog(ns)), []byte("# A fatal error has been detected\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "30")
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	for _, sig := range []unix.Signal{unix.SIGSEGV, unix.SIGABRT} {
		c := &capture{proc: fmt.Sprintf("/proc/%d", cmd.Process.Pid), meta: true, signal: int(sig), nsPID: ns}
		c.captureHsErr()
		if got, want := len(c.hsErr) > 0, sig == unix.SIGABRT; got != want {
			t.Errorf("%v: read the error log %v, want %v", sig, got, want)
		}
	}
}
