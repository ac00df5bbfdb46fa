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
	if m.Core.StoredBytes > 0 {
		if err := writeCore(root, open); err != nil {
			return err
		}
	}
	for _, f := range m.Files {
		if f.Stored == "" {
			continue
		}
		if err := copyOut(root, f.Stored, open); err != nil {
			return err
		}
		if f.Role == "exe" {
			if err := root.Chmod(f.Stored, 0o755); err != nil {
				return err
			}
		}
		for _, alias := range f.Aliases {
			if err := link(root, alias, f.Stored); err != nil {
				return err
			}
		}
	}
	for _, name := range append(ProcTexts[:len(ProcTexts):len(ProcTexts)], EnvironText) {
		if err := copyOut(root, ProcDir+"/"+name, open); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// link makes sysroot/<alias> a relative symlink to stored (a sysroot name),
// unless a captured file already has that name.
func link(root *os.Root, alias, stored string) error {
	name, err := SysrootName(alias)
	if err != nil || name == stored {
		return nil
	}
	if _, err := root.Lstat(name); err == nil {
		return nil
	}
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return fmt.Errorf("alias %q: %w", alias, err)
	}
	rel, err := filepath.Rel(path.Dir(name), stored)
	if err != nil {
		return err
	}
	return root.Symlink(rel, name)
}

func copyOut(root *os.Root, name string, open Opener) error {
	r, err := open(name)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return fmt.Errorf("create %s: %w", path.Dir(name), err)
	}
	w, err := root.OpenFile(name, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Close()
		return fmt.Errorf("write %s: %w", name, err)
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

// SparseCopy copies r into f, seeking over every all-zero 4 KiB page instead
// of writing it. The caller truncates f to the returned length so that a
// trailing hole still counts.
func SparseCopy(f io.WriteSeeker, r io.Reader) (int64, error) {
	const page = 4096
	buf := make([]byte, 1<<20)
	zero := make([]byte, page)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		p := buf[:n]
		for len(p) > 0 {
			k := min(page, len(p))
			// Extend the run of equal-kind pages as far as it goes.
			isZero := bytes.Equal(p[:k], zero[:k])
			end := k
			for end < len(p) && bytes.Equal(p[end:min(end+page, len(p))], zero[:min(page, len(p)-end)]) == isZero {
				end = min(end+page, len(p))
			}
			if isZero {
				if _, err := f.Seek(int64(end), io.SeekCurrent); err != nil {
					return off, err
				}
			} else if _, err := f.Write(p[:end]); err != nil {
				return off, err
			}
			off += int64(end)
			p = p[end:]
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

// ExePath returns where Materialize put the executable, relative to the
// materialized directory, or "" when it was not captured.
func (m *Metadata) ExePath() string {
	for _, f := range m.Files {
		if f.Role == "exe" && f.Stored != "" {
			return f.Stored
		}
	}
	return ""
}
