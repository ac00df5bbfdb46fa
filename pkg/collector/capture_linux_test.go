package collector

import (
	"testing"
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
