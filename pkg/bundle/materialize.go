package bundle

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"

	"github.com/klauspost/compress/zstd"
)

// Opener reads one file of a bundle by its bundle-relative name.
type Opener func(name string) (io.ReadCloser, error)

// Materialize writes a bundle into dir the way debuggers want it:
// dir/core (decompressed, sparse), dir/metadata.json, dir/proc/..., and
// dir/sysroot/ with every captured file at its original absolute path plus a
// symlink for each alias the loader used. All writes go through an os.Root
// on dir, so names from a hostile bundle cannot escape it.
func Materialize(dir string, m *Metadata, open Opener) error {
	if err := MaterializeFiles(dir, m, open); err != nil {
		return err
	}
	if m.Core.StoredBytes == 0 {
		return nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	return writeCore(root, open)
}

// MaterializeFiles writes all of Materialize's output but the core, for a
// caller that writes the core its own way (a pull from S3 that continues).
func MaterializeFiles(dir string, m *Metadata, open Opener) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer root.Close()
	data, err := Encode(m)
	if err != nil {
		return err
	}
	if err := root.WriteFile(MetadataFile, data, 0o644); err != nil {
		return fmt.Errorf("write metadata: %w", err)
	}
	for _, f := range m.Files {
		out := f.OutName()
		if out == "" {
			continue
		}
		if err := copyOut(root, f.Stored, out, open); err != nil {
			return err
		}
		if f.Role == "exe" {
			if err := root.Chmod(out, 0o755); err != nil {
				return err
			}
		}
		for _, alias := range f.AliasNames() {
			// Aliases come from the crasher's memory: one that cannot be
			// made (it runs through a captured file) is skipped rather
			// than let a crasher make its own bundle unpullable.
			link(root, alias, out)
		}
	}
	for _, name := range append(ProcTexts[:len(ProcTexts):len(ProcTexts)], EnvironText) {
		if err := copyOut(root, ProcDir+"/"+name, ProcDir+"/"+name, open); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	// What the runtime wrote of its crash, for the debugger's user and
	// the agent's title.
	logs := []string{ContainerLog, StderrLog}
	if m.NSPID > 0 {
		logs = append(logs, HsErrLog(m.NSPID))
	}
	for _, name := range logs {
		if err := copyOut(root, name, name, open); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// link makes sysroot/<alias> a relative symlink to target (a sysroot
// name), unless a captured file already has that name.
func link(root *os.Root, alias, target string) error {
	name, err := SysrootName(alias)
	if err != nil || name == target {
		return nil
	}
	if _, err := root.Lstat(name); err == nil {
		return nil
	}
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return fmt.Errorf("alias %q: %w", alias, err)
	}
	rel, err := filepath.Rel(path.Dir(name), target)
	if err != nil {
		return err
	}
	return root.Symlink(rel, name)
}

// copyOut copies the bundle file name to out under root.
func copyOut(root *os.Root, name, out string, open Opener) error {
	r, err := open(name)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := root.MkdirAll(path.Dir(out), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", path.Dir(out), err)
	}
	w, err := root.OpenFile(out, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", out, err)
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return fmt.Errorf("write %s: %w", out, err)
	}
	return w.Close()
}

// writeCore decompresses core.zst into a sparse "core": runs of zero pages
// become holes, so a core that streamed gigabytes of untouched memory takes
// only its real data on disk.
func writeCore(root *os.Root, open Opener) error {
	r, err := open(CoreFile)
	if err != nil {
		return err
	}
	defer r.Close()
	dec, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxWindow(1<<30))
	if err != nil {
		return fmt.Errorf("read %s: %w", CoreFile, err)
	}
	defer dec.Close()
	f, err := root.OpenFile("core", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("create core: %w", err)
	}
	n, err := SparseCopy(f, dec)
	if err == nil {
		err = f.Truncate(n)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("decompress %s: %w (the bundle may be damaged; `zstd -t` tells)", CoreFile, err)
	}
	return nil
}

// SparseCopy copies r into f, leaving every all-zero run unwritten (a hole
// in a new file) instead of writing it. The caller truncates f to the
// returned length so that a trailing hole still counts.
func SparseCopy(f io.WriterAt, r io.Reader) (int64, error) {
	w := &SparseWriter{W: f}
	return io.Copy(w, r) // a zstd decoder writes its blocks straight in
}

// SparseWriter writes at Off in W what it is given, except all-zero 4 KiB
// pages (whole or, at a write's edges, partial), which it leaves unwritten:
// a core's untouched memory becomes holes. W must read zeros where nothing
// was written (a new or truncated file).
type SparseWriter struct {
	W   io.WriterAt
	Off int64
}

// Write implements io.Writer.
func (w *SparseWriter) Write(p []byte) (int, error) {
	const page = 4096
	done := 0
	for done < len(p) {
		// Runs end at absolute page boundaries, so holes are whole blocks.
		end := min(len(p), done+int(page-(w.Off+int64(done))%page))
		zero := allZero(p[done:end])
		for end < len(p) {
			next := min(len(p), end+page)
			if allZero(p[end:next]) != zero {
				break
			}
			end = next
		}
		if !zero {
			if _, err := w.W.WriteAt(p[done:end], w.Off+int64(done)); err != nil {
				w.Off += int64(done)
				return done, err
			}
		}
		done = end
	}
	w.Off += int64(len(p))
	return len(p), nil
}

var zeroPage [4096]byte

// allZero reports whether p (at most a page) is all zeros.
func allZero(p []byte) bool { return bytes.Equal(p, zeroPage[:len(p)]) }

// OutName returns where Materialize puts a captured file, relative to the
// materialized directory: under sysroot/ at the exact path the crasher saw
// (which gdb looks up), or "" when the file was not captured.
func (f *File) OutName() string {
	if f.Stored == "" {
		return ""
	}
	if primary, err := StoredName(f.RawPath()); err != nil || primary != f.Stored {
		return f.Stored // a second inode of the same name stays beside the first
	}
	name, _ := SysrootName(f.RawPath())
	return name
}

// ExePath returns where Materialize put the executable, relative to the
// materialized directory, or "" when it was not captured.
func (m *Metadata) ExePath() string {
	for _, f := range m.Files {
		if f.Role == "exe" {
			return f.OutName()
		}
	}
	return ""
}
