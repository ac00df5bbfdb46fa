package store

import (
	"context"
	"fmt"
	"io"

	"github.com/minio/minio-go/v7"
)

// Version returns the size and ETag of one file of a bundle.
func (s *S3) Version(ctx context.Context, id, name string) (Version, error) {
	if err := checkName(id, name); err != nil {
		return Version{}, err
	}
	info, err := s.client.StatObject(ctx, s.bucket, s.key(id, name), minio.StatObjectOptions{})
	if err != nil {
		if notFound(err) {
			return Version{}, fmt.Errorf("%s of bundle %s: %w", name, id, ErrNotFound)
		}
		return Version{}, s.wrap("stat "+name+" of bundle "+id, err)
	}
	return Version{Size: info.Size, ETag: info.ETag}, nil
}

// OpenRange reads n bytes from off of one file of a bundle with one ranged
// GET, conditional on its ETag.
func (s *S3) OpenRange(ctx context.Context, id, name string, v Version, off, n int64) (io.ReadCloser, error) {
	if err := checkName(id, name); err != nil {
		return nil, err
	}
	var opts minio.GetObjectOptions
	if err := opts.SetRange(off, off+n-1); err != nil {
		return nil, err
	}
	if err := opts.SetMatchETag(v.ETag); err != nil {
		return nil, err
	}
	body, _, _, err := s.core.GetObject(ctx, s.bucket, s.key(id, name), opts)
	if err != nil {
		if minio.ToErrorResponse(err).Code == "PreconditionFailed" {
			return nil, fmt.Errorf("%s of bundle %s: %w", name, id, errChanged)
		}
		return nil, s.wrap("read "+name+" of bundle "+id, err)
	}
	return body, nil
}
