// Package debuginfod serves a store's executables and libraries by GNU
// build-id over the debuginfod HTTP protocol (GET /buildid/<id>/executable,
// /buildid/<id>/debuginfo), so that gdb, eu-stack or any other debuginfod
// client on an SRE's machine fetches exactly the files a crashed process
// had mapped, from the bundles that captured them.
package debuginfod

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"sync"
	"time"

	"github.com/corecatch/corecatch/pkg/store"
)

// Refresh is how often, at most, the build-id index is rebuilt from the
// store's metadata when a request misses it: new bundles are found
// without listing the store on every request.
const Refresh = 10 * time.Second

// Server answers debuginfod requests from a store.
type Server struct {
	Store store.Store
	// MaxBytes bounds a file served (collect.max_file_bytes bounds what
	// bundles hold anyway); the debuginfo check copies it to TempDir.
	MaxBytes int64
	TempDir  string

	mu    sync.Mutex
	built time.Time
	index map[string]location
}

// location is where a build-id's file lives: one bundle's stored file.
type location struct{ bundle, name string }

// buildIDPath is the protocol's path of one artifact; source requests
// (/buildid/<id>/source/<path>) are never answered: bundles hold no
// sources.
var buildIDPath = regexp.MustCompile(`^/buildid/([0-9a-f]{2,128})/(executable|debuginfo)$`)

// ServeHTTP answers /buildid/<id>/executable with the file of that
// build-id, /buildid/<id>/debuginfo with it when it carries DWARF (an
// unstripped build is its own debug info), and 404 otherwise.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := buildIDPath.FindStringSubmatch(r.URL.Path)
	if m == nil || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		http.NotFound(w, r)
		return
	}
	loc, ok, err := s.lookup(r.Context(), m[1])
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if !ok {
		http.NotFound(w, r)
		return
	}
	f, err := s.fetch(r.Context(), loc)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if m[2] == "debuginfo" && !hasDWARF(f) {
		http.NotFound(w, r)
		return
	}
	st, err := f.Stat()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.Header().Set("X-Debuginfod-File", loc.name)
	w.Header().Set("X-Debuginfod-Size", strconv.FormatInt(st.Size(), 10))
	if r.Method == http.MethodHead {
		return
	}
	io.Copy(w, f)
}

// lookup finds a build-id in the index, rebuilding it when it misses and
// is older than Refresh.
func (s *Server) lookup(ctx context.Context, id string) (location, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if loc, ok := s.index[id]; ok {
		return loc, true, nil
	}
	if time.Since(s.built) < Refresh {
		return location{}, false, nil
	}
	list, err := s.Store.List(ctx)
	// Bundles that cannot be read (a hostile metadata.json) are skipped:
	// they must not hide the others' files.
	var skipped store.Skipped
	if err != nil && !errors.As(err, &skipped) {
		return location{}, false, fmt.Errorf("list %s: %w", s.Store, err)
	}
	index := map[string]location{}
	// Newest first: a build-id's newest copy wins, the one retention
	// keeps longest.
	for _, b := range list {
		for _, f := range b.Files {
			if f.BuildID == "" || f.Stored == "" {
				continue
			}
			if _, ok := index[f.BuildID]; !ok {
				index[f.BuildID] = location{b.ID, f.Stored}
			}
		}
	}
	s.index, s.built = index, time.Now()
	loc, ok := index[id]
	return loc, ok, nil
}

// fetch copies a stored file into an unlinked-on-close temporary file,
// at most MaxBytes of it.
func (s *Server) fetch(ctx context.Context, loc location) (*os.File, error) {
	r, err := s.Store.Open(ctx, loc.bundle, loc.name)
	if err != nil {
		return nil, fmt.Errorf("open %s of %s: %w", loc.name, loc.bundle, err)
	}
	defer r.Close()
	f, err := os.CreateTemp(s.TempDir, "debuginfod-*")
	if err != nil {
		return nil, fmt.Errorf("a temporary file (set TMPDIR): %w", err)
	}
	n, err := io.Copy(f, io.LimitReader(r, s.MaxBytes+1))
	if err == nil && n > s.MaxBytes {
		err = fmt.Errorf("%s of %s is larger than %d bytes", loc.name, loc.bundle, s.MaxBytes)
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return f, nil
}

// hasDWARF tells an ELF file with debug info.
func hasDWARF(f *os.File) bool {
	e, err := elf.NewFile(f)
	if err != nil {
		return false
	}
	s := e.Section(".debug_info")
	ok := s != nil && s.Type != elf.SHT_NOBITS
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return false
	}
	return ok
}
