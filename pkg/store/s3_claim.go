package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// updateTries bounds the compare-and-swap retries of Update: every node
// that saw a crash of a bug may count it into the bug's first bundle.
const updateTries = 8

// Update rewrites a bundle's metadata.json with what fn changes, as a
// compare-and-swap on its ETag (If-Match), so that nodes amending the same
// bundle at once never lose each other's change.
func (s *S3) Update(ctx context.Context, id string, fn func(*bundle.Metadata) error) error {
	key := s.key(id, bundle.MetadataFile)
	for range updateTries {
		m, etag, err := s.getMeta(ctx, id)
		if err != nil {
			return err
		}
		before := SummaryOf(m)
		if err := fn(m); err != nil {
			return err
		}
		out, err := bundle.Encode(m)
		if err != nil {
			return err
		}
		opts := minio.PutObjectOptions{ContentType: "application/json", DisableMultipart: true}
		opts.SetMatchETag(etag)
		_, err = s.client.PutObject(ctx, s.bucket, key, bytes.NewReader(out), int64(len(out)), opts)
		if err == nil {
			if after := SummaryOf(m); after != before {
				return s.Index(ctx, m, time.Now())
			}
			return nil
		}
		if minio.ToErrorResponse(err).StatusCode != http.StatusPreconditionFailed {
			return s.wrap("update "+key, err)
		}
	}
	return fmt.Errorf("update bundle %s in %s: changed by others %d times in a row", id, s, updateTries)
}

// ErrNoConditionalWrites means the service ignores If-None-Match on PUT, so
// a claim cannot be exclusive: deduplication stays node-local.
var ErrNoConditionalWrites = errors.New("the S3 service ignores If-None-Match on PUT (conditional writes)")

// claimKey is the object of a bug's claim in one window: windows are
// aligned on multiples of their length, so every node names the same one.
func (s *S3) claimKey(key string, window time.Duration, now time.Time) string {
	h := sha256.Sum256([]byte(key))
	return fmt.Sprintf("%s.dedup/%s-%d", s.root(), hex.EncodeToString(h[:16]), now.UnixNano()/int64(window))
}

// Claim makes id the holder of key's current window, cluster-wide, with a
// conditional create (If-None-Match: *). It returns the holder: id when
// this call created the claim, the earlier claimant's id otherwise.
func (s *S3) Claim(ctx context.Context, key string, window time.Duration, id string, now time.Time) (string, error) {
	obj := s.claimKey(key, window, now)
	opts := minio.PutObjectOptions{ContentType: "text/plain", DisableMultipart: true}
	opts.SetMatchETagExcept("*")
	_, err := s.client.PutObject(ctx, s.bucket, obj, bytes.NewReader([]byte(id)), int64(len(id)), opts)
	if err == nil {
		return id, nil
	}
	if minio.ToErrorResponse(err).StatusCode != http.StatusPreconditionFailed {
		return "", s.wrap("claim "+obj, err)
	}
	r, err := s.client.GetObject(ctx, s.bucket, obj, minio.GetObjectOptions{})
	if err != nil {
		return "", s.wrap("read claim "+obj, err)
	}
	defer r.Close()
	holder, err := io.ReadAll(io.LimitReader(r, 256))
	if err != nil {
		return "", s.wrap("read claim "+obj, err)
	}
	if bundle.ValidID(string(holder)) != nil {
		return "", fmt.Errorf("claim %s holds %q, not a bundle id", obj, holder)
	}
	return string(holder), nil
}

// ProbeClaims checks that the service honours conditional creates: a
// second create of the same object must be refused. Without that, two
// nodes would both believe they hold a claim.
func (s *S3) ProbeClaims(ctx context.Context) error {
	obj := fmt.Sprintf("%s.dedup/probe-%d", s.root(), time.Now().UnixNano())
	defer s.client.RemoveObject(context.WithoutCancel(ctx), s.bucket, obj, minio.RemoveObjectOptions{})
	for i := range 2 {
		opts := minio.PutObjectOptions{DisableMultipart: true}
		opts.SetMatchETagExcept("*")
		_, err := s.client.PutObject(ctx, s.bucket, obj, bytes.NewReader([]byte("probe")), 5, opts)
		switch {
		case i == 0 && err != nil:
			return s.wrap("probe conditional writes", err)
		case i == 1 && err == nil:
			return ErrNoConditionalWrites
		case i == 1 && minio.ToErrorResponse(err).StatusCode != http.StatusPreconditionFailed:
			return s.wrap("probe conditional writes", err)
		}
	}
	return nil
}
