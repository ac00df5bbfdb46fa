package agent

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/observer"
)

// ObserverOptions reads the configured signal sets, for the agent's
// observer and for `corecatch trace`, which must see what the agent sees.
func ObserverOptions(cfg *config.Config) (observer.Options, error) {
	var o observer.Options
	var err error
	if o.CoreSignals, err = signals(cfg.Observer.CoreSignals); err != nil {
		return o, fmt.Errorf("observer.core_signals: %w", err)
	}
	if o.FatalSignals, err = signals(cfg.Observer.FatalSignals); err != nil {
		return o, fmt.Errorf("observer.fatal_signals: %w", err)
	}
	o.Senders = cfg.Observer.Senders
	return o, nil
}

// signals parses names (SIGSEGV, SEGV) or numbers; an empty list keeps the
// defaults (nil).
func signals(names []string) ([]syscall.Signal, error) {
	var out []syscall.Signal
	for _, n := range names {
		if num, err := strconv.Atoi(n); err == nil {
			out = append(out, syscall.Signal(num))
			continue
		}
		name := strings.ToUpper(n)
		if !strings.HasPrefix(name, "SIG") {
			name = "SIG" + name
		}
		s := unix.SignalNum(name)
		if s == 0 {
			return nil, fmt.Errorf("unknown signal %q", n)
		}
		out = append(out, s)
	}
	return out, nil
}
