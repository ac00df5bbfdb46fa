package collector

import (
	"testing"
)

func TestNSPID(t *testing.T) {
	for _, tc := range []struct {
		text string
		want int
	}{
		{"Name:\tx\nNSpid:\t4242\t17\t1\nPPid:\t1\n", 1},
		{"NSpid:\t4242\n", 4242},
		{"Name:\tx\n", 0},
	} {
		if got := nsPID([]byte(tc.text)); got != tc.want {
			t.Errorf("nsPID(%q) = %d, want %d", tc.text, got, tc.want)
		}
	}
}
