package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// TestExampleIsDefault is the contract of example.yaml: it spells out every
// default, so parsing it over an empty Config gives exactly Default().
func TestExampleIsDefault(t *testing.T) {
	var c Config
	if err := yaml.UnmarshalStrict([]byte(Example), &c); err != nil {
		t.Fatalf("example.yaml does not parse: %v", err)
	}
	if want := Default(); !reflect.DeepEqual(&c, want) {
		t.Errorf("example.yaml parses to\n%+v\nbut Default() is\n%+v", c, *want)
	}
	if err := Default().Validate(); err != nil {
		t.Errorf("Default() is invalid: %v", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c := Default()
	c.Node = "node-1"
	c.Collect.MaxCoreBytes = Size{Bytes: 3 << 30}
	c.Retention.MaxAge = Duration(36 * time.Hour)
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var back Config
	if err := yaml.UnmarshalStrict(data, &back); err != nil {
		t.Fatalf("Marshal output does not parse: %v\n%s", err, data)
	}
	if !reflect.DeepEqual(&back, c) {
		t.Errorf("Marshal round trip:\n got %+v\nwant %+v\n%s", back, *c, data)
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
	}{
		{"0", Size{}},
		{"1048576", Size{Bytes: 1 << 20}},
		{"512MiB", Size{Bytes: 512 << 20}},
		{"4GB", Size{Bytes: 4e9}},
		{"4 GiB", Size{Bytes: 4 << 30}},
		{"1.5KiB", Size{Bytes: 1536}},
		{"2K", Size{Bytes: 2048}},
		{"7B", Size{Bytes: 7}},
		{"1TiB", Size{Bytes: 1 << 40}},
		{" 10% ", Size{Percent: 10}},
		{"12.5%", Size{Percent: 12.5}},
		{"100%", Size{Percent: 100}},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "-1", "-1MiB", "lots", "10PiB", "101%", "-5%", "x%", "1 2", "MiB",
		"NaN", "nan", "NaN%", "NaNMiB", "Inf", "+Inf", "-Inf", "infinity", "InfGiB", "Inf%"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %+v, want an error", in, got)
		} else if !strings.Contains(err.Error(), "%") {
			t.Errorf("ParseSize(%q) error %q does not show the accepted forms", in, err)
		}
	}
	// Sizes beyond an int64 must fail, not wrap to a negative size.
	for _, in := range []string{"9223372036854775808", "10000000TiB", "1e300", "1e+300", "1e300KiB", "1e19"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %+v (%d bytes), want an error", in, got, got.Bytes)
		}
	}
}

func TestSizeStringRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		size Size
		text string
	}{
		{Size{}, "0"},
		{Size{Bytes: 1}, "1"},
		{Size{Bytes: 1536}, "1536"},
		{Size{Bytes: 1 << 20}, "1MiB"},
		{Size{Bytes: 3 << 30}, "3GiB"},
		{Size{Bytes: 5 << 40}, "5TiB"},
		{Size{Bytes: 4e9}, "3906250KiB"},
		{Size{Bytes: 4e9 + 1}, "4000000001"},
		{Size{Percent: 10}, "10%"},
		{Size{Percent: 0.5}, "0.5%"},
	} {
		if got := tc.size.String(); got != tc.text {
			t.Errorf("%+v.String() = %q, want %q", tc.size, got, tc.text)
		}
		back, err := ParseSize(tc.size.String())
		if err != nil || back != tc.size {
			t.Errorf("ParseSize(%q) = %+v, %v; want %+v", tc.size.String(), back, err, tc.size)
		}
	}
}

func TestParseDuration(t *testing.T) {
	day := 24 * time.Hour
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"0", 0},
		{"0d", 0},
		{"14d", 14 * day},
		{"1.5d", 36 * time.Hour},
		{" 36h ", 36 * time.Hour},
		{"10m", 10 * time.Minute},
		{"90s", 90 * time.Second},
	} {
		got, err := ParseDuration(tc.in)
		if err != nil || time.Duration(got) != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tc.in, time.Duration(got), err, tc.want)
		}
	}
	for _, in := range []string{"", "d", "-1d", "-5m", "14", "two weeks", "1w", "NaNd", "nand", "Infd", "+Infd", "NaN", "Inf"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, time.Duration(got))
		} else if !strings.Contains(err.Error(), "14d") {
			t.Errorf("ParseDuration(%q) error %q does not show the accepted forms", in, err)
		}
	}
}

// TestParseDurationTooLong: days beyond an int64 of nanoseconds fail, not
// wrap.
func TestParseDurationTooLong(t *testing.T) {
	for _, in := range []string{"1e300d", "106752d", "1e300h", "9999999999h"} {
		if got, err := ParseDuration(in); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", in, time.Duration(got))
		}
	}
}

func TestDurationStringRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		text string
	}{
		{0, "0s"},
		{14 * 24 * time.Hour, "14d"},
		{24 * time.Hour, "1d"},
		{36 * time.Hour, "36h0m0s"},
		{90 * time.Second, "1m30s"},
	} {
		d := Duration(tc.d)
		if got := d.String(); got != tc.text {
			t.Errorf("Duration(%v).String() = %q, want %q", tc.d, got, tc.text)
		}
		back, err := ParseDuration(d.String())
		if err != nil || back != d {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", d.String(), time.Duration(back), err, tc.d)
		}
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoad(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent.yaml")
	c, err := Load(missing, false)
	if err != nil || !reflect.DeepEqual(c, Default()) {
		t.Errorf("Load(missing default path) = %+v, %v; want the defaults", c, err)
	}
	if _, err := Load(missing, true); err == nil {
		t.Error("Load(missing explicit path) succeeded; the user named a file that is not there")
	}

	c, err = Load(writeConfig(t, "node: n1\ncollect:\n  max_core_bytes: 2GiB\n  honor_rlimit: true\nretention:\n  max_age: 36h\n"), true)
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.Node = "n1"
	want.Collect.MaxCoreBytes = Size{Bytes: 2 << 30}
	want.Collect.HonorRlimit = true
	want.Retention.MaxAge = Duration(36 * time.Hour)
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load merged over defaults:\n got %+v\nwant %+v", *c, *want)
	}
}

func TestLoadRejects(t *testing.T) {
	for _, tc := range []struct{ name, text, mention string }{
		{"unknown key", "stroe: file:///x\n", "config example"},
		{"unknown nested key", "collect:\n  max_core: 1GiB\n", "config example"},
		{"bad size", "collect:\n  max_file_bytes: lots\n", "512MiB"},
		{"bad duration", "retention:\n  max_age: forever\n", "14d"},
		{"NaN size", "collect:\n  max_file_bytes: NaN\n", "512MiB"},
		{"YAML NaN size", "collect:\n  max_file_bytes: .nan\n", "NaN"},
		{"YAML infinite size", "collect:\n  max_file_bytes: .inf\n", "Inf"},
		{"huge size", "collect:\n  max_file_bytes: 1e300\n", "too large"},
		{"NaN percentage", "retention:\n  max_use: NaN%\n", "percentage"},
		{"NaN days", "retention:\n  max_age: NaNd\n", "14d"},
		{"infinite days", "retention:\n  max_age: Infd\n", "14d"},
		{"huge days", "retention:\n  max_age: 1e300d\n", "too long"},
		{"not yaml", "store: [\n", "config example"},
		{"invalid value", "collect:\n  compression: turbo\n", "fastest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Load(writeConfig(t, tc.text), true)
			if err == nil || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Load(%q) = %v, want an error mentioning %q", tc.text, err, tc.mention)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  func(*Config)
		mention string
	}{
		{"compression", func(c *Config) { c.Collect.Compression = "max" }, "fastest, default or better"},
		{"empty compression", func(c *Config) { c.Collect.Compression = "" }, "fastest, default or better"},
		{"relative spool", func(c *Config) { c.Spool = "spool" }, "absolute"},
		{"empty spool", func(c *Config) { c.Spool = "" }, "absolute"},
		{"core percentage", func(c *Config) { c.Collect.MaxCoreBytes = Size{Percent: 5} }, "not percentages"},
		{"file percentage", func(c *Config) { c.Collect.MaxFileBytes = Size{Percent: 5} }, "not percentages"},
		{"link expiry over S3's", func(c *Config) { c.Notify.LinkExpiry = Duration(8 * 24 * time.Hour) }, "7d"},
		{"no link expiry", func(c *Config) { c.Notify.LinkExpiry = 0 }, "7d"},
		{"bridge without token", func(c *Config) { c.Notify.Bridge.Listen = ":9978" }, "token_file"},
		{"bridge without port", func(c *Config) { c.Notify.Bridge.Listen, c.Notify.Bridge.TokenFile = "9978", "/t" }, "[host]:port"},
		{"button host with a path", func(c *Config) { c.Notify.Bridge.ButtonHosts = []string{"example.com/x"} }, "*.example.com"},
		{"item over queue", func(c *Config) { c.Notify.ItemMaxBytes = Size{Bytes: 32 << 20} }, "queue_max_bytes"},
		{"queue in percent", func(c *Config) { c.Notify.QueueMaxBytes = Size{Percent: 5} }, "4KiB"},
	} {
		c := Default()
		tc.change(c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: Validate() = %v, want an error mentioning %q", tc.name, err, tc.mention)
		}
	}
	for _, level := range []string{"fastest", "default", "better"} {
		c := Default()
		c.Collect.Compression = level
		if err := c.Validate(); err != nil {
			t.Errorf("compression %s: %v", level, err)
		}
	}
}

func TestSizeOf(t *testing.T) {
	for _, tc := range []struct {
		s     Size
		total int64
		want  int64
	}{
		{Size{Bytes: 100}, 1000, 100},
		{Size{Percent: 10}, 1000, 100},
		{Size{Percent: 15}, 0, 0},
		{Size{}, 1000, 0},
	} {
		if got := tc.s.Of(tc.total); got != tc.want {
			t.Errorf("%+v.Of(%d) = %d, want %d", tc.s, tc.total, got, tc.want)
		}
	}
}

// TestPodPolicy: a pod's annotations override its namespace's defaults,
// the first matching namespace glob applies, unset keys stay on, and a
// process in no pod gets everything.
func TestPodPolicy(t *testing.T) {
	off := false
	on := true
	p := Pods{Namespaces: []PodDefaults{
		{Namespace: "secure-*", Collect: &off},
		{Namespace: "secure-ops", Notify: &off}, // shadowed by the first
		{Namespace: "kube-system", Freeze: &off, Notify: &off},
		{Namespace: "quiet", Notify: &off, Collect: &on},
	}}
	for _, tc := range []struct {
		ns          string
		ann         map[string]string
		want        PodPolicy
		description string
	}{
		{"", map[string]string{AnnotationCollect: "false"}, PodPolicy{Collect: true, Freeze: true, Notify: true}, "no pod"},
		{"default", nil, PodPolicy{Collect: true, Freeze: true, Notify: true}, "no defaults, no annotations"},
		{"default", map[string]string{AnnotationCollect: "false", AnnotationNotify: "bogus"},
			PodPolicy{Freeze: true, Notify: true, Why: "annotation corecatch.io/collect: false"}, "annotation; an unparsable one ignored"},
		{"secure-ops", nil, PodPolicy{Freeze: true, Notify: true, Why: `pods.namespaces "secure-*" corecatch.io/collect: false`}, "first match"},
		{"secure-ops", map[string]string{AnnotationCollect: "true"}, PodPolicy{Collect: true, Freeze: true, Notify: true}, "annotation over namespace"},
		{"kube-system", map[string]string{AnnotationNotify: "true"},
			PodPolicy{Collect: true, Notify: true, Why: `pods.namespaces "kube-system" corecatch.io/freeze: false`}, "mixed"},
		{"quiet", map[string]string{AnnotationFreeze: "false"},
			PodPolicy{Collect: true, Why: `annotation corecatch.io/freeze: false, pods.namespaces "quiet" corecatch.io/notify: false`}, "both sources"},
	} {
		if got := p.Policy(tc.ns, tc.ann); got != tc.want {
			t.Errorf("%s: Policy(%q, %v) = %+v, want %+v", tc.description, tc.ns, tc.ann, got, tc.want)
		}
	}
	c := Default()
	c.Pods.Namespaces = []PodDefaults{{Namespace: "["}}
	if err := c.Validate(); err == nil {
		t.Error("a bad namespace glob in pods.namespaces validates")
	}
}
