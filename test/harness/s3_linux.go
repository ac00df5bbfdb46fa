package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Server is a real S3 service for tests: versitygw (built by `make
// deps`) with its POSIX backend in a directory, on loopback, holding one
// bucket. It can be killed and started again on the same address and data,
// as an outage would.
type S3Server struct {
	Bin    string // the versitygw binary
	Dir    string // the backend's directory; buckets are its subdirectories
	Addr   string // 127.0.0.1:port
	Bucket string
	// Credentials is an AWS shared credentials file with the root user's
	// keys, for s3.credentials_file.
	Credentials string
	// Client talks to the server as the root user, path style.
	Client *minio.Client

	cmd *exec.Cmd
}

// The root user of every test server.
const (
	s3AccessKey = "corecatch-test"
	s3SecretKey = "corecatch-test-secret"
)

// Versitygw returns the versitygw binary: on PATH, or in the repository's
// bin/.
func Versitygw() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	p := filepath.Join(RepoRoot(), "bin", "versitygw")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("versitygw is not installed: run `make deps` (it builds versitygw with go install): %w", err)
	}
	return p, nil
}

// StartS3 starts a versitygw with its data in dir (created when missing;
// one server a dir, since the bucket lives there), on a free loopback
// port, and creates the bucket "corecatch".
func StartS3(dir string) (*S3Server, error) {
	bin, err := Versitygw()
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	s := &S3Server{Bin: bin, Dir: filepath.Join(dir, "s3data"), Addr: addr, Bucket: "corecatch",
		Credentials: filepath.Join(dir, "s3credentials")}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil { // dir too, for the credentials beside it
		return nil, err
	}
	creds := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", s3AccessKey, s3SecretKey)
	if err := os.WriteFile(s.Credentials, []byte(creds), 0o600); err != nil {
		return nil, err
	}
	s.Client, err = minio.New(addr, &minio.Options{Creds: credentials.NewStaticV4(s3AccessKey, s3SecretKey, ""),
		BucketLookup: minio.BucketLookupPath, Region: "us-east-1"})
	if err != nil {
		return nil, err
	}
	if err := s.Start(); err != nil {
		return nil, err
	}
	if err := s.Client.MakeBucket(context.Background(), s.Bucket, minio.MakeBucketOptions{}); err != nil {
		s.Kill()
		return nil, fmt.Errorf("create bucket %s: %w", s.Bucket, err)
	}
	return s, nil
}

// Start starts the server (again) and waits until it answers.
func (s *S3Server) Start() error {
	s.cmd = exec.Command(s.Bin, "--access", s3AccessKey, "--secret", s3SecretKey, "--region", "us-east-1",
		"--port", s.Addr, "--quiet", "posix", s.Dir)
	logf, err := os.OpenFile(filepath.Join(filepath.Dir(s.Dir), "versitygw.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	// Its own process group: a test's kill reaches it, nothing else.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start versitygw: %w", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := s.Client.ListBuckets(ctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Kill()
	return fmt.Errorf("versitygw on %s did not answer within 20s", s.Addr)
}

// Kill kills the server at once (SIGKILL), as a crash of the service
// would, and waits for it to be gone.
func (s *S3Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	s.cmd.Process.Kill()
	s.cmd.Wait()
	s.cmd = nil
}

// Endpoint is the server's URL, for s3.endpoint.
func (s *S3Server) Endpoint() string { return "http://" + s.Addr }

// Config returns the config lines of an s3:// store under prefix on this
// server, credentials in a file.
func (s *S3Server) Config(prefix string) string {
	return fmt.Sprintf("store: s3://%s/%s\ns3:\n  endpoint: %s\n  region: us-east-1\n  path_style: true\n  credentials_file: %s\n",
		s.Bucket, prefix, s.Endpoint(), s.Credentials)
}

// Keys lists the object keys under prefix.
func (s *S3Server) Keys(t testing.TB, prefix string) []string {
	t.Helper()
	var keys []string
	for o := range s.Client.ListObjects(context.Background(), s.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if o.Err != nil {
			t.Fatalf("list %s: %v", prefix, o.Err)
		}
		keys = append(keys, o.Key)
	}
	return keys
}

// Incomplete lists the keys of the multipart uploads in progress under
// prefix.
func (s *S3Server) Incomplete(t testing.TB, prefix string) []string {
	t.Helper()
	var keys []string
	for u := range s.Client.ListIncompleteUploads(context.Background(), s.Bucket, prefix, true) {
		if u.Err != nil {
			t.Fatalf("list incomplete uploads under %s: %v", prefix, u.Err)
		}
		keys = append(keys, u.Key)
	}
	return keys
}

// StagedParts counts the parts of multipart uploads the server keeps on
// disk (versitygw's POSIX backend stages them under
// <bucket>/.sgwtmp/multipart): it works while the server is down.
func (s *S3Server) StagedParts() int {
	n := 0
	filepath.WalkDir(filepath.Join(s.Dir, s.Bucket, ".sgwtmp", "multipart"), func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

// S3 starts a server for one test in a temporary directory and kills it
// when the test ends. Without versitygw the test is skipped, except under
// CI=true, where it fails.
func S3(t testing.TB) *S3Server {
	t.Helper()
	if _, err := Versitygw(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%v; CI=true forbids skipping", err)
		}
		t.Skip(err)
	}
	s, err := StartS3(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Kill)
	return s
}
