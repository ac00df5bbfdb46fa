// SPDX-License-Identifier: GPL-2.0
/*
 * The observer for kernels without BTF: the classic signal/signal_deliver
 * tracepoint, whose record format is stable ABI. Without BTF there is no
 * task_struct to read, so this program gives fewer fields than
 * observer.bpf.c: no fault address, sender, namespaces or exe inode, no
 * real signal behind a group-exit SIGKILL, and no exit outcome. It needs
 * no relocation at all.
 */
#include "corecatch_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "observer.h"

char LICENSE[] SEC("license") = "GPL";


/* /sys/kernel/tracing/events/signal/signal_deliver/format */
struct signal_deliver_args {
	__u64 common;
	int sig;
	int errno;
	int code;
	unsigned long sa_handler;
	unsigned long sa_flags;
};


/* reported: tgid -> time of its event. Without the leader's start time, a
 * thread group's siblings are recognised by a report of the same tgid
 * within one second. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} reported SEC(".maps");


SEC("tracepoint/signal/signal_deliver")
int on_signal_deliver_tp(struct signal_deliver_args *args)
{
	int sig = args->sig;
	if (sig <= 0 || sig > 64 || args->sa_handler != 0)
		return 0;
	__u8 kind = kind_of(sig);
	if (!kind)
		return 0;

	__u64 now = bpf_ktime_get_ns();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 *prev = bpf_map_lookup_elem(&reported, &tgid);
	if (prev && now - *prev < 1000000000ULL)
		return 0;
	bpf_map_update_elem(&reported, &tgid, &now, BPF_ANY);

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return 0;
	}
	__u64 id = bpf_get_current_pid_tgid();
	__builtin_memset(e, 0, sizeof(*e) - sizeof(e->stack) - sizeof(e->build_id));
	e->ktime_ns = now;
	e->tgid = id >> 32;
	e->tid = (__u32)id;
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->kind = kind;
	e->signal = sig;
	e->si_code = args->code;
	long n = bpf_get_stack(args, e->stack, sizeof(e->stack), BPF_F_USER_STACK);
	e->stack_len = n > 0 ? n / sizeof(__u64) : 0;
	e->build_id_len = 0;
	bpf_ringbuf_submit(e, 0);
	return 0;
}
