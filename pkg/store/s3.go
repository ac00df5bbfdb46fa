package store

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// S3Options say how to reach an S3 service (AWS, Huawei Cloud OBS, MinIO,
// versitygw, Ceph); the bucket and prefix come from the store's URL.
type S3Options struct {
	// Endpoint is https://host[:port], http://host[:port] (plain HTTP, for
	// a gateway on loopback) or a bare host[:port], reached over HTTPS.
	// Empty: AWS S3.
	Endpoint string
	// Region signs requests; empty asks the bucket for its location.
	Region string
	// PathStyle addresses the bucket in the path (host/bucket/key), as
	// MinIO, versitygw and Ceph want. Off, the bucket is in the host name
	// (bucket.host/key): OBS refuses path style on its domain endpoints.
	PathStyle bool
	// CredentialsFile is an AWS shared credentials file (the kernel-run
	// helper has no environment, so direct streaming needs one); its
	// profile is $AWS_PROFILE or "default".
	CredentialsFile string
	// STS fetches temporary credentials where minio-go can: a Kubernetes
	// service account token ($AWS_WEB_IDENTITY_TOKEN_FILE), ECS or EC2
	// instance metadata. Off, nothing is asked of the network for them.
	STS bool
	// AccessKeyID and SecretAccessKey (with SessionToken, if any) are
	// keys handed over by the caller, tried first: `kubectl corecatch`
	// reads them from the chart's Secret.
	AccessKeyID, SecretAccessKey, SessionToken string
}

// Multipart layout. S3 and OBS allow at most 10,000 parts; a part's size
// decides the largest object an upload can make.
const (
	maxParts = 10000
	// minPartSize is the smallest part uploads from the spool use: fewer
	// requests than S3's 5 MiB minimum, and reading a part costs no
	// memory (parts are read from the file at their offset).
	minPartSize = 16 << 20
	// DirectPartSize is the part size of direct streaming, whose length
	// is unknown until the end: 10,000 parts of 64 MiB hold 625 GiB, so a
	// 500 GB core fits. Each file being streamed holds one part in memory.
	DirectPartSize = 64 << 20
	// uploadThreads bounds the parts of one file in flight at once.
	uploadThreads = 4
	// maxPresign is the longest a V4 presigned URL may be valid.
	maxPresign = 7 * 24 * time.Hour
	// listWorkers bounds the metadata reads of one listing.
	listWorkers = 8
)

// S3 is a store in an S3 bucket, laid out as
// <prefix>/<id>/{core.zst,sysroot/...,proc/...,metadata.json}. metadata.json
// is always written last, and List only reports bundles that have it, so a
// listed bundle is complete.
type S3 struct {
	client *minio.Client
	core   minio.Core
	bucket string
	prefix string
	// directPart is the part size of direct streaming: DirectPartSize,
	// smaller in tests.
	directPart int
}

// NewS3 returns the store in bucket under prefix ("" for the bucket's
// root). It makes no request: a wrong endpoint or credentials show on
// first use.
func NewS3(bucket, prefix string, o S3Options) (*S3, error) {
	endpoint, secure := o.Endpoint, true
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" {
			return nil, fmt.Errorf("s3 endpoint %q: write https://host[:port], http://host[:port] or host[:port]", o.Endpoint)
		}
		endpoint, secure = u.Host, u.Scheme == "https"
	}
	var providers []credentials.Provider
	if o.AccessKeyID != "" {
		providers = append(providers, &credentials.Static{Value: credentials.Value{
			AccessKeyID: o.AccessKeyID, SecretAccessKey: o.SecretAccessKey, SessionToken: o.SessionToken, SignerType: credentials.SignatureV4}})
	}
	if o.CredentialsFile != "" {
		providers = append(providers, &credentials.FileAWSCredentials{Filename: o.CredentialsFile})
	}
	providers = append(providers, &credentials.EnvAWS{})
	if o.STS {
		providers = append(providers, &credentials.IAM{})
	}
	lookup := minio.BucketLookupDNS
	if o.PathStyle {
		lookup = minio.BucketLookupPath
	}
	client, err := minio.New(endpoint, &minio.Options{
		Creds:        credentials.NewChainCredentials(providers),
		Secure:       secure,
		Region:       o.Region,
		BucketLookup: lookup,
		// The uploader retries with its own backoff; minio-go's own
		// retries only bridge a dropped connection.
		MaxRetries: 3,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 endpoint %q: %w", o.Endpoint, err)
	}
	return &S3{client: client, core: minio.Core{Client: client}, bucket: bucket, prefix: strings.Trim(prefix, "/"), directPart: DirectPartSize}, nil
}

// String returns the store's URL.
func (s *S3) String() string {
	if s.prefix == "" {
		return "s3://" + s.bucket
	}
	return "s3://" + s.bucket + "/" + s.prefix
}

// root is the key prefix of every bundle: "<prefix>/" or "".
func (s *S3) root() string {
	if s.prefix == "" {
		return ""
	}
	return s.prefix + "/"
}

// maxKeyBytes is S3's (and OBS's) longest object key.
const maxKeyBytes = 1024

// longDir holds, within a bundle's keys, the files whose names cannot be
// keys as they are. No other file of a bundle is named under it.
const longDir = "long/"

// key returns the object key of one file of a bundle. Names come from the
// crasher (its mapped paths): one that would make a key longer than S3
// allows, or that holds control characters (which S3's XML listings cannot
// carry, breaking ls for the whole bucket), becomes
// long/<sha256 of the name>-<its base name, cut>: bounded, and the same for
// every reader, since Open maps the name the same way. Metadata keeps the
// real path (files[].stored), and pull puts the file back there.
func (s *S3) key(id, name string) string {
	k := s.root() + id + "/" + name
	if len(k) <= maxKeyBytes && !strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return k
	}
	sum := sha256.Sum256([]byte(name))
	base := []rune(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '_'
		}
		return r
	}, path.Base(name)))
	return s.root() + id + "/" + longDir + hex.EncodeToString(sum[:16]) + "-" + string(base[:min(len(base), 48)])
}

// ErrRejected marks what the object store refused for reasons of the
// bundle itself (a key or an object it never accepts): unlike a network or
// credentials error, a retry cannot help.
var ErrRejected = errors.New("refused by the object store for good")

// checkName validates a bundle id and a file name before they make a key.
func checkName(id, name string) error {
	if err := bundle.ValidID(id); err != nil {
		return err
	}
	_, err := cleanName(name)
	return err
}

// notFound reports whether err is S3's answer for a missing object.
func notFound(err error) bool {
	code := minio.ToErrorResponse(err).Code
	return code == minio.NoSuchKey || code == "NotFound"
}

// wrap turns an S3 error into one that says what to check.
func (s *S3) wrap(what string, err error) error {
	switch minio.ToErrorResponse(err).Code {
	case minio.NoSuchBucket:
		return fmt.Errorf("%s in %s: %w (create the bucket, or fix the store URL)", what, s, err)
	case "KeyTooLongError", "InvalidArgument", "EntityTooLarge", "InvalidObjectName", "MetadataTooLarge":
		return fmt.Errorf("%s in %s: %w: %w", what, s, ErrRejected, err)
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch":
		return fmt.Errorf("%s in %s: %w (check the credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, s3.credentials_file, s3.sts)", what, s, err)
	}
	return fmt.Errorf("%s in %s: %w (check s3.endpoint, s3.region and s3.path_style, and that the service is reachable)", what, s, err)
}

// Get reads one bundle's metadata.json.
func (s *S3) Get(ctx context.Context, id string) (*bundle.Metadata, error) {
	m, _, err := s.getMeta(ctx, id)
	return m, err
}

// getMeta reads one bundle's metadata.json and its ETag in a single GET.
// (Open's object first asks for the object's ETag, then reads with
// If-Match on it: a metadata.json the agent rewrote in between, as it does
// to count a deduplicated crash or add gdb's backtrace, failed that read
// with 412.)
func (s *S3) getMeta(ctx context.Context, id string) (*bundle.Metadata, string, error) {
	if err := checkName(id, bundle.MetadataFile); err != nil {
		return nil, "", err
	}
	r, info, _, err := s.core.GetObject(ctx, s.bucket, s.key(id, bundle.MetadataFile), minio.GetObjectOptions{})
	if err != nil {
		if notFound(err) {
			return nil, "", fmt.Errorf("bundle %s in %s: %w", id, s, ErrNotFound)
		}
		return nil, "", s.wrap("read bundle "+id, err)
	}
	defer r.Close()
	m, err := bundle.ReadMetadata(id, r)
	if err != nil {
		return nil, "", fmt.Errorf("bundle %s in %s: %w", id, s, err)
	}
	return m, info.ETag, nil
}

// Open reads one file of a bundle; a missing file fails here, not on the
// first read.
func (s *S3) Open(ctx context.Context, id, name string) (io.ReadCloser, error) {
	if err := checkName(id, name); err != nil {
		return nil, err
	}
	obj, err := s.client.GetObject(ctx, s.bucket, s.key(id, name), minio.GetObjectOptions{})
	if err == nil {
		_, err = obj.Stat()
	}
	if err != nil {
		if obj != nil {
			obj.Close()
		}
		if notFound(err) {
			return nil, fmt.Errorf("%s of bundle %s: %w", name, id, ErrNotFound)
		}
		return nil, s.wrap("open "+name+" of bundle "+id, err)
	}
	return obj, nil
}

// ids returns the ids that have objects under the prefix, complete bundles
// or not.
func (s *S3) ids(ctx context.Context) ([]string, error) {
	var ids []string
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.root()}) {
		if obj.Err != nil {
			return nil, s.wrap("list bundles", obj.Err)
		}
		if id := strings.TrimSuffix(strings.TrimPrefix(obj.Key, s.root()), "/"); bundle.ValidID(id) == nil {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

// List returns the metadata of every complete bundle, newest first; a
// bundle that cannot be read twice is reported in a Skipped error.
func (s *S3) List(ctx context.Context) ([]*bundle.Metadata, error) {
	ids, err := s.ids(ctx)
	if err != nil {
		return nil, err
	}
	out, err := collect(ctx, ids, listWorkers, s.Get)
	sort.SliceStable(out, func(i, j int) bool {
		if a, b := out[i].ID[:15], out[j].ID[:15]; a != b {
			return a > b
		}
		return out[i].ID > out[j].ID
	})
	return out, err
}

// objects lists the keys of one bundle.
func (s *S3) objects(ctx context.Context, id string) ([]minio.ObjectInfo, error) {
	var out []minio.ObjectInfo
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.key(id, ""), Recursive: true}) {
		if obj.Err != nil {
			return nil, s.wrap("list bundle "+id, obj.Err)
		}
		out = append(out, obj)
	}
	return out, nil
}

// Delete removes a bundle: metadata.json first, so that it leaves the
// listings before its files go.
func (s *S3) Delete(ctx context.Context, id string) error {
	if err := bundle.ValidID(id); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.bucket, s.key(id, bundle.MetadataFile), minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
		return s.wrap("delete bundle "+id, err)
	}
	now := time.Now()
	if err := s.putEntry(ctx, entry{Summary: Summary{ID: id}, Version: now.UnixNano(), Deleted: true}, now); err != nil {
		return err
	}
	objs, err := s.objects(ctx, id)
	if err != nil {
		return err
	}
	ch := make(chan minio.ObjectInfo, len(objs))
	for _, o := range objs {
		ch <- o
	}
	close(ch)
	var errs []error
	for e := range s.client.RemoveObjects(ctx, s.bucket, ch, minio.RemoveObjectsOptions{}) {
		if !notFound(e.Err) {
			errs = append(errs, s.wrap("delete "+e.ObjectName, e.Err))
		}
	}
	return errors.Join(errs...)
}

// Usage counts the complete bundles and the bytes of every object under
// the prefix.
func (s *S3) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.root(), Recursive: true}) {
		if obj.Err != nil {
			return Usage{}, s.wrap("list bundles", obj.Err)
		}
		u.Bytes += obj.Size
		if path.Base(obj.Key) == bundle.MetadataFile {
			u.Bundles++
		}
	}
	return u, nil
}

// PresignGet returns a URL that downloads one file of a bundle without
// credentials until expiry (clamped to 1 s..7 days).
func (s *S3) PresignGet(ctx context.Context, id, name string, expiry time.Duration) (string, error) {
	if err := checkName(id, name); err != nil {
		return "", err
	}
	expiry = min(max(expiry, time.Second), maxPresign)
	u, err := s.client.PresignedGetObject(ctx, s.bucket, s.key(id, name), expiry, nil)
	if err != nil {
		return "", s.wrap("presign "+name+" of bundle "+id, err)
	}
	return u.String(), nil
}

// Sweep deletes every bundle older than maxAge, complete or not, the
// index of the hours before, and multipart uploads abandoned and dedup
// claims made more than a day ago. Any number of nodes may
// sweep at once: deleting what another node deleted is not an error. It
// returns the ids it deleted.
func (s *S3) Sweep(ctx context.Context, maxAge time.Duration) ([]string, error) {
	ids, err := s.ids(ctx)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	var deleted []string
	var errs []error
	for _, id := range ids {
		t, err := bundle.IDTime(id)
		if err != nil || now.Sub(t) <= maxAge {
			continue
		}
		if err := s.Delete(ctx, id); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, id)
	}
	errs = append(errs, s.removeIncomplete(ctx, s.root(), now.Add(-24*time.Hour)))
	errs = append(errs, s.removeClaims(ctx, now.Add(-24*time.Hour)))
	// An index hour holds writes of that hour, of crashes no later.
	errs = append(errs, s.removeIndex(ctx, now.Add(-maxAge-time.Hour)))
	return deleted, errors.Join(errs...)
}

// removeClaims deletes dedup claims (Claim) older than cutoff: each
// window of each bug leaves one small object.
func (s *S3) removeClaims(ctx context.Context, cutoff time.Time) error {
	var errs []error
	for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.root() + ".dedup/"}) {
		if o.Err != nil {
			return s.wrap("list dedup claims", o.Err)
		}
		if o.LastModified.Before(cutoff) {
			if err := s.client.RemoveObject(ctx, s.bucket, o.Key, minio.RemoveObjectOptions{}); err != nil && !notFound(err) {
				errs = append(errs, s.wrap("delete "+o.Key, err))
			}
		}
	}
	return errors.Join(errs...)
}

// removeIncomplete aborts the multipart uploads under prefix started
// before cutoff: what an upload cut by a dead server or a dead process
// left behind, which the service keeps (and bills) until aborted.
func (s *S3) removeIncomplete(ctx context.Context, prefix string, cutoff time.Time) error {
	var errs []error
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, prefix, true) {
		if u.Err != nil {
			return s.wrap("list incomplete uploads", u.Err)
		}
		if u.Initiated.After(cutoff) {
			continue
		}
		if err := s.client.RemoveIncompleteUpload(ctx, s.bucket, u.Key); err != nil && !notFound(err) {
			errs = append(errs, s.wrap("abort the incomplete upload of "+u.Key, err))
		}
	}
	return errors.Join(errs...)
}

// Upload copies the bundle id published in the local directory dir (a
// File store's bundle) into the bucket: every file, each checked against
// the size and ETag the service reports, then metadata.json. A file the
// bucket already holds with the same size and ETag is not sent again, and
// a bundle whose metadata.json is already there with the same bytes is
// done: uploading again never makes a second bundle. Multipart uploads a
// previous attempt left under the bundle are aborted first.
func (s *S3) Upload(ctx context.Context, dir, id string) error {
	if err := bundle.ValidID(id); err != nil {
		return err
	}
	meta, err := os.ReadFile(filepath.Join(dir, bundle.MetadataFile))
	if err != nil {
		return fmt.Errorf("read bundle %s: %w", id, err)
	}
	m, err := bundle.ReadMetadata(id, bytes.NewReader(meta))
	if err != nil {
		return fmt.Errorf("read bundle %s: %w", id, err)
	}
	metaKey := s.key(id, bundle.MetadataFile)
	if info, err := s.client.StatObject(ctx, s.bucket, metaKey, minio.StatObjectOptions{}); err == nil && sameETag(info.ETag, md5Hex(meta)) {
		// Uploaded before, perhaps by an agent that died before the
		// index entry.
		return s.Index(ctx, m, time.Now())
	}
	if err := s.removeIncomplete(ctx, s.key(id, ""), time.Now()); err != nil {
		return err
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if name == bundle.MetadataFile || name == lockFile || name == sizeFile {
			return nil // the local store's own bookkeeping
		}
		return s.uploadFile(ctx, p, s.key(id, name))
	})
	if err != nil {
		return err
	}
	if err := s.putVerified(ctx, metaKey, bytes.NewReader(meta), int64(len(meta)), md5Hex(meta), "application/json"); err != nil {
		return err
	}
	return s.Index(ctx, m, time.Now())
}

// uploadFile sends one local file, unless the bucket holds it already.
// Parts are read from the file at their offsets, uploadThreads at a time,
// so memory does not grow with the file.
func (s *S3) uploadFile(ctx context.Context, p, key string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("upload %s: %w", p, err)
	}
	size := st.Size()
	ps := partSizeFor(size)
	h := newETagHash(ps)
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read %s: %w", p, err)
	}
	want := h.ETag()
	if info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{}); err == nil && info.Size == size && sameETag(info.ETag, want) {
		return nil // an earlier attempt sent it
	}
	_, err = s.client.PutObject(ctx, s.bucket, key, f, size, minio.PutObjectOptions{
		PartSize: uint64(ps), NumThreads: uploadThreads, ContentType: "application/octet-stream",
	})
	if err != nil {
		return s.wrap("upload "+key, err)
	}
	return s.verify(ctx, key, size, want)
}

// putVerified uploads a small object in one request and checks it.
func (s *S3) putVerified(ctx context.Context, key string, r io.Reader, size int64, etag, contentType string) error {
	if _, err := s.client.PutObject(ctx, s.bucket, key, r, size, minio.PutObjectOptions{ContentType: contentType, DisableMultipart: true}); err != nil {
		return s.wrap("upload "+key, err)
	}
	return s.verify(ctx, key, size, etag)
}

// verify checks that the bucket holds key with the given size and ETag.
func (s *S3) verify(ctx context.Context, key string, size int64, etag string) error {
	info, err := s.client.StatObject(ctx, s.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return s.wrap("check "+key, err)
	}
	if info.Size != size || !sameETag(info.ETag, etag) {
		return fmt.Errorf("check %s in %s: the service holds %d bytes with ETag %s, but %d bytes with ETag %s were sent: the upload is retried (a bucket with SSE-KMS or SSE-C encryption, whose ETags are not MD5s, cannot be verified)",
			key, s, info.Size, info.ETag, size, etag)
	}
	return nil
}

// partSizeFor is the part size of an upload of size bytes: at least
// minPartSize, and large enough that maxParts parts hold it, in whole MiB.
func partSizeFor(size int64) int64 {
	ps := (size + maxParts - 1) / maxParts
	ps = (ps + 1<<20 - 1) &^ (1<<20 - 1)
	return max(ps, minPartSize)
}

func md5Hex(b []byte) string {
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

// sameETag compares ETags as services send them (quoted or not).
func sameETag(a, b string) bool {
	return strings.EqualFold(strings.Trim(a, `"`), strings.Trim(b, `"`))
}

// etagHash computes the ETag S3 gives an unencrypted object uploaded in
// parts of partSize: the MD5 of the bytes for a single request (at most
// one part), else the MD5 of the parts' MD5s and "-" and the part count.
type etagHash struct {
	partSize int64
	cur      hash.Hash
	n        int64 // bytes in the current part
	total    int64
	sums     []byte
}

func newETagHash(partSize int64) *etagHash { return &etagHash{partSize: partSize, cur: md5.New()} }

func (h *etagHash) Write(p []byte) (int, error) {
	written := len(p)
	for len(p) > 0 {
		if h.n == h.partSize {
			h.sums = h.cur.Sum(h.sums)
			h.cur.Reset()
			h.n = 0
		}
		k := min(int64(len(p)), h.partSize-h.n)
		h.cur.Write(p[:k])
		h.n += k
		h.total += k
		p = p[k:]
	}
	return written, nil
}

// ETag returns the ETag of everything written.
func (h *etagHash) ETag() string {
	if h.total <= h.partSize {
		return hex.EncodeToString(h.cur.Sum(nil))
	}
	sums := h.cur.Sum(h.sums)
	all := md5.Sum(sums)
	return fmt.Sprintf("%s-%d", hex.EncodeToString(all[:]), len(sums)/md5.Size)
}

// Put starts writing a bundle straight into the bucket (direct streaming,
// for nodes without spare disk): each file is sent as it is written, in
// parts of DirectPartSize, and metadata.json last.
func (s *S3) Put(ctx context.Context, id string) (Writer, error) {
	if err := bundle.ValidID(id); err != nil {
		return nil, err
	}
	return &s3Writer{s: s, ctx: ctx, id: id}, nil
}

// s3Writer writes one bundle into the bucket.
type s3Writer struct {
	s   *S3
	ctx context.Context
	id  string

	mu   sync.Mutex
	done bool
}

func (w *s3Writer) Create(name string) (io.WriteCloser, error) {
	if _, err := cleanName(name); err != nil {
		return nil, err
	}
	return &s3File{w: w, key: w.s.key(w.id, name), part: w.s.directPart, hash: newETagHash(int64(w.s.directPart))}, nil
}

// Commit writes metadata.json once every file is in.
func (w *s3Writer) Commit(ctx context.Context, m *bundle.Metadata) error {
	data, err := bundle.Encode(m)
	if err != nil {
		return err
	}
	if err := w.s.putVerified(ctx, w.s.key(w.id, bundle.MetadataFile), bytes.NewReader(data), int64(len(data)), md5Hex(data), "application/json"); err != nil {
		return err
	}
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
	// The bundle is published: a failed index entry must not make the
	// helper abort it. Readers find it through their fallback meanwhile,
	// and the agent's next Update of it writes the entry.
	w.s.Index(ctx, m, time.Now())
	return nil
}

// Abort deletes what was sent of the bundle, multipart uploads included.
func (w *s3Writer) Abort() error {
	w.mu.Lock()
	done := w.done
	w.done = true
	w.mu.Unlock()
	if done {
		return nil
	}
	ctx := context.WithoutCancel(w.ctx)
	return errors.Join(w.s.removeIncomplete(ctx, w.s.key(w.id, ""), time.Now()), w.s.Delete(ctx, w.id))
}

// s3File streams one file of a bundle: it holds at most one part in
// memory, sends a part whenever one is full, and finishes with a single
// PUT when the whole file fit in one part.
type s3File struct {
	w        *s3Writer
	key      string
	part     int // the part size
	buf      []byte
	hash     *etagHash
	uploadID string
	parts    []minio.CompletePart
	err      error
}

func (f *s3File) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	written := len(p)
	f.hash.Write(p)
	for len(p) > 0 {
		if len(f.buf) == f.part {
			if f.err = f.sendPart(); f.err != nil {
				return 0, f.err
			}
		}
		k := min(len(p), f.part-len(f.buf))
		if cap(f.buf)-len(f.buf) < k {
			// Grow towards one part, never past it: small files stay
			// small, and a large one allocates its part once.
			c := max(2*cap(f.buf), len(f.buf)+k, 64<<10)
			if c >= 4<<20 {
				c = f.part
			}
			nb := make([]byte, len(f.buf), min(c, f.part))
			copy(nb, f.buf)
			f.buf = nb
		}
		f.buf = append(f.buf, p[:k]...)
		p = p[k:]
	}
	return written, nil
}

// sendPart uploads the buffered part.
func (f *s3File) sendPart() error {
	s, ctx := f.w.s, f.w.ctx
	if f.uploadID == "" {
		id, err := s.core.NewMultipartUpload(ctx, s.bucket, f.key, minio.PutObjectOptions{ContentType: "application/octet-stream"})
		if err != nil {
			return s.wrap("start upload of "+f.key, err)
		}
		f.uploadID = id
	}
	n := len(f.parts) + 1
	part, err := s.core.PutObjectPart(ctx, s.bucket, f.key, f.uploadID, n, bytes.NewReader(f.buf), int64(len(f.buf)), minio.PutObjectPartOptions{})
	if err != nil {
		return s.wrap(fmt.Sprintf("upload part %d of %s", n, f.key), err)
	}
	f.parts = append(f.parts, minio.CompletePart{PartNumber: n, ETag: part.ETag})
	f.buf = f.buf[:0]
	return nil
}

// Close sends what is left and checks the object the service made.
func (f *s3File) Close() error {
	if f.err != nil {
		return f.err
	}
	s, ctx := f.w.s, f.w.ctx
	size := f.hash.total
	if f.uploadID == "" {
		f.err = s.putVerified(ctx, f.key, bytes.NewReader(f.buf), int64(len(f.buf)), f.hash.ETag(), "application/octet-stream")
		f.buf = nil
		return f.err
	}
	if len(f.buf) > 0 {
		if f.err = f.sendPart(); f.err != nil {
			return f.err
		}
	}
	f.buf = nil
	if _, err := s.core.CompleteMultipartUpload(ctx, s.bucket, f.key, f.uploadID, f.parts, minio.PutObjectOptions{}); err != nil {
		f.err = s.wrap("complete upload of "+f.key, err)
		return f.err
	}
	f.err = s.verify(ctx, f.key, size, f.hash.ETag())
	return f.err
}
