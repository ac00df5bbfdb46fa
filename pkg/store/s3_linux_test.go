package store

import (
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/harness"
)

// newS3 starts a versitygw and returns the store under prefix on it, with
// credentials from the environment.
func newS3(t *testing.T, prefix string) (*S3, *harness.S3Server) {
	t.Helper()
	srv := harness.S3(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "corecatch-test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "corecatch-test-secret")
	st, err := Open("s3://"+srv.Bucket+"/"+prefix, Options{S3: S3Options{Endpoint: srv.Endpoint(), Region: "us-east-1", PathStyle: true}})
	if err != nil {
		t.Fatal(err)
	}
	return st.(*S3), srv
}

var (
	statOpts = minio.StatObjectOptions{}
	putOpts  = minio.PutObjectOptions{}
)

func readAll(t *testing.T, s Store, id, name string) []byte {
	t.Helper()
	r, err := s.Open(ctx, id, name)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestS3UploadIsVerifiedAndIdempotent uploads a local bundle with a file of
// several parts: every file arrives with the same bytes, metadata.json is
// the last object written, and uploading again (as after an agent killed
// between the upload and the deletion of the local copy) neither fails nor
// makes a second bundle.
func TestS3UploadIsVerifiedAndIdempotent(t *testing.T) {
	s3, srv := newS3(t, "cores/node-a")
	local := newStore(t)
	big := randomBytes(2*minPartSize + 12345)
	m := write(t, local, day0, map[string][]byte{bundle.CoreFile: big, "sysroot/usr/lib/libc.so.6": []byte("libc"), "proc/maps": nil})
	dir, _ := local.BundleDir(m.ID)
	if err := s3.Upload(ctx, dir, m.ID); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s3, m.ID, bundle.CoreFile); !bytes.Equal(got, big) {
		t.Errorf("core.zst: %d bytes back, %d sent, equal %v", len(got), len(big), bytes.Equal(got, big))
	}
	if got := readAll(t, s3, m.ID, "sysroot/usr/lib/libc.so.6"); string(got) != "libc" {
		t.Errorf("libc: %q", got)
	}
	info, err := srv.Client.StatObject(ctx, srv.Bucket, s3.key(m.ID, bundle.CoreFile), statOpts)
	if err != nil || !strings.HasSuffix(strings.Trim(info.ETag, `"`), "-3") {
		t.Errorf("core.zst ETag %q (%v): want a multipart ETag of 3 parts", info.ETag, err)
	}
	meta, err := srv.Client.StatObject(ctx, srv.Bucket, s3.key(m.ID, bundle.MetadataFile), statOpts)
	if err != nil || meta.LastModified.Before(info.LastModified) {
		t.Errorf("metadata.json written at %v, core.zst at %v (%v): metadata must come last", meta.LastModified, info.LastModified, err)
	}
	if err := s3.Upload(ctx, dir, m.ID); err != nil {
		t.Errorf("second upload: %v", err)
	}
	list, err := s3.List(ctx)
	if err != nil || len(list) != 1 || list[0].ID != m.ID {
		t.Errorf("List after two uploads = %v, %v; want only %s", list, err, m.ID)
	}
	u, err := s3.Usage(ctx)
	if err != nil || u.Bundles != 1 || u.Bytes < int64(len(big)) {
		t.Errorf("Usage = %+v, %v", u, err)
	}
	if keys := bundleKeys(t, srv, "cores/node-a/"); len(keys) != 4 {
		t.Errorf("objects after two uploads: %q, want 4", keys)
	}
}

// TestS3ListShowsOnlyCompleteBundles: a bundle without metadata.json (an
// upload under way) is not listed, nor found by Get; listing is newest
// first; Delete removes every object and is idempotent.
func TestS3ListShowsOnlyCompleteBundles(t *testing.T) {
	s3, srv := newS3(t, "p")
	local := newStore(t)
	var ids []string
	for i := range 3 {
		m := write(t, local, day0.Add(time.Duration(i)*24*time.Hour), map[string][]byte{bundle.CoreFile: []byte{byte(i)}})
		dir, _ := local.BundleDir(m.ID)
		if err := s3.Upload(ctx, dir, m.ID); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}
	partial := bundle.NewID(day0.Add(96*time.Hour), []byte("partial"))
	if _, err := srv.Client.PutObject(ctx, srv.Bucket, s3.key(partial, bundle.CoreFile), strings.NewReader("x"), 1, putOpts); err != nil {
		t.Fatal(err)
	}
	list, err := s3.List(ctx)
	if err != nil || len(list) != 3 || list[0].ID != ids[2] || list[2].ID != ids[0] {
		t.Errorf("List = %v, %v; want %v newest first, without %s", list, err, ids, partial)
	}
	if _, err := s3.Get(ctx, partial); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get of a bundle without metadata.json: %v, want ErrNotFound", err)
	}
	if _, err := s3.Open(ctx, ids[0], "sysroot/missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Open of a missing file: %v, want ErrNotFound", err)
	}
	if _, err := s3.Open(ctx, ids[0], "../x"); err == nil {
		t.Error("Open of ../x succeeded")
	}
	for range 2 {
		if err := s3.Delete(ctx, ids[1]); err != nil {
			t.Errorf("Delete: %v", err)
		}
	}
	if keys := srv.Keys(t, "p/"+ids[1]); len(keys) != 0 {
		t.Errorf("objects left after Delete: %q", keys)
	}
}

// TestS3Sweep deletes bundles older than the age, complete or not, and
// nothing newer; a second sweep (another node's) finds nothing to do.
func TestS3Sweep(t *testing.T) {
	s3, srv := newS3(t, "")
	local := newStore(t)
	now := time.Now().UTC()
	old := write(t, local, now.Add(-48*time.Hour), map[string][]byte{bundle.CoreFile: []byte("old")})
	recent := write(t, local, now.Add(-time.Hour), map[string][]byte{bundle.CoreFile: []byte("new")})
	for _, m := range []*bundle.Metadata{old, recent} {
		dir, _ := local.BundleDir(m.ID)
		if err := s3.Upload(ctx, dir, m.ID); err != nil {
			t.Fatal(err)
		}
	}
	orphan := bundle.NewID(now.Add(-72*time.Hour), []byte("orphan"))
	if _, err := srv.Client.PutObject(ctx, srv.Bucket, s3.key(orphan, bundle.CoreFile), strings.NewReader("x"), 1, putOpts); err != nil {
		t.Fatal(err)
	}
	gone, err := s3.Sweep(ctx, 24*time.Hour)
	if err != nil || len(gone) != 2 {
		t.Errorf("Sweep = %v, %v; want %s and %s", gone, err, old.ID, orphan)
	}
	if gone, err := s3.Sweep(ctx, 24*time.Hour); err != nil || len(gone) != 0 {
		t.Errorf("second Sweep = %v, %v; want nothing", gone, err)
	}
	if keys := bundleKeys(t, srv, ""); len(keys) != 2 || !strings.HasPrefix(keys[0], recent.ID+"/") {
		t.Errorf("objects after the sweep: %q, want only %s's", keys, recent.ID)
	}
}

// TestS3Presign: a presigned URL downloads the file without credentials;
// the expiry is clamped to 7 days.
func TestS3Presign(t *testing.T) {
	s3, _ := newS3(t, "p")
	local := newStore(t)
	m := write(t, local, day0, map[string][]byte{bundle.CoreFile: []byte("the core")})
	dir, _ := local.BundleDir(m.ID)
	if err := s3.Upload(ctx, dir, m.ID); err != nil {
		t.Fatal(err)
	}
	var p Presigner = s3
	link, err := p.PresignGet(ctx, m.ID, bundle.CoreFile, 30*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(link)
	if got := u.Query().Get("X-Amz-Expires"); got != fmt.Sprint(int((7 * 24 * time.Hour).Seconds())) {
		t.Errorf("X-Amz-Expires %s, want 7 days", got)
	}
	resp, err := http.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || string(body) != "the core" {
		t.Errorf("GET %s: %s %q", link, resp.Status, body)
	}
	if _, err := p.PresignGet(ctx, "../etc", "passwd", time.Hour); err == nil {
		t.Error("PresignGet of a bad id succeeded")
	}
}

// TestS3DirectWriter streams a bundle straight into the bucket: a file
// larger than a part goes in parts, a small one in one request, the
// bundle is listed once committed; an aborted bundle leaves nothing,
// multipart uploads included.
func TestS3DirectWriter(t *testing.T) {
	s3, srv := newS3(t, "d")
	s3.directPart = 5 << 20 // S3's smallest part: less I/O beside other tests
	big := randomBytes(2*s3.directPart + 1000)
	id := bundle.NewID(day0, []byte("direct"))
	w, err := s3.Put(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{bundle.CoreFile: big, "proc/status": []byte("Name: direct\n")} {
		f, err := w.Create(name)
		if err != nil {
			t.Fatal(err)
		}
		for chunk := range pieces(data, 1<<20+7) {
			if _, err := f.Write(chunk); err != nil {
				t.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			t.Fatalf("close %s: %v", name, err)
		}
	}
	if list, _ := s3.List(ctx); len(list) != 0 {
		t.Errorf("a bundle is listed before Commit: %v", list)
	}
	if err := w.Commit(ctx, &bundle.Metadata{Schema: bundle.Schema, ID: id, Time: day0, Comm: "direct"}); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, s3, id, bundle.CoreFile); !bytes.Equal(got, big) {
		t.Errorf("core.zst: %d bytes back, %d written", len(got), len(big))
	}
	if m, err := s3.Get(ctx, id); err != nil || m.Comm != "direct" {
		t.Errorf("Get = %v, %v", m, err)
	}

	aborted := bundle.NewID(day0, []byte("aborted"))
	w, err = s3.Put(ctx, aborted)
	if err != nil {
		t.Fatal(err)
	}
	done, _ := w.Create("proc/maps")
	done.Write([]byte("maps"))
	done.Close()
	f, _ := w.Create(bundle.CoreFile)
	f.Write(big) // one part sent, the rest buffered
	if err := w.Abort(); err != nil {
		t.Errorf("Abort: %v", err)
	}
	if keys, up := srv.Keys(t, "d/"+aborted), srv.Incomplete(t, "d/"+aborted); len(keys)+len(up) != 0 {
		t.Errorf("after Abort: objects %q, incomplete uploads %q", keys, up)
	}
}

// pieces yields data in pieces of at most n bytes.
func pieces(data []byte, n int) func(func([]byte) bool) {
	return func(yield func([]byte) bool) {
		for len(data) > 0 {
			k := min(n, len(data))
			if !yield(data[:k]) {
				return
			}
			data = data[k:]
		}
	}
}

// TestETagHash checks the ETag rule against S3's: the MD5 for one part,
// the MD5 of the parts' MD5s and the count for more.
func TestETagHash(t *testing.T) {
	data := []byte("abcdefghij")
	h := newETagHash(4)
	h.Write(data[:3])
	h.Write(data[3:])
	var sums []byte
	for _, part := range [][]byte{data[:4], data[4:8], data[8:]} {
		s := md5.Sum(part)
		sums = append(sums, s[:]...)
	}
	all := md5.Sum(sums)
	if want := hex.EncodeToString(all[:]) + "-3"; h.ETag() != want {
		t.Errorf("ETag %s, want %s", h.ETag(), want)
	}
	one := newETagHash(10)
	one.Write(data)
	if one.ETag() != md5Hex(data) {
		t.Errorf("single-part ETag %s, want %s", one.ETag(), md5Hex(data))
	}
	for size, want := range map[int64]int64{0: minPartSize, 500e9: 48 << 20} {
		if got := partSizeFor(size); got != want || got*maxParts < size {
			t.Errorf("partSizeFor(%d) = %d, want %d", size, got, want)
		}
	}
	if DirectPartSize*maxParts < 500e9 {
		t.Errorf("direct streaming parts of %d bytes cannot hold a 500 GB core", DirectPartSize)
	}
}

// TestS3KeysAreBounded uploads files named as a hostile crasher can name
// them (a path past S3's 1024-byte keys, control characters): each lands
// under a bounded key in long/, reads back through its real name, and the
// names that fit keep their keys.
func TestS3KeysAreBounded(t *testing.T) {
	s3, srv := newS3(t, "cores/node-a")
	local := newStore(t)
	long := "sysroot"
	for i := range 6 {
		long += "/" + strings.Repeat(string(rune('a'+i)), 200)
	}
	odd := "sysroot/lib/evil\n\x1b[31m.so"
	m := write(t, local, day0, map[string][]byte{long: []byte("long"), odd: []byte("odd"), "sysroot/usr/lib/libc.so.6": []byte("libc")})
	dir, _ := local.BundleDir(m.ID)
	if err := s3.Upload(ctx, dir, m.ID); err != nil {
		t.Fatalf("upload a bundle with a %d-byte name: %v", len(long), err)
	}
	for name, want := range map[string]string{long: "long", odd: "odd", "sysroot/usr/lib/libc.so.6": "libc"} {
		if got := readAll(t, s3, m.ID, name); string(got) != want {
			t.Errorf("%.40q: %q back, want %q", name, got, want)
		}
	}
	var inLong int
	for _, k := range srv.Keys(t, "cores/node-a/") {
		if len(k) > maxKeyBytes || strings.ContainsAny(k, "\n\x1b") {
			t.Errorf("unsafe key %.80q (%d bytes)", k, len(k))
		}
		if strings.HasPrefix(k, "cores/node-a/"+m.ID+"/"+longDir) {
			inLong++
		}
	}
	if inLong != 2 {
		t.Errorf("%d keys under %s; want the long and the odd name's", inLong, longDir)
	}
	if got := s3.key(m.ID, "sysroot/usr/lib/libc.so.6"); got != "cores/node-a/"+m.ID+"/sysroot/usr/lib/libc.so.6" {
		t.Errorf("a name that fits became %q", got)
	}
}
