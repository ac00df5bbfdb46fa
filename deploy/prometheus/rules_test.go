// Package prometheus_test keeps corecatch's alerting rules honest: promtool
// checks them and runs their unit tests, the PrometheusRule carries exactly
// the plain file's groups, and every alert follows the rule conventions and
// has its runbook. It needs promtool (Debian's prometheus package, from
// `make deps`), never root.
package prometheus_test

import (
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	rulesFile          = "deploy/prometheus/corecatch-rules.yaml"
	rulesTestFile      = "deploy/prometheus/corecatch-rules.test.yaml"
	prometheusRuleFile = "deploy/prometheus/corecatch-prometheusrule.yaml"
	runbookURLPrefix   = "https://github.com/corecatch/corecatch/blob/main/docs/runbooks/"
)

// repoRoot is the repository's top directory, found from this file's path
// so that the test does not depend on its working directory.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// promtool runs promtool with args in the repository's top directory and
// fails the test on a non-zero exit. Without promtool it skips, except under
// CI=true, where the rules must be checked.
func promtool(t *testing.T, args ...string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("promtool not found (%v) and CI=true forbids skipping: run `make deps` (Debian's prometheus package ships promtool)", err)
		}
		t.Skip("promtool not found: run `make deps` (Debian's prometheus package ships promtool)")
	}
	cmd := exec.CommandContext(t.Context(), path, args...)
	cmd.Dir = repoRoot()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

// readYAML parses a YAML file of the repository into v.
func readYAML(t *testing.T, rel string, v any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(), rel))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", rel, err)
	}
}

func TestRulesCheck(t *testing.T) {
	promtool(t, "check", "rules", rulesFile)
}

func TestRulesUnitTests(t *testing.T) {
	promtool(t, "test", "rules", rulesTestFile)
}

// TestPrometheusRule checks the Prometheus Operator's copy of the rules: its
// object, its groups equal to the plain file's, and promtool's checks on
// them.
func TestPrometheusRule(t *testing.T) {
	var plain map[string]any
	readYAML(t, rulesFile, &plain)
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name   string            `json:"name"`
			Labels map[string]string `json:"labels"`
		} `json:"metadata"`
		Spec map[string]any `json:"spec"`
	}
	readYAML(t, prometheusRuleFile, &pr)

	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Errorf("%s is a %s %s, want a monitoring.coreos.com/v1 PrometheusRule", prometheusRuleFile, pr.APIVersion, pr.Kind)
	}
	if pr.Metadata.Name != "corecatch" || pr.Metadata.Labels["app.kubernetes.io/name"] != "corecatch" {
		t.Errorf("%s: metadata name %q, labels %v; want name corecatch, label app.kubernetes.io/name: corecatch",
			prometheusRuleFile, pr.Metadata.Name, pr.Metadata.Labels)
	}
	if len(plain) != 1 || plain["groups"] == nil {
		t.Fatalf("%s: want only a groups key, got %v", rulesFile, slices.Sorted(maps.Keys(plain)))
	}
	if len(pr.Spec) != 1 || pr.Spec["groups"] == nil {
		t.Fatalf("%s: want only spec.groups, got spec keys %v", prometheusRuleFile, slices.Sorted(maps.Keys(pr.Spec)))
	}
	if !reflect.DeepEqual(plain["groups"], pr.Spec["groups"]) {
		a, _ := yaml.Marshal(plain["groups"])
		b, _ := yaml.Marshal(pr.Spec["groups"])
		t.Fatalf("%s spec.groups differ from %s groups: copy them over.\n--- %s\n%s\n--- %s\n%s",
			prometheusRuleFile, rulesFile, rulesFile, a, prometheusRuleFile, b)
	}

	extracted, err := yaml.Marshal(pr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "prometheusrule-groups.yaml")
	if err := os.WriteFile(path, extracted, 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, "check", "rules", path)
}

// TestRuleConventions checks what promtool does not: every alert has a
// severity, a summary, a description and a runbook_url to a runbook that
// exists, and the unit tests see every alert both firing and not firing,
// with its annotations.
func TestRuleConventions(t *testing.T) {
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `json:"alert"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	}
	readYAML(t, rulesFile, &rules)
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `json:"alertname"`
				ExpAlerts []struct {
					ExpAnnotations map[string]string `json:"exp_annotations"`
				} `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	readYAML(t, rulesTestFile, &tests)
	firing, quiet := map[string]bool{}, map[string]bool{}
	for _, tg := range tests.Tests {
		for _, at := range tg.AlertRuleTest {
			quiet[at.Alertname] = quiet[at.Alertname] || len(at.ExpAlerts) == 0
			for _, a := range at.ExpAlerts {
				firing[at.Alertname] = true
				if a.ExpAnnotations["summary"] == "" || a.ExpAnnotations["description"] == "" || a.ExpAnnotations["runbook_url"] == "" {
					t.Errorf("%s: an expected %s alert does not check its summary, description and runbook_url", rulesTestFile, at.Alertname)
				}
			}
		}
	}

	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !strings.HasPrefix(r.Alert, "Corecatch") {
				t.Errorf("alert %s: names start with Corecatch", r.Alert)
			}
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			for _, a := range []string{"summary", "description"} {
				if r.Annotations[a] == "" {
					t.Errorf("alert %s: no %s annotation", r.Alert, a)
				}
			}
			if want := runbookURLPrefix + r.Alert + ".md"; r.Annotations["runbook_url"] != want {
				t.Errorf("alert %s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			if _, err := os.Stat(filepath.Join(repoRoot(), "docs", "runbooks", r.Alert+".md")); err != nil {
				t.Errorf("alert %s: no runbook: %v", r.Alert, err)
			}
			if !firing[r.Alert] || !quiet[r.Alert] {
				t.Errorf("alert %s: %s must test it firing (%v) and not firing (%v)", r.Alert, rulesTestFile, firing[r.Alert], quiet[r.Alert])
			}
		}
	}
	if alerts == 0 {
		t.Fatalf("%s: no alerts", rulesFile)
	}
}
