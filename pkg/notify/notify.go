// Package notify tells people about crashes: signed Feishu/Lark cards, alerts
// pushed to Alertmanager, and Alertmanager's own webhook turned into Feishu
// cards. Every notification goes through a persisted, bounded queue per sink
// and is sent by a goroutine of its own, so that a dead or rate-limiting
// service never slows collection and nothing is lost across agent restarts;
// crash storms are merged into one card per program instead of one per
// crash.
package notify

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/analysis"
	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
)

// Results counted per sink in corecatch_notifications_total.
const (
	ResultOK = "ok"
	// ResultError is a failed attempt that will be retried.
	ResultError = "error"
	// ResultRejected is a notification the service refused for good (a
	// malformed request); it is dropped.
	ResultRejected = "rejected"
	// ResultDropped is a notification pushed out of a full queue.
	ResultDropped = "dropped"
	// ResultMuted is a crash that matched notify.mute.
	ResultMuted = "muted"
)

// Results lists every result, for metrics that must exist at 0.
var Results = []string{ResultOK, ResultError, ResultRejected, ResultDropped, ResultMuted}

// Crash is what a notification says about a crash, or about a run of crashes
// of one program merged into one card.
type Crash struct {
	ID string `json:"id"`
	// Time is the latest crash's, First the first's of the run; Count how
	// many crashes the notification stands for.
	Time  time.Time `json:"time"`
	First time.Time `json:"first"`
	Count int       `json:"count"`

	Node      string            `json:"node"`
	Namespace string            `json:"namespace,omitempty"`
	Pod       string            `json:"pod,omitempty"`
	Container string            `json:"container,omitempty"`
	Workload  string            `json:"workload,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
	// Exe is the executable's path, Comm the task name.
	Exe    string `json:"exe,omitempty"`
	Comm   string `json:"comm"`
	Signal string `json:"signal"`
	// FaultAddr is the faulting address of a memory fault, when known;
	// Frames the top of the backtrace, innermost first.
	FaultAddr string   `json:"fault_addr,omitempty"`
	Frames    []string `json:"frames,omitempty"`
	// Title says where it crashed ("SIGSEGV in parse_header (libfoo.so)").
	Title string `json:"title,omitempty"`
	// Dedup is how many crashes of this bug its stored core stands for;
	// DedupOf the bundle keeping that core when this crash's was drained.
	Dedup   int    `json:"dedup,omitempty"`
	DedupOf string `json:"dedup_of,omitempty"`

	RawBytes    int64 `json:"raw_bytes"`
	StoredBytes int64 `json:"stored_bytes"`
	// Missing says the core never arrived or was cut, and why.
	Missing string `json:"missing,omitempty"`
	// Download is a URL to fetch the bundle with, when the store gives one.
	Download string `json:"download,omitempty"`
}

// FromBundle summarises a bundle for notifications.
func FromBundle(m *bundle.Metadata) *Crash {
	c := &Crash{ID: m.ID, Time: m.Time, First: m.Time, Count: 1, Node: m.Node, Exe: m.Exe, Comm: m.Comm,
		Signal: m.SignalName, RawBytes: m.Core.RawBytes, StoredBytes: m.Core.StoredBytes, Missing: m.Core.TruncateReason}
	if m.Pod != nil {
		c.Namespace, c.Pod, c.Labels = m.Pod.Namespace, m.Pod.Name, m.Pod.Labels
	}
	if m.Container != nil {
		c.Container = m.Container.Name
	}
	if m.Workload != nil {
		c.Workload = m.Workload.Kind + "/" + m.Workload.Name
	}
	if e := m.EBPF; e != nil && e.FaultAddr != "" && e.SiCode > 0 {
		c.FaultAddr = e.FaultAddr
	}
	// Where it crashed, not how it died: abort and raise frames left out.
	frames := analysis.Normalize(m.Backtrace)
	for _, f := range frames[:min(len(frames), maxFrames)] {
		c.Frames = append(c.Frames, f.String())
	}
	c.Title = m.Title
	if m.Dedup != nil {
		c.Dedup = m.Dedup.Count
		c.DedupOf = m.Dedup.Of
	}
	return c
}

// maxFrames is how many frames a card shows.
const maxFrames = 5

// program names what crashed, for titles and for merging: the workload
// when the crash was in a pod, else the executable.
func (c *Crash) program() string {
	if c.Workload != "" {
		if c.Container != "" {
			return c.Workload + " (" + c.Container + ")"
		}
		return c.Workload
	}
	if c.Exe != "" {
		return base(c.Exe)
	}
	return c.Comm
}

// key is what merges: one program's crashes of one signal.
func (c *Crash) key() string {
	return strings.Join([]string{"crash", c.Namespace, c.program(), c.Exe, c.Signal}, "\x00")
}

// matches reports whether the crash is selected by m.
func (c *Crash) matches(m config.Match) bool {
	for _, f := range [][2]string{{m.Namespace, c.Namespace}, {m.Workload, c.Workload}, {m.Container, c.Container},
		{m.Exe, base(c.Exe)}, {m.Signal, c.Signal}} {
		if !glob(f[0], f[1]) {
			return false
		}
	}
	for k, pattern := range m.Labels {
		v, ok := c.Labels[k]
		if !ok || !glob(pattern, v) {
			return false
		}
	}
	return true
}

// glob matches value against a pattern checked by config.Validate; an empty
// pattern matches anything.
func glob(pattern, value string) bool {
	if pattern == "" {
		return true
	}
	ok, _ := path.Match(pattern, value)
	return ok
}

// anyMatch reports whether some match selects the crash; none selects all.
func anyMatch(c *Crash, ms []config.Match) bool {
	for _, m := range ms {
		if c.matches(m) {
			return true
		}
	}
	return len(ms) == 0
}

// Options are what the notifier needs from the agent.
type Options struct {
	Log     *zap.Logger
	Version string
	// Result counts a notification's outcome for sink (see Results).
	Result func(sink, result string)
	// Download returns a download URL for a bundle, "" when there is none.
	Download func(ctx context.Context, id string) string
	// Pods mutes the crashes of pods whose namespace default or
	// corecatch.io/notify annotation says so.
	Pods config.Pods
}

// Notifier fans crashes and Alertmanager groups out to the sinks.
type Notifier struct {
	cfg   config.Notify
	o     Options
	bots  []*feishuBot
	am    *alertmanager
	sinks []sink
}

// sink is one destination with its queue.
type sink interface {
	name() string
	run(ctx context.Context)
	queue() *queue
}

// New opens the queues in spool and prepares every configured sink. It
// starts nothing: Run does.
func New(cfg config.Notify, sp spool.Spool, o Options) (*Notifier, error) {
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Result == nil {
		o.Result = func(string, string) {}
	}
	if o.Download == nil {
		o.Download = func(context.Context, string) string { return "" }
	}
	n := &Notifier{cfg: cfg, o: o}
	for i, f := range cfg.Feishu {
		if f.Name == "" {
			f.Name = fmt.Sprintf("feishu%d", i)
		}
		b, err := newFeishuBot(f, cfg, sp.FeishuQueue(f.Name), o)
		if err != nil {
			return nil, err
		}
		n.bots = append(n.bots, b)
		n.sinks = append(n.sinks, b)
	}
	if cfg.Alertmanager.URL != "" {
		am, err := newAlertmanager(cfg, sp.AlertmanagerQueue(), o)
		if err != nil {
			return nil, err
		}
		n.am = am
		n.sinks = append(n.sinks, am)
	}
	return n, nil
}

// Sinks names every sink, for metrics that must exist before the first
// notification.
func (n *Notifier) Sinks() []string {
	var out []string
	for _, s := range n.sinks {
		out = append(out, s.name())
	}
	return out
}

// Pending returns how many notifications wait in each sink's queue.
func (n *Notifier) Pending() map[string]int {
	out := map[string]int{}
	for _, s := range n.sinks {
		out[s.name()] = s.queue().len()
	}
	return out
}

// Run sends until ctx ends.
func (n *Notifier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, s := range n.sinks {
		wg.Go(func() { s.run(ctx) })
	}
	wg.Wait()
}

// Crash queues a bundle's notifications. It only writes small files to the
// spool, never waits for a service.
func (n *Notifier) Crash(ctx context.Context, m *bundle.Metadata) {
	if len(n.sinks) == 0 {
		return
	}
	c := FromBundle(m)
	if slices.ContainsFunc(n.cfg.Mute, c.matches) || !n.o.Pods.Policy(m.Pod.Scope()).Notify {
		for _, s := range n.sinks {
			n.o.Result(s.name(), ResultMuted)
		}
		return
	}
	// A deduplicated crash's core is its bug's first.
	if c.DedupOf != "" {
		c.Download = n.o.Download(ctx, c.DedupOf)
	} else if m.Core.StoredBytes > 0 {
		c.Download = n.o.Download(ctx, m.ID)
	}
	for _, b := range n.bots {
		if b.takesCrash(c) {
			n.enqueue(b, &item{Key: c.key(), Queued: time.Now(), Crash: c})
		}
	}
	if n.am != nil {
		n.enqueue(n.am, &item{Key: c.key(), Queued: time.Now(), Crash: c})
	}
}

// enqueue adds it to s's queue, logging and counting what could not wait.
// It returns errTooLarge when the item itself was refused.
func (n *Notifier) enqueue(s sink, it *item) error {
	dropped, err := s.queue().add(it)
	for _, d := range dropped {
		n.o.Result(s.name(), ResultDropped)
		n.o.Log.Warn("notification queue full: dropped the oldest", zap.String("sink", s.name()), zap.String("key", d.Key))
	}
	if err != nil {
		n.o.Result(s.name(), ResultDropped)
		n.o.Log.Error("queue a notification", zap.String("sink", s.name()), zap.Error(err))
	}
	return err
}

// Bridge serves Alertmanager's webhook (payload version 4) and turns each
// group into a Feishu card for the bots that take alerts: all of them whose
// routes match, or the one named by ?bot=NAME, never a bot with alerts
// off. Only requests bearing the token of notify.bridge.token_file pass
// (401 otherwise); bodies over notify.bridge.max_body_bytes, and groups
// too large to queue, get 413.
func (n *Notifier) Bridge() (http.Handler, error) {
	if n.cfg.Bridge.TokenFile == "" {
		return nil, errors.New("the bridge needs a bearer token: set notify.bridge.token_file (or --token-file) to a file holding one, as Alertmanager's http_config.authorization.credentials_file sends it")
	}
	token, err := readSecret("", n.cfg.Bridge.TokenFile)
	if err != nil || token == "" {
		return nil, fmt.Errorf("the bridge's token (notify.bridge.token_file): %w", cmp.Or(err, errors.New("the file is empty: put a random token in it")))
	}
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !bearer(r, want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="corecatch"`)
			http.Error(w, "send the token of notify.bridge.token_file as Authorization: Bearer (Alertmanager: http_config.authorization.credentials_file)", http.StatusUnauthorized)
			return
		}
		if r.Method != http.MethodPost {
			http.Error(w, "POST Alertmanager's webhook payload here", http.StatusMethodNotAllowed)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, n.cfg.Bridge.MaxBodyBytes.Bytes)
		msg, err := readWebhook(r)
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("webhook payload over %d bytes (notify.bridge.max_body_bytes): lower max_alerts in the webhook_config", tooBig.Limit), http.StatusRequestEntityTooLarge)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		bot := r.URL.Query().Get("bot")
		sent, refused := 0, 0
		for _, b := range n.bots {
			if !b.alertsOn() || (bot == "" && !b.takesAlerts(msg)) || (bot != "" && b.cfg.Name != bot) {
				continue
			}
			if errors.Is(n.enqueue(b, &item{Key: msg.key(), Queued: time.Now(), Alerts: msg}), errTooLarge) {
				refused++
				continue
			}
			sent++
		}
		switch {
		case refused > 0 && sent == 0:
			http.Error(w, "the alert group is larger than notify.item_max_bytes allows, or the queue is full: dropped (counted as dropped)", http.StatusRequestEntityTooLarge)
		case sent == 0:
			http.Error(w, fmt.Sprintf("no Feishu bot takes this group (bot=%q): check notify.feishu routes and alerts", bot), http.StatusNotFound)
		default:
			fmt.Fprintf(w, "queued for %d bot(s)\n", sent)
		}
	}), nil
}

// bearer reports whether r carries the token whose digest is want, in a
// time that does not depend on how much of it matches.
func bearer(r *http.Request, want [sha256.Size]byte) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(got[:], want[:]) == 1
}

// readSecret returns a configured value, or the content of its file.
func readSecret(value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", file, err)
	}
	return strings.TrimSpace(string(data)), nil
}
