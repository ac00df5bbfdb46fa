package observer

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// urgentPriority is the SCHED_FIFO priority of the threads between a fatal
// signal's event and the freeze of its container: above every normal
// task, far below the kernel's own real-time threads (which run at 50 and
// above).
const urgentPriority = 10

// Urgent runs the calling goroutine on an OS thread of its own at
// real-time priority (SCHED_FIFO), so that the path from a fatal signal's
// event to the freeze of its container is not starved by compression or
// any other load on a busy node (the freeze must land while the core still
// streams). The goroutine never unlocks its thread: when it returns, the
// thread goes with it. Each such goroutine must block, never spin. Without
// CAP_SYS_NICE the priority stays normal and Urgent says so.
func Urgent() error {
	runtime.LockOSThread()
	return unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: urgentPriority}, 0)
}

// CanBeUrgent reports whether Urgent raises a thread's priority here (it
// needs CAP_SYS_NICE), trying it on a thread of its own that exits with
// the goroutine: the caller's thread keeps its priority.
func CanBeUrgent() error {
	err := make(chan error, 1)
	go func() { err <- Urgent() }()
	return <-err
}

// Background runs the calling goroutine on an OS thread of its own at
// SCHED_BATCH, for a consumer of events whose work can wait (a journal,
// metrics, the log): the kernel never lets such a thread's wakeup preempt
// the thread on the CPU, a collection the kernel is holding a crashed
// process for, yet gives it its fair share of the CPUs. Like Urgent's, the
// goroutine never unlocks its thread.
func Background() error {
	runtime.LockOSThread()
	return unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_BATCH}, 0)
}
