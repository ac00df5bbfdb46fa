package observer

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestDecode checks the mapping from the C event to Event: names, flags,
// stacks cut to their lengths, and the exit outcome from the flags and the
// kind reported before.
func TestDecode(t *testing.T) {
	raw := btfEvent{KtimeNs: 5e9, Tgid: 10, Tid: 11, NsPid: 1, Signal: 11, SiCode: 1, FaultAddr: 0x1000,
		Kind: uint8(KindCore), Flags: 1 | 4, StackLen: 2, BuildIdLen: 2}
	copy(raw.Comm[:], []int8{'s', 'e', 'g', 'v'})
	raw.Stack[0], raw.Stack[1], raw.Stack[2] = 0xaa, 0xbb, 0xcc
	raw.BuildId[0].Status, raw.BuildId[0].BuildId[0], raw.BuildId[0].Offset = 1, 0xab, 0x10
	raw.BuildId[1].Status, raw.BuildId[1].Offset = 2, 0xbb
	e := decode(&raw, time.Second)
	if e.Comm != "segv" || e.Kind != KindCore || !e.FromSiginfo || !e.OOM || e.GroupExit {
		t.Errorf("decoded %+v", e)
	}
	if e.Time != time.Unix(6, 0).UTC() {
		t.Errorf("time %v, want monotonic 5s plus the 1s offset", e.Time)
	}
	if len(e.Stack) != 2 || e.Stack[1] != 0xbb {
		t.Errorf("stack %x, want its first 2 entries", e.Stack)
	}
	if len(e.BuildIDStack) != 2 || !strings.HasPrefix(e.BuildIDStack[0].BuildID, "ab") || e.BuildIDStack[0].Offset != 0x10 || e.BuildIDStack[1].IP != 0xbb {
		t.Errorf("build-id stack %+v", e.BuildIDStack)
	}
	data, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var j map[string]any
	json.Unmarshal(data, &j)
	if j["fault_addr"] != "0x1000" || j["signal_name"] != "SIGSEGV" || j["kind"] != "core" || j["exit_code"] != nil {
		t.Errorf("JSON %s", data)
	}
	for _, tc := range []struct {
		flags    uint8
		reported Kind
		want     string
	}{
		{8, KindCore, OutcomeCoreDumped},
		{0, KindCore, OutcomeCoreMissing},
		{0, KindFatal, OutcomeKilled},
	} {
		x := decode(&btfEvent{Kind: uint8(KindExit), Flags: tc.flags, ReportedKind: uint8(tc.reported), ExitCode: 0x8b}, 0)
		if x.Outcome != tc.want {
			t.Errorf("exit flags %#x after a %s event: outcome %q, want %q", tc.flags, tc.reported, x.Outcome, tc.want)
		}
	}
}
