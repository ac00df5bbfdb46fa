package store

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// hostileMetadata are metadata.json documents that whoever can write to a
// shared bucket (any node, or a stranger with its keys) may plant under a
// valid bundle id. Each must make Get of that bundle fail with an error
// that names it, and List skip it and keep the others, never panic.
func hostileMetadata(id string) map[string][]byte {
	other := bundle.NewID(day0, []byte("other"))
	return map[string][]byte{
		"short id":     []byte(`{"schema":1,"id":"x"}`),
		"empty id":     []byte(`{"schema":1}`),
		"null":         []byte(`null`),
		"array":        []byte(`[1,2]`),
		"another id":   []byte(`{"schema":1,"id":"` + other + `"}`),
		"path id":      []byte(`{"schema":1,"id":"../../../etc/passwd"}`),
		"bad json":     []byte(`{"schema":1,"id":"` + id),
		"odd bytes":    append([]byte("\x00\xff\xfe\x1b[2J"), randomBytes(300)...),
		"newer schema": []byte(`{"schema":99,"id":"` + id + `"}`),
		"wrong types":  []byte(`{"schema":"1","id":7,"core":[]}`),
		"huge":         []byte(`{"schema":1,"id":"` + id + `","comm":"` + strings.Repeat("A", bundle.MaxMetadataBytes) + `"}`),
	}
}

// oddButValid is a metadata.json with the right id whose every other field
// is as strange as JSON allows: it is listed, and nothing panics on it.
func oddButValid(id string) []byte {
	return []byte(fmt.Sprintf(`{"schema":-5,"id":%q,"time":"9999-12-31T23:59:59Z","node":"\u001b]0;owned\u0007",
"comm":"\u001b[2J\u0000","exe":"\r\n","cmdline":null,"signal":-1,"core":{"raw_bytes":-9223372036854775808,
"stored_bytes":9223372036854775807,"kept_bytes":-1,"truncated":true},"files":[{"path":"","role":"exe","size":-1}],
"pod":{},"container":{},"workload":{},"dedup":{"count":-3},"backtrace":[{}],"analysis":{"threads":[{"frames":null}]}}`, id))
}

// checkHostile plants each hostile document under its own bundle id next
// to one good bundle, through plant, and checks Get and List.
func checkHostile(t *testing.T, st Store, good string, plant func(id string, data []byte)) {
	t.Helper()
	bad := map[string]string{}
	i := 0
	for name, data := range hostileMetadata("") {
		i++
		id := bundle.NewID(day0.Add(time.Duration(i)*time.Minute), []byte("hostile"))
		if name == "bad json" || name == "newer schema" || name == "huge" {
			data = hostileMetadata(id)[name]
		}
		plant(id, data)
		bad[id] = name
	}
	odd := bundle.NewID(day0.Add(time.Hour), []byte("odd"))
	plant(odd, oddButValid(odd))
	for id, name := range bad {
		m, err := st.Get(ctx, id)
		if err == nil || !strings.Contains(err.Error(), id) {
			t.Errorf("%s: Get = %+v, %v; want an error naming the bundle", name, m, err)
		}
	}
	list, err := st.List(ctx)
	got := map[string]bool{}
	for _, m := range list {
		got[m.ID] = true
	}
	if len(list) != 2 || !got[good] || !got[odd] {
		t.Errorf("List = %q, want the good bundle %s and the odd one %s", ids(list), good, odd)
	}
	for id, name := range bad {
		if err == nil || !strings.Contains(err.Error(), id) {
			t.Errorf("List's error does not name the %s bundle %s: %v", name, id, err)
		}
	}
	if m, err := st.Get(ctx, odd); err != nil || m.Core.RawBytes != -1<<63 || m.Node != "\x1b]0;owned\a" {
		t.Errorf("Get of the odd bundle: %+v, %v", m, err)
	}
}

// TestFileHostileMetadata plants hostile metadata.json files in a local
// store.
func TestFileHostileMetadata(t *testing.T) {
	s := newStore(t)
	good := write(t, s, day0.Add(48*time.Hour), nil)
	checkHostile(t, s, good.ID, func(id string, data []byte) {
		m := write(t, s, day0, nil)
		src, _ := s.BundleDir(m.ID)
		dst, _ := s.BundleDir(id)
		if err := renameDir(src, dst); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, bundle.MetadataFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
	})
}

// TestS3HostileMetadata plants hostile metadata.json objects in a bucket
// (a real versitygw).
func TestS3HostileMetadata(t *testing.T) {
	s3, srv := newS3(t, "p")
	local := newStore(t)
	m := write(t, local, day0.Add(48*time.Hour), nil)
	dir, _ := local.BundleDir(m.ID)
	if err := s3.Upload(ctx, dir, m.ID); err != nil {
		t.Fatal(err)
	}
	checkHostile(t, s3, m.ID, func(id string, data []byte) {
		if _, err := srv.Client.PutObject(ctx, srv.Bucket, s3.key(id, bundle.MetadataFile), bytes.NewReader(data), int64(len(data)), putOpts); err != nil {
			t.Fatal(err)
		}
	})
}

func renameDir(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	return os.Rename(src, dst)
}

// TestS3GetWhileUpdated reads a bundle's metadata while another writer
// rewrites it as fast as it can (the agent counting deduplicated crashes
// into it): every read succeeds. Reading through Open, whose second
// request carries If-Match on the ETag its first one saw, failed with 412.
func TestS3GetWhileUpdated(t *testing.T) {
	s3, _ := newS3(t, "p")
	local := newStore(t)
	m := write(t, local, day0, nil)
	dir, _ := local.BundleDir(m.ID)
	if err := s3.Upload(ctx, dir, m.ID); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	updates := make(chan int)
	go func() {
		n := 0
		defer func() { updates <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := s3.Update(ctx, m.ID, func(m *bundle.Metadata) error { m.Dedup = &bundle.Dedup{Count: n}; return nil }); err != nil {
				t.Error(err)
				return
			}
			n++
		}
	}()
	reads := 0
	for start := time.Now(); time.Since(start) < 3*time.Second; reads++ {
		if _, err := s3.Get(ctx, m.ID); err != nil {
			t.Errorf("read %d: %v", reads, err)
			break
		}
	}
	close(stop)
	t.Logf("%d reads during %d updates", reads, <-updates)
}
