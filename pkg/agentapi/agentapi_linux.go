// Package agentapi is the wire between the kernel-run pipe helper and the
// node agent: the helper asks the agent for the eBPF event of the process
// whose core it receives, and reports each bundle it publishes. It lives
// below both so that the helper never depends on the agent: every call has
// a short deadline, and a helper whose agent is down still stores the core
// and leaves its report in the spool for the agent's next start.
package agentapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/coresock"
	"github.com/corecatch/corecatch/pkg/spool"
)

// Request is one call; each connection carries one request and one
// response, as JSON.
type Request struct {
	// Op is "event" (wait up to WaitMS for the eBPF event of PID and the
	// freeze of its container), "release" (the core of PID is in: thaw),
	// "report" (Bundle was published) or "take" (the agent collects the
	// crash whose pattern arguments are Args from Core, the kernel's pipe
	// passed with the request).
	Op     string           `json:"op"`
	PID    int              `json:"pid,omitempty"`
	WaitMS int              `json:"wait_ms,omitempty"`
	Bundle *bundle.Metadata `json:"bundle,omitempty"`
	Args   []string         `json:"args,omitempty"`
	// Core is the file passed with the request (SCM_RIGHTS), if any.
	Core *os.File `json:"-"`
}

// Response answers a Request.
type Response struct {
	Event *bundle.EBPF `json:"event,omitempty"`
	// Freeze says what the agent did to the crasher's container, for
	// the bundle's freeze section.
	Freeze *bundle.Freeze `json:"freeze,omitempty"`
	// FreezePending says that Freeze holds only the cgroup the crasher
	// was in before the freeze moved it: the agent's own intakes ask for
	// no more before their decision, and take the freeze's record when
	// they release the crasher. Never sent over the socket.
	FreezePending bool   `json:"-"`
	Error         string `json:"error,omitempty"`
}

// ErrNoAgent means no agent runs on this node: its socket does not exist
// (`corecatch install` without an agent, or an agent that stopped cleanly).
var ErrNoAgent = errors.New("no agent socket")

// call sends one request and reads the response within timeout.
func call(socket string, req Request, timeout time.Duration) (*Response, error) {
	conn, err := net.DialTimeout("unix", socket, timeout)
	if errors.Is(err, syscall.ENOENT) {
		return nil, fmt.Errorf("%w at %s", ErrNoAgent, socket)
	}
	if err != nil {
		return nil, fmt.Errorf("reach the agent at %s: %w", socket, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("send to the agent: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, fmt.Errorf("read the agent's answer: %w", err)
	}
	if resp.Error != "" {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}

// Handoff gives the crash whose pattern arguments are args, and its core
// pipe, to the agent, which collects it: the helper may exit at once (the
// kernel holds the crasher while the agent reads the pipe). An error means
// the agent did not take it within timeout: the helper collects alone.
func Handoff(socket string, args []string, core *os.File, timeout time.Duration) error {
	conn, err := net.DialTimeout("unix", socket, timeout)
	if errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("%w at %s", ErrNoAgent, socket)
	}
	if err != nil {
		return fmt.Errorf("reach the agent at %s: %w", socket, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	data, err := json.Marshal(Request{Op: "take", Args: args})
	if err != nil {
		return err
	}
	if _, _, err := conn.(*net.UnixConn).WriteMsgUnix(append(data, '\n'), unix.UnixRights(int(core.Fd())), nil); err != nil {
		return fmt.Errorf("hand the core to the agent: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return fmt.Errorf("read the agent's answer: %w", err)
	}
	if resp.Error != "" {
		return errors.New(resp.Error)
	}
	return nil
}

// readRequest reads one request, and the file passed with it.
func readRequest(conn net.Conn) (Request, error) {
	var req Request
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return req, json.NewDecoder(conn).Decode(&req)
	}
	buf, oob := make([]byte, 64<<10), make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return req, err
	}
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			fds, _ := unix.ParseUnixRights(&m)
			for _, fd := range fds {
				if req.Core == nil {
					req.Core = os.NewFile(uintptr(fd), "core")
				} else {
					unix.Close(fd)
				}
			}
		}
	}
	if err := json.NewDecoder(io.MultiReader(bytes.NewReader(buf[:n]), conn)).Decode(&req); err != nil {
		if req.Core != nil {
			req.Core.Close()
		}
		return Request{}, err
	}
	return req, nil
}

// Lookup asks the agent for the eBPF event of pid, letting it wait up to
// wait for the event to arrive; the whole call takes at most wait plus
// 100 ms.
func Lookup(socket string, pid int, wait time.Duration) (*Response, error) {
	return call(socket, Request{Op: "event", PID: pid, WaitMS: int(wait / time.Millisecond)}, wait+100*time.Millisecond)
}

// Release tells the agent the core of pid is in (the helper closed the
// kernel's pipe), so the container can thaw; it returns the freeze record
// with its duration.
func Release(socket string, pid int, timeout time.Duration) (*Response, error) {
	return call(socket, Request{Op: "release", PID: pid}, timeout)
}

// Report tells the agent a bundle is published. When the agent runs but
// cannot be reached (killed: its socket is left behind), the report goes to
// the spool's reports for its next start; without any agent there is no
// one to report to.
func Report(socket string, reports spool.Reports, m *bundle.Metadata, timeout time.Duration) error {
	_, err := call(socket, Request{Op: "report", Bundle: m}, timeout)
	if err == nil || errors.Is(err, ErrNoAgent) {
		return nil
	}
	if serr := reports.Put(m); serr != nil {
		return fmt.Errorf("%w; and keep the report in the spool: %w", err, serr)
	}
	return nil
}

// Listen opens the agent's socket, root only: the directory 0700 and the
// socket 0600. A stale socket from an agent that died is replaced.
func Listen(socket string) (net.Listener, error) {
	return coresock.Listen(socket)
}

// Serve answers requests on ln with handle until ln is closed.
func Serve(ln net.Listener, handle func(Request) Response) error {
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			req, err := readRequest(conn)
			if err != nil {
				json.NewEncoder(conn).Encode(Response{Error: "bad request: " + err.Error()})
				return
			}
			json.NewEncoder(conn).Encode(handle(req))
		}()
	}
}
