package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/corecatch/corecatch/pkg/agentapi"
	"github.com/corecatch/corecatch/pkg/collector"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/pkg/store"
)

func newCollect(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "collect [-c CONFIG] " + collector.PatternArgs,
		Short: "The core_pattern pipe helper (run by the kernel, not by hand)",
		Long: `collect is what the kernel runs for each core dump once ` + "`corecatch install`" + ` set
kernel.core_pattern. It reads the core from stdin and the crashed process from
/proc, and writes one bundle into the store. It logs to the kernel log (dmesg).`,
		// The process name (%e) is attacker-chosen and may start with "-":
		// flags are parsed by hand, only before the kernel's arguments.
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfgPath, explicit := config.DefaultPath, false
			if len(args) >= 2 && (args[0] == "-c" || args[0] == "--config") {
				cfgPath, explicit, args = args[1], true, args[2:]
			}
			if len(args) == 1 && (args[0] == "-h" || args[0] == "--help") {
				return cmd.Help()
			}
			return runCollect(cfgPath, explicit, args)
		},
	}
}

// handoffTimeout bounds the handoff of a crash to the agent.
const handoffTimeout = 500 * time.Millisecond

func runCollect(cfgPath string, explicit bool, args []string) error {
	log := kmsgLogger()
	defer log.Sync()
	req, err := collector.ParseRequest(args)
	if err != nil {
		return err
	}
	log = log.With(zap.Int("pid", req.PID), zap.ByteString("comm", req.Comm), zap.Int("signal", req.Signal))
	cfg, err := config.Load(cfgPath, explicit)
	if err != nil {
		// A broken config must not lose the core: fall back to defaults.
		log.Error("config unreadable, using defaults", zap.Error(err))
		cfg = config.Default()
	}
	// The agent collects the crash when it runs: this process, started
	// for every crash, hands over the pipe and exits. Without an answer in
	// time it collects alone, as it always could.
	if err := agentapi.Handoff(cfg.Socket, args, os.Stdin, handoffTimeout); err == nil {
		return nil
	} else if !errors.Is(err, agentapi.ErrNoAgent) {
		log.Warn("the agent did not take the crash; collecting it here", zap.Error(err))
	}
	if err := collector.LimitMemory(cfg.Collect.MemoryLimit.Bytes); err != nil {
		log.Warn("helper memory unbounded", zap.Error(err))
	}
	st, err := store.FromConfig(cfg)
	if err != nil {
		log.Error("store unusable, using the default store", zap.Error(err))
		st, _ = store.Open(config.Default().Store, store.Options{})
	}
	var claimer collector.Claimer
	if s3, ok := st.(*store.S3); ok && spool.Open(cfg.Spool).ClusterMarker().IsSet() {
		claimer = s3
	}
	st, bounds := store.ForNode(cfg, st)
	m, err := collector.Run(context.Background(), collector.Options{
		Config: cfg, Store: st, Retention: bounds, Request: req, Core: os.Stdin, Log: log, Version: Version,
		Claimer: claimer,
	})
	if err != nil {
		log.Error("core not stored", zap.Error(err))
		return err
	}
	fields := []zap.Field{
		zap.String("id", m.ID), zap.String("store", st.String()),
		zap.Int64("raw_bytes", m.Core.RawBytes), zap.Int64("stored_bytes", m.Core.StoredBytes),
		zap.Duration("held", time.Duration(m.Collector.HeldSeconds*float64(time.Second))),
	}
	if m.Core.Truncated {
		log.Warn("stored a truncated core", append(fields, zap.String("reason", m.Core.TruncateReason))...)
	} else {
		log.Info("stored core", fields...)
	}
	return nil
}

// kmsgLogger logs to the kernel log, where an SRE looking at a node's crash
// finds it next to the kernel's own "segfault at" line; the helper has no
// terminal and no journal of its own. Without /dev/kmsg it logs to stderr.
func kmsgLogger() *zap.Logger {
	enc := zap.NewProductionEncoderConfig()
	enc.TimeKey = ""
	var sink zapcore.WriteSyncer = zapcore.Lock(os.Stderr)
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		sink = zapcore.AddSync(&prefixWriter{w: f, prefix: fmt.Sprintf("corecatch[%d]: ", os.Getpid())})
	}
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), sink, zap.InfoLevel))
}

// prefixWriter writes each record with a prefix in a single write, which
// /dev/kmsg turns into one log line.
type prefixWriter struct {
	w      *os.File
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if _, err := p.w.Write(append([]byte(p.prefix), b...)); err != nil {
		return 0, err
	}
	return len(b), nil
}
