package harness

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// Layout is what an image of corecatch holds, as the Dockerfile says it:
// where the binary goes, how the container starts, and the Debian packages
// installed beside it (gdb, elfutils, ...).
type Layout struct {
	Binary     string
	Entrypoint []string
	Cmd        []string
	Debs       []string
}

// DockerfileLayout reads the layout from the Dockerfile's final stage:
// the COPY of the binary, ENTRYPOINT, CMD and the apt-get install line.
func DockerfileLayout() (Layout, error) {
	data, err := os.ReadFile(filepath.Join(RepoRoot(), "Dockerfile"))
	if err != nil {
		return Layout{}, err
	}
	df := string(data)
	var l Layout
	if m := regexp.MustCompile(`(?m)^COPY --from=build /out/corecatch (\S+)$`).FindStringSubmatch(df); m != nil {
		l.Binary = m[1]
	}
	for _, f := range []struct {
		key string
		dst *[]string
	}{{"ENTRYPOINT", &l.Entrypoint}, {"CMD", &l.Cmd}} {
		if m := regexp.MustCompile(`(?m)^` + f.key + ` (\[.*\])$`).FindStringSubmatch(df); m != nil {
			if err := json.Unmarshal([]byte(m[1]), f.dst); err != nil {
				return l, fmt.Errorf("Dockerfile %s: %w", f.key, err)
			}
		}
	}
	if m := regexp.MustCompile(`apt-get install -y --no-install-recommends ([^&\\]+)`).FindStringSubmatch(df); m != nil {
		l.Debs = strings.Fields(m[1])
	}
	if l.Binary == "" || len(l.Entrypoint) == 0 || len(l.Debs) == 0 {
		return l, fmt.Errorf("the Dockerfile's final stage has no COPY of the binary, ENTRYPOINT or apt-get install: %+v", l)
	}
	return l, nil
}

// CorecatchRootfs builds the tree of corecatch's image without Docker, in
// dir/rootfs: the binary at the Dockerfile's path, and the files of the
// Dockerfile's Debian packages and of everything they depend on, taken
// from this Debian host's installed packages (the Dockerfile's base is the
// same Debian release), with the loader's cache made for that tree. It
// returns the rootfs and the layout.
func CorecatchRootfs(t testing.TB, dir, bin string) (string, Layout) {
	t.Helper()
	l, err := DockerfileLayout()
	if err != nil {
		t.Fatal(err)
	}
	pkgs, err := debClosure(l.Debs)
	if err != nil {
		t.Fatalf("%v: install them (make deps)", err)
	}
	out, err := exec.Command("dpkg-query", append([]string{"-L"}, pkgs...)...).Output()
	if err != nil {
		t.Fatalf("dpkg-query -L: %v", err)
	}
	root := filepath.Join(dir, "rootfs")
	// The host's merged-/usr links (/lib -> usr/lib, ...), as Debian's
	// images have them.
	for _, top := range []string{"bin", "sbin", "lib", "lib64"} {
		if target, err := os.Readlink("/" + top); err == nil {
			if err := os.MkdirAll(root, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(target, filepath.Join(root, top)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, p := range strings.Split(string(out), "\n") {
		if p == "" || p[0] != '/' || strings.HasPrefix(p, "/usr/share/doc") || strings.HasPrefix(p, "/usr/share/man") {
			continue
		}
		if err := copyInto(root, p); err != nil {
			t.Fatal(err)
		}
	}
	if err := copyInto(root, "/etc/ssl/certs/ca-certificates.crt"); err != nil { // made by update-ca-certificates, owned by no package
		t.Fatal(err)
	}
	for _, d := range []string{"tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("ldconfig", "-r", root).CombinedOutput(); err != nil {
		t.Fatalf("ldconfig -r %s: %v\n%s", root, err, out)
	}
	dst := filepath.Join(root, l.Binary)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(bin, dst, 0o755); err != nil {
		t.Fatal(err)
	}
	return root, l
}

// copyInto copies the host's file, symlink or directory at p (not a
// directory's contents) to root+p, its directory's host path resolved
// through the host's links.
func copyInto(root, p string) error {
	parent, err := filepath.EvalSymlinks(filepath.Dir(p))
	if err != nil {
		return nil // a package's file that is gone (diverted, removed)
	}
	src := filepath.Join(parent, filepath.Base(p))
	info, err := os.Lstat(src)
	if err != nil {
		return nil
	}
	dst := filepath.Join(root, src)
	switch {
	case info.IsDir():
		return os.MkdirAll(dst, info.Mode().Perm()|0o700)
	case info.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		os.Remove(dst)
		return os.Symlink(target, dst)
	case info.Mode().IsRegular():
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return copyFile(src, dst, info.Mode().Perm())
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// debClosure returns the installed packages pkgs need: themselves and
// their Depends and Pre-Depends, recursively, virtual packages resolved to
// the installed package that provides them.
func debClosure(pkgs []string) ([]string, error) {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Status}\t${Package}\t${Provides}\t${Depends}, ${Pre-Depends}\n").Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-query: %w", err)
	}
	deps, provider := map[string]string{}, map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) != 4 || f[0] != "installed" {
			continue
		}
		deps[f[1]] = f[3]
		provider[f[1]] = f[1]
		for _, p := range strings.Split(f[2], ",") {
			if name := debName(p); name != "" {
				if _, ok := provider[name]; !ok {
					provider[name] = f[1]
				}
			}
		}
	}
	var closure []string
	seen := map[string]bool{}
	todo := slices.Clone(pkgs)
	for len(todo) > 0 {
		name := todo[len(todo)-1]
		todo = todo[:len(todo)-1]
		p, ok := provider[name]
		if !ok {
			if slices.Contains(pkgs, name) {
				return nil, fmt.Errorf("the Dockerfile's package %s is not installed here", name)
			}
			continue
		}
		if seen[p] {
			continue
		}
		seen[p] = true
		closure = append(closure, p)
		for _, dep := range strings.Split(deps[p], ",") {
			// The first installed alternative of "a | b".
			for _, alt := range strings.Split(dep, "|") {
				if name := debName(alt); provider[name] != "" {
					todo = append(todo, name)
					break
				}
			}
		}
	}
	slices.Sort(closure)
	return closure, nil
}

// debName is the package name of a relation ("libc6:amd64 (>= 2.34)").
func debName(rel string) string {
	name, _, _ := strings.Cut(strings.TrimSpace(rel), " ")
	name, _, _ = strings.Cut(name, ":")
	return name
}

// WriteOCIArchive writes rootfs as a one-layer OCI image archive named ref
// (containerd's io.containerd.image.name annotation) that starts with
// entrypoint and cmd, for `ctr images import`.
func WriteOCIArchive(file, rootfs, ref string, entrypoint, cmd []string) error {
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	if err := lw.AddFS(os.DirFS(rootfs)); err != nil {
		return fmt.Errorf("tar %s: %w", rootfs, err)
	}
	if err := lw.Close(); err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
	put := func(name string, data []byte) error {
		if err := aw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := aw.Write(data)
		return err
	}
	var werr error
	blob := func(mediaType string, data []byte) map[string]any {
		digest := fmt.Sprintf("%x", sha256.Sum256(data))
		if err := put("blobs/sha256/"+digest, data); err != nil && werr == nil {
			werr = err
		}
		return map[string]any{"mediaType": mediaType, "digest": "sha256:" + digest, "size": len(data)}
	}
	mustJSON := func(v any) []byte {
		data, _ := json.Marshal(v) // maps of strings and numbers
		return data
	}
	layerDesc := blob("application/vnd.oci.image.layer.v1.tar", layer.Bytes())
	config := blob("application/vnd.oci.image.config.v1+json", mustJSON(map[string]any{
		"architecture": runtime.GOARCH, "os": "linux",
		"config": map[string]any{"Entrypoint": entrypoint, "Cmd": cmd, "Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []any{layerDesc["digest"]}},
	}))
	manifest := blob("application/vnd.oci.image.manifest.v1+json", mustJSON(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": config, "layers": []any{layerDesc},
	}))
	// containerd names the image by this annotation, whole.
	manifest["annotations"] = map[string]string{"io.containerd.image.name": ref}
	if werr != nil {
		return werr
	}
	if err := put("index.json", mustJSON(map[string]any{"schemaVersion": 2, "manifests": []any{manifest}})); err != nil {
		return err
	}
	if err := put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	return aw.Close()
}
