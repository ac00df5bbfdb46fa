package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// service is a server of the test's own (Prometheus, Alertmanager) on a
// loopback port, its output in a log file of the test's directory.
type service struct {
	name string
	base string
	log  string
	// stop ends it (SIGTERM, then SIGKILL after 10 s); the cleanup calls
	// it too.
	stop func()
}

// startService starts the Debian package's binary bin with args, listening
// on addr, and waits until GET ready answers 200; the test's cleanup stops
// it and, when the test failed, shows the end of its log.
func startService(t *testing.T, dir, addr, ready, bin string, args ...string) *service {
	t.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("%s is missing: run make deps", bin)
	}
	s := &service{name: bin, base: "http://" + addr, log: filepath.Join(dir, filepath.Base(bin)+".log")}
	log, err := os.Create(s.log)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	s.stop = sync.OnceFunc(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("%s, last lines:\n%s", s.log, s.logTail())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("%s exited at start: %v\n%s", bin, cmd.ProcessState, s.logTail())
		default:
		}
		if resp, err := http.Get(s.base + ready); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s not ready after 20s:\n%s", bin, addr, s.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logTail returns the last lines the service logged.
func (s *service) logTail() string {
	data, _ := os.ReadFile(s.log)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}

// get returns the body of a GET of path, or the error as text.
func (s *service) get(path string) string {
	resp, err := http.Get(s.base + path)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("%s: %s", resp.Status, body)
	}
	return string(body)
}
