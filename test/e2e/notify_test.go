package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/corecatch/corecatch/pkg/bundle"
	"github.com/corecatch/corecatch/test/fakefeishu"
	"github.com/corecatch/corecatch/test/harness"
)

// notifyNode installs corecatch with a Feishu bot of the fake (signed, with
// a keyword), extra notify settings and extra top-level YAML, and starts
// the agent.
func notifyNode(t *testing.T, f *fakefeishu.Server, extra, top string) (*harness.Node, *agentProc, string, string) {
	t.Helper()
	return agentNode(t, "not", fmt.Sprintf(`%snotify:
  download_url: "https://bundles.example.com/{id}"
%s  feishu:
  - name: sre
    webhook: %s
    secret: s3cr3t
    keyword: corecatch
    lang: en
`, top, extra, f.URL("tok")))
}

func startFeishu(t *testing.T) *fakefeishu.Server {
	t.Helper()
	f, err := fakefeishu.Start(fakefeishu.Bot{Token: "tok", Secret: "s3cr3t", Keyword: "corecatch"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// waitCards waits until the fake accepted want cards.
func waitCards(t *testing.T, f *fakefeishu.Server, want int, d time.Duration) []fakefeishu.Request {
	t.Helper()
	deadline := time.Now().Add(d)
	for len(f.Accepted()) < want {
		if time.Now().After(deadline) {
			t.Fatalf("%d cards accepted after %v, want %d; requests: %+v", len(f.Accepted()), d, want, f.Requests())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything more would arrive now
	return f.Accepted()
}

// crashCount is how many crashes a crash card stands for.
func crashCount(c *fakefeishu.Card) int {
	n := 1
	fmt.Sscanf(c.Header.Title.Content, "%d crashes:", &n)
	return n
}

// checkRequests fails on any request Feishu refused.
func checkRequests(t *testing.T, f *fakefeishu.Server) {
	t.Helper()
	for _, r := range f.Requests() {
		if r.Code != fakefeishu.CodeOK {
			t.Errorf("Feishu answered %d %s to %s", r.Code, r.Msg, r.Body)
		}
	}
}

// TestFeishuCard: a real crash reaches the fake Feishu as exactly one
// valid, signed card with the crash's facts and commands.
func TestFeishuCard(t *testing.T) {
	f := startFeishu(t)
	n, a, _, _ := notifyNode(t, f, "", "")
	exe := buildSignals(t, n.Dir)
	cmd := exec.Command(exe, "segv")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)
	cards := waitCards(t, f, 1, 20*time.Second)
	checkRequests(t, f)
	if len(f.Requests()) != 1 {
		t.Fatalf("%d requests, want exactly 1", len(f.Requests()))
	}
	card := cards[0].Message.Card
	text := card.Text()
	for _, want := range []string{"SIGSEGV in signals", m.Node, exe, "SIGSEGV: invalid memory access",
		"corecatch pull " + m.ID, "corecatch debug " + m.ID, "corecatch"} {
		if !strings.Contains(text, want) {
			t.Errorf("card lacks %q:\n%s", want, text)
		}
	}
	if m.EBPF != nil && m.EBPF.FaultAddr != "" && !strings.Contains(text, m.EBPF.FaultAddr) {
		t.Errorf("card lacks the fault address %s:\n%s", m.EBPF.FaultAddr, text)
	}
	if b := card.Buttons(); len(b) != 1 || b[0].URL != "https://bundles.example.com/"+m.ID {
		t.Errorf("buttons %+v, want the bundle's download URL", b)
	}
	if cards[0].Message.Sign == "" {
		t.Error("the card was not signed")
	}
	a.waitLine(t, "crash collected", m.ID)
}

// TestAlertmanagerRoundTrip pushes a real crash to a real Alertmanager,
// whose webhook brings it back through the agent's bridge as a card:
// Alertmanager sends the bridge's token from a file, the bridge listens on
// its own port, and the metrics port serves no bridge.
func TestAlertmanagerRoundTrip(t *testing.T) {
	f := startFeishu(t)
	dir, err := os.MkdirTemp("", "ccam")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	amAddr, agentAddr, bridgeAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	token := writeToken(t, dir)
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`route:
  receiver: feishu
  group_by: [alertname, namespace, workload, exe]
  group_wait: 1s
  group_interval: 5s
  repeat_interval: 1h
receivers:
  - name: feishu
    webhook_configs:
      - url: http://%s/alertmanager/feishu
        send_resolved: true
        http_config:
          authorization:
            credentials_file: %s
`, bridgeAddr, token)), 0o644); err != nil {
		t.Fatal(err)
	}
	am := startService(t, dir, amAddr, "/-/ready", "prometheus-alertmanager", "--config.file", cfg,
		"--storage.path", filepath.Join(dir, "am-data"), "--web.listen-address", amAddr, "--cluster.listen-address", "")

	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccam-%d.sock", os.Getpid()))
	n := harness.Install(t, fmt.Sprintf(`socket: %s
notify:
  feishu:
  - name: sre
    webhook: %s
    secret: s3cr3t
    keyword: corecatch
    lang: en
    crashes: false
  alertmanager:
    url: %s
  bridge:
    listen: %s
    token_file: %s
`, socket, f.URL("tok"), am.base, bridgeAddr, token))
	t.Cleanup(func() { os.Remove(socket) })
	startAgentListen(t, n, socket, agentAddr)
	for _, c := range []struct {
		u    string
		want int
	}{{"http://" + agentAddr + "/alertmanager/feishu", http.StatusNotFound}, {"http://" + bridgeAddr + "/alertmanager/feishu", http.StatusUnauthorized}} {
		if code := send(t, c.u, "", []byte("{}")); code != c.want {
			t.Errorf("POST %s without a token: %d, want %d", c.u, code, c.want)
		}
	}
	cutsOffSlowPeers(t, agentAddr)
	cutsOffSlowPeers(t, bridgeAddr)
	exe := buildSignals(t, n.Dir)
	cmd := exec.Command(exe, "abrt")
	n.Crash(cmd)
	m := n.WaitBundle(cmd.Process.Pid)

	var alerts []struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
		EndsAt      time.Time         `json:"endsAt"`
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(alerts) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Alertmanager has no CorecatchCoreDump alert after 20s:\n%s", am.logTail())
		}
		time.Sleep(200 * time.Millisecond)
		json.Unmarshal([]byte(am.get("/api/v2/alerts?filter=alertname%3D%22CorecatchCoreDump%22")), &alerts)
	}
	al := alerts[0]
	if al.Labels["exe"] != "signals" || al.Labels["signal"] != "SIGABRT" || al.Labels["node"] != m.Node || al.Labels["severity"] != "warning" {
		t.Errorf("alert labels %v", al.Labels)
	}
	if al.Annotations["pull_command"] != "corecatch pull "+m.ID || al.EndsAt.IsZero() {
		t.Errorf("alert annotations %v, endsAt %v", al.Annotations, al.EndsAt)
	}
	cards := waitCards(t, f, 1, 30*time.Second)
	checkRequests(t, f)
	card := cards[0].Message.Card
	if text := card.Text(); !strings.Contains(card.Header.Title.Content, "FIRING") || !strings.Contains(text, "CorecatchCoreDump") ||
		!strings.Contains(text, `SIGABRT in crash\_abrt (signals)`) || !strings.Contains(text, "corecatch pull "+m.ID) {
		t.Errorf("bridged card %q:\n%s", card.Header.Title.Content, text)
	}
	if card.Header.Template != "orange" {
		t.Errorf("template %q, want orange for severity warning", card.Header.Template)
	}
}

// TestFeishuStorm: 200 crashes of one program in about 20 s reach Feishu as
// a few cards, within its limits, that count every crash.
func TestFeishuStorm(t *testing.T) {
	f := startFeishu(t)
	// missing_after is short so that a crash the kernel skipped is
	// counted within the test, but not shorter than a collection takes on
	// a loaded CI machine: at 2 s one crash's bundle came after its
	// "missing" record (the default is a minute).
	n, _, _, _ := notifyNode(t, f, "  aggregate: 10s\n", "observer:\n  missing_after: 10s\n")
	exe := buildSignals(t, n.Dir)
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var wg sync.WaitGroup
	cored := make(chan bool, 200)
	for range 200 {
		<-tick.C
		cmd := exec.Command(exe, "segv")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			cmd.Wait()
			cored <- cmd.ProcessState.Sys().(syscall.WaitStatus).CoreDump()
		})
	}
	wg.Wait()
	close(cored)
	cores := 0
	for c := range cored {
		if c {
			cores++
		}
	}
	// Beyond core_pipe_limit concurrent dumps the kernel skips the core;
	// the agent then records a crash without one, which counts as well.
	t.Logf("200 crashes in %v, %d with a core", time.Since(start).Round(time.Millisecond), cores)
	deadline := time.Now().Add(60 * time.Second)
	total := 0
	for total < 200 && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		total = 0
		for _, r := range f.Accepted() {
			total += crashCount(r.Message.Card)
		}
	}
	time.Sleep(time.Second)
	checkRequests(t, f)
	var titles []string
	total = 0
	for _, r := range f.Accepted() {
		total += crashCount(r.Message.Card)
		titles = append(titles, r.Message.Card.Header.Title.Content)
	}
	if total != 200 {
		t.Errorf("cards count %d crashes, want 200: %q", total, titles)
	}
	if len(f.Requests()) > 10 {
		t.Errorf("%d requests, want at most 10: %q", len(f.Requests()), titles)
	}
	t.Logf("%d requests: %q", len(f.Requests()), titles)
}

// TestFeishuOutage: Feishu is down for 60 s, crashes happen and the agent
// is killed and restarted meanwhile; when Feishu is back every crash
// arrives, none twice.
func TestFeishuOutage(t *testing.T) {
	f := startFeishu(t)
	if err := f.Down(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	n, a, socket, addr := notifyNode(t, f, "", "")
	exe := buildSignals(t, n.Dir)
	var ids []string
	for _, arg := range []string{"segv", "segv", "abrt"} {
		cmd := exec.Command(exe, arg)
		n.Crash(cmd)
		ids = append(ids, n.WaitBundle(cmd.Process.Pid).ID)
	}
	a.waitLine(t, "Feishu unavailable")
	a.cmd.Process.Kill()
	a.cmd.Wait()
	startAgentListen(t, n, socket, addr)
	time.Sleep(time.Until(down.Add(60 * time.Second)))
	if err := f.Up(); err != nil {
		t.Fatal(err)
	}
	cards := waitCards(t, f, 2, 60*time.Second)
	checkRequests(t, f)
	got := map[string]int{}
	for _, c := range cards {
		title := c.Message.Card.Header.Title.Content
		sig := bundle.SignalName(11)
		if strings.Contains(title, "SIGABRT") {
			sig = "SIGABRT"
		}
		got[sig] += crashCount(c.Message.Card)
	}
	if len(cards) != 2 || got["SIGSEGV"] != 2 || got["SIGABRT"] != 1 {
		t.Errorf("%d cards standing for %v, want 2 cards: SIGSEGV 2, SIGABRT 1 (bundles %v)", len(cards), got, ids)
	}
}

// TestS3CardLinkExpiry: a crash's card links to the core with a presigned
// URL that lasts notify.link_expiry, and the link downloads it.
func TestS3CardLinkExpiry(t *testing.T) {
	f := startFeishu(t)
	srv := harness.S3(t)
	n, a, _, _ := notifyNode(t, f, "  link_expiry: 2h\n", srv.Config(s3Prefix))
	exe := buildSignals(t, n.Dir)
	cmd := exec.Command(exe, "segv")
	n.Crash(cmd)
	a.waitLineWithin(t, 60*time.Second, "bundle uploaded")
	cards := waitCards(t, f, 1, 20*time.Second)
	b := cards[0].Message.Card.Buttons()
	if len(b) != 1 {
		t.Fatalf("buttons %+v, want the download link", b)
	}
	u, err := url.Parse(b[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	if got := u.Query().Get("X-Amz-Expires"); got != "7200" {
		t.Errorf("X-Amz-Expires %q, want 7200 (notify.link_expiry 2h)", got)
	}
	resp, err := http.Get(b[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET the card's link: %s", resp.Status)
	}
}
