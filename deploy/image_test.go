package deploy_test

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/corecatch/corecatch/test/harness"
)

// TestImageLayout builds corecatch's image as the real-cluster test does,
// without Docker, and checks it has the Dockerfile's layout: the binary at
// the Dockerfile's path, its entrypoint and command, and every executable of
// the Dockerfile's Debian packages with what it loads (as root, gdb runs
// in the tree with its Python).
func TestImageLayout(t *testing.T) {
	dir := t.TempDir()
	root, l := harness.CorecatchRootfs(t, dir, harness.Binary(t))
	if out, err := exec.Command(filepath.Join(root, l.Binary), "version").CombinedOutput(); err != nil {
		t.Errorf("%s version: %v\n%s", l.Binary, err, out)
	}
	for _, deb := range l.Debs {
		out, err := exec.Command("dpkg-query", "-L", deb).Output()
		if err != nil {
			t.Fatalf("dpkg-query -L %s: %v", deb, err)
		}
		n := 0
		for _, p := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(p, "/usr/bin/") || strings.HasPrefix(p, "/etc/ssl/") {
				n++
				if _, err := os.Stat(filepath.Join(root, p)); err != nil {
					t.Errorf("package %s's %s is not in the image: %v", deb, p, err)
				}
			}
		}
		if n == 0 && deb != "ca-certificates" {
			t.Errorf("package %s has no executable in /usr/bin", deb)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "etc/ssl/certs/ca-certificates.crt")); err != nil {
		t.Errorf("no CA bundle for the S3 store's TLS: %v", err)
	}
	archive := filepath.Join(dir, "image.tar")
	if err := harness.WriteOCIArchive(archive, root, "corecatch:test", l.Entrypoint, l.Cmd); err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Config struct{ Entrypoint, Cmd []string }
	}
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Size < 1<<20 && strings.HasPrefix(h.Name, "blobs/") {
			data, _ := io.ReadAll(tr)
			if strings.Contains(string(data), `"rootfs"`) {
				if err := json.Unmarshal(data, &cfg); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	if !slices.Equal(cfg.Config.Entrypoint, l.Entrypoint) || !slices.Equal(cfg.Config.Cmd, l.Cmd) {
		t.Errorf("image config %+v, want the Dockerfile's entrypoint %q and cmd %q", cfg.Config, l.Entrypoint, l.Cmd)
	}
	if os.Geteuid() == 0 {
		out, err := exec.Command("chroot", root, "/usr/bin/gdb", "--batch", "-nx", "-ex", "python print(6*7)").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "42" {
			t.Errorf("gdb in the image: %v\n%s", err, out)
		}
	}
}
