// Package kube is what the agent asks of the Kubernetes API: it puts each
// crash on its Pod as a Warning Event (reason CoreDumped), so that `kubectl
// describe pod` and `kubectl get events` show it next to the restarts it
// caused, and tells a stopping agent whether its DaemonSet lives on. It uses client-go's
// record broadcaster, the one kubelet uses: similar Events are aggregated
// and a storm is rate-limited per Pod in the agent, before they reach the
// API server. The crash path never waits for the API server: Events are
// queued and sent by their own goroutine after a bundle is reported.
package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"

	"github.com/corecatch/corecatch/pkg/bundle"
)

// Reason is the Events' reason: what `kubectl get events
// --field-selector reason=CoreDumped` selects.
const Reason = "CoreDumped"

// Sink is the Events' sink label in corecatch_notifications_total.
const Sink = "kubernetes"

// Results an Event can have, as the notification counters name them: sent,
// refused or unreachable (retried by the broadcaster), not sent because
// its queue was full or because the Pod is gone or was replaced.
const (
	ResultOK       = "ok"
	ResultError    = "error"
	ResultDropped  = "dropped"
	ResultRejected = "rejected"
)

// Results lists every result, for counters created at 0.
var Results = []string{ResultOK, ResultError, ResultDropped, ResultRejected}

// mirrorAnnotation is where kubelet puts a static pod's own uid on the
// API server's mirror of it (which has a uid of its own).
const mirrorAnnotation = "kubernetes.io/config.mirror"

// queueLen bounds the crashes waiting for their Event; the broadcaster
// keeps up to 1000 more of its own.
const queueLen = 256

// Options configure the Events.
type Options struct {
	// Node names the Events' source host.
	Node string
	Log  *zap.Logger
	// Result counts each Event's outcome under Sink; nil counts nothing.
	Result func(sink, result string)
	// Timeout bounds the look-up of each crash's Pod.
	Timeout time.Duration
}

// Events sends crashes to the API server as Pod Events.
type Events struct {
	o           Options
	cs          kubernetes.Interface
	pods        typedcorev1.PodsGetter
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
	queue       chan *bundle.Metadata
}

// ErrNoAPIServer is New's error outside a Kubernetes pod (a bare host,
// `sudo make run`): Events are then off.
var ErrNoAPIServer = errors.New("no Kubernetes API server: not running in a pod with a service account, so crashes are not posted as Pod Events")

// New connects with the pod's service account (in-cluster config).
func New(o Options) (*Events, error) {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNoAPIServer, err)
	}
	return NewForConfig(cfg, o)
}

// NewForConfig connects to the API server cfg names.
func NewForConfig(cfg *rest.Config, o Options) (*Events, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "corecatch"
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	if o.Node == "" {
		o.Node, _ = os.Hostname()
	}
	if o.Result == nil {
		o.Result = func(string, string) {}
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&countingSink{EventSink: &typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")}, result: o.Result})
	return &Events{
		o:           o,
		cs:          cs,
		pods:        cs.CoreV1(),
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "corecatch", Host: o.Node}),
		queue:       make(chan *bundle.Metadata, queueLen),
	}, nil
}

// Crash queues the Event of a reported bundle; bundles of processes in no
// pod have none. It never blocks: past the queue's bound the Event is
// dropped and counted.
func (e *Events) Crash(m *bundle.Metadata) {
	if m.Pod == nil || m.Pod.Name == "" || m.Pod.Namespace == "" {
		return
	}
	select {
	case e.queue <- m:
	default:
		e.o.Result(Sink, ResultDropped)
		e.o.Log.Warn("pod event queue full: event dropped", zap.String("id", m.ID), zap.String("pod", m.Pod.Namespace+"/"+m.Pod.Name))
	}
}

// Run sends the queued Events until ctx ends, then stops the broadcaster.
func (e *Events) Run(ctx context.Context) {
	defer e.broadcaster.Shutdown()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-e.queue:
			e.send(ctx, m)
		}
	}
}

// send looks the crash's Pod up, so that the Event names the object
// `kubectl describe` shows (a static pod's mirror has its own uid), and
// records it. A Pod now of another uid is a new one of the same name: it
// did not crash.
func (e *Events) send(ctx context.Context, m *bundle.Metadata) {
	ctx, cancel := context.WithTimeout(ctx, e.o.Timeout)
	defer cancel()
	log := e.o.Log.With(zap.String("id", m.ID), zap.String("pod", m.Pod.Namespace+"/"+m.Pod.Name))
	pod, err := e.pods.Pods(m.Pod.Namespace).Get(ctx, m.Pod.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		e.o.Result(Sink, ResultRejected)
		log.Info("no pod event: the pod is gone")
		return
	case err != nil:
		e.o.Result(Sink, ResultError)
		log.Warn("no pod event: cannot read the pod; check the service account's RBAC (pods get) and the API server", zap.Error(err))
		return
	case m.Pod.UID != "" && string(pod.UID) != m.Pod.UID && pod.Annotations[mirrorAnnotation] != m.Pod.UID:
		e.o.Result(Sink, ResultRejected)
		log.Info("no pod event: the pod of that name is a newer one", zap.String("crashed_uid", m.Pod.UID), zap.String("uid", string(pod.UID)))
		return
	}
	e.recorder.Event(pod, corev1.EventTypeWarning, Reason, Message(m))
}

// DaemonSetLivesOn says whether the DaemonSet that owns the agent's pod
// (namespace/pod, from the downward API) lives on while this agent stops:
// a rolling update or a deleted pod, whose next agent takes the node over,
// so that this one leaves the helper installed for the crashes in between
// (the next one keeps the sysctls it saved). False, with the reason, when
// the DaemonSet is gone or being deleted (helm uninstall) or the API server
// cannot say: the agent then restores the node.
func (e *Events) DaemonSetLivesOn(ctx context.Context, namespace, pod string) (bool, string) {
	if namespace == "" || pod == "" {
		return false, "POD_NAMESPACE or POD_NAME is not set"
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	p, err := e.cs.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Sprintf("read the agent's pod: %v", err)
	}
	owner := metav1.GetControllerOf(p)
	if owner == nil || owner.Kind != "DaemonSet" {
		return false, "the agent's pod has no DaemonSet"
	}
	ds, err := e.cs.AppsV1().DaemonSets(namespace).Get(ctx, owner.Name, metav1.GetOptions{})
	switch {
	case err != nil:
		return false, fmt.Sprintf("read DaemonSet %s: %v", owner.Name, err)
	case ds.UID != owner.UID || ds.DeletionTimestamp != nil:
		return false, "DaemonSet " + owner.Name + " is being deleted"
	}
	return true, "DaemonSet " + owner.Name + " lives on: its next agent takes the node over"
}

// Message is an Event's text: the crash's title, its signal and the
// command that fetches its bundle.
func Message(m *bundle.Metadata) string {
	title := m.Title
	if title == "" {
		title = m.SignalName + " in " + m.Comm
	}
	return fmt.Sprintf("%s (signal %s); corecatch pull %s", title, m.SignalName, m.ID)
}

// countingSink counts each write of the broadcaster to the API server.
type countingSink struct {
	record.EventSink
	result func(sink, result string)
}

func (s *countingSink) count(ev *corev1.Event, err error) (*corev1.Event, error) {
	if err != nil {
		s.result(Sink, ResultError)
	} else {
		s.result(Sink, ResultOK)
	}
	return ev, err
}

func (s *countingSink) Create(ev *corev1.Event) (*corev1.Event, error) {
	return s.count(s.EventSink.Create(ev))
}

func (s *countingSink) Update(ev *corev1.Event) (*corev1.Event, error) {
	return s.count(s.EventSink.Update(ev))
}

func (s *countingSink) Patch(ev *corev1.Event, data []byte) (*corev1.Event, error) {
	return s.count(s.EventSink.Patch(ev, data))
}
