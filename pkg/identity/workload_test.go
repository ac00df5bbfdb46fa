package identity

import "testing"

// TestWorkload infers owners from the names and labels the built-in
// controllers give their pods.
func TestWorkload(t *testing.T) {
	for _, tc := range []struct {
		pod           string
		labels        map[string]string
		kind, name    string
		unknownReason bool
	}{
		{"web-7d4b9c8f6d-x2k9p", map[string]string{"pod-template-hash": "7d4b9c8f6d"}, "Deployment", "web", false},
		{"api-v2-5f6d7c8b9-abcde", map[string]string{"pod-template-hash": "5f6d7c8b9"}, "Deployment", "api-v2", false},
		{"db-2", map[string]string{"controller-revision-hash": "db-6b7c", "statefulset.kubernetes.io/pod-name": "db-2"}, "StatefulSet", "db", false},
		{"node-agent-q7x2z", map[string]string{"controller-revision-hash": "5c9d", "pod-template-generation": "3"}, "DaemonSet", "node-agent", false},
		{"backup-28919540-kx7f2", map[string]string{"job-name": "backup-28919540"}, "CronJob", "backup", false},
		{"migrate-xk2p9", map[string]string{"batch.kubernetes.io/job-name": "migrate"}, "Job", "migrate", false},
		{"debug-shell", nil, "unknown", "debug-shell", true},
	} {
		w, why := Workload(tc.pod, tc.labels)
		if w.Kind != tc.kind || w.Name != tc.name || (why != "") != tc.unknownReason {
			t.Errorf("Workload(%q, %v) = %+v, %q; want %s %s", tc.pod, tc.labels, w, why, tc.kind, tc.name)
		}
	}
}
