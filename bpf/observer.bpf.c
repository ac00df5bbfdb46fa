// SPDX-License-Identifier: GPL-2.0
/*
 * The observer: one event per process-fatal signal, as the kernel delivers it,
 * and one when that process's last thread exits.
 *
 * Why signal_deliver: it runs in the receiving task, inside get_signal(),
 * after ptrace had its say and before do_coredump(), so it sees the signal
 * that will kill the process, the siginfo (si_code, si_addr) and the action.
 * signal_generate (bcc sigsnoop) runs in the sender and cannot tell whether
 * the signal will be handled, ignored or fatal.
 */
#include "corecatch_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "observer.h"

char LICENSE[] SEC("license") = "GPL";

#define SIGKILL 9
#define SIGSTOP 19
/* include/linux/sched/signal.h */
#define SIGNAL_GROUP_EXIT 0x00000004
#define SIGNAL_UNKILLABLE 0x00000040


/*
 * reported: the thread groups an event was sent for, until their last thread
 * exits. One crash is one event: when a thread dies, the kernel kills its
 * siblings with SIGKILL, and each of them passes signal_deliver too. The
 * value holds the group leader's start time, so that an entry left behind (a
 * process that somehow survived) never hides a later process that reuses
 * the pid.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct report);
} reported SEC(".maps");

/*
 * senders: who made a thread group exit, from signal_generate, which runs in
 * the sender. When a fatal signal without a core (kill -9, SIGTERM without
 * a handler, the OOM killer) reaches a process, the kernel marks the whole
 * group for death at once and its threads then see a bare SIGKILL at
 * delivery, without the siginfo that named the sender.
 */
struct sender {
	__u32 tgid;  /* the sender's, in the initial pid namespace; 0: the kernel */
	__s32 code;  /* si_code */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct sender);
} senders SEC(".maps");


/* first_report claims the thread group's one event; false when a thread of
 * the same process (same leader start time) already reported. */
static __always_inline bool first_report(__u32 tgid, struct report *r)
{
	if (bpf_map_update_elem(&reported, &tgid, r, BPF_NOEXIST) == 0)
		return true;
	struct report *prev = bpf_map_lookup_elem(&reported, &tgid);
	if (prev && prev->start_time == r->start_time)
		return false;
	/* A stale entry of an earlier process with this pid. */
	bpf_map_update_elem(&reported, &tgid, r, BPF_ANY);
	return true;
}

static __always_inline void fill_task(struct event *e, struct task_struct *task)
{
	__u64 id = bpf_get_current_pid_tgid();

	e->ktime_ns = bpf_ktime_get_ns();
	e->tgid = id >> 32;
	e->tid = (__u32)id;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));

	/* The process's pid in its own namespace: numbers[level] of its
	 * leader's struct pid. numbers[] is a flexible array: its offset is
	 * relocated, the index is ours. */
	struct pid *pid = BPF_CORE_READ(task, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid up = {};
	if (level < 32)
		bpf_core_read(&up, sizeof(up), &pid->numbers[level]);
	e->ns_pid = up.nr;
	e->pid_ns = BPF_CORE_READ(up.ns, ns.inum);
	e->mnt_ns = BPF_CORE_READ(task, nsproxy, mnt_ns, ns.inum);
	e->exe_ino = BPF_CORE_READ(task, mm, exe_file, f_inode, i_ino);
	e->exe_dev = BPF_CORE_READ(task, mm, exe_file, f_inode, i_sb, s_dev);

	/* On cgroup v1 (and hybrid) hosts the v2 id may name no container:
	 * the v1 freezer cgroup's kernfs id (its directory's inode) does. */
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, freezer_cgrp_id)) {
		int ss = bpf_core_enum_value(enum cgroup_subsys_id, freezer_cgrp_id);
		if (ss >= 0 && ss < 16)
			e->cgroup_v1_id = BPF_CORE_READ(task, cgroups, subsys[ss], cgroup, kn, id);
	}
}

/*
 * nullable reads a pointer argument of a tp_btf program as a plain value.
 * The verifier assumes tracepoint pointer arguments are never NULL (only a
 * list of known ones are marked nullable), and deletes a program's NULL
 * checks as dead code; signal_deliver's and signal_generate's siginfo is
 * NULL (SEND_SIG_NOINFO) or 1 (SEND_SIG_PRIV) for kernel-made signals. A
 * value read with a helper is unknown to the verifier, so its checks stay.
 */
static __always_inline struct kernel_siginfo *nullable(unsigned long long *ctx, int i)
{
	struct kernel_siginfo *p = NULL;
	bpf_probe_read_kernel(&p, sizeof(p), &ctx[i]);
	return p;
}

SEC("tp_btf/signal_deliver")
int BPF_PROG(on_signal_deliver, int sig, struct kernel_siginfo *info_arg, struct k_sigaction *ka)
{
	/* This runs for every delivered signal on the node: the common case,
	 * a handled signal, must cost as little as possible. ka is a trusted
	 * BTF pointer here, so a plain load (no probe_read helper call)
	 * reads the handler; handled and ignored signals are not fatal. */
	if (sig <= 0 || sig > 64 || ka->sa.sa_handler)
		return 0;

	struct kernel_siginfo *info = nullable(ctx, 1);
	struct task_struct *task = bpf_get_current_task_btf();
	struct signal_struct *signal = BPF_CORE_READ(task, signal);
	unsigned int sflags = BPF_CORE_READ(signal, flags);
	int real = sig;
	__u8 flags = 0;
	struct sender from = {};

	if (sig == SIGKILL && !info) {
		/*
		 * get_signal()'s "already marked for death" path: the group is
		 * exiting and every thread passes here with SIGKILL and no
		 * siginfo (SEND_SIG_NOINFO). During a core dump these are the
		 * siblings the dumping thread zapped: its own event came first.
		 * When a fatal signal without a core (kill -9, kill -TERM
		 * without a handler, the OOM killer) marked the group,
		 * group_exit_code holds which.
		 */
		if (BPF_CORE_READ(signal, core_state))
			return 0;
		/* exit_group(status) and execve() kill sibling threads the same
		 * way; then no signal is in the low bits of group_exit_code (a
		 * normal exit's status is in bits 8-15): not a death by signal. */
		real = BPF_CORE_READ(signal, group_exit_code) & 0x7f;
		if (real == 0)
			return 0;
		flags |= FLAG_GROUP_EXIT;
		__u32 me = bpf_get_current_pid_tgid() >> 32;
		struct sender *s = bpf_map_lookup_elem(&senders, &me);
		if (s) {
			from = *s;
			flags |= FLAG_SENDER;
			bpf_map_delete_elem(&senders, &me);
		}
	} else if ((sflags & SIGNAL_UNKILLABLE) && sig != SIGKILL && sig != SIGSTOP) {
		/* A pid namespace's init (a container's PID 1) ignores default
		 * actions of signals from its own namespace: not fatal. */
		return 0;
	}

	__u8 kind = kind_of(real);
	if (!kind)
		return 0;

	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct report r = {
		.start_time = BPF_CORE_READ(task, group_leader, start_time),
		.kind = kind,
		.signal = real,
	};
	if (!first_report(tgid, &r))
		return 0;

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	fill_task(e, task);
	e->kind = kind;
	e->reported_kind = 0;
	e->signal = real;
	e->si_code = 0;
	e->fault_addr = 0;
	e->sender_pid = 0;
	e->exit_code = 0;
	if (flags & FLAG_SENDER) {
		e->si_code = from.code;
		e->sender_pid = from.tgid;
	} else if (info) {
		flags |= FLAG_SIGINFO;
		e->si_code = BPF_CORE_READ(info, si_code);
		if (e->si_code <= 0)
			e->sender_pid = BPF_CORE_READ(info, _sifields._kill._pid);
		else
			e->fault_addr = (__u64)BPF_CORE_READ(info, _sifields._sigfault._addr);
	}
	if (BPF_CORE_READ(signal, oom_mm))
		flags |= FLAG_OOM;
	e->flags = flags;

	/* The faulting user stack, twice: as addresses, and as build-id +
	 * offset where the kernel can resolve the mapping (it cannot always
	 * take the mmap lock here; such frames come back as plain ips). */
	long n = bpf_get_stack(ctx, e->stack, sizeof(e->stack), BPF_F_USER_STACK);
	e->stack_len = n > 0 ? n / sizeof(__u64) : 0;
	n = bpf_get_stack(ctx, e->build_id, sizeof(e->build_id), BPF_F_USER_STACK | BPF_F_USER_BUILD_ID);
	e->build_id_len = n > 0 ? n / sizeof(struct bpf_stack_build_id) : 0;

	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * Remembers who sent a signal that made its target's thread group exit (see
 * senders). It runs in the sender for every generated signal, so it first
 * makes two plain loads and leaves unless the group is now exiting; during
 * a core dump the kernel's own SIGKILLs to the dumper's siblings are no
 * news.
 */
SEC("tp_btf/signal_generate")
int BPF_PROG(on_signal_generate, int sig, struct kernel_siginfo *info_arg, struct task_struct *task, int group, int result)
{
	struct signal_struct *signal = task->signal;
	if (!signal || !(signal->flags & SIGNAL_GROUP_EXIT) || signal->core_state ||
	    !(signal->group_exit_code & 0x7f))
		return 0;
	__u32 tgid = task->tgid;
	struct kernel_siginfo *info = nullable(ctx, 1);
	struct sender s = {};
	/* info may be SEND_SIG_NOINFO (0: a user-space sender without
	 * details) or SEND_SIG_PRIV (1: the kernel itself, as the OOM killer). */
	if ((unsigned long)info == 1) {
		s.code = 0x80; /* SI_KERNEL */
	} else {
		s.tgid = bpf_get_current_pid_tgid() >> 32;
		if (info)
			s.code = BPF_CORE_READ(info, si_code);
	}
	bpf_map_update_elem(&senders, &tgid, &s, BPF_NOEXIST);
	return 0;
}

/*
 * The outcome: when the last thread of a reported process exits, its
 * exit_code, with the group's, says whether the kernel dumped a core (0x80). A core event
 * without it is "core expected but none arrived".
 */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_sched_process_exit, struct task_struct *task)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct report *r = bpf_map_lookup_elem(&reported, &tgid);
	if (!r)
		return 0;
	/* do_exit() decrements signal->live before this tracepoint. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (r->start_time != BPF_CORE_READ(task, group_leader, start_time))
		return 0;
	__u8 reported_kind = r->kind;
	bpf_map_delete_elem(&reported, &tgid);
	bpf_map_delete_elem(&senders, &tgid);

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	fill_task(e, task);
	e->kind = KIND_EXIT;
	e->reported_kind = reported_kind;
	e->exit_code = BPF_CORE_READ(task, exit_code);
	/* The last thread to exit need not be the one that dumped: the
	 * dumper marks the core in the group's exit code (coredump_finish),
	 * after its siblings took theirs without 0x80. */
	int group = BPF_CORE_READ(task, signal, group_exit_code);
	if ((group & 0x7f) == (e->exit_code & 0x7f))
		e->exit_code |= group & 0x80;
	e->signal = e->exit_code & 0x7f;
	e->flags = (e->exit_code & 0x80) ? FLAG_CORE_DUMPED : 0;
	e->si_code = 0;
	e->fault_addr = 0;
	e->sender_pid = 0;
	e->stack_len = 0;
	e->build_id_len = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
