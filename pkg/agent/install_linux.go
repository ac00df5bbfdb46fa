package agent

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/coresock"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
	"github.com/corecatch/corecatch/pkg/sysctl"
)

// Install snapshots cfg into the spool and points core_pattern at this
// binary, or at its copy in host.bin_dir; with socket at the coredump
// socket instead, where an agent listens. `corecatch install` and the
// agent (at start, and when it leaves the node to its successor) share it.
func Install(cfg *config.Config, socket bool) (sysctl.Result, error) {
	if _, err := store.FromConfig(cfg); err != nil {
		return sysctl.Result{}, err
	}
	bin, err := os.Executable()
	if err == nil {
		bin, err = filepath.EvalSymlinks(bin)
	}
	if err != nil {
		return sysctl.Result{}, fmt.Errorf("find this binary's path: %w", err)
	}
	if cfg.Host.BinDir != "" {
		// The kernel runs the helper on the host: the pattern names the
		// copy by its host path, wherever this container sees it.
		if _, err := sysctl.CopyHelper(bin, cfg.Host.BinMountDir()); err != nil {
			return sysctl.Result{}, err
		}
		bin = filepath.Join(cfg.Host.BinDir, sysctl.HelperName)
	}
	sp := spool.Open(cfg.Spool)
	pattern, err := sysctl.Pattern(bin, sp.HelperConfig(), collector.PatternArgs)
	if err != nil {
		return sysctl.Result{}, err
	}
	// The snapshot is read on the host, by the helper and by an SRE's
	// uninstall there: it holds the host's view of the host paths.
	snap := *cfg
	snap.Host.BinMount, snap.Host.ProcSysKernel = "", sysctl.Proc
	// The helper notifies nobody: the bots' URLs and secrets stay off the
	// host's disk.
	snap.Notify = config.Default().Notify
	data, err := snap.Marshal()
	if err != nil {
		return sysctl.Result{}, err
	}
	if err := sp.WriteHelperConfig(data); err != nil {
		return sysctl.Result{}, err
	}
	sockPattern := coresock.Pattern(cfg.CoredumpSocket)
	if !socket {
		return sysctl.Install(cfg.Host.ProcSysKernel, sp.SysctlState(), pattern, sockPattern)
	}
	if len(sockPattern) > sysctl.MaxPattern {
		return sysctl.Result{}, fmt.Errorf("core_pattern %q is longer than the kernel's %d bytes: choose a shorter coredump_socket", sockPattern, sysctl.MaxPattern)
	}
	res, err := sysctl.Install(cfg.Host.ProcSysKernel, sp.SysctlState(), sockPattern, pattern)
	if err == nil {
		return res, nil
	}
	// The kernel may take the pattern only from its initial mount
	// namespace: try again from PID 1's, where the host's paths are the
	// real ones (its /proc/sys/kernel; the spool and socket are hostPaths).
	if herr := inHostMountNamespace(func() error {
		res, err = sysctl.Install(sysctl.Proc, sp.SysctlState(), sockPattern, pattern)
		return err
	}); herr != nil {
		return res, fmt.Errorf("%w; from the host's mount namespace: %w", err, herr)
	}
	return res, nil
}

// installIntake installs the intake cfg asks for: the coredump socket,
// listening, where the kernel takes it (core_modes lists socket, and the
// @@ pattern reads back as written), else the pipe helper, which is
// installed first in any case. It returns the listener (nil for the pipe)
// and what the first install found.
func installIntake(cfg *config.Config, log *zap.Logger) (sysctl.Result, *net.UnixListener, error) {
	res, err := Install(cfg, false)
	if err != nil || cfg.Intake != config.IntakeSocket {
		return res, nil, err
	}
	if !sysctl.SocketSupported(cfg.Host.ProcSysKernel) {
		log.Warn("intake: pipe; this kernel cannot send cores to a socket (kernel.core_modes lacks socket, Linux < 6.16)")
		return res, nil, nil
	}
	ln, err := coresock.Listen(cfg.CoredumpSocket)
	if err != nil {
		log.Warn("intake: pipe; the coredump socket cannot listen", zap.Error(err))
		return res, nil, nil
	}
	sres, err := Install(cfg, true)
	if err != nil {
		// Since 6.16.8 the kernel takes a pattern it cannot use on
		// write and refuses it on read: the pipe helper goes back.
		ln.Close()
		os.Remove(cfg.CoredumpSocket)
		log.Warn("intake: pipe; the kernel refused the coredump socket's pattern (Linux < 6.17, or not written from the host's mount namespace)", zap.Error(err))
		if _, err := Install(cfg, false); err != nil {
			return res, nil, err
		}
		return res, nil, nil
	}
	res.Pattern = sres.Pattern
	return res, ln, nil
}

// Uninstall restores the sysctls install replaced, then removes the helper
// it copied into host.bin_dir: in that order, so that the kernel never
// runs a pattern whose binary is gone. `corecatch uninstall` and an agent
// that leaves the node for good share it.
// Without saved values in cfg's spool, the spool (and host.bin_dir) are
// those of the config the installed core_pattern names: install's own
// snapshot, which says where it saved them.
func Uninstall(cfg *config.Config) (sysctl.Result, error) {
	if _, err := os.Stat(spool.Open(cfg.Spool).SysctlState()); errors.Is(err, fs.ErrNotExist) {
		if installed, err := installedConfig(cfg); err != nil {
			return sysctl.Result{}, err
		} else if installed != nil {
			cfg = installed
		}
	}
	res, err := sysctl.Uninstall(cfg.Host.ProcSysKernel, spool.Open(cfg.Spool).SysctlState())
	if err != nil || cfg.Host.BinDir == "" {
		return res, err
	}
	return res, sysctl.RemoveHelper(cfg.Host.BinMountDir())
}

// installedConfig reads the config the installed core_pattern names, with
// cfg's view of the host (where the kernel's files and bin_dir are from
// here); nil when the pattern is not corecatch's.
func installedConfig(cfg *config.Config) (*config.Config, error) {
	path, err := sysctl.InstalledConfig(cfg.Host.ProcSysKernel)
	if err != nil || path == "" {
		return nil, err
	}
	c, err := config.Load(path, true)
	if err != nil {
		return nil, fmt.Errorf("the installed core_pattern names %s: %w (pass the --spool that install used)", path, err)
	}
	c.Host.ProcSysKernel = cfg.Host.ProcSysKernel
	if cfg.Host.BinMount != "" {
		c.Host.BinMount = cfg.Host.BinMount
	}
	return c, nil
}
