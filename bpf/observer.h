/* SPDX-License-Identifier: GPL-2.0 */
/* What both observer programs share: the event they send to user space
 * (pkg/observer decodes it through the bpf2go-generated type), the ring
 * buffer and loss counter they send it through, and their signal sets. */
#ifndef __CORECATCH_OBSERVER_H__
#define __CORECATCH_OBSERVER_H__

#define MAX_STACK 32

enum event_kind {
	KIND_CORE = 1,  /* a core-dumping signal with its default action */
	KIND_FATAL = 2, /* a terminating signal that dumps no core */
	KIND_EXIT = 3,  /* the last thread of a reported process exited */
};

enum event_flags {
	FLAG_SIGINFO = 1,    /* signal, si_code and addresses come from a siginfo */
	FLAG_GROUP_EXIT = 2, /* seen by a thread the kernel had already marked for death */
	FLAG_OOM = 4,        /* the process was chosen by the OOM killer */
	FLAG_CORE_DUMPED = 8, /* KIND_EXIT: exit_code & 0x80, the kernel wrote a core */
	FLAG_SENDER = 16      /* si_code and sender_pid come from signal_generate */
};

struct event {
	__u64 ktime_ns;     /* CLOCK_MONOTONIC */
	__u64 fault_addr;   /* si_addr for faults */
	__u64 cgroup_id;    /* cgroup v2 id (bpf_get_current_cgroup_id) */
	__u64 cgroup_v1_id; /* kernfs id of the v1 freezer cgroup */
	__u64 exe_ino;
	__u32 exe_dev;
	__u32 mnt_ns;
	__u32 pid_ns;
	__u32 tgid;
	__u32 tid;
	__u32 ns_pid;
	__u32 sender_pid;  /* si_pid when si_code <= 0 (sent from user space) */
	__s32 signal;
	__s32 si_code;
	__s32 exit_code;   /* KIND_EXIT */
	__u8 kind;
	__u8 flags;
	__u16 stack_len;   /* entries of stack */
	__u16 build_id_len; /* entries of build_id */
	__u8 reported_kind; /* KIND_EXIT: the kind of the event reported before */
	__u8 pad;
	char comm[16];
	__u64 stack[MAX_STACK];
	struct bpf_stack_build_id build_id[MAX_STACK];
};

/* What the reported map remembers of a thread group's event. */
struct report {
	__u64 start_time; /* the group leader's, to tell a reused pid */
	__u32 kind;
	__s32 signal;
};

/* Both programs send events through this ring buffer: about 5,800 events,
 * so that a burst of a thousand crashes (a core or fatal event and an exit
 * event each) fits while the reader catches up. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* lost: [0] events lost because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		(*n)++;
}

/* The signal sets, as bit (sig - 1). pkg/observer sets them at load time. */
volatile const __u64 core_mask = 0;
volatile const __u64 fatal_mask = 0;

/* kind_of returns the event kind of a signal with its default action, or
 * 0 when the configured sets do not count it. */
static __always_inline __u8 kind_of(int sig)
{
	if (sig <= 0 || sig > 64)
		return 0;
	__u64 bit = 1ULL << (sig - 1);
	if (core_mask & bit)
		return KIND_CORE;
	if (fatal_mask & bit)
		return KIND_FATAL;
	return 0;
}

/* Keeps struct event in the object's BTF for bpf2go's generated Go type. */
const struct event *unused_event __attribute__((unused));

#endif /* __CORECATCH_OBSERVER_H__ */
