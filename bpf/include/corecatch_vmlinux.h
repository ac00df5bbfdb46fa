/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types the observer reads, declared by hand instead of a
 * generated vmlinux.h so that the committed objects are reproducible from
 * this repository alone. Every struct is preserve_access_index: only field
 * names matter, and the loader relocates each access against the running
 * kernel's BTF (CO-RE), so layouts here need not match any kernel.
 */
#ifndef __CORECATCH_VMLINUX_H__
#define __CORECATCH_VMLINUX_H__

typedef unsigned char __u8;
typedef short int __s16;
typedef short unsigned int __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long int __s64;
typedef long long unsigned int __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0
#define NULL ((void *)0)

enum bpf_map_type {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum {
	BPF_F_USER_STACK = 256,
	BPF_F_USER_BUILD_ID = 2048,
};

/* What bpf_get_stack(BPF_F_USER_BUILD_ID) writes per frame: a fixed UAPI
 * layout, not relocated. status 1: build_id+offset valid; 2: ip only. */
struct bpf_stack_build_id {
	__s32 status;
	unsigned char build_id[20];
	union {
		__u64 offset;
		__u64 ip;
	};
};

/* The cgroup subsystem ids are an enum whose values depend on the kernel's
 * config: read them with bpf_core_enum_value. */
enum cgroup_subsys_id {
	freezer_cgrp_id = 6,
};

typedef struct {
	int counter;
} atomic_t;

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct pid_namespace {
	struct ns_common ns;
} __attribute__((preserve_access_index));

struct mnt_namespace {
	struct ns_common ns;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct mnt_namespace *mnt_ns;
} __attribute__((preserve_access_index));

struct upid {
	int nr;
	struct pid_namespace *ns;
} __attribute__((preserve_access_index));

struct pid {
	unsigned int level;
	struct upid numbers[1];
} __attribute__((preserve_access_index));

struct super_block {
	__u32 s_dev;
} __attribute__((preserve_access_index));

struct inode {
	unsigned long i_ino;
	struct super_block *i_sb;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
} __attribute__((preserve_access_index));

struct mm_struct {
	struct file *exe_file;
} __attribute__((preserve_access_index));

struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct cgroup_subsys_state {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup_subsys_state *subsys[16];
} __attribute__((preserve_access_index));

struct signal_struct {
	atomic_t live;
	int group_exit_code;
	unsigned int flags;
	void *core_state;
	struct mm_struct *oom_mm;
} __attribute__((preserve_access_index));

struct sighand_struct;

struct task_struct {
	int pid;
	int tgid;
	int exit_code;
	__u64 start_time;
	struct task_struct *group_leader;
	struct pid *thread_pid;
	struct signal_struct *signal;
	struct nsproxy *nsproxy;
	struct mm_struct *mm;
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

typedef void (*__sighandler_t)(int);

struct sigaction {
	__sighandler_t sa_handler;
} __attribute__((preserve_access_index));

struct k_sigaction {
	struct sigaction sa;
} __attribute__((preserve_access_index));

union __sifields {
	struct {
		int _pid;
		unsigned int _uid;
	} _kill;
	struct {
		void *_addr;
	} _sigfault;
} __attribute__((preserve_access_index));

struct kernel_siginfo {
	int si_signo;
	int si_errno;
	int si_code;
	union __sifields _sifields;
} __attribute__((preserve_access_index));

#endif /* __CORECATCH_VMLINUX_H__ */
