package agent

import (
	"context"
	"os"
	"os/exec"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// WorkerEnv, set in a process's environment, makes `corecatch agent` the
// supervised worker: it serves the node with the coredump socket's
// listener it inherits (fd 3, when WorkerEnv is "socket") and leaves
// core_pattern to its supervisor.
const WorkerEnv = "CORECATCH_AGENT_WORKER"

// CoresFD is the worker's inherited coredump socket listener.
const CoresFD = 3

// Restart pacing: a worker that lived less than workerHealthy is restarted
// after a delay that doubles up to workerBackoffMax.
const (
	workerHealthy    = 10 * time.Second
	workerBackoffMax = 30 * time.Second
	workerStopWait   = 30 * time.Second
)

// Supervise runs the agent's worker (this binary with args, mode in
// WorkerEnv, cores as its fd 3 when not nil) and restarts it whenever it
// dies, until ctx ends. The supervisor owns what must outlive a worker:
// the coredump socket, whose backlog keeps the crashes that arrive while
// no worker accepts (the kernel waits for the answer), and core_pattern.
// At ctx's end it calls stop (core_pattern goes elsewhere first), then
// passes sig() on to the worker and waits for it to finish the crashes it
// holds.
func Supervise(ctx context.Context, args []string, mode string, cores *os.File, log *zap.Logger, sig func() os.Signal, stop func()) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	backoff := 100 * time.Millisecond
	for {
		cmd := exec.Command(self, args...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.Env = append(os.Environ(), WorkerEnv+"="+mode)
		if cores != nil {
			cmd.ExtraFiles = []*os.File{cores}
		}
		// Its own process group: a terminal's Ctrl-C reaches the
		// supervisor only, which decides; the worker dies with it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		started := time.Now()
		if err := cmd.Start(); err != nil {
			return err
		}
		log.Info("agent worker started", zap.Int("worker_pid", cmd.Process.Pid), zap.String("intake", mode))
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-ctx.Done():
			stop()
			s := sig()
			if s == nil {
				s = syscall.SIGTERM
			}
			cmd.Process.Signal(s)
			select {
			case <-exited:
			case <-time.After(workerStopWait):
				cmd.Process.Kill()
				<-exited
			}
			return nil
		case err := <-exited:
			if time.Since(started) > workerHealthy {
				backoff = 100 * time.Millisecond
			}
			log.Error("agent worker exited; restarting it (crashes wait in the coredump socket's backlog)", zap.Error(err), zap.Duration("after", backoff))
			select {
			case <-ctx.Done():
				stop()
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, workerBackoffMax)
		}
	}
}
