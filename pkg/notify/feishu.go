package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
)

// Feishu's limits for a custom bot: requests per second and per minute, and
// the body size.
const (
	feishuPerSecond = 5
	feishuPerMinute = 100
	feishuMaxBody   = 20 << 10
)

// Feishu answers errors with HTTP 200 and a code in the body; these are the
// ones the sender acts on.
const (
	codeRateLimited = 11232
	codeTooLarge    = 19036
	codeBadRequest  = 9499
)

// digestAt is how many programs ready at once get one digest card instead
// of a card each.
const digestAt = 4

// feishuBot is one Feishu/Lark custom bot and its queue.
type feishuBot struct {
	cfg     config.Feishu
	webhook string
	// buttons says whether a bridged card may link to a URL.
	buttons   func(string) bool
	secret    string
	aggregate time.Duration
	o         Options
	q         *queue
	client    *http.Client
	limit     *limiter

	mu sync.Mutex
	// last is when each key's last card went out: later crashes of the
	// same program wait for the aggregation window.
	last map[string]time.Time
}

func newFeishuBot(f config.Feishu, cfg config.Notify, dir string, o Options) (*feishuBot, error) {
	webhook, err := readSecret(f.Webhook, f.WebhookFile)
	if err != nil {
		return nil, fmt.Errorf("feishu bot %s: webhook: %w", f.Name, err)
	}
	secret, err := readSecret(f.Secret, f.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("feishu bot %s: secret: %w", f.Name, err)
	}
	q, err := openQueue(dir, limitsOf(cfg))
	if err != nil {
		return nil, err
	}
	if f.Lang == "" {
		f.Lang = "zh"
	}
	return &feishuBot{cfg: f, webhook: webhook, buttons: allowedHosts(cfg.Bridge.ButtonHosts), secret: secret, aggregate: time.Duration(cfg.Aggregate), o: o, q: q,
		client: &http.Client{Timeout: 10 * time.Second}, limit: newLimiter(), last: map[string]time.Time{}}, nil
}

func (b *feishuBot) name() string  { return "feishu/" + b.cfg.Name }
func (b *feishuBot) queue() *queue { return b.q }

// takesCrash reports whether the bot wants the crash's card.
func (b *feishuBot) takesCrash(c *Crash) bool {
	return (b.cfg.Crashes == nil || *b.cfg.Crashes) && anyMatch(c, b.cfg.Routes)
}

// alertsOn reports whether the bot takes Alertmanager's groups at all,
// even when a request names it.
func (b *feishuBot) alertsOn() bool { return b.cfg.Alerts == nil || *b.cfg.Alerts }

// takesAlerts reports whether the bot wants an Alertmanager group: alerts
// on, and routes matching the group's common labels.
func (b *feishuBot) takesAlerts(w *Webhook) bool {
	if !b.alertsOn() {
		return false
	}
	l := w.CommonLabels
	c := &Crash{Namespace: l["namespace"], Workload: l["workload"], Container: l["container"], Exe: l["exe"], Signal: l["signal"], Labels: l}
	return anyMatch(c, b.cfg.Routes)
}

// readyAt is when an item may go: at once for a program without a recent
// card, else when its aggregation window ends.
func (b *feishuBot) readyAt(it *item) time.Time {
	if it.Crash == nil {
		return it.Queued
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if last, ok := b.last[it.Key]; ok && time.Now().Sub(last) < b.aggregate {
		return last.Add(b.aggregate)
	}
	return it.Queued
}

// run sends the queue until ctx ends: ready items, oldest first, a card
// each or one digest for many.
func (b *feishuBot) run(ctx context.Context) {
	serve(ctx, b.q, b.readyAt, func(items []*item) bool { return b.flush(ctx, items) })
}

// flush sends items as cards. It returns false when the service failed and
// the unsent items went back to the queue.
func (b *feishuBot) flush(ctx context.Context, items []*item) bool {
	var crashes []*item
	var batches [][]*item
	for _, it := range items {
		if it.Crash != nil {
			crashes = append(crashes, it)
		} else {
			batches = append(batches, []*item{it})
		}
	}
	if len(crashes) >= digestAt {
		batches = append(batches, crashes)
	} else {
		for _, it := range crashes {
			batches = append(batches, []*item{it})
		}
	}
	for i, batch := range batches {
		err := b.send(ctx, b.card(batch))
		var fe *feishuError
		switch {
		case err == nil:
			b.o.Result(b.name(), ResultOK)
			b.mu.Lock()
			for _, it := range batch {
				if it.Crash != nil {
					b.last[it.Key] = time.Now()
				}
				b.q.done(it)
			}
			b.mu.Unlock()
			continue
		case errors.As(err, &fe) && (fe.Code == codeBadRequest || fe.Code == codeTooLarge):
			// Sending it again cannot help: the card itself is wrong.
			b.o.Result(b.name(), ResultRejected)
			b.o.Log.Error("Feishu refused a card; dropped it (a corecatch bug: please report it with this line)",
				zap.String("sink", b.name()), zap.Error(err))
			for _, it := range batch {
				b.q.done(it)
			}
			continue
		}
		// Rate limits, network errors, a bad secret or keyword (fixed by
		// a config change and a restart): keep everything not sent.
		b.o.Result(b.name(), ResultError)
		b.o.Log.Warn("Feishu unavailable; cards stay queued and are retried", zap.String("sink", b.name()),
			zap.Int("queued", b.q.len()), zap.Error(err))
		for _, rest := range batches[i:] {
			for _, it := range rest {
				b.q.retry(it)
			}
		}
		return false
	}
	return true
}

// feishuError is a refusal Feishu reported in the body.
type feishuError struct {
	Code int
	Msg  string
}

func (e *feishuError) Error() string {
	hint := ""
	switch e.Code {
	case 19021:
		hint = ": check notify.feishu secret (and this node's clock)"
	case 19024:
		hint = ": set notify.feishu keyword to the bot's keyword"
	case 19001:
		hint = ": check notify.feishu webhook"
	case 19022:
		hint = ": allow this node's address in the bot's IP list"
	}
	return fmt.Sprintf("feishu code %d: %s%s", e.Code, e.Msg, hint)
}

// send posts one card, signed when the bot has a secret, within the bot's
// rate limits.
func (b *feishuBot) send(ctx context.Context, card map[string]any) error {
	msg := map[string]any{"msg_type": "interactive", "card": card}
	if b.secret != "" {
		ts := strconv.FormatInt(time.Now().Unix(), 10)
		msg["timestamp"], msg["sign"] = ts, Sign(ts, b.secret)
	}
	body, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	if len(body) > feishuMaxBody {
		return &feishuError{Code: codeTooLarge, Msg: fmt.Sprintf("card of %d bytes", len(body))}
	}
	if err := b.limit.wait(ctx); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.webhook, bytes.NewReader(body))
	if err != nil {
		return hideToken(err, b.webhook)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(req)
	if err != nil {
		return hideToken(err, b.webhook) // net/http's errors quote the URL
	}
	defer resp.Body.Close()
	var r struct {
		Code *int   `json:"code"`
		Msg  string `json:"msg"`
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("feishu: HTTP %s: %.200s", resp.Status, data)
	}
	if err := json.Unmarshal(data, &r); err != nil || r.Code == nil {
		return fmt.Errorf("feishu: unexpected answer %.200q", data)
	}
	if *r.Code != 0 {
		return &feishuError{Code: *r.Code, Msg: r.Msg}
	}
	return nil
}

// Sign is Feishu's request signature: base64 of an HMAC-SHA256 keyed by
// timestamp + "\n" + secret over nothing.
func Sign(timestamp, secret string) string {
	h := hmac.New(sha256.New, []byte(timestamp+"\n"+secret))
	return base64.StdEncoding.EncodeToString(h.Sum(nil))
}

// limiter keeps a bot under Feishu's limits: a sliding window per second
// and per minute, each with a margin for requests that take different
// times to arrive.
type limiter struct {
	mu   sync.Mutex
	sent []time.Time
}

func newLimiter() *limiter { return &limiter{} }

// wait blocks until one more request fits, and records it.
func (l *limiter) wait(ctx context.Context) error {
	for {
		d := l.reserve()
		if d == 0 {
			return nil
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// reserve records a request and returns 0 when it fits, else how long to
// wait before asking again.
func (l *limiter) reserve() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	windows := []struct {
		span time.Duration
		max  int
	}{{1200 * time.Millisecond, feishuPerSecond}, {62 * time.Second, feishuPerMinute}}
	keep := l.sent[:0]
	for _, t := range l.sent {
		if now.Sub(t) < windows[1].span {
			keep = append(keep, t)
		}
	}
	l.sent = keep
	for _, w := range windows {
		var in []time.Time
		for _, t := range l.sent {
			if now.Sub(t) < w.span {
				in = append(in, t)
			}
		}
		if len(in) >= w.max {
			return in[0].Add(w.span).Sub(now)
		}
	}
	l.sent = append(l.sent, now)
	return 0
}

// Redacted is a webhook URL without its token (the last element of its
// path, for Feishu and Lark) and without user info or query, as logs and
// errors show it: whoever has the URL can post as the bot.
func Redacted(webhook string) string {
	u, err := url.Parse(webhook)
	if err != nil || u.Host == "" {
		return "(a webhook URL; check notify.feishu webhook)"
	}
	dir, _ := path.Split(u.Path)
	return u.Scheme + "://" + u.Host + (&url.URL{Path: dir}).EscapedPath() + "****"
}

// tokenError is an error whose text had the webhook URL's secrets
// redacted; the original stays reachable to errors.As.
type tokenError struct {
	err  error
	text string
}

func (e *tokenError) Error() string { return e.text }
func (e *tokenError) Unwrap() error { return e.err }

// hideToken returns err with the webhook URL, and its token wherever else
// it appears, replaced by Redacted's form.
func hideToken(err error, webhook string) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = Redacted(webhook) // quoted in its text, so not found below
	}
	text := strings.ReplaceAll(err.Error(), webhook, Redacted(webhook))
	if u, perr := url.Parse(webhook); perr == nil {
		for _, secret := range []string{path.Base(u.Path), u.RawQuery, u.User.String()} {
			if len(secret) >= 8 { // shorter ones would garble the text, not hide anything
				text = strings.ReplaceAll(text, secret, "****")
			}
		}
	}
	return &tokenError{err: err, text: text}
}
