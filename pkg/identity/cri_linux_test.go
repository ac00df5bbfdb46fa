package identity

import (
	"strings"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// TestCheckPodUID refuses a runtime's answer that places the container in
// another pod than its cgroup does.
func TestCheckPodUID(t *testing.T) {
	const a, b = "11111111-2222-3333-4444-555555555555", "66666666-7777-8888-9999-000000000000"
	for _, tc := range []struct {
		cg     string
		labels map[string]string
		ok     bool
	}{
		{a, map[string]string{labelPodUID: a}, true},
		{"", map[string]string{labelPodUID: b}, true},
		{"", nil, true},
		{a, map[string]string{labelPodUID: b}, false},
		{a, map[string]string{}, false},
	} {
		err := checkPodUID(tc.cg, tc.labels)
		if (err == nil) != tc.ok {
			t.Errorf("checkPodUID(%q, %v) = %v, want ok=%v", tc.cg, tc.labels, err, tc.ok)
		}
	}
}

// TestResolveNestedIgnoresOtherPodsCache: a hostile nested cgroup resolves
// to its own container, never to a cached identity of another pod, and the
// nesting is recorded as the reason.
func TestResolveNestedIgnoresOtherPodsCache(t *testing.T) {
	mine := strings.Repeat("a", 64)
	uid := "11111111-2222-3333-4444-555555555555"
	cache := Cache{Dir: t.TempDir(), TTL: time.Minute}
	// A cached identity of the same container id claimed by another pod.
	cache.Put(&Identity{Source: bundle.IdentityCRI, Container: &bundle.Container{ID: mine},
		Pod: &bundle.Pod{UID: "66666666-7777-8888-9999-000000000000", Name: "victim"}, LogPath: "/var/log/victim.log"})
	id := Resolve(t.Context(), "/kubepods/pod"+uid+"/"+mine+"/docker-"+strings.Repeat("b", 64)+".scope", "unix://"+t.TempDir()+"/none.sock", time.Second, cache)
	if id.Pod == nil || id.Pod.UID != uid || id.Pod.Name != "" || id.LogPath != "" {
		t.Fatalf("identity %+v (pod %+v), want pod %s from the cgroup only", id, id.Pod, uid)
	}
	if !strings.Contains(id.Reason, "below its own") {
		t.Errorf("reason %q does not record the nesting", id.Reason)
	}
}
