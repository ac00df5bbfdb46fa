package kube

import (
	"errors"
	"testing"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// TestMessage checks an Event's text: the title, the signal and the command
// that fetches the bundle; a crash not yet titled is named by its program.
func TestMessage(t *testing.T) {
	m := &bundle.Metadata{ID: "20261201-abc", SignalName: "SIGSEGV", Comm: "crasher", Title: "SIGSEGV in parse_header (libfoo.so)"}
	if got, want := Message(m), "SIGSEGV in parse_header (libfoo.so) (signal SIGSEGV); corecatch pull 20261201-abc"; got != want {
		t.Errorf("Message = %q, want %q", got, want)
	}
	m.Title = ""
	if got, want := Message(m), "SIGSEGV in crasher (signal SIGSEGV); corecatch pull 20261201-abc"; got != want {
		t.Errorf("untitled Message = %q, want %q", got, want)
	}
}

// TestNewOutsideACluster: on a bare host (no service account, no
// KUBERNETES_SERVICE_HOST) Events are off with ErrNoAPIServer, which the
// agent logs once.
func TestNewOutsideACluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBERNETES_SERVICE_PORT", "")
	if _, err := New(Options{}); !errors.Is(err, ErrNoAPIServer) {
		t.Errorf("New outside a cluster: %v, want ErrNoAPIServer", err)
	}
}
