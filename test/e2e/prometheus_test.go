package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/corecatch/corecatch/test/harness"
)

// TestPrometheusDashboardAndAlerts scrapes a real agent with a real
// Prometheus (1s scrapes, the repository's alerting rules) after two real
// crashes: every PromQL expression of the Grafana dashboard, its template
// variables filled in, must return data, and CorecatchCrash must go off for
// each crash.
func TestPrometheusDashboardAndAlerts(t *testing.T) {
	socket := filepath.Join(os.TempDir(), fmt.Sprintf("ccprom-%d.sock", os.Getpid()))
	// A Feishu bot, so that the notification panels have series.
	f := startFeishu(t)
	n := harness.Install(t, "socket: "+socket+"\nnotify:\n  feishu:\n  - name: sre\n    webhook: "+f.URL("tok")+
		"\n    secret: s3cr3t\n    keyword: corecatch\n")
	t.Cleanup(func() { os.Remove(socket) }) // after the agent's kill, which leaves it
	agentAddr := freeAddr(t)
	a := startAgentListen(t, n, socket, agentAddr)
	prom := startPrometheus(t, n.Dir, agentAddr)

	prom.waitQuery(t, `corecatch_build_info{job="corecatch"}`, 20*time.Second, func(r []promSample) bool { return len(r) > 0 })
	exe := buildSignals(t, n.Dir)
	signals := map[string]string{"segv": "SIGSEGV", "abrt": "SIGABRT"}
	for _, arg := range []string{"segv", "abrt"} {
		cmd := exec.Command(exe, arg)
		n.Crash(cmd)
		m := n.WaitBundle(cmd.Process.Pid)
		if m.SignalName != signals[arg] {
			t.Fatalf("bundle %s: signal %s, want %s", m.ID, m.SignalName, signals[arg])
		}
		a.waitLine(t, "crash collected", m.ID)
	}
	prom.waitQuery(t, `corecatch_crashes_total{job="corecatch",exe="signals"}`, 20*time.Second, func(r []promSample) bool {
		seen := map[string]bool{}
		for _, s := range r {
			seen[s.Metric["signal"]] = true
		}
		return seen["SIGSEGV"] && seen["SIGABRT"]
	})

	t.Run("dashboard", func(t *testing.T) {
		dash := loadDashboard(t)
		if len(dash.exprs) == 0 {
			t.Fatal("dashboards/corecatch.json has no panel expressions")
		}
		// A series born with the crashes has one sample at first, too few
		// for rate(): each expression gets a few scrapes to show data.
		deadline := time.Now().Add(15 * time.Second)
		for _, e := range dash.exprs {
			q := fillVariables(t, e.expr)
			var res promResult
			for {
				res = prom.query(q)
				if res.err != nil || len(res.samples) > 0 || time.Now().After(deadline) {
					break
				}
				time.Sleep(500 * time.Millisecond)
			}
			switch {
			case res.err != nil:
				t.Errorf("panel %q: %v\nexpr: %s", e.panel, res.err, q)
			case len(res.samples) == 0:
				t.Errorf("panel %q: no data after the crashes (a metric missing or labelled otherwise?)\nexpr: %s", e.panel, q)
			default:
				t.Logf("panel %q: %d series, e.g. %v", e.panel, len(res.samples), res.samples[0].Value)
			}
		}
		// Grafana fills the variables from label_values(): each must
		// name a metric and a label the agent exports.
		for _, v := range dash.vars {
			q := fmt.Sprintf("count by (%s) (%s)", v.label, fillVariables(t, v.selector))
			if res := prom.query(q); res.err != nil || len(res.samples) == 0 {
				t.Errorf("variable %s (label_values(%s, %s)): no values (%v)\nexpr: %s", v.name, v.selector, v.label, res.err, q)
			}
		}
	})

	t.Run("alerts", func(t *testing.T) {
		deadline := time.Now().Add(60 * time.Second)
		for {
			firing, all, err := prom.crashAlerts()
			if err == nil && firing["SIGSEGV"] && firing["SIGABRT"] {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("CorecatchCrash is not pending or firing for exe=signals with SIGSEGV and SIGABRT after 60s (err %v); alerts:\n%s\nrules:\n%s",
					err, all, prom.get("/api/v1/rules"))
			}
			time.Sleep(time.Second)
		}
	})
}

// freeAddr returns a loopback address with a port that was free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// prometheus is a Prometheus server of the test's own.
type prometheus struct{ *service }

// startPrometheus starts Prometheus on a free loopback port, with its own
// storage, scraping target every second and evaluating the repository's
// alerting rules every second, sending alerts to alertmanagers (base URLs,
// may be none); the test's cleanup stops it.
func startPrometheus(t *testing.T, dir, target string, alertmanagers ...string) *prometheus {
	t.Helper()
	rules := filepath.Join(harness.RepoRoot(), "deploy", "prometheus", "corecatch-rules.yaml")
	config := filepath.Join(dir, "prometheus.yml")
	am := ""
	for _, a := range alertmanagers {
		am += "          - " + strings.TrimPrefix(a, "http://") + "\n"
	}
	if am != "" {
		am = "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets:\n" + am
	}
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %s
scrape_configs:
  - job_name: corecatch
    static_configs:
      - targets: ['%s']
%s`, rules, target, am)), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	return &prometheus{startService(t, dir, addr, "/-/ready", "prometheus", "--config.file", config,
		"--storage.tsdb.path", filepath.Join(dir, "prometheus-data"), "--web.listen-address", addr)}
}

// promSample is one series of an instant query's result.
type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

// promResult is an instant query's series, or why there are none.
type promResult struct {
	samples []promSample
	err     error
}

// query runs an instant PromQL query; a scalar result counts as one series.
func (p *prometheus) query(q string) promResult {
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string          `json:"resultType"`
			Result     json.RawMessage `json:"result"`
		} `json:"data"`
	}
	body := p.get("/api/v1/query?query=" + url.QueryEscape(q))
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return promResult{err: fmt.Errorf("/api/v1/query: %v: %s", err, body)}
	}
	if r.Status != "success" {
		return promResult{err: fmt.Errorf("/api/v1/query: %s: %s", r.Status, r.Error)}
	}
	switch r.Data.ResultType {
	case "vector", "matrix":
		var s []promSample
		if err := json.Unmarshal(r.Data.Result, &s); err != nil {
			return promResult{err: fmt.Errorf("/api/v1/query result: %v: %s", err, r.Data.Result)}
		}
		return promResult{samples: s}
	case "scalar":
		var v []any
		json.Unmarshal(r.Data.Result, &v)
		return promResult{samples: []promSample{{Value: v}}}
	}
	return promResult{err: fmt.Errorf("/api/v1/query: result type %q", r.Data.ResultType)}
}

// waitQuery polls q until ok accepts its result.
func (p *prometheus) waitQuery(t *testing.T, q string, d time.Duration, ok func([]promSample) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		res := p.query(q)
		if res.err == nil && ok(res.samples) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus: %s not as expected after %v (err %v): %+v\ntargets: %s", q, d, res.err, res.samples, p.get("/api/v1/targets"))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// crashAlerts returns the signals for which CorecatchCrash is pending or
// firing with exe="signals", and every alert as text.
func (p *prometheus) crashAlerts() (map[string]bool, string, error) {
	var r struct {
		Status string `json:"status"`
		Data   struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	body := p.get("/api/v1/alerts")
	if err := json.Unmarshal([]byte(body), &r); err != nil || r.Status != "success" {
		return nil, body, fmt.Errorf("/api/v1/alerts: %v %s", err, r.Status)
	}
	seen := map[string]bool{}
	var all strings.Builder
	for _, a := range r.Data.Alerts {
		fmt.Fprintf(&all, "%s %v\n", a.State, a.Labels)
		l := a.Labels
		if l["alertname"] == "CorecatchCrash" && l["exe"] == "signals" && (a.State == "pending" || a.State == "firing") {
			seen[l["signal"]] = true
		}
	}
	return seen, all.String(), nil
}

// dashboardExpr is one PromQL expression of a panel's targets.
type dashboardExpr struct{ panel, expr string }

// dashboardVar is a template variable filled by label_values(selector, label).
type dashboardVar struct{ name, selector, label string }

// dashboard is what the test checks of dashboards/corecatch.json.
type dashboard struct {
	exprs []dashboardExpr
	vars  []dashboardVar
}

var labelValues = regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`)

// loadDashboard reads every panel target's expr, wherever the panel is
// nested (rows included), and the label_values() template variables.
func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	path := filepath.Join(harness.RepoRoot(), "dashboards", "corecatch.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(data, &root); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var d dashboard
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if targets, ok := v["targets"].([]any); ok {
				title, _ := v["title"].(string)
				for _, tg := range targets {
					if m, ok := tg.(map[string]any); ok {
						if e, ok := m["expr"].(string); ok {
							d.exprs = append(d.exprs, dashboardExpr{title, e})
						}
					}
				}
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(root["panels"])
	templating, _ := root["templating"].(map[string]any)
	list, _ := templating["list"].([]any)
	for _, v := range list {
		m, _ := v.(map[string]any)
		if m["type"] != "query" {
			continue
		}
		name, _ := m["name"].(string)
		q, _ := m["query"].(string)
		if obj, ok := m["query"].(map[string]any); ok {
			q, _ = obj["query"].(string)
		}
		sm := labelValues.FindStringSubmatch(strings.TrimSpace(q))
		if sm == nil {
			t.Errorf("variable %s: query %q is not label_values(selector, label)", name, q)
			continue
		}
		d.vars = append(d.vars, dashboardVar{name, sm[1], sm[2]})
	}
	return d
}

// grafanaVars stands in for Grafana: each selection is every value, each
// window a minute (60 one-second scrapes).
var grafanaVars = strings.NewReplacer(
	"${node}", ".*", "$node", ".*",
	"${namespace}", ".*", "$namespace", ".*",
	"${workload}", ".*", "$workload", ".*",
	"${__rate_interval}", "1m", "$__rate_interval", "1m",
	"${__range}", "1m", "$__range", "1m",
	"${__interval}", "1m", "$__interval", "1m",
)

var unknownVar = regexp.MustCompile(`\$\{?\w+`)

// fillVariables substitutes the dashboard's variables in expr as Grafana
// would with every value selected.
func fillVariables(t *testing.T, expr string) string {
	t.Helper()
	q := grafanaVars.Replace(expr)
	if v := unknownVar.FindString(q); v != "" {
		t.Errorf("expr %s: the test does not know variable %s", expr, v)
	}
	return q
}
