package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/corecatch/corecatch/pkg/config"
)

// AlertName is the alertname of the alerts the agent pushes, one per crash.
const AlertName = "CorecatchCoreDump"

// Webhook is Alertmanager's webhook payload, version 4.
type Webhook struct {
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
	Status            string            `json:"status"`
	Receiver          string            `json:"receiver"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Alerts            []Alert           `json:"alerts"`
}

// Alert is one alert, as Alertmanager sends it in a webhook and as the
// agent pushes it (without status and fingerprint).
type Alert struct {
	Status       string            `json:"status,omitempty"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
	Fingerprint  string            `json:"fingerprint,omitempty"`
}

// key merges successive states of one group in one status: only the latest
// matters, and a resolution does not replace the page it resolves.
func (w *Webhook) key() string { return "alerts\x00" + w.GroupKey + "\x00" + w.Status }

// cardAlerts is how many alerts of a group a card shows, and so how many a
// queued group keeps; the rest count in TruncatedAlerts.
const cardAlerts = 10

// maxValue bounds each label and annotation value a queued group keeps,
// in runes: a card shows at most 400 of one.
const maxValue = 1024

// readWebhook decodes and checks a webhook payload (its body bounded by
// the caller), and keeps of it only what a card shows.
func readWebhook(r *http.Request) (*Webhook, error) {
	var w Webhook
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("not an Alertmanager webhook payload: %w", err)
	}
	if w.Version != "4" {
		return nil, fmt.Errorf("webhook payload version %q: this bridge reads version 4 (Alertmanager 0.16 and later)", w.Version)
	}
	if w.Status != "firing" && w.Status != "resolved" {
		return nil, fmt.Errorf("webhook status %q: want firing or resolved", w.Status)
	}
	if len(w.Alerts) == 0 {
		return nil, errors.New("webhook payload without alerts")
	}
	if len(w.Alerts) > cardAlerts {
		w.TruncatedAlerts += len(w.Alerts) - cardAlerts
		w.Alerts = w.Alerts[:cardAlerts]
	}
	for _, m := range []map[string]string{w.GroupLabels, w.CommonLabels, w.CommonAnnotations} {
		clipValues(m)
	}
	for _, a := range w.Alerts {
		clipValues(a.Labels)
		clipValues(a.Annotations)
	}
	return &w, nil
}

// clipValues bounds every value of m to maxValue runes.
func clipValues(m map[string]string) {
	for k, v := range m {
		if len(v) > maxValue {
			m[k] = clip(v, maxValue)
		}
	}
}

// alertmanager pushes every crash to Alertmanager's API as an alert with an
// explicit end, since a crash is an event, not a state.
type alertmanager struct {
	url      string
	duration time.Duration
	severity string
	o        Options
	q        *queue
	client   *http.Client
}

func newAlertmanager(cfg config.Notify, dir string, o Options) (*alertmanager, error) {
	q, err := openQueue(dir, limitsOf(cfg))
	if err != nil {
		return nil, err
	}
	return &alertmanager{url: strings.TrimRight(cfg.Alertmanager.URL, "/") + "/api/v2/alerts", duration: time.Duration(cfg.Alertmanager.Duration),
		severity: cfg.Alertmanager.Severity, o: o, q: q, client: &http.Client{Timeout: 10 * time.Second}}, nil
}

func (a *alertmanager) name() string  { return "alertmanager" }
func (a *alertmanager) queue() *queue { return a.q }

// alert renders a crash (or a run of them) as an alert.
func (a *alertmanager) alert(c *Crash) Alert {
	labels := map[string]string{"alertname": AlertName, "severity": a.severity, "node": c.Node, "signal": c.Signal,
		"namespace": c.Namespace, "workload": c.Workload, "container": c.Container, "exe": base(c.Exe)}
	if labels["exe"] == "" {
		labels["exe"] = c.Comm
	}
	for k, v := range labels {
		if v == "" {
			delete(labels, k) // an empty label is no label to Alertmanager
		}
	}
	summary := fmt.Sprintf("%s in %s on %s", c.Signal, c.program(), c.Node)
	if c.Title != "" {
		summary = fmt.Sprintf("%s: %s on %s", c.program(), c.Title, c.Node)
	}
	if c.Count > 1 {
		summary = fmt.Sprintf("%d crashes: %s", c.Count, summary)
	}
	ann := map[string]string{"summary": summary, "description": signalText(c.Signal, "en"),
		"bundle_id": c.ID, "pull_command": "corecatch pull " + c.ID, "count": strconv.Itoa(c.Count)}
	if len(c.Frames) > 0 {
		ann["backtrace"] = strings.Join(c.Frames, "\n")
	}
	if c.FaultAddr != "" {
		ann["fault_addr"] = c.FaultAddr
	}
	if c.Pod != "" {
		ann["pod"] = c.Pod
	}
	if c.Missing != "" {
		ann["core_missing"] = c.Missing
	}
	end := c.Time
	if now := time.Now(); now.After(end) {
		end = now // delivered late: still let it fire for its duration
	}
	al := Alert{Labels: labels, Annotations: ann, StartsAt: c.First, EndsAt: end.Add(a.duration)}
	if httpURL(c.Download) {
		al.GeneratorURL = c.Download
	}
	return al
}

// run pushes what is queued, all of it in one request.
func (a *alertmanager) run(ctx context.Context) {
	serve(ctx, a.q, func(it *item) time.Time { return it.Queued }, func(items []*item) bool {
		err := a.push(ctx, items)
		var perm *permanentError
		switch {
		case err == nil:
			a.o.Result(a.name(), ResultOK)
		case errors.As(err, &perm):
			a.o.Result(a.name(), ResultRejected)
			a.o.Log.Error("Alertmanager refused the crash alerts; dropped them", zap.Error(err))
		default:
			a.o.Result(a.name(), ResultError)
			a.o.Log.Warn("Alertmanager unavailable; alerts stay queued and are retried", zap.Int("queued", a.q.len()), zap.Error(err))
			for _, it := range items {
				a.q.retry(it)
			}
			return false
		}
		for _, it := range items {
			a.q.done(it)
		}
		return true
	})
}

// permanentError is an answer that retrying cannot change.
type permanentError struct{ error }

func (a *alertmanager) push(ctx context.Context, items []*item) error {
	var alerts []Alert
	for _, it := range items {
		alerts = append(alerts, a.alert(it.Crash))
	}
	body, err := json.Marshal(alerts)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.url, bytes.NewReader(body))
	if err != nil {
		return &permanentError{err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	switch {
	case resp.StatusCode/100 == 2:
		return nil
	case resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusTooManyRequests:
		return &permanentError{fmt.Errorf("alertmanager %s: HTTP %s: %s", shownURL(a.url), resp.Status, strings.TrimSpace(string(data)))}
	}
	return fmt.Errorf("alertmanager %s: HTTP %s: %s", shownURL(a.url), resp.Status, strings.TrimSpace(string(data)))
}

// shownURL is a URL as errors show it: without a password (net/http's own
// errors drop it too).
func shownURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(the configured URL)"
	}
	return p.Redacted()
}
