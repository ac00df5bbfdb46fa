package identity

import (
	"regexp"
	"strings"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// The labels the Kubernetes controllers put on the pods they make.
const (
	labelPodTemplateHash = "pod-template-hash"                  // Deployment (via its ReplicaSet)
	labelRevisionHash    = "controller-revision-hash"           // StatefulSet and DaemonSet
	labelStatefulPod     = "statefulset.kubernetes.io/pod-name" // StatefulSet
	labelDaemonSetGen    = "pod-template-generation"            // DaemonSet
	labelJobName         = "job-name"                           // Job (and CronJob)
	labelJobNameNew      = "batch.kubernetes.io/job-name"
)

var (
	statefulOrdinal = regexp.MustCompile(`^(.+)-[0-9]+$`)
	// A CronJob names its Jobs <cronjob>-<scheduled time in minutes>.
	cronJobRun = regexp.MustCompile(`^(.+)-[0-9]{8,}$`)
)

// Workload infers the workload that owns a pod from its name and labels,
// by the conventions of the built-in controllers; the CRI does not carry
// owner references. The second result says why not when it cannot tell.
func Workload(pod string, labels map[string]string) (*bundle.Workload, string) {
	if h := labels[labelPodTemplateHash]; h != "" {
		if name, ok := strings.CutSuffix(trimLastDash(pod), "-"+h); ok {
			return &bundle.Workload{Kind: "Deployment", Name: name}, ""
		}
		return &bundle.Workload{Kind: "ReplicaSet", Name: trimLastDash(pod)}, ""
	}
	if job := firstOf(labels, labelJobNameNew, labelJobName); job != "" {
		if m := cronJobRun.FindStringSubmatch(job); m != nil {
			return &bundle.Workload{Kind: "CronJob", Name: m[1]}, ""
		}
		return &bundle.Workload{Kind: "Job", Name: job}, ""
	}
	if labels[labelRevisionHash] != "" {
		if labels[labelStatefulPod] != "" {
			if m := statefulOrdinal.FindStringSubmatch(pod); m != nil {
				return &bundle.Workload{Kind: "StatefulSet", Name: m[1]}, ""
			}
		}
		if labels[labelDaemonSetGen] != "" {
			return &bundle.Workload{Kind: "DaemonSet", Name: trimLastDash(pod)}, ""
		}
	}
	return &bundle.Workload{Kind: "unknown", Name: pod}, "no controller label on the pod (a bare pod, or a controller corecatch does not know)"
}

// trimLastDash drops the random suffix controllers append to pod names.
func trimLastDash(s string) string {
	if i := strings.LastIndexByte(s, '-'); i > 0 {
		return s[:i]
	}
	return s
}

func firstOf(labels map[string]string, keys ...string) string {
	for _, k := range keys {
		if v := labels[k]; v != "" {
			return v
		}
	}
	return ""
}
