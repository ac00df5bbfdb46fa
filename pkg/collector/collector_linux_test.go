package collector

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseRequest(t *testing.T) {
	base := []string{"4242", "4243", "11", "1700000000", "0", "1", "1000", "1001"}
	args := func(rlimit string, comm ...string) []string {
		a := append([]string(nil), base...)
		a[4] = rlimit
		return append(a, comm...)
	}
	want := func(rlimit int64, comm string) Request {
		r := Request{PID: 4242, TID: 4243, Signal: 11, Time: time.Unix(1700000000, 0).UTC(),
			RlimitCore: rlimit, Dumpable: 1, UID: 1000, GID: 1001}
		if comm != "" {
			r.Comm = []byte(comm)
		}
		return r
	}
	for _, tc := range []struct {
		name string
		args []string
		want Request
	}{
		{"normal", args("0", "crasher"), want(0, "crasher")},
		{"rlimit in bytes", args("1048576", "crasher"), want(1<<20, "crasher")},
		{"unlimited rlimit", args("18446744073709551615", "crasher"), want(-1, "crasher")},
		{"largest finite rlimit", args("9223372036854775807", "crasher"), want(1<<63-1, "crasher")},
		{"comm with spaces, one argument", args("0", "my prog"), want(0, "my prog")},
		{"comm spread over arguments", args("0", "Web", "Content", "x"), want(0, "Web Content x")},
		{"comm starting with -", args("0", "-c"), want(0, "-c")},
		{"comm that looks like a flag", args("0", "--config=/etc/shadow"), want(0, "--config=/etc/shadow")},
		{"no comm", args("0"), want(0, "")},
	} {
		got, err := ParseRequest(tc.args)
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: ParseRequest(%q) = %+v, %v; want %+v", tc.name, tc.args, got, err, tc.want)
		}
	}

	for _, tc := range []struct {
		name    string
		args    []string
		mention string
	}{
		{"no arguments", nil, "corecatch install"},
		{"too few", base[:7], "corecatch install"},
		{"pid not a number", append([]string{"x"}, base[1:]...), `pid "x"`},
		{"negative rlimit", args("-1", "c"), `rlimit "-1"`},
		{"rlimit too large", args("18446744073709551616", "c"), "rlimit"},
		{"gid not a number", append(append([]string(nil), base[:7]...), "g"), `gid "g"`},
	} {
		_, err := ParseRequest(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: ParseRequest(%q) = %v, want an error mentioning %q", tc.name, tc.args, err, tc.mention)
		}
	}
}
