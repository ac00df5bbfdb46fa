package identity

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// TestCache keeps what the runtime said for the TTL and no longer, and
// keeps nothing that did not come from the runtime.
func TestCache(t *testing.T) {
	c := Cache{Dir: t.TempDir(), TTL: time.Hour}
	id := &Identity{Source: bundle.IdentityCRI, Container: &bundle.Container{ID: "abc", Name: "app"}, Pod: &bundle.Pod{Namespace: "ns"}}
	c.Put(id)
	got, ok := c.Get("abc")
	if !ok || got.Container.Name != "app" || got.Pod.Namespace != "ns" {
		t.Fatalf("Get = %+v, %v", got, ok)
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(filepath.Join(c.Dir, "abc.json"), old, old)
	if _, ok := c.Get("abc"); ok {
		t.Error("an entry older than the TTL was used")
	}
	c.Put(&Identity{Source: bundle.IdentityCgroup, Container: &bundle.Container{ID: "def"}})
	if _, ok := c.Get("def"); ok {
		t.Error("an identity from the cgroup alone was cached")
	}
	if _, ok := c.Get("../etc/passwd"); ok {
		t.Error("a hostile id was looked up")
	}
}
