package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/notify"
	"github.com/corecatch/corecatch/pkg/spool"
	"github.com/corecatch/corecatch/test/fakefeishu"
	"github.com/corecatch/corecatch/test/harness"
)

// bridgeToken is the bearer token of the bridges the tests start.
const bridgeToken = "c0ffee-7f3a9b2e-bridge-token"

// writeToken writes bridgeToken into dir and returns the file's path.
func writeToken(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "token")
	if err := os.WriteFile(p, []byte(bridgeToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// group is a webhook payload of one group with n alerts, each with an
// annotation of pad bytes, and the given buttons' URLs.
func group(key string, n, pad int, runbook, source, external string) []byte {
	w := notify.Webhook{Version: "4", GroupKey: key, Status: "firing", Receiver: "feishu",
		GroupLabels: map[string]string{"alertname": "CorecatchCrashLoop"}, CommonLabels: map[string]string{"alertname": "CorecatchCrashLoop", "severity": "critical"},
		ExternalURL: external}
	for i := range n {
		w.Alerts = append(w.Alerts, notify.Alert{Status: "firing", StartsAt: time.Now(), GeneratorURL: source,
			Labels: map[string]string{"alertname": "CorecatchCrashLoop", "pod": fmt.Sprint("checkout-", i)},
			Annotations: map[string]string{"summary": "checkout crash-loops", "runbook_url": runbook,
				"description": strings.Repeat("d", min(pad, 1000)), "extra": strings.Repeat("e", max(pad-1000, 0))}})
	}
	data, _ := json.Marshal(w)
	return data
}

// send POSTs body to the bridge with the Authorization header auth ("":
// none) and returns the status code.
func send(t *testing.T, u, auth string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// dropped reads corecatch_notifications_total{result="dropped"} of a sink
// from a /metrics page.
func dropped(page, sink string) int {
	m := regexp.MustCompile(`corecatch_notifications_total\{result="dropped",sink="` + regexp.QuoteMeta(sink) + `"\} (\d+)`).FindStringSubmatch(page)
	if m == nil {
		return -1
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// TestSecretsOffTheCommandLine: --help offers the file and environment
// forms of the bot's URL and secret, and says why.
func TestSecretsOffTheCommandLine(t *testing.T) {
	for _, cmd := range []string{"agent", "feishu-bridge"} {
		out, err := exec.Command(harness.Binary(t), cmd, "--help").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --help: %v\n%s", cmd, err, out)
		}
		for _, want := range []string{"--feishu-webhook-file", "--feishu-secret-file", "CORECATCH_FEISHU_WEBHOOK", "CORECATCH_FEISHU_SECRET", "in ps"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s --help does not mention %q", cmd, want)
			}
		}
	}
}

// TestBridgeHostile puts a real `corecatch feishu-bridge` in front of
// hostile peers: requests without the token, or with a wrong one, get 401;
// a bot with alerts: false gets nothing even when a request names it;
// buttons to hosts outside notify.bridge.button_hosts are dropped; bodies,
// items and the queue stay within their bounds, also across a restart
// onto a spool that holds more; and connections that trickle or send
// nothing are closed by the server's timeouts.
func TestBridgeHostile(t *testing.T) {
	f, err := fakefeishu.Start(fakefeishu.Bot{Token: "tok"}, fakefeishu.Bot{Token: "quiet"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	dir := harness.TempDir(t, "ccbr")
	sp := spool.Open(filepath.Join(dir, "spool"))
	// The first bot's URL comes from a file named in the environment,
	// over the config's: no secret on the command line.
	hook := filepath.Join(dir, "webhook")
	if err := os.WriteFile(hook, []byte(f.URL("tok")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CORECATCH_FEISHU_WEBHOOK_FILE", hook)
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`spool: %s
notify:
  queue_max_bytes: 32KiB
  item_max_bytes: 8KiB
  feishu:
  - name: sre
    webhook: http://127.0.0.1:1/open-apis/bot/v2/hook/overridden
    lang: en
  - name: quiet
    webhook: %s
    lang: en
    alerts: false
  bridge:
    token_file: %s
    button_hosts: [runbooks.example.com, "*.prom.example.com"]
    max_body_bytes: 64KiB
`, sp, f.URL("quiet"), writeToken(t, dir))), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	start := func() *service {
		return startService(t, dir, addr, "/healthz", harness.Binary(t), "--config", cfg, "feishu-bridge", "--listen", addr)
	}
	br := start()
	u := br.base + "/alertmanager/feishu"
	ok := group("g0", 1, 10, "https://runbooks.example.com/crashloop", "http://evil.example.net/graph", "https://am.prom.example.com")

	for _, auth := range []string{"", "Bearer wrong-token", "Bearer " + bridgeToken + "x", "Basic " + bridgeToken, bridgeToken} {
		if code := send(t, u, auth, ok); code != http.StatusUnauthorized {
			t.Errorf("Authorization %q: %d, want 401", auth, code)
		}
	}
	if code := send(t, u, "Bearer "+bridgeToken, ok); code != http.StatusOK {
		t.Fatalf("with the token: %d, want 200", code)
	}
	if code := send(t, u+"?bot=quiet", "Bearer "+bridgeToken, group("g1", 1, 10, "", "", "")); code != http.StatusNotFound {
		t.Errorf("?bot=quiet (alerts: false): %d, want 404", code)
	}
	cards := waitCards(t, f, 1, 10*time.Second)
	for _, r := range f.Requests() {
		if r.Token != "tok" {
			t.Errorf("a card reached bot %q (alerts: false)", r.Token)
		}
	}
	if len(cards) != 1 {
		t.Fatalf("%d cards, want 1", len(cards))
	}
	var urls []string
	for _, b := range cards[0].Message.Card.Buttons() {
		urls = append(urls, b.URL)
	}
	if strings.Join(urls, " ") != "https://runbooks.example.com/crashloop https://am.prom.example.com" {
		t.Errorf("buttons %q: want the runbook and Alertmanager, not evil.example.net", urls)
	}

	// Bounds: a body over max_body_bytes, an item over item_max_bytes, and
	// while Feishu is down a queue over queue_max_bytes.
	if code := send(t, u, "Bearer "+bridgeToken, group("big", 1, 70<<10, "", "", "")); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a 70 KiB body: %d, want 413", code)
	}
	if code := send(t, u, "Bearer "+bridgeToken, group("wide", 10, 2000, "", "", "")); code != http.StatusRequestEntityTooLarge {
		t.Errorf("a group of 10 alerts of 2 KB (over item_max_bytes once kept): %d, want 413", code)
	}
	if err := f.Down(); err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		if code := send(t, u, "Bearer "+bridgeToken, group(fmt.Sprint("q", i), 4, 1000, "", "", "")); code != http.StatusOK {
			t.Errorf("group %d of 12 while Feishu is down: %d, want 200 (the oldest dropped)", i, code)
		}
	}
	queue := sp.FeishuQueue("sre")
	n, d := harness.DirBytes(t, queue), dropped(br.get("/metrics"), "feishu/sre")
	t.Logf("Feishu down, 12 groups of about 5 KiB: %d bytes queued in the spool, %d dropped", n, d)
	if n > 32<<10 {
		t.Errorf("the queue holds %d bytes in the spool, over queue_max_bytes (32 KiB)", n)
	}
	if d < 5 {
		t.Errorf("corecatch_notifications_total dropped = %d, want the item refused and the oldest groups counted", d)
	}

	// A restart onto a spool with a file no agent wrote: it is not read,
	// and what is reloaded stays within the bounds.
	br.stop()
	if err := os.WriteFile(filepath.Join(queue, "0123456789abcdef01234567.json"), bytes.Repeat([]byte(" "), 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	br = start()
	if n := harness.DirBytes(t, queue); n > 32<<10 || n == 0 {
		t.Errorf("after the restart the queue holds %d bytes, over queue_max_bytes (32 KiB)", n)
	}

	cutsOffSlowPeers(t, addr)
}

// cutsOffSlowPeers checks that the HTTP server at addr cuts off, at once
// and without waiting for each other, a connection that trickles its
// headers, one that sends nothing, and one that sends more headers than
// allowed (431).
func cutsOffSlowPeers(t *testing.T, addr string) {
	t.Helper()
	peers := map[string]func(net.Conn){
		"trickled headers": func(conn net.Conn) {
			fmt.Fprintf(conn, "POST /alertmanager/feishu HTTP/1.1\r\nHost: x\r\n")
			for range 60 {
				time.Sleep(500 * time.Millisecond)
				if _, err := fmt.Fprintf(conn, "X-Slow: 1\r\n"); err != nil {
					return
				}
			}
		},
		"silence": func(net.Conn) {},
		"64 KiB of headers": func(conn net.Conn) {
			fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("h", 64<<10))
		},
	}
	var wg sync.WaitGroup
	for name, talk := range peers {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer conn.Close()
			go talk(conn)
			began := time.Now()
			conn.SetReadDeadline(began.Add(30 * time.Second))
			answer, err := io.ReadAll(conn)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Errorf("%s %s: the connection is still open after 30 s", addr, name)
			}
			if name == "64 KiB of headers" && !bytes.HasPrefix(answer, []byte("HTTP/1.1 431")) {
				t.Errorf("%s %s: answered %.40q, want 431", addr, name, answer)
			}
			t.Logf("%s %s: closed by the server after %v", addr, name, time.Since(began).Round(100*time.Millisecond))
		})
	}
	wg.Wait()
}
