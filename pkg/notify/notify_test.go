package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/pkg/config"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/test/fakefeishu"
	"github.com/corecatch/corecatch/test/harness"
)

// results counts outcomes per sink, as the agent's metrics do.
type results struct {
	mu sync.Mutex
	n  map[string]int
}

func (r *results) add(sink, result string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	r.n[sink+" "+result]++
}

func (r *results) get(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[key]
}

// crash is a bundle of a Deployment's pod, numbered i.
func crash(i int, exe, signal string) *bundle.Metadata {
	return &bundle.Metadata{
		ID: fmt.Sprintf("20261129T053000Z-%s-%04d", exe, i), Time: time.Now(), Node: "node-7",
		Comm: exe, Exe: "/usr/local/bin/" + exe, SignalName: signal,
		Core:      bundle.Core{RawBytes: 3 << 30, StoredBytes: 200 << 20},
		Pod:       &bundle.Pod{Name: exe + "-5d8f7c9b4d-x7k2p", Namespace: "shop", Labels: map[string]string{"team": "payments"}},
		Container: &bundle.Container{Name: "app"},
		Workload:  &bundle.Workload{Kind: "Deployment", Name: exe},
		EBPF:      &bundle.EBPF{FaultAddr: "0x0", SiCode: 1},
		Backtrace: []bundle.Frame{{Function: "parse_header", Module: exe, Offset: 0x1c40}, {Function: "main", Module: exe, Offset: 0x1a10}},
		Title:     signal + " in parse_header (" + exe + ")",
		Dedup:     &bundle.Dedup{Count: 3},
	}
}

// start runs a notifier on the spool dir until the test ends or stop is called.
func start(t *testing.T, cfg config.Notify, dir string, r *results, pods ...config.PodDefaults) (n *Notifier, stop func()) {
	t.Helper()
	n, err := New(cfg, spool.Open(dir), Options{Version: "test", Result: r.add,
		Download: func(_ context.Context, id string) string { return "https://bundles.example.com/" + id },
		Pods:     config.Pods{Namespaces: pods}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		n.Run(ctx)
		close(done)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return n, stop
}

func feishuConfig(url, secret, keyword, lang string) config.Notify {
	c := config.Default().Notify
	c.Feishu = []config.Feishu{{Name: "sre", Webhook: url, Secret: secret, Keyword: keyword, Lang: lang}}
	return c
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func fake(t *testing.T, bot fakefeishu.Bot) *fakefeishu.Server {
	t.Helper()
	f, err := fakefeishu.Start(bot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// TestCrashCard sends one crash to a signed bot with a keyword: Feishu
// accepts exactly one card, which carries everything an SRE needs.
func TestCrashCard(t *testing.T) {
	f := fake(t, fakefeishu.Bot{Token: "tok", Secret: "s3cr3t", Keyword: "corecatch"})
	r := &results{}
	n, _ := start(t, feishuConfig(f.URL("tok"), "s3cr3t", "corecatch", "en"), t.TempDir(), r)
	m := crash(1, "checkout", "SIGSEGV")
	n.Crash(context.Background(), m)
	waitFor(t, 5*time.Second, "one accepted card", func() bool { return len(f.Accepted()) == 1 })
	time.Sleep(200 * time.Millisecond)
	if reqs := f.Requests(); len(reqs) != 1 {
		t.Fatalf("%d requests, want 1: %+v", len(reqs), reqs)
	}
	card := f.Accepted()[0].Message.Card
	text := card.Text()
	for _, want := range []string{"SIGSEGV in Deployment/checkout (app)", "node-7", "shop", "checkout-5d8f7c9b4d-x7k2p",
		"Deployment/checkout", "/usr/local/bin/checkout", "SIGSEGV: invalid memory access", "0x0", "3.0GiB raw, 200.0MiB stored",
		"#0 parse\\_header (checkout+0x1c40)", "SIGSEGV in parse\\_header (checkout)", "crash 3 of this bug", "corecatch pull " + m.ID, "corecatch debug " + m.ID} {
		if !strings.Contains(text, want) {
			t.Errorf("card lacks %q:\n%s", want, text)
		}
	}
	if card.Header.Template != "orange" {
		t.Errorf("header template %q, want orange for a single crash", card.Header.Template)
	}
	if b := card.Buttons(); len(b) != 1 || b[0].URL != "https://bundles.example.com/"+m.ID {
		t.Errorf("buttons %+v, want the download URL", b)
	}
	if got := r.get("feishu/sre ok"); got != 1 {
		t.Errorf("ok results %d, want 1", got)
	}
}

// TestChineseCard checks the zh texts.
func TestChineseCard(t *testing.T) {
	f := fake(t, fakefeishu.Bot{Token: "tok"})
	n, _ := start(t, feishuConfig(f.URL("tok"), "", "", "zh"), t.TempDir(), &results{})
	n.Crash(context.Background(), crash(1, "checkout", "SIGABRT"))
	waitFor(t, 5*time.Second, "one accepted card", func() bool { return len(f.Accepted()) == 1 })
	text := f.Accepted()[0].Message.Card.Text()
	for _, want := range []string{"命名空间", "SIGABRT: 主动中止", "下载 bundle"} {
		if !strings.Contains(text, want) {
			t.Errorf("card lacks %q:\n%s", want, text)
		}
	}
}

// count returns the crashes a card stands for: 1, "N crashes: ..." or a
// digest's "×N" entries.
func count(t *testing.T, c *fakefeishu.Card) map[string]int {
	t.Helper()
	out := map[string]int{}
	title := c.Header.Title.Content
	var n int
	var prog string
	switch {
	case strings.Contains(title, " crashes of "):
		for _, line := range strings.Split(c.Text(), "\n") {
			if !strings.HasPrefix(line, "• ") {
				continue
			}
			var sig string
			if _, err := fmt.Sscanf(strings.TrimPrefix(line, "• "), "**%s %s ×%d", &prog, &sig, &n); err != nil {
				t.Fatalf("digest line %q: %v", line, err)
			}
			out[strings.TrimSuffix(prog, "**")] += n
		}
	case strings.Contains(title, " crashes: "):
		fmt.Sscanf(title, "%d crashes: %s in %s", &n, new(string), &prog)
		out[prog] += n
	default:
		fmt.Sscanf(title, "%s in %s", new(string), &prog)
		out[prog]++
	}
	return out
}

// TestStormAggregates sends 200 crashes of one program and a few of others
// within a second: a handful of cards carry every crash, within Feishu's
// limits.
func TestStormAggregates(t *testing.T) {
	f := fake(t, fakefeishu.Bot{Token: "tok"})
	cfg := feishuConfig(f.URL("tok"), "", "", "en")
	cfg.Aggregate = config.Duration(time.Second)
	n, _ := start(t, cfg, t.TempDir(), &results{})
	want := map[string]int{}
	for i := range 200 {
		exe := "checkout"
		if i%40 == 39 {
			exe = fmt.Sprintf("other%d", i)
		}
		n.Crash(context.Background(), crash(i, exe, "SIGSEGV"))
		want["shop/Deployment/"+exe] += 1
	}
	got := map[string]int{}
	waitFor(t, 10*time.Second, "every crash in a card", func() bool {
		got = map[string]int{}
		for _, r := range f.Accepted() {
			for p, c := range count(t, r.Message.Card) {
				got[strings.TrimPrefix(p, "shop/")] += c
			}
		}
		total := 0
		for _, c := range got {
			total += c
		}
		return total == 200
	})
	for _, r := range f.Requests() {
		if r.Code != 0 {
			t.Errorf("Feishu answered %d %s", r.Code, r.Msg)
		}
	}
	if len(f.Requests()) > 10 {
		t.Errorf("%d requests for 200 crashes, want at most 10", len(f.Requests()))
	}
	if got["Deployment/checkout"] != 195 {
		t.Errorf("counts %v, want 195 for checkout", got)
	}
	t.Logf("%d requests, counts %v", len(f.Requests()), got)
}

// TestOutageAndRestart: Feishu is down while crashes come and the agent
// restarts; once it is back every crash arrives, once.
func TestOutageAndRestart(t *testing.T) {
	f := fake(t, fakefeishu.Bot{Token: "tok", Secret: "k"})
	if err := f.Down(); err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	cfg := feishuConfig(f.URL("tok"), "k", "", "en")
	r := &results{}
	n, stop := start(t, cfg, spool, r)
	for i := range 3 {
		n.Crash(context.Background(), crash(i, "checkout", "SIGSEGV"))
	}
	n.Crash(context.Background(), crash(9, "billing", "SIGABRT"))
	waitFor(t, 5*time.Second, "a failed attempt", func() bool { return r.get("feishu/sre error") > 0 })
	stop()
	if got := n.Pending()["feishu/sre"]; got != 2 {
		t.Errorf("%d pending after the outage, want 2 (one per program)", got)
	}
	if err := f.Up(); err != nil {
		t.Fatal(err)
	}
	n2, _ := start(t, cfg, spool, r)
	waitFor(t, 10*time.Second, "both cards", func() bool { return len(f.Accepted()) == 2 })
	time.Sleep(300 * time.Millisecond)
	got := map[string]int{}
	for _, req := range f.Requests() {
		if req.Code != 0 {
			t.Errorf("Feishu answered %d %s", req.Code, req.Msg)
		}
		for p, c := range count(t, req.Message.Card) {
			got[p] += c
		}
	}
	if len(got) != 2 || got["Deployment/checkout"] != 3 || got["Deployment/billing"] != 1 {
		t.Errorf("cards stand for %v, want checkout 3 and billing 1", got)
	}
	if p := n2.Pending()["feishu/sre"]; p != 0 {
		t.Errorf("%d still pending", p)
	}
}

// TestBadSecretKeepsCards: a refused signature is a config error an SRE
// fixes; the cards wait instead of being dropped.
func TestBadSecretKeepsCards(t *testing.T) {
	f := fake(t, fakefeishu.Bot{Token: "tok", Secret: "right"})
	r := &results{}
	n, _ := start(t, feishuConfig(f.URL("tok"), "wrong", "", "en"), t.TempDir(), r)
	n.Crash(context.Background(), crash(1, "checkout", "SIGSEGV"))
	waitFor(t, 5*time.Second, "a refused attempt", func() bool { return r.get("feishu/sre error") > 0 })
	if reqs := f.Requests(); reqs[0].Code != fakefeishu.CodeSignature {
		t.Errorf("code %d, want 19021", reqs[0].Code)
	}
	if p := n.Pending()["feishu/sre"]; p != 1 {
		t.Errorf("%d pending, want the card kept", p)
	}
}

// TestRoutesAndMute sends crashes to the bots whose routes match, and
// none for muted ones: by notify.mute, by the pod's corecatch.io/notify
// annotation, or by its namespace's default.
func TestRoutesAndMute(t *testing.T) {
	f, err := fakefeishu.Start(fakefeishu.Bot{Token: "pay"}, fakefeishu.Bot{Token: "all"})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := config.Default().Notify
	cfg.Feishu = []config.Feishu{
		{Name: "pay", Webhook: f.URL("pay"), Routes: []config.Match{{Labels: map[string]string{"team": "pay*"}}}},
		{Name: "all", Webhook: f.URL("all")},
	}
	cfg.Mute = []config.Match{{Exe: "flaky*", Signal: "SIGABRT"}}
	r := &results{}
	off := false
	n, _ := start(t, cfg, t.TempDir(), r, config.PodDefaults{Namespace: "sandbox-*", Notify: &off})
	n.Crash(context.Background(), crash(1, "checkout", "SIGSEGV"))
	other := crash(2, "search", "SIGSEGV")
	other.Pod.Labels = map[string]string{"team": "search"}
	n.Crash(context.Background(), other)
	n.Crash(context.Background(), crash(3, "flaky-test", "SIGABRT"))
	quiet := crash(4, "quiet", "SIGSEGV")
	quiet.Pod.Annotations = map[string]string{config.AnnotationNotify: "false"}
	n.Crash(context.Background(), quiet)
	sandboxed := crash(5, "toy", "SIGSEGV")
	sandboxed.Pod.Namespace = "sandbox-7"
	n.Crash(context.Background(), sandboxed)
	waitFor(t, 5*time.Second, "three cards", func() bool { return len(f.Accepted()) == 3 })
	time.Sleep(300 * time.Millisecond)
	by := map[string][]string{}
	for _, req := range f.Requests() {
		by[req.Token] = append(by[req.Token], req.Message.Card.Header.Title.Content)
	}
	if len(by["pay"]) != 1 || !strings.Contains(by["pay"][0], "checkout") || len(by["all"]) != 2 {
		t.Errorf("cards by bot %v, want checkout to pay, checkout and search to all", by)
	}
	if r.get("feishu/pay muted") != 3 {
		t.Errorf("muted not counted: %v", r.n)
	}
}

// webhook is a version 4 payload as Alertmanager posts it.
func webhook(status string) []byte {
	end := time.Time{}
	if status == "resolved" {
		end = time.Now()
	}
	w := Webhook{Version: "4", GroupKey: `{}:{alertname="CorecatchCrashLoop"}`, Status: status, Receiver: "feishu",
		GroupLabels:  map[string]string{"alertname": "CorecatchCrashLoop"},
		CommonLabels: map[string]string{"alertname": "CorecatchCrashLoop", "severity": "critical", "namespace": "shop"},
		ExternalURL:  "http://alertmanager:9093",
		Alerts: []Alert{{Status: status, Labels: map[string]string{"alertname": "CorecatchCrashLoop", "severity": "critical",
			"namespace": "shop", "workload": "Deployment/checkout"},
			Annotations: map[string]string{"summary": "checkout crash-loops", "description": "12 crashes in 10m",
				"runbook_url": "https://example.com/runbooks/crashloop"},
			StartsAt: time.Now().Add(-time.Minute), EndsAt: end, GeneratorURL: "http://prometheus:9090/graph"}},
	}
	data, _ := json.Marshal(w)
	return data
}

// bridgeConfig is a bot of f with a bridge token in dir; buttons may link
// to example.com and prometheus only.
func bridgeConfig(t *testing.T, f *fakefeishu.Server) config.Notify {
	t.Helper()
	cfg := feishuConfig(f.URL("tok"), "", "", "en")
	cfg.Bridge.TokenFile = filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(cfg.Bridge.TokenFile, []byte(bridgeToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Bridge.ButtonHosts = []string{"example.com", "prometheus"}
	return cfg
}

const bridgeToken = "0123456789abcdef-bridge"

// post sends body to the bridge at u with a bearer token ("" for none).
func post(t *testing.T, u, token string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// TestBridge turns Alertmanager's webhook into cards; a resolved group
// looks unlike a firing one, and buttons link only to allowed hosts.
func TestBridge(t *testing.T) {
	f := fake(t, fakefeishu.Bot{Token: "tok"})
	n, _ := start(t, bridgeConfig(t, f), t.TempDir(), &results{})
	h, err := n.Bridge()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	for _, status := range []string{"firing", "resolved"} {
		if code, body := post(t, srv.URL, bridgeToken, webhook(status)); code != http.StatusOK {
			t.Fatalf("bridge: %d %s", code, body)
		}
		waitFor(t, 5*time.Second, status+" card", func() bool { return len(f.Accepted()) == map[string]int{"firing": 1, "resolved": 2}[status] })
	}
	firing, resolved := f.Accepted()[0].Message.Card, f.Accepted()[1].Message.Card
	if firing.Header.Template != "red" || !strings.Contains(firing.Header.Title.Content, "FIRING") {
		t.Errorf("firing header %+v", firing.Header)
	}
	if resolved.Header.Template != "green" || !strings.Contains(resolved.Header.Title.Content, "RESOLVED") {
		t.Errorf("resolved header %+v", resolved.Header)
	}
	if b := firing.Buttons(); len(b) != 2 || b[0].URL != "https://example.com/runbooks/crashloop" || b[1].URL != "http://prometheus:9090/graph" {
		t.Errorf("firing buttons %+v, want runbook and source (alertmanager is not an allowed host)", b)
	}
	for _, bad := range []string{`{"version":"3"}`, `not json`} {
		if code, _ := post(t, srv.URL, bridgeToken, []byte(bad)); code != http.StatusBadRequest {
			t.Errorf("payload %q: %d, want 400", bad, code)
		}
	}
}

// TestBridgeWithoutToken: no bridge without a token file.
func TestBridgeWithoutToken(t *testing.T) {
	f := fake(t, fakefeishu.Bot{Token: "tok"})
	cfg := bridgeConfig(t, f)
	os.WriteFile(cfg.Bridge.TokenFile, []byte("\n"), 0o600)
	n, _ := start(t, cfg, t.TempDir(), &results{})
	if _, err := n.Bridge(); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("Bridge() with an empty token file: %v, want an error", err)
	}
	cfg.Bridge.TokenFile = ""
	n, _ = start(t, cfg, t.TempDir(), &results{})
	if _, err := n.Bridge(); err == nil || !strings.Contains(err.Error(), "token_file") {
		t.Errorf("Bridge() without a token file: %v, want an error naming notify.bridge.token_file", err)
	}
}

// TestQueueBounds: a queue keeps within its count, item and byte limits
// when items arrive, and when it reloads a spool that holds more.
func TestQueueBounds(t *testing.T) {
	dir := t.TempDir()
	l := limits{count: 100, item: 8 << 10, total: 32 << 10}
	q, err := openQueue(dir, l)
	if err != nil {
		t.Fatal(err)
	}
	big := func(key string, n int) *item {
		return &item{Key: key, Queued: time.Now(), Crash: &Crash{ID: key, Comm: strings.Repeat("x", n)}}
	}
	if _, err := q.add(big("huge", 9<<10)); !errors.Is(err, errTooLarge) {
		t.Errorf("an item over the item limit: %v, want errTooLarge", err)
	}
	dropped := 0
	for i := range 20 {
		d, err := q.add(big(fmt.Sprint("k", i), 7<<10))
		if err != nil {
			t.Fatal(err)
		}
		dropped += len(d)
	}
	if got := harness.DirBytes(t, dir); got > l.total || q.bytes != got || q.len() != 4 || dropped != 16 {
		t.Errorf("after 20 items of 7 KiB: %d items, %d bytes counted, %d in the spool, %d dropped; want 4 within %d", q.len(), q.bytes, got, dropped, l.total)
	}
	// A spool written by another configuration, and a hostile file: the
	// reload keeps within the limits and never reads the large one.
	os.WriteFile(filepath.Join(dir, "ffffffffffffffffffffffff.json"), bytes.Repeat([]byte("x"), 1<<20), 0o600)
	l.total = 16 << 10
	q, err = openQueue(dir, l)
	if err != nil {
		t.Fatal(err)
	}
	if got := harness.DirBytes(t, dir); got > l.total || q.bytes != got || q.len() != 2 {
		t.Errorf("reloaded: %d items, %d bytes counted, %d in the spool; want 2 within %d", q.len(), q.bytes, got, l.total)
	}
}

// TestWebhookRedacted: a send that fails, as net/http reports it with the
// URL, logs the bot's URL without its token.
func TestWebhookRedacted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens: every send fails with the URL in its error
	const token = "5f1d2c3b-aaaa-bbbb-cccc-0123456789ab"
	webhook := "http://" + addr + "/open-apis/bot/v2/hook/" + token
	core, logs := observer.New(zap.DebugLevel)
	cfg := feishuConfig(webhook, "", "", "en")
	n, err := New(cfg, spool.Open(t.TempDir()), Options{Log: zap.New(core), Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	n.Crash(ctx, crash(1, "checkout", "SIGSEGV"))
	waitFor(t, 5*time.Second, "a failed send logged", func() bool { return logs.FilterMessageSnippet("Feishu unavailable").Len() > 0 })
	for _, e := range logs.All() {
		line := fmt.Sprint(e.Message, e.ContextMap())
		if strings.Contains(line, token) {
			t.Errorf("the log shows the bot's token: %s", line)
		}
		if e.Message == "Feishu unavailable; cards stay queued and are retried" && !strings.Contains(line, "/open-apis/bot/v2/hook/****") {
			t.Errorf("the log does not say which bot failed: %s", line)
		}
	}
}

// TestAlertmanagerPush checks the alert a crash becomes, and that it waits
// while Alertmanager answers 503.
func TestAlertmanagerPush(t *testing.T) {
	var mu sync.Mutex
	var got [][]Alert
	fail := true
	am := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/api/v2/alerts" || r.Method != http.MethodPost {
			http.Error(w, "wrong endpoint", http.StatusNotFound)
			return
		}
		if fail {
			fail = false
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		var alerts []Alert
		if err := json.NewDecoder(r.Body).Decode(&alerts); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got = append(got, alerts)
	}))
	defer am.Close()
	cfg := config.Default().Notify
	cfg.Alertmanager.URL = am.URL
	r := &results{}
	n, _ := start(t, cfg, t.TempDir(), r)
	m := crash(1, "checkout", "SIGSEGV")
	n.Crash(context.Background(), m)
	waitFor(t, 10*time.Second, "the pushed alert", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	a := got[0][0]
	want := map[string]string{"alertname": "CorecatchCoreDump", "namespace": "shop", "workload": "Deployment/checkout",
		"container": "app", "exe": "checkout", "signal": "SIGSEGV", "node": "node-7", "severity": "warning"}
	if fmt.Sprint(a.Labels) != fmt.Sprint(want) {
		t.Errorf("labels %v, want %v", a.Labels, want)
	}
	if a.Annotations["pull_command"] != "corecatch pull "+m.ID || !strings.Contains(a.Annotations["backtrace"], "parse_header") ||
		a.Annotations["summary"] == "" {
		t.Errorf("annotations %v", a.Annotations)
	}
	if d := a.EndsAt.Sub(a.StartsAt); d < 14*time.Minute || d > 16*time.Minute {
		t.Errorf("endsAt - startsAt = %v, want the configured 15m", d)
	}
	if r.get("alertmanager error") != 1 || r.get("alertmanager ok") != 1 {
		t.Errorf("results %v, want one error then one ok", r.n)
	}
}
