package identity

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/spool"
)

// Cache keeps resolved identities on disk, in the spool, so that the
// helpers of a crash storm in one container ask the runtime once: each
// helper is a new process. A container id names one container instance for
// its whole life (a restart makes a new id), so an entry can only go stale
// by age: entries older than the TTL are not used, and are removed.
type Cache struct {
	Dir string
	TTL time.Duration
}

// CacheTTL is how long a container's identity from the CRI is reused.
const CacheTTL = 10 * time.Minute

// SpoolCache is the cache helpers and the agent share in a spool.
func SpoolCache(s spool.Spool) Cache {
	return Cache{Dir: s.Identity(), TTL: CacheTTL}
}

// cacheable ids are safe file names.
var cacheable = regexp.MustCompile(`^[0-9A-Za-z._-]{1,128}$`)

// Get returns the cached identity of a container, if fresh.
func (c Cache) Get(containerID string) (*Identity, bool) {
	if c.Dir == "" || !cacheable.MatchString(containerID) {
		return nil, false
	}
	p := filepath.Join(c.Dir, containerID+".json")
	info, err := os.Stat(p)
	if err != nil {
		return nil, false
	}
	if time.Since(info.ModTime()) > c.TTL {
		os.Remove(p)
		return nil, false
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, false
	}
	var id Identity
	if json.Unmarshal(data, &id) != nil || id.Container == nil || id.Container.ID != containerID {
		return nil, false
	}
	return &id, true
}

// Put stores an identity the runtime gave, and sweeps expired entries.
func (c Cache) Put(id *Identity) {
	if c.Dir == "" || id.Source != bundle.IdentityCRI || id.Container == nil || !cacheable.MatchString(id.Container.ID) {
		return
	}
	if os.MkdirAll(c.Dir, 0o700) != nil {
		return
	}
	data, err := json.Marshal(id)
	if err != nil {
		return
	}
	tmp, err := os.CreateTemp(c.Dir, ".tmp-*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(data)
	if tmp.Close() != nil || werr != nil || os.Rename(tmp.Name(), filepath.Join(c.Dir, id.Container.ID+".json")) != nil {
		os.Remove(tmp.Name())
	}
	entries, _ := os.ReadDir(c.Dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > c.TTL {
			os.Remove(filepath.Join(c.Dir, e.Name()))
		}
	}
}
