// SPDX-License-Identifier: GPL-2.0
/*
 * spantrack: C glue for the kernel facilities that Linux 6.12's Rust bindings do not reach
 * (procfs, relay, debugfs, tracepoint lookup and registration, sysfs attribute tables,
 * timers, inline helpers). Every decision is made in Rust (spantrack_main.rs and the logic
 * files); this file only moves bytes and calls in and out. Each create has its remove, and
 * the Rust side owns each pair in a type whose Drop undoes it.
 *
 * Functions named st_rs_* are implemented in Rust; st_* functions are called from Rust.
 */
#include <asm/syscall.h>
#include <linux/binfmts.h>
#include <linux/hrtimer.h>
#include <linux/interrupt.h>
#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/file.h>
#include <linux/irq_work.h>
#include <linux/fs.h>
#include <linux/kmemleak.h>
#include <linux/kobject.h>
#include <linux/mount.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/proc_fs.h>
#include <linux/relay.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/rcupdate_trace.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task_stack.h>
#include <linux/stacktrace.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/timer.h>
#include <linux/tracepoint.h>
#include <linux/uaccess.h>
#include <linux/cred.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>

#include "glue.h"

/* ---------------------------------------------------------------------------------------
 * Kernel-version differences: the only LINUX_VERSION_CODE block of the C glue (the Rust
 * side's are in compat.rs). The series built and tested are 6.12 and 7.3; what changed
 * between them that this file must spell differently is the prototype of three of the
 * tracepoints it probes. Each boundary is the release that made the change where it was
 * checked, else 7.0 (marked "assumed"); ST_PROBE_TYPE() below has the compiler compare
 * every probe with the prototype of the kernel built against, so a wrong boundary is a
 * build error on that kernel, never a probe called with other arguments than it takes
 * (which kCFI would trap).
 *
 * Different without code here: 7.x calls the system-call probes preemptible (faultable
 * tracepoints, under rcu_tasks_trace) and the other probes under SRCU, where 6.12 calls
 * every probe with preemption off; sched_process_exit fires before exit_mm() (6.16). The
 * probes are correct either way: per-CPU state only through this_cpu_*() or with
 * interrupts off, the slot read with page faults off, the tracker behind a raw spinlock
 * taken with irqsave; tracepoint_synchronize_unregister() waits for both kinds of reader.
 */
#include <linux/version.h>
#include <trace/events/irq.h>
#include <trace/events/sched.h>
#include <trace/events/syscalls.h>
#include <trace/events/task.h>
#include <trace/events/timer.h>

/* sched_process_exit(p, group_dead): since 6.16 (commit 3e816361e94a, "sched/tracepoints:
 * Move and extend the sched_process_exit() tracepoint"). */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 16, 0)
#define ST_TP_PROCESS_EXIT_ARGS struct task_struct *p, bool group_dead
#else
#define ST_TP_PROCESS_EXIT_ARGS struct task_struct *p
#endif
/* task_newtask(task, u64 clone_flags), was unsigned long ("copy_process: pass clone_flags
 * as u64 across calltree"; release assumed 7.0). */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 0, 0)
typedef u64 st_tp_clone_flags_t;
#else
typedef unsigned long st_tp_clone_flags_t;
#endif
/* hrtimer_expire_entry(hrtimer, ktime_t now), was ktime_t *now (release assumed 7.0). */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 0, 0)
typedef ktime_t st_tp_hrtimer_now_t;
#else
typedef ktime_t *st_tp_hrtimer_now_t;
#endif
/* End of the kernel-version differences. */

/* Implemented in Rust. */
long st_rs_ioctl(unsigned int cmd, int tid, int tgid, unsigned int uid, void *out, size_t out_len,
		 void __user *arg);
long st_rs_span_write(int is_end, int tid, int tgid, const u8 *buf, size_t len);
int st_rs_poll(int tgid);
void st_rs_sys_enter(int tid, long nr, u64 mono, int have_slot, u64 slot);
void st_rs_sys_enter_slot(int tid, long nr, u64 mono, u64 v);
void st_rs_sys_exit_slot(int tid, long ret, u64 mono);
void st_rs_sys_enter_stacked(int tid, long nr, u64 mono);
void st_rs_sys_exit_stacked(int tid, long ret, u64 mono);
void st_rs_task_exit(int tid, int tgid);
void st_rs_new_thread(int tid, int tgid);
void st_rs_exec(int old_tid, int tid, int tgid);
void st_rs_expire(u64 mono);
void st_rs_reap(void);
long st_rs_sysfs_show(int attr, char *buf);
long st_rs_sysfs_store(int attr, const char *buf, size_t len);
long st_rs_stats_show(char *buf, size_t len);

/* What the sched_waking probe knows of the waker (state.rs StWaker, uapi CTX_*). */
struct st_waker {
	u8 ctx;
	u8 softirq;
	u8 flags;
	u8 pad;
	u32 tid;
	u32 tgid;
	u32 nr;
	u64 on_cpu_ns;
	char comm[TASK_COMM_LEN];
};
void st_rs_sched_switch(int prev_tid, int prev_on, int preempt, unsigned int prev_state,
			int in_iowait, int have_slot, u64 slot, int next_tid, int next_on,
			unsigned int cpu, u64 mono, const u64 *kstack, unsigned int n_kstack,
			const u64 *ustack, unsigned int n_ustack);
void st_rs_sched_waking(int tid, u64 mono, const struct st_waker *w, int have_slot, u64 slot);
void st_rs_sched_enable(int on);
void st_rs_sched_runtime(int tid, u64 delta, int is_current, int have_slot, u64 slot);

/* ---------------------------------------------------------------------------------------
 * Lock, memory, clocks
 */

/* The one lock around the tracker's state. Probes take it from system-call context and the
 * expiry timer from softirq context: always with interrupts off. */
/* A raw spinlock: the scheduler probes take it inside the runqueue lock and p->pi_lock
 * (raw locks). Nothing under it sleeps, allocates or wakes a task (relay defers its reader
 * wake-up to irq_work, st_wake_readers() arms a timer). */
static DEFINE_RAW_SPINLOCK(st_lock);

unsigned long st_lock_irqsave(void)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&st_lock, flags);
	return flags;
}

void st_unlock_irqrestore(unsigned long flags)
{
	raw_spin_unlock_irqrestore(&st_lock, flags);
}

/*
 * Both clocks, read by the span entry points with st_lock held: a span's begin and end
 * times are then ordered with the system-call stamps the probes take before they take the
 * lock (a call seen as part of a span ended before the span's end stamp). Callable with
 * interrupts off.
 */
void st_clocks(u64 *mono, u64 *real)
{
	ktime_t now = ktime_get();

	*mono = ktime_to_ns(now);
	/*
	 * The same instant on the wall clock, by the timekeeper's own offset: two separate reads
	 * drift apart by however long the CPU is held up between them (a guest vCPU descheduled
	 * by a busy host: milliseconds), and every call of the record would be placed that much
	 * late in its span.
	 */
	*real = ktime_to_ns(ktime_mono_to_real(now));
}

/* Serialises registration (relay channels are created and closed in sleeping context). */
static DEFINE_MUTEX(st_reg_mutex);

void st_reg_lock(void)
{
	mutex_lock(&st_reg_mutex);
}

void st_reg_unlock(void)
{
	mutex_unlock(&st_reg_mutex);
}

void *st_vzalloc(size_t size)
{
	return vzalloc(size);
}

void st_vfree(void *p)
{
	vfree(p);
}

unsigned int st_possible_cpus(void)
{
	return num_possible_cpus();
}

/* ---------------------------------------------------------------------------------------
 * Tracepoint probes: the untracked test is one bit test in this file; everything else is
 * in Rust, reached only for tracked threads.
 */

/* Bit tid of st_tracked_bits: the thread is tracked; of st_active_bits: it also has an open
 * span. The system-call probes test the second, so that a tracked thread outside any span
 * costs no more than an untracked one. Both are owned by the Rust tracker. */
static unsigned long *st_tracked_bits;
static unsigned long *st_active_bits;
/* Bit tid: the thread has an active-span slot and its process an open span. */
static unsigned long *st_active_slot_bits;
/* Bit tid: skip the thread's next call exit (its call is charged to no span). */
static unsigned long *st_skip_bits;
/* Bit tgid: the process is registered (the thread-creation probe's one test). */
static unsigned long *st_registered_bits;
static unsigned long st_nbits;

/* Where each thread's active-span slot is (tracker.rs SlotHint), written by the tracker
 * under its lock: tid cleared first, set last. */
struct st_slot_hint {
	u64 tid;
	u64 addr;
};
static struct st_slot_hint *st_slot_hints;
static unsigned long st_n_hints;
/* Calls charged to no span by the sys_enter probe alone (slot 0). */
static DEFINE_PER_CPU(u64, st_fast_uncharged);
/* Scheduler accounting on (sysfs sched): its probes are registered. */
static int st_sched_on;

void st_set_bitmaps(unsigned long *tracked, unsigned long *active, unsigned long *active_slot,
		    unsigned long *skip, unsigned long *registered, void *hints,
		    unsigned long n_hints, unsigned long nbits)
{
	WRITE_ONCE(st_nbits, 0);
	smp_wmb();
	WRITE_ONCE(st_tracked_bits, tracked);
	WRITE_ONCE(st_active_bits, active);
	WRITE_ONCE(st_active_slot_bits, active_slot);
	WRITE_ONCE(st_skip_bits, skip);
	WRITE_ONCE(st_registered_bits, registered);
	WRITE_ONCE(st_slot_hints, hints);
	WRITE_ONCE(st_n_hints, hints ? n_hints : 0);
	smp_wmb();
	WRITE_ONCE(st_nbits, nbits);
}

u64 st_fast_uncharged_sum(void)
{
	u64 n = 0;
	int cpu;

	for_each_possible_cpu(cpu)
		n += per_cpu(st_fast_uncharged, cpu);
	return n;
}

static __always_inline bool st_bit(unsigned long *bits, pid_t pid)
{
	return (unsigned long)pid < READ_ONCE(st_nbits) && test_bit(pid, READ_ONCE(bits));
}

static __always_inline bool st_tracked(pid_t pid)
{
	return st_bit(st_tracked_bits, pid);
}

static __always_inline bool st_active(pid_t pid)
{
	return st_bit(st_active_bits, pid);
}

/*
 * The 8-byte active-span slot of the current task at user address addr (see
 * IOCTL_SET_ACTIVE_SLOT), from the sys_enter probe: preemption is off there (6.12 runs
 * tracepoint probes under preempt_disable), so the read must not fault in a page: with
 * page faults disabled a missing page is an -EFAULT through the exception table.
 * 0 or -EFAULT.
 */
int st_read_slot(u64 addr, u64 *val)
{
	const u64 __user *p = (const u64 __user *)(uintptr_t)addr;
	int r;

	if (unlikely(!access_ok(p, sizeof(*p))))
		return -EFAULT;
	pagefault_disable();
	r = __get_user(*val, p);
	pagefault_enable();
	return r ? -EFAULT : 0;
}

/* Process context (the ioctl): is the slot at addr readable? 0 or -EFAULT. */
int st_check_slot(u64 addr)
{
	u64 v;

	return copy_from_user(&v, (const void __user *)(uintptr_t)addr, sizeof(v)) ? -EFAULT : 0;
}

/* The slot address of thread pid from the tracker's table, or 0 (not there: locked path). */
static __always_inline u64 st_slot_of(pid_t pid)
{
	struct st_slot_hint *h;
	unsigned long n = READ_ONCE(st_n_hints);
	u64 addr;

	if (!n)
		return 0;
	h = &READ_ONCE(st_slot_hints)[(unsigned long)pid % n];
	if (READ_ONCE(h->tid) != (u64)pid)
		return 0;
	smp_rmb();
	addr = READ_ONCE(h->addr);
	smp_rmb();
	return READ_ONCE(h->tid) == (u64)pid ? addr : 0;
}

/* Threads with an active-span slot (out of line: the untracked test stays short). */
static noinline void st_sys_enter_slotted(pid_t pid, long id)
{
	unsigned long *skip = READ_ONCE(st_skip_bits);
	u64 addr, v = 0;
	int have = 0;

	addr = st_slot_of(pid);
	if (addr && !st_read_slot(addr, &v)) {
		/* A thread whose slot says "no span": nothing to record, at enter or at exit.
		 * (No on-CPU checkpoint either: the event loop's own time between two tasks
		 * goes to the next task's span, see logic/sched.rs.) */
		if (v == 0) {
			set_bit(pid, skip);
			this_cpu_inc(st_fast_uncharged);
			return;
		}
		have = 1;
	}
	if (test_bit(pid, skip))
		clear_bit(pid, skip);
	/* The call is noted in the thread's own slot, without the lock (logic/hot.rs). */
	if (have)
		st_rs_sys_enter_slot(pid, id, ktime_get_ns(), v);
	else
		st_rs_sys_enter(pid, id, ktime_get_ns(), 0, 0);
}

/* ---------------------------------------------------------------------------------------
 * The traced system-call path only for the threads that need it (issue 16).
 *
 * Once any probe is attached to sys_enter/sys_exit, the kernel sets SYSCALL_TRACEPOINT in
 * the syscall_work of every thread on the machine (syscall_regfunc()), and each of their
 * system calls takes the traced slow path: ~110 instructions more, in every process, for
 * probes that answer "not in a span" with one bit test. So while spantrack's probes are
 * the only ones on those two tracepoints (st_lazy), a thread outside any span drops the
 * flag from its probe (it only ever changes its own), and its next calls cost what they
 * cost without the module. The flag comes back:
 * - for a thread that enters the open-span set: st_trace_need(), told by the tracker of
 *   every such thread (its own begin, a slot thread when its process's first span opens);
 * - for every thread, as soon as the poll below sees another probe on either tracepoint
 *   (perf trace, an ftrace syscall event, a BPF program), and before the module leaves one
 *   behind it. The kernel never tells of such an attach: a tracer that attaches while
 *   spantrack is loaded misses the calls of threads without the flag for up to one poll
 *   period (ST_TRACE_PERIOD) plus the walk over all threads.
 * Ordering: the dropper clears the flag, then (full barrier) reads its open-span bit and
 * st_lazy, and sets the flag again if either says so; the setters write the bit or st_lazy
 * first, then (full barrier) set the flag. Either the dropper sees the change or the set
 * comes after its clear: a thread the probes must see always ends with the flag.
 */
static int st_lazy;
static unsigned int st_foreign_probes;
static u64 st_trace_restores;
static DEFINE_PER_CPU(u64, st_trace_dropped);

static noinline void st_lazy_drop(pid_t pid)
{
	clear_task_syscall_work(current, SYSCALL_TRACEPOINT);
	smp_mb__after_atomic();
	if (unlikely(st_active(pid) || !READ_ONCE(st_lazy)))
		set_task_syscall_work(current, SYSCALL_TRACEPOINT);
	else
		this_cpu_inc(st_trace_dropped);
}

/* The tracker put tid in the open-span set (under its lock, interrupts off). */
void st_trace_need(int tid)
{
	struct task_struct *t;

	smp_mb();
	if (tid == current->pid) {
		set_task_syscall_work(current, SYSCALL_TRACEPOINT);
		return;
	}
	rcu_read_lock();
	t = pid_task(find_pid_ns(tid, &init_pid_ns), PIDTYPE_PID);
	if (t)
		set_task_syscall_work(t, SYSCALL_TRACEPOINT);
	rcu_read_unlock();
}

void st_trace_stats(u64 *lazy, u64 *foreign, u64 *dropped, u64 *restores)
{
	int cpu;

	*lazy = READ_ONCE(st_lazy);
	*foreign = READ_ONCE(st_foreign_probes);
	*dropped = 0;
	for_each_possible_cpu(cpu)
		*dropped += per_cpu(st_trace_dropped, cpu);
	*restores = READ_ONCE(st_trace_restores);
}

/*
 * Untracked threads and threads outside any span: one bit test. A thread with spans on
 * its stack notes its call in its own slot, without the tracker's lock (logic/hot.rs); so
 * does a thread with an active-span slot (while its process has open spans), with the
 * slot's value, read here.
 */
static void st_probe_sys_enter(void *data, struct pt_regs *regs, long id)
{
	pid_t pid = current->pid;

	if (likely(!st_active(pid))) {
		if (READ_ONCE(st_lazy))
			st_lazy_drop(pid);
		return;
	}
	if (test_bit(pid, READ_ONCE(st_active_slot_bits)))
		st_sys_enter_slotted(pid, id);
	else
		st_rs_sys_enter_stacked(pid, id, ktime_get_ns());
}

static noinline void st_sys_exit_slotted(pid_t pid, long ret)
{
	unsigned long *skip = READ_ONCE(st_skip_bits);

	if (test_bit(pid, skip)) {
		clear_bit(pid, skip);
		return;
	}
	st_rs_sys_exit_slot(pid, ret, ktime_get_ns());
}

static void st_probe_sys_exit(void *data, struct pt_regs *regs, long ret)
{
	pid_t pid = current->pid;

	if (likely(!st_active(pid))) {
		if (READ_ONCE(st_lazy))
			st_lazy_drop(pid);
		return;
	}
	if (test_bit(pid, READ_ONCE(st_active_slot_bits)))
		st_sys_exit_slotted(pid, ret);
	else
		st_rs_sys_exit_stacked(pid, ret, ktime_get_ns());
}

static void st_probe_process_exit(void *data, ST_TP_PROCESS_EXIT_ARGS)
{
	/* A registration walking this thread group may have read our flags just before
	 * exit_signals() set PF_EXITING, and not have added us yet: our tracked bit is then
	 * still clear, and a fast return here would leave us tracked for ever once the walk
	 * adds us (the process never loses its last thread: still registered after its exit,
	 * seen once in 20 loaded runs of t_stress's procs mode). The group's registered bit
	 * is set before that walk. Pairs with the smp_mb() in st_for_each_thread_of_current():
	 * either the walk sees PF_EXITING (set by this task before this barrier) and skips us,
	 * or we see the registered bit and take the lock, which the walk holds; after it we
	 * are tracked (and removed now) or were never added. Any other exit on the machine
	 * costs this barrier and two bit tests. */
	smp_mb();
	if (likely(!st_tracked(p->pid) && !st_bit(st_registered_bits, p->tgid)))
		return;
	st_rs_task_exit(p->pid, p->tgid);
}

static void st_probe_newtask(void *data, struct task_struct *task, st_tp_clone_flags_t clone_flags)
{
	/* New threads of a registered process (whichever thread created them: the preload's
	 * own threads are untracked); any other thread creation on the machine costs this bit
	 * test and no lock. The task is on its group's thread list by now (copy_process()
	 * fires the tracepoint after attaching it). Pairs with the smp_mb() in
	 * st_for_each_thread_of_current(): registration sets the group's bit, then walks the
	 * list; we were put on the list, then test the bit. With a full barrier on both sides,
	 * either the walk sees this thread or we see the bit (or both: adding is idempotent). */
	if (!(clone_flags & CLONE_THREAD))
		return;
	smp_mb();
	if (likely(!st_bit(st_registered_bits, task->tgid)))
		return;
	st_rs_new_thread(task->pid, task->tgid);
}

/* A tracked thread completed an execve. A non-main thread that execs takes the leader's pid
 * (de_thread(), after the leader and the other threads have exited): old_pid is the pid
 * it had, p->pid the one it has now. */
static void st_probe_exec(void *data, struct task_struct *p, pid_t old_pid,
			  struct linux_binprm *bprm)
{
	if (likely(!st_tracked(old_pid)))
		return;
	st_rs_exec(old_pid, p->pid, p->tgid);
}

/* ---------------------------------------------------------------------------------------
 * Scheduler probes (sysfs sched; registered only while on). Where a waking comes from:
 * the softirq being served and whether a timer callback runs, per CPU.
 */
#define ST_CTX_TASK 0
#define ST_CTX_HARDIRQ 1
#define ST_CTX_SOFTIRQ 2
#define ST_CTX_NMI 3
#define ST_CTX_TIMER 4
#define ST_SOFTIRQ_NONE 255
#define ST_WAIT_WAKER_KTHREAD 2

static DEFINE_PER_CPU(u8, st_softirq_vec) = ST_SOFTIRQ_NONE;
static DEFINE_PER_CPU(int, st_timer_depth);

static void st_probe_softirq_entry(void *data, unsigned int vec)
{
	this_cpu_write(st_softirq_vec, vec);
}

static void st_probe_softirq_exit(void *data, unsigned int vec)
{
	this_cpu_write(st_softirq_vec, ST_SOFTIRQ_NONE);
}

static void st_probe_hrtimer_entry(void *data, struct hrtimer *t, st_tp_hrtimer_now_t now)
{
	this_cpu_inc(st_timer_depth);
}

static void st_probe_hrtimer_exit(void *data, struct hrtimer *t)
{
	if (this_cpu_read(st_timer_depth) > 0)
		this_cpu_dec(st_timer_depth);
}

static void st_probe_timer_entry(void *data, struct timer_list *t, unsigned long baseclk)
{
	this_cpu_inc(st_timer_depth);
}

static void st_probe_timer_exit(void *data, struct timer_list *t)
{
	if (this_cpu_read(st_timer_depth) > 0)
		this_cpu_dec(st_timer_depth);
}

/*
 * The current task's active-span slot value, if it has a slot and its process an open
 * span: 1 and *v, or 0. Only for current (its own user memory), with preemption off.
 */
static __always_inline int st_slot_value_of_current(pid_t pid, u64 *v)
{
	u64 addr;

	if (!current->mm || !st_active(pid) || !test_bit(pid, READ_ONCE(st_active_slot_bits)))
		return 0;
	addr = st_slot_of(pid);
	return addr && !st_read_slot(addr, v);
}

/* Stacks of blocking switches (sysfs sched_stacks; uapi KSTACK_DEPTH, USTACK_DEPTH). */
#define ST_KSTACK 16
#define ST_USTACK 12
static int st_stacks_on = 1;

int st_stacks_get(void)
{
	return READ_ONCE(st_stacks_on);
}

void st_stacks_set(int on)
{
	WRITE_ONCE(st_stacks_on, !!on);
}

/*
 * Whether the registering task may see kernel addresses, as in /proc/kallsyms (which needs
 * CAP_SYSLOG when kptr_restrict is 1, or perf_event_paranoid <= 1 with kptr_restrict 0: we
 * take the stricter rule). Without it its records carry no kernel stack: they would give
 * away the kernel's load address (KASLR).
 */
int st_may_see_kernel_addrs(void)
{
	return ns_capable_noaudit(&init_user_ns, CAP_SYSLOG);
}

/*
 * The user stack of current's system call: the user IP at entry, then the chain of saved
 * frame pointers from the user rbp (code built with frame pointers; a leaf without one,
 * such as libc's system-call wrappers, leaves rbp to its caller, whose caller comes next).
 * Read with copy_from_user_nofault(): never faults a page in, stops at the first frame it
 * cannot read, at a misaligned or non-increasing frame pointer, or at a zero return.
 */
static unsigned int st_user_stack(u64 *out, unsigned int max)
{
	struct pt_regs *regs = task_pt_regs(current);
	unsigned long fp, frame[2];
	unsigned int n = 0;

	if (!current->mm || !user_mode(regs) || !max)
		return 0;
	out[n++] = regs->ip;
	fp = regs->bp;
	while (n < max && fp && !(fp & 7)) {
		if (copy_from_user_nofault(frame, (const void __user *)fp, sizeof(frame)))
			break;
		if (!frame[1])
			break;
		out[n++] = frame[1];
		if (frame[0] <= fp)
			break;
		fp = frame[0];
	}
	return n;
}

/*
 * sched_switch runs on the CPU that switches, with its runqueue lock held and current ==
 * prev (still in prev's mm, so prev's slot is readable). prev_state is masked to the
 * reportable bits; preempt is checked first by the tracker.
 */
static void st_probe_sched_switch(void *data, bool preempt, struct task_struct *prev,
				  struct task_struct *next, unsigned int prev_state)
{
	int a = st_active(prev->pid), b = st_active(next->pid);
	unsigned int kn = 0, un = 0;
	u64 kst[ST_KSTACK], ust[ST_USTACK];
	int have = 0;
	u64 v = 0;

	if (likely(!a && !b))
		return;
	if (a) {
		have = st_slot_value_of_current(prev->pid, &v);
		/* A blocking switch: where it blocked, in the kernel and in user space. */
		if (!preempt && (prev_state & TASK_REPORT) && READ_ONCE(st_stacks_on)) {
			kn = stack_trace_save((unsigned long *)kst, ST_KSTACK, 0);
			un = st_user_stack(ust, ST_USTACK);
		}
	}
	st_rs_sched_switch(prev->pid, a, preempt, prev_state & TASK_REPORT, prev->in_iowait, have, v,
			   next->pid, b, smp_processor_id(), ktime_get_ns(), kst, kn, ust, un);
}

/*
 * sched_stat_runtime: p ran delta ns more (update_curr(), the runqueue lock held; p is the
 * current task of some CPU, this one or, from a remote enqueue, another). Only threads with
 * an active-span slot: their span changes in user space, so each increment goes to the span
 * the slot names now (readable only when p is current).
 */
static void st_probe_stat_runtime(void *data, struct task_struct *p, u64 delta)
{
	int have = 0, cur = p == current;
	u64 v = 0;

	if (likely(!st_active(p->pid)) || !test_bit(p->pid, READ_ONCE(st_active_slot_bits)))
		return;
	if (cur)
		have = st_slot_value_of_current(p->pid, &v);
	st_rs_sched_runtime(p->pid, delta, cur, have, v);
}

/*
 * sched_waking runs in the waker's context (p->pi_lock held, interrupts off). A hard
 * interrupt, an NMI or a timer callback names no waker task: current is merely whoever
 * was interrupted. A softirq names current only while current is in a system call (on
 * loopback NET_RX runs in the sender's local_bh_enable()).
 */
static void st_probe_sched_waking(void *data, struct task_struct *p)
{
	struct task_struct *t = NULL;
	struct st_waker w = { .softirq = ST_SOFTIRQ_NONE, .nr = U32_MAX };
	int have = 0;
	u64 v = 0;
	long nr = -1;

	if (likely(!st_active(p->pid)))
		return;
	if (in_nmi()) {
		w.ctx = ST_CTX_NMI;
	} else if ((in_hardirq() || in_serving_softirq()) && this_cpu_read(st_timer_depth) > 0) {
		/* Timer callbacks run in hard or soft interrupt context (not PREEMPT_RT). */
		w.ctx = ST_CTX_TIMER;
	} else if (in_hardirq()) {
		w.ctx = ST_CTX_HARDIRQ;
	} else if (in_serving_softirq()) {
		w.ctx = ST_CTX_SOFTIRQ;
		w.softirq = this_cpu_read(st_softirq_vec);
		if (!(current->flags & PF_KTHREAD))
			nr = syscall_get_nr(current, task_pt_regs(current));
		if (nr >= 0)
			t = current;
	} else {
		w.ctx = ST_CTX_TASK;
		t = current;
	}
	if (t) {
		w.tid = t->pid;
		w.tgid = t->tgid;
		/* Not get_task_comm(): it takes task_lock, a sleeping lock on RT and not
		 * allowed under pi_lock. A racing rename gives a mixed name, never a fault. */
		memcpy(w.comm, t->comm, sizeof(w.comm));
		w.comm[sizeof(w.comm) - 1] = 0;
		if (t->flags & PF_KTHREAD) {
			w.flags |= ST_WAIT_WAKER_KTHREAD;
		} else {
			if (nr < 0)
				nr = syscall_get_nr(t, task_pt_regs(t));
			if (nr >= 0 && nr < NR_syscalls)
				w.nr = nr;
		}
		/* On the CPU since it was last scheduled in (the kernel's own figure). */
		w.on_cpu_ns = t->se.sum_exec_runtime - t->se.prev_sum_exec_runtime;
		have = st_slot_value_of_current(t->pid, &v);
	}
	st_rs_sched_waking(p->pid, ktime_get_ns(), &w, have, v);
}

struct st_tp {
	const char *name;
	void *probe;
	struct tracepoint *tp;
	bool registered;
};

/*
 * Registered in this order, unregistered in the reverse: each exit probe before its entry
 * probe, so that no entry is counted whose exit goes unseen (a timer that entered between
 * the two registrations would leave its CPU "in a timer" for good, and every wake-up there
 * would say "woken by a timer"); the consumers last.
 */
static struct st_tp st_sched_tps[] = {
	{ .name = "softirq_exit", .probe = st_probe_softirq_exit },
	{ .name = "softirq_entry", .probe = st_probe_softirq_entry },
	{ .name = "hrtimer_expire_exit", .probe = st_probe_hrtimer_exit },
	{ .name = "hrtimer_expire_entry", .probe = st_probe_hrtimer_entry },
	{ .name = "timer_expire_exit", .probe = st_probe_timer_exit },
	{ .name = "timer_expire_entry", .probe = st_probe_timer_entry },
	{ .name = "sched_waking", .probe = st_probe_sched_waking },
	{ .name = "sched_stat_runtime", .probe = st_probe_stat_runtime },
	{ .name = "sched_switch", .probe = st_probe_sched_switch },
};

static struct st_tp st_tps[] = {
	{ .name = "sys_enter", .probe = st_probe_sys_enter },
	{ .name = "sys_exit", .probe = st_probe_sys_exit },
	{ .name = "sched_process_exit", .probe = st_probe_process_exit },
	{ .name = "task_newtask", .probe = st_probe_newtask },
	{ .name = "sched_process_exec", .probe = st_probe_exec },
};

/*
 * Every probe has the prototype of its tracepoint in the kernel built against: the
 * registration takes probes as void *, so without this a changed prototype would compile.
 * Compile-time only (typeof: nothing is called or referenced).
 */
#define ST_PROBE_TYPE(tp, fn)                                                              \
	_Static_assert(__builtin_types_compatible_p(typeof(register_trace_##tp),           \
						    int(typeof(&fn), void *)),             \
		       #fn " does not have the prototype of tracepoint " #tp                  \
		       " in this kernel (see the kernel-version block at the top)")
ST_PROBE_TYPE(sys_enter, st_probe_sys_enter);
ST_PROBE_TYPE(sys_exit, st_probe_sys_exit);
ST_PROBE_TYPE(sched_process_exit, st_probe_process_exit);
ST_PROBE_TYPE(task_newtask, st_probe_newtask);
ST_PROBE_TYPE(sched_process_exec, st_probe_exec);
ST_PROBE_TYPE(softirq_entry, st_probe_softirq_entry);
ST_PROBE_TYPE(softirq_exit, st_probe_softirq_exit);
ST_PROBE_TYPE(hrtimer_expire_entry, st_probe_hrtimer_entry);
ST_PROBE_TYPE(hrtimer_expire_exit, st_probe_hrtimer_exit);
ST_PROBE_TYPE(timer_expire_entry, st_probe_timer_entry);
ST_PROBE_TYPE(timer_expire_exit, st_probe_timer_exit);
ST_PROBE_TYPE(sched_waking, st_probe_sched_waking);
ST_PROBE_TYPE(sched_stat_runtime, st_probe_stat_runtime);
ST_PROBE_TYPE(sched_switch, st_probe_sched_switch);

static void st_find_tp(struct tracepoint *tp, void *priv)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(st_tps); i++)
		if (!strcmp(tp->name, st_tps[i].name))
			st_tps[i].tp = tp;
	for (i = 0; i < ARRAY_SIZE(st_sched_tps); i++)
		if (!strcmp(tp->name, st_sched_tps[i].name))
			st_sched_tps[i].tp = tp;
}

/* Serialises st_sched_set(); st_sched_dead: the module is unloading. */
static DEFINE_MUTEX(st_sched_mutex);
static bool st_sched_dead;

static void st_sched_unregister_locked(void)
{
	int i;

	for (i = ARRAY_SIZE(st_sched_tps) - 1; i >= 0; i--) {
		if (st_sched_tps[i].registered)
			tracepoint_probe_unregister(st_sched_tps[i].tp, st_sched_tps[i].probe, NULL);
		st_sched_tps[i].registered = false;
	}
	tracepoint_synchronize_unregister();
}

/*
 * Scheduler accounting on or off (sysfs sched; on at load): registers its probes, then
 * switches the tracker on; or switches the tracker off, then unregisters them and waits
 * until none runs. Off costs nothing on the scheduler's path. Sleeps. 0 or -errno (the
 * state is then off).
 */
int st_sched_set(int on)
{
	int i, ret = 0;

	mutex_lock(&st_sched_mutex);
	if (st_sched_dead) {
		ret = on ? -ENODEV : 0;
		goto out;
	}
	if (!!on == !!READ_ONCE(st_sched_on))
		goto out;
	if (!on) {
		st_rs_sched_enable(0);
		WRITE_ONCE(st_sched_on, 0);
		st_sched_unregister_locked();
		goto out;
	}
	/* No probe runs now (off, and unregistered with a grace period): what an earlier
	 * unregistration cut in the middle of a timer or a softirq is forgotten. */
	for_each_possible_cpu(i) {
		per_cpu(st_timer_depth, i) = 0;
		per_cpu(st_softirq_vec, i) = ST_SOFTIRQ_NONE;
	}
	for (i = 0; i < ARRAY_SIZE(st_sched_tps); i++) {
		if (!st_sched_tps[i].tp) {
			pr_err("spantrack: tracepoint %s not found: scheduler accounting off\n",
			       st_sched_tps[i].name);
			ret = -ENOENT;
			break;
		}
		ret = tracepoint_probe_register(st_sched_tps[i].tp, st_sched_tps[i].probe, NULL);
		if (ret)
			break;
		st_sched_tps[i].registered = true;
	}
	if (ret) {
		st_sched_unregister_locked();
		goto out;
	}
	WRITE_ONCE(st_sched_on, 1);
	st_rs_sched_enable(1);
out:
	mutex_unlock(&st_sched_mutex);
	return ret;
}

/* How often the module looks for other probes on the system-call tracepoints. */
#define ST_TRACE_PERIOD (HZ / 10)

/* Probes on tp other than ours (the array is freed after an RCU-tasks-trace grace period
 * for the faultable system-call tracepoints of 7.x, after an RCU one in 6.12). */
static unsigned int st_foreign_on(struct tracepoint *tp, void *ours)
{
	struct tracepoint_func *f;
	unsigned int n = 0;

	if (!tp)
		return 0;
	rcu_read_lock_trace();
	rcu_read_lock();
	f = rcu_dereference_raw(tp->funcs);
	for (; f && f->func; f++)
		if (f->func != ours)
			n++;
	rcu_read_unlock();
	rcu_read_unlock_trace();
	return n;
}

static unsigned int st_foreign_count(void)
{
	return st_foreign_on(st_tps[0].tp, st_probe_sys_enter) +
	       st_foreign_on(st_tps[1].tp, st_probe_sys_exit);
}

/* Every thread gets SYSCALL_TRACEPOINT back (st_lazy is already 0). A thread forked from a
 * parent without the flag while the walk runs may be listed after it: callers walk twice,
 * the second time after the parents have it. */
static void st_restore_all(void)
{
	struct task_struct *p, *t;

	smp_mb();
	rcu_read_lock();
	for_each_process_thread(p, t)
		set_task_syscall_work(t, SYSCALL_TRACEPOINT);
	rcu_read_unlock();
	WRITE_ONCE(st_trace_restores, st_trace_restores + 1);
}

static bool st_trace_stopping;
static bool st_restore_again;
static void st_trace_fn(struct work_struct *w);
static DECLARE_DELAYED_WORK(st_trace_work, st_trace_fn);

static void st_trace_fn(struct work_struct *w)
{
	unsigned int n = st_foreign_count();

	WRITE_ONCE(st_foreign_probes, n);
	if (n) {
		bool first = READ_ONCE(st_lazy);

		if (first || st_restore_again) {
			WRITE_ONCE(st_lazy, 0);
			st_restore_all();
			st_restore_again = first;
		}
	} else {
		st_restore_again = false;
		WRITE_ONCE(st_lazy, 1);
	}
	if (!READ_ONCE(st_trace_stopping))
		schedule_delayed_work(&st_trace_work, ST_TRACE_PERIOD);
}

/* Lazy mode off for good; waits for the poll to stop. */
static void st_trace_stop(void)
{
	WRITE_ONCE(st_trace_stopping, true);
	cancel_delayed_work_sync(&st_trace_work);
	WRITE_ONCE(st_lazy, 0);
	smp_mb();
}

void st_tracepoints_unregister(void)
{
	int i;

	st_sched_set(0);
	mutex_lock(&st_sched_mutex);
	st_sched_dead = true;
	mutex_unlock(&st_sched_mutex);
	st_trace_stop();

	for (i = ARRAY_SIZE(st_tps) - 1; i >= 0; i--) {
		if (st_tps[i].registered)
			tracepoint_probe_unregister(st_tps[i].tp, st_tps[i].probe, NULL);
		st_tps[i].registered = false;
	}
	/* No probe runs any more once this returns. */
	tracepoint_synchronize_unregister();
	/*
	 * Without another probe the kernel has cleared every thread's flag (the last
	 * unregistration); with one, the threads whose flag our probes dropped get it back,
	 * twice (see st_restore_all()). (A tracer that detaches between the look and the walk
	 * leaves the flags set with no probe: the slow path, not a missed call, until the
	 * next syscall tracer comes and goes.)
	 */
	if (st_foreign_count()) {
		st_restore_all();
		synchronize_rcu();
		st_restore_all();
	}
}

int st_tracepoints_register(void)
{
	int i, ret;

	for_each_kernel_tracepoint(st_find_tp, NULL);
	for (i = 0; i < ARRAY_SIZE(st_tps); i++) {
		if (!st_tps[i].tp) {
			pr_err("spantrack: tracepoint %s not found (CONFIG_FTRACE_SYSCALLS?)\n",
			       st_tps[i].name);
			st_tracepoints_unregister();
			return -ENOENT;
		}
		ret = tracepoint_probe_register(st_tps[i].tp, st_tps[i].probe, NULL);
		if (ret) {
			st_tracepoints_unregister();
			return ret;
		}
		st_tps[i].registered = true;
	}
	/* Scheduler accounting starts on; without its tracepoints the module works without. */
	st_sched_set(1);
	/* The first look at the other probes now: the traced path goes lazy if there are none. */
	WRITE_ONCE(st_trace_stopping, false);
	schedule_delayed_work(&st_trace_work, 0);
	return 0;
}

/*
 * Calls cb for every thread of the calling process that is not exiting, until cb returns
 * nonzero (under RCU: cb must not sleep). A thread already past exit_signals() (PF_EXITING)
 * is skipped: its sched_process_exit probe may have run already. The caller holds st_lock,
 * which orders this walk with the exit and new-task probes: a thread seen here without
 * PF_EXITING has its exit probe still to come, and a thread not yet on the list has its
 * task_newtask probe still to come.
 */
void st_for_each_thread_of_current(int (*cb)(void *ctx, int tid, int tgid), void *ctx)
{
	struct task_struct *t;

	/* The registered bit, set by the caller just before, is visible to the thread-creation
	 * probe before we read the thread list (see st_probe_newtask()). */
	smp_mb();
	rcu_read_lock();
	for_each_thread(current, t) {
		if (READ_ONCE(t->flags) & PF_EXITING)
			continue;
		if (cb(ctx, t->pid, t->tgid))
			break;
	}
	rcu_read_unlock();
}

/* ---------------------------------------------------------------------------------------
 * Relay channels: one per registered process, in debugfs spantrack/<tgid>/cpu<N>.
 */

#define ST_SUBBUF_SIZE (256 * 1024)
#define ST_N_SUBBUFS 4

static struct dentry *st_debugfs_root;

struct st_chan {
	struct rchan *rchan;
	struct dentry *dir;
	unsigned int uid; /* who registered it (charged while its buffers linger) */
};

/*
 * Reading relay buffers. Relay's own read (relay_file_read()) takes no lock the writer takes:
 * it pairs writer fields (subbufs_produced, offset, data, padding) read at different moments
 * and moves subbufs_consumed backwards when a switch happens in the middle of its reads. A
 * writer stalled between relay_switch_subbuf()'s stores (a guest vCPU descheduled by the
 * host for milliseconds, interrupts off or not) makes it hand out an old sub-buffer again
 * and skip the new one: records doubled and lost, nothing counted (issue 13). So the
 * buffers are read by st_relay_read() below, which reads and consumes under st_lock, the
 * lock every write holds from its guard to its last store: a reader never sees a switch
 * half done, and only readers move subbufs_consumed/bytes_consumed.
 *
 * The files are debugfs files (spantrack/<tgid>/cpu<N>); IOCTL_RELAY_FDS opens those same
 * files for the caller. debugfs's proxy runs st_relay_read() only between
 * debugfs_file_get()/put(), and debugfs_remove() (channel close, so also unload) waits for
 * reads in progress and makes later ones fail with EIO: no code of this module runs for a
 * descriptor after its channel is closed. The proxy still reads the file_operations at
 * release (->release, ->owner), after the module may be gone, so they live in memory that
 * is never freed (one small allocation per load) and name only built-in functions besides
 * read: relay's open, poll and release (which hold and drop the buffer's reference).
 * No owner: an open descriptor does not pin the module.
 */
static struct file_operations *st_relay_fops;
/* Our own mount of debugfs (the one superblock), to open its files for IOCTL_RELAY_FDS. */
static struct vfsmount *st_debugfs_mnt;
static int st_debugfs_mnt_count;

/* Bytes a reader may take per hold of st_lock (copied out with interrupts off). */
#define ST_READ_CHUNK (16 * 1024)

/* Under st_lock: bytes readable at the reader's position in the oldest unread sub-buffer,
 * moving to the next sub-buffer when this one is used up. */
static size_t st_buf_readable(struct rchan_buf *buf)
{
	size_t size = buf->chan->subbuf_size;

	for (;;) {
		size_t idx = buf->subbufs_consumed % buf->chan->n_subbufs;
		size_t end;

		if (buf->subbufs_consumed == buf->subbufs_produced)
			end = min(buf->offset, size); /* the sub-buffer being written */
		else
			end = size - buf->padding[idx];
		if (buf->bytes_consumed < end)
			return end - buf->bytes_consumed;
		if (buf->subbufs_consumed == buf->subbufs_produced)
			return 0;
		buf->subbufs_consumed++;
		buf->bytes_consumed = 0;
	}
}

/* Copies up to len unread bytes into dst and consumes them, under st_lock. */
static size_t st_buf_take(struct rchan_buf *buf, void *dst, size_t len)
{
	size_t size = buf->chan->subbuf_size, got = 0;
	unsigned long flags;

	raw_spin_lock_irqsave(&st_lock, flags);
	while (got < len) {
		size_t n = min(st_buf_readable(buf), len - got);
		size_t idx = buf->subbufs_consumed % buf->chan->n_subbufs;

		if (!n)
			break;
		memcpy(dst + got, buf->start + idx * size + buf->bytes_consumed, n);
		buf->bytes_consumed += n;
		got += n;
	}
	raw_spin_unlock_irqrestore(&st_lock, flags);
	return got;
}

/* Whole records in order, never the same bytes twice; 0 when nothing is unread (it does not
 * block: poll /proc/spantrack/control). Concurrent readers get disjoint bytes. */
static ssize_t st_relay_read(struct file *f, char __user *ubuf, size_t count, loff_t *ppos)
{
	struct rchan_buf *buf = f->private_data;
	size_t chunk = min_t(size_t, count, ST_READ_CHUNK), done = 0;
	void *bounce;

	if (!count)
		return 0;
	bounce = kmalloc(chunk, GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;
	while (done < count) {
		size_t n = st_buf_take(buf, bounce, min(count - done, chunk));

		if (!n)
			break;
		/* Consumed already: a bad buffer loses these bytes (the caller's own). */
		if (copy_to_user(ubuf + done, bounce, n)) {
			if (!done)
				done = -EFAULT;
			break;
		}
		done += n;
	}
	kfree(bounce);
	return done;
}

/* Under st_lock: does any buffer of the channel hold unread bytes? (poll readiness) */
int st_chan_unread(void *p)
{
	struct rchan *chan = ((struct st_chan *)p)->rchan;
	unsigned int cpu;

	for_each_possible_cpu(cpu) {
		struct rchan_buf *buf = *per_cpu_ptr(chan->buf, cpu);

		if (buf && st_buf_readable(buf))
			return 1;
	}
	return 0;
}

static struct dentry *st_create_buf_file(const char *filename, struct dentry *parent,
					 umode_t mode, struct rchan_buf *buf, int *is_global)
{
	return debugfs_create_file(filename, 0400, parent, buf, st_relay_fops);
}

static int st_remove_buf_file(struct dentry *dentry)
{
	debugfs_remove(dentry);
	return 0;
}

/* No subbuf_start callback: relay's default is no-overwrite, a full buffer refuses. */
static const struct rchan_callbacks st_relay_cb = {
	.create_buf_file = st_create_buf_file,
	.remove_buf_file = st_remove_buf_file,
};

size_t st_subbuf_size(void)
{
	return ST_SUBBUF_SIZE;
}

size_t st_n_subbufs(void)
{
	return ST_N_SUBBUFS;
}

/*
 * Channels closed while descriptors still hold their buffers (IOCTL_RELAY_FDS files, or
 * open debugfs files): relay frees a buffer when its last file goes. The descriptors are
 * the process's to keep, so a process that registers, takes descriptors and unregisters
 * in a loop would pin 1 MiB per CPU each round. We keep a reference on each such rchan
 * (relay_destroy_buf() clears the rchan's per-CPU pointer when it frees a buffer, so we
 * can see when they are all gone) and refuse REGISTER while ST_LINGER_MAX of them linger
 * (ENOSPC), or while the registering user (not root) has max_procs_per_uid of them
 * lingering (EDQUOT): one user cannot take the others' share. Slots: open channels (at
 * most 64) can all close on top of ST_LINGER_MAX. Under st_reg_mutex, or at unload.
 */
#define ST_LINGER_MAX 64
static struct rchan *st_linger[2 * ST_LINGER_MAX];
static unsigned int st_linger_uid[2 * ST_LINGER_MAX];

/* As relay_destroy_channel() (static in kernel/relay.c), for the last reference. */
static void st_rchan_release(struct kref *kref)
{
	struct rchan *chan = container_of(kref, struct rchan, kref);

	free_percpu(chan->buf);
	kfree(chan);
}

static bool st_rchan_bufs_gone(struct rchan *chan)
{
	unsigned int cpu;

	for_each_possible_cpu(cpu)
		if (READ_ONCE(*per_cpu_ptr(chan->buf, cpu)))
			return false;
	return true;
}

/*
 * Drops the lingering channels whose buffers are all gone; the number still lingering, and
 * in *mine those of user uid.
 */
static int st_linger_scan(unsigned int uid, int *mine)
{
	int i, n = 0;

	*mine = 0;
	for (i = 0; i < ARRAY_SIZE(st_linger); i++) {
		if (!st_linger[i])
			continue;
		if (st_rchan_bufs_gone(st_linger[i])) {
			kref_put(&st_linger[i]->kref, st_rchan_release);
			st_linger[i] = NULL;
		} else {
			n++;
			if (st_linger_uid[i] == uid)
				(*mine)++;
		}
	}
	return n;
}

/*
 * 0; -EDQUOT while user uid (not root) holds per_uid closed channels by descriptors;
 * -ENOSPC while ST_LINGER_MAX closed channels are held by anyone.
 */
int st_chan_may_open(unsigned int uid, unsigned int per_uid)
{
	int mine, all = st_linger_scan(uid, &mine);

	if (uid != 0 && mine >= per_uid)
		return -EDQUOT;
	return all >= ST_LINGER_MAX ? -ENOSPC : 0;
}

/* Unload: forget them all (relay frees each when its last descriptor goes). */
static void st_linger_release_all(void)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(st_linger); i++) {
		if (st_linger[i])
			kref_put(&st_linger[i]->kref, st_rchan_release);
		st_linger[i] = NULL;
	}
}

void *st_chan_open(int tgid, unsigned int uid)
{
	char name[16];
	struct st_chan *c = kzalloc(sizeof(*c), GFP_KERNEL);

	if (!c)
		return NULL;
	c->uid = uid;
	snprintf(name, sizeof(name), "%d", tgid);
	c->dir = debugfs_create_dir(name, st_debugfs_root);
	if (IS_ERR(c->dir)) {
		kfree(c);
		return NULL;
	}
	c->rchan = relay_open("cpu", c->dir, ST_SUBBUF_SIZE, ST_N_SUBBUFS, &st_relay_cb, NULL);
	if (!c->rchan) {
		debugfs_remove(c->dir);
		kfree(c);
		return NULL;
	}
	return c;
}

void st_chan_close(void *p)
{
	struct st_chan *c = p;

	if (!c)
		return;
	kref_get(&c->rchan->kref);
	relay_close(c->rchan);
	debugfs_remove(c->dir);
	if (st_rchan_bufs_gone(c->rchan)) {
		kref_put(&c->rchan->kref, st_rchan_release);
	} else {
		int i;

		for (i = 0; i < ARRAY_SIZE(st_linger) && st_linger[i]; i++)
			;
		if (i < ARRAY_SIZE(st_linger)) {
			st_linger[i] = c->rchan;
			st_linger_uid[i] = c->uid;
		}
		else /* Not reachable (see st_linger); untracked, still freed by relay. */
			kref_put(&c->rchan->kref, st_rchan_release);
	}
	kfree(c);
}

/*
 * Writes one whole record to this CPU's buffer, or nothing: returns 0, or -ENOSPC when the
 * buffer is full (no-overwrite) or the record is larger than a sub-buffer. Unlike
 * relay_write() it says when it dropped. Callable with interrupts off.
 */
int st_chan_write(void *p, const void *data, size_t length)
{
	struct st_chan *c = p;
	struct rchan_buf *buf;
	unsigned long flags;
	int ret = 0;

	local_irq_save(flags);
	buf = *this_cpu_ptr(c->rchan->buf);
	if (unlikely(!buf)) {
		ret = -ENOSPC;
		goto out;
	}
	if (unlikely(buf->offset + length > c->rchan->subbuf_size)) {
		/*
		 * Never switch into a full buffer. relay_switch_subbuf() counts the old
		 * sub-buffer as produced before it finds the buffer full, and a reader in
		 * relay_file_read_avail() on another CPU at that moment sees produced -
		 * consumed == n_subbufs with a valid offset and skips a whole unread
		 * sub-buffer (overwrite-mode logic): records lost and a torn stream. So
		 * when the current sub-buffer is the last free one, the record is dropped
		 * here (and counted by the caller) instead. subbufs_consumed only grows
		 * under us, so a stale read errs on the side of dropping.
		 */
		if (buf->subbufs_produced - READ_ONCE(buf->subbufs_consumed) >=
		    c->rchan->n_subbufs - 1) {
			ret = -ENOSPC;
			goto out;
		}
		if (!relay_switch_subbuf(buf, length)) {
			ret = -ENOSPC;
			goto out;
		}
	}
	memcpy(buf->data + buf->offset, data, length);
	/* A reader on another CPU sees the bytes before the new offset. */
	smp_wmb();
	buf->offset += length;
out:
	local_irq_restore(flags);
	return ret;
}

/*
 * IOCTL_RELAY_FDS (uapi::RelayFds): hands the calling process already-open, read-only file
 * descriptors for its own per-CPU relay buffers, so that it needs no access to debugfs
 * (root-only). Each is the debugfs file spantrack/<tgid>/cpu<N> opened through the module's
 * own debugfs mount, whatever the caller may open itself (dentry_open() checks no
 * permission): read as the debugfs file is (st_relay_read()), failing with EIO once the
 * channel is closed; relay's open holds the buffer until the descriptor is closed.
 * Called with the registration mutex held, which keeps the channel open.
 */
#define ST_RELAY_FDS_MAX 64

struct st_relay_fds {
	u32 count;
	u32 flags;
	s32 fds[ST_RELAY_FDS_MAX];
};

int st_chan_give_fds(void *p, void __user *arg)
{
	struct st_chan *c = p;
	struct st_relay_fds *out;
	struct file **files;
	struct path path;
	unsigned int cpu;
	int ret = 0;

	BUILD_BUG_ON(sizeof(struct st_relay_fds) != 8 + 4 * ST_RELAY_FDS_MAX);
	if (nr_cpu_ids > ST_RELAY_FDS_MAX)
		return -E2BIG;
	out = kzalloc(sizeof(*out), GFP_KERNEL);
	files = kcalloc(ST_RELAY_FDS_MAX, sizeof(*files), GFP_KERNEL);
	if (!out || !files) {
		ret = -ENOMEM;
		goto free;
	}
	out->count = nr_cpu_ids;
	for (cpu = 0; cpu < ST_RELAY_FDS_MAX; cpu++)
		out->fds[cpu] = -1;
	for_each_possible_cpu(cpu) {
		struct rchan_buf *buf = *per_cpu_ptr(c->rchan->buf, cpu);
		struct file *f;
		int fd;

		if (!buf)
			continue;
		fd = get_unused_fd_flags(O_CLOEXEC);
		if (fd < 0) {
			ret = fd;
			goto undo;
		}
		path.mnt = st_debugfs_mnt;
		path.dentry = buf->dentry;
		f = path.dentry ? dentry_open(&path, O_RDONLY, current_cred()) : ERR_PTR(-ENOENT);
		if (IS_ERR(f)) {
			put_unused_fd(fd);
			ret = PTR_ERR(f);
			goto undo;
		}
		files[cpu] = f;
		out->fds[cpu] = fd;
	}
	if (copy_to_user(arg, out, sizeof(*out))) {
		ret = -EFAULT;
		goto undo;
	}
	/* Past the last failure point: the descriptors become visible. */
	for (cpu = 0; cpu < ST_RELAY_FDS_MAX; cpu++)
		if (files[cpu])
			fd_install(out->fds[cpu], files[cpu]);
	goto free;
undo:
	for (cpu = 0; cpu < ST_RELAY_FDS_MAX; cpu++) {
		if (files[cpu]) {
			put_unused_fd(out->fds[cpu]);
			fput(files[cpu]);
		}
	}
free:
	kfree(files);
	kfree(out);
	return ret;
}

int st_debugfs_create(void)
{
	struct file_system_type *debugfs_type;
	struct file_operations *fops;
	int err;

	fops = kzalloc(sizeof(*fops), GFP_KERNEL);
	if (!fops)
		return -ENOMEM;
	/* Never freed (see st_relay_fops): the proxy of a descriptor outliving the module
	 * reads it at release. */
	kmemleak_not_leak(fops);
	fops->open = relay_file_operations.open;
	fops->poll = relay_file_operations.poll;
	fops->release = relay_file_operations.release;
	fops->read = st_relay_read;
	st_relay_fops = fops;

	debugfs_type = get_fs_type("debugfs");
	if (!debugfs_type)
		return -ENODEV;
	err = simple_pin_fs(debugfs_type, &st_debugfs_mnt, &st_debugfs_mnt_count);
	if (err)
		return err;
	st_debugfs_root = debugfs_create_dir("spantrack", NULL);
	if (IS_ERR(st_debugfs_root)) {
		err = PTR_ERR(st_debugfs_root);
		st_debugfs_root = NULL;
		simple_release_fs(&st_debugfs_mnt, &st_debugfs_mnt_count);
		return err;
	}
	return 0;
}

void st_debugfs_remove(void)
{
	/* Every channel is closed by now (RelayChannel drops first). */
	st_linger_release_all();
	debugfs_remove(st_debugfs_root);
	st_debugfs_root = NULL;
	/* Descriptors of RELAY_FDS hold their own reference on the mount. */
	if (st_debugfs_mnt)
		simple_release_fs(&st_debugfs_mnt, &st_debugfs_mnt_count);
}

/* ---------------------------------------------------------------------------------------
 * Readers: poll() on /proc/spantrack/control wakes when the caller's process has new
 * records. Wake-ups are batched: the first record arms a one-jiffy timer and the timer
 * wakes the readers once for every record written meanwhile, so a busy service pays one
 * reader wake-up (and one pass of its annotation worker) per tick, not per slow span. A
 * record waits at most a tick plus timer slack (4 ms at HZ=250) before its reader runs.
 */

/*
 * Pollers of control wait here. Allocated, not module memory: a poll()/select() caller
 * leaves the queue only when it runs again after its wake-up, which a task kept off the
 * CPU (cgroup CPU throttling, a loaded host) may do after the module is gone. Unload
 * (st_proc_remove()) frees it once it is empty, or leaves it allocated when it is not.
 */
static struct wait_queue_head *st_readers;

static void st_wake_fn(struct timer_list *t)
{
	wake_up_interruptible(st_readers);
}

static DEFINE_TIMER(st_wake_timer, st_wake_fn);

void st_wake_readers(void)
{
	/* Not pending also while st_wake_fn runs: a record written then re-arms the timer,
	 * so no record is left without a wake-up. After timer_shutdown_sync() (unload) this
	 * is a no-op. */
	if (!timer_pending(&st_wake_timer))
		mod_timer(&st_wake_timer, jiffies + 1);
}

/* ---------------------------------------------------------------------------------------
 * /proc/spantrack/{control,begin,end}
 */

#define ST_LINE_BUF 64

static ssize_t st_span_write(const char __user *ubuf, size_t len, int is_end)
{
	u8 kbuf[ST_LINE_BUF];
	long r;

	if (len == 0 || len > sizeof(kbuf))
		return -EINVAL;
	if (copy_from_user(kbuf, ubuf, len))
		return -EFAULT;
	r = st_rs_span_write(is_end, current->pid, current->tgid, kbuf, len);
	return r < 0 ? r : len;
}

static ssize_t st_begin_write(struct file *f, const char __user *ubuf, size_t len, loff_t *pos)
{
	return st_span_write(ubuf, len, 0);
}

static ssize_t st_end_write(struct file *f, const char __user *ubuf, size_t len, loff_t *pos)
{
	return st_span_write(ubuf, len, 1);
}

#define ST_IOCTL_OUT 64

static long st_control_ioctl(struct file *f, unsigned int cmd, unsigned long arg)
{
	u8 out[ST_IOCTL_OUT];
	long r;

	r = st_rs_ioctl(cmd, current->pid, current->tgid,
			from_kuid_munged(&init_user_ns, current_uid()), out, sizeof(out),
			(void __user *)arg);
	if (r > 0) {
		if (copy_to_user((void __user *)arg, out, r))
			return -EFAULT;
		return 0;
	}
	return r;
}

/*
 * Readable while the caller's process has unread bytes in its relay buffers: derived from
 * the buffers under st_lock, no state kept per file, so level-triggered epoll reports
 * records until they are read and any number of threads may poll one descriptor.
 */
static __poll_t st_control_poll(struct file *f, struct poll_table_struct *pt)
{
	poll_wait(f, st_readers, pt);
	if (st_rs_poll(current->tgid))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

static const struct proc_ops st_control_ops = {
	.proc_ioctl = st_control_ioctl,
	.proc_poll = st_control_poll,
	.proc_lseek = noop_llseek,
};

/*
 * The span files are streams (no file position). A regular file's write takes the file's
 * f_pos_lock, a mutex, whenever the file is shared (fdget_pos: any descriptor of a
 * multi-threaded process), so every thread of a service writing its begins and ends to
 * one descriptor would queue on it, and sleep on it under contention: inside a span, a
 * wait that no request made (issue 16). stream_open drops FMODE_ATOMIC_POS, and with it
 * the lock (lseek and pwrite then fail with ESPIPE, as on a pipe: vfs_llseek checks
 * FMODE_LSEEK first).
 */
static int st_span_open(struct inode *inode, struct file *f)
{
	return stream_open(inode, f);
}

static const struct proc_ops st_begin_ops = {
	.proc_open = st_span_open,
	.proc_write = st_begin_write,
	.proc_lseek = noop_llseek,
};

static const struct proc_ops st_end_ops = {
	.proc_open = st_span_open,
	.proc_write = st_end_write,
	.proc_lseek = noop_llseek,
};

/*
 * /proc/spantrack/stats: every counter, one "name value" line each (tracker.rs
 * format_stats()), taken in one critical section at open: a reader sees one consistent set.
 */
static int st_stats_open(struct inode *inode, struct file *f)
{
	char *page = (char *)get_zeroed_page(GFP_KERNEL);
	long n;

	if (!page)
		return -ENOMEM;
	n = st_rs_stats_show(page, PAGE_SIZE);
	if (n < 0) {
		free_page((unsigned long)page);
		return n;
	}
	/* Kept as a NUL-terminated string (the text has no NUL). */
	page[min_t(long, n, PAGE_SIZE - 1)] = 0;
	f->private_data = page;
	return 0;
}

static ssize_t st_stats_read(struct file *f, char __user *ubuf, size_t len, loff_t *pos)
{
	const char *page = f->private_data;

	return simple_read_from_buffer(ubuf, len, pos, page, strlen(page));
}

static int st_stats_release(struct inode *inode, struct file *f)
{
	free_page((unsigned long)f->private_data);
	return 0;
}

static const struct proc_ops st_stats_ops = {
	.proc_open = st_stats_open,
	.proc_read = st_stats_read,
	.proc_release = st_stats_release,
	.proc_lseek = default_llseek,
};

static struct proc_dir_entry *st_proc_dir;

static unsigned int st_readers_count(void)
{
	struct wait_queue_entry *e;
	unsigned int n = 0;

	spin_lock_irq(&st_readers->lock);
	list_for_each_entry(e, &st_readers->head, entry)
		n++;
	spin_unlock_irq(&st_readers->lock);
	return n;
}

/* How long unload waits for poll()/select() callers to leave the queue. */
#define ST_DRAIN_MS 5000

void st_proc_remove(void)
{
	unsigned long deadline;
	unsigned int n;

	/* Removes the subtree and waits for handlers still running: nobody queues again. */
	proc_remove(st_proc_dir);
	st_proc_dir = NULL;
	/* No record can be written any more: stop the batched wake-up. */
	timer_shutdown_sync(&st_wake_timer);
	if (!st_readers)
		return;
	/*
	 * epoll, io_uring and aio entries are taken off the queue by their callbacks at the
	 * first wake-up (POLLFREE). poll() and select() callers are woken and take their
	 * entries off when they run again (their next ->poll() finds the entry gone); wait
	 * for that, bounded.
	 */
	deadline = jiffies + msecs_to_jiffies(ST_DRAIN_MS);
	while ((n = st_readers_count()) && time_before(jiffies, deadline)) {
		/* As wake_up_pollfree(), without its warning that poll()/select() entries
		 * are still queued after the wake-up (they are, until they run). */
		__wake_up(st_readers, TASK_NORMAL, 0, poll_to_key(EPOLLHUP | POLLFREE));
		usleep_range(1000, 2000);
	}
	if (n) {
		/* A poller still off the CPU: it will take the queue's lock when it runs. Leave
		 * the queue allocated (a few bytes) rather than free it under it. */
		pr_info("spantrack: %u poller(s) still queued at unload; their wait queue is left allocated\n", n);
		kmemleak_not_leak(st_readers);
		st_readers = NULL;
		return;
	}
	/* epoll looks at the queue under RCU. */
	synchronize_rcu();
	kfree(st_readers);
	st_readers = NULL;
}

int st_proc_create(void)
{
	st_readers = kmalloc(sizeof(*st_readers), GFP_KERNEL);
	if (!st_readers)
		return -ENOMEM;
	init_waitqueue_head(st_readers);
	st_proc_dir = proc_mkdir("spantrack", NULL);
	if (!st_proc_dir) {
		kfree(st_readers);
		st_readers = NULL;
		return -ENOMEM;
	}
	if (!proc_create("control", 0666, st_proc_dir, &st_control_ops) ||
	    !proc_create("begin", 0666, st_proc_dir, &st_begin_ops) ||
	    !proc_create("end", 0666, st_proc_dir, &st_end_ops) ||
	    !proc_create("stats", 0444, st_proc_dir, &st_stats_ops)) {
		st_proc_remove();
		return -ENOMEM;
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * /sys/kernel/spantrack: tunables (root writes), one value per file. The counters are in
 * /proc/spantrack/stats.
 */

enum st_attr {
	ST_THRESHOLD,
	ST_TIMEOUT,
	ST_MAX_CALLS,
	ST_FILTER,
	ST_MAX_PROCS_PER_UID,
	ST_SCHED,
	ST_SCHED_STACKS,
};

#define ST_ATTR_FNS(fname, id)                                                            \
	static ssize_t fname##_show(struct kobject *k, struct kobj_attribute *a, char *buf) \
	{                                                                                   \
		return st_rs_sysfs_show(id, buf);                                           \
	}                                                                                   \
	static ssize_t fname##_store(struct kobject *k, struct kobj_attribute *a,           \
				     const char *buf, size_t len)                           \
	{                                                                                   \
		long r = st_rs_sysfs_store(id, buf, len);                                   \
		return r < 0 ? r : len;                                                     \
	}

ST_ATTR_FNS(threshold_ns, ST_THRESHOLD)
ST_ATTR_FNS(timeout_ns, ST_TIMEOUT)
ST_ATTR_FNS(max_calls, ST_MAX_CALLS)
ST_ATTR_FNS(filter, ST_FILTER)
ST_ATTR_FNS(max_procs_per_uid, ST_MAX_PROCS_PER_UID)
ST_ATTR_FNS(sched, ST_SCHED)
ST_ATTR_FNS(sched_stacks, ST_SCHED_STACKS)

static struct kobj_attribute st_threshold_attr = __ATTR(threshold_ns, 0644, threshold_ns_show, threshold_ns_store);
static struct kobj_attribute st_timeout_attr = __ATTR(timeout_ns, 0644, timeout_ns_show, timeout_ns_store);
static struct kobj_attribute st_max_calls_attr = __ATTR(max_calls, 0644, max_calls_show, max_calls_store);
static struct kobj_attribute st_filter_attr = __ATTR(filter, 0644, filter_show, filter_store);
static struct kobj_attribute st_max_procs_attr =
	__ATTR(max_procs_per_uid, 0644, max_procs_per_uid_show, max_procs_per_uid_store);
static struct kobj_attribute st_sched_attr = __ATTR(sched, 0644, sched_show, sched_store);
static struct kobj_attribute st_sched_stacks_attr =
	__ATTR(sched_stacks, 0644, sched_stacks_show, sched_stacks_store);

static struct attribute *st_attrs[] = {
	&st_threshold_attr.attr, &st_timeout_attr.attr, &st_max_calls_attr.attr,
	&st_filter_attr.attr,	 &st_max_procs_attr.attr, &st_sched_attr.attr,
	&st_sched_stacks_attr.attr, NULL,
};

static const struct attribute_group st_attr_group = { .attrs = st_attrs };
static struct kobject *st_kobj;

int st_sysfs_create(void)
{
	int ret;

	st_kobj = kobject_create_and_add("spantrack", kernel_kobj);
	if (!st_kobj)
		return -ENOMEM;
	ret = sysfs_create_group(st_kobj, &st_attr_group);
	if (ret) {
		kobject_put(st_kobj);
		st_kobj = NULL;
	}
	return ret;
}

void st_sysfs_remove(void)
{
	/* Removing the kobject drains attribute handlers still running. */
	kobject_put(st_kobj);
	st_kobj = NULL;
}

/* ---------------------------------------------------------------------------------------
 * Expiry timer (softirq) and the work item that closes relay channels (may sleep).
 */

#define ST_EXPIRY_PERIOD (HZ / 10)

static struct timer_list st_timer;

static void st_timer_fn(struct timer_list *t)
{
	st_rs_expire(ktime_get_ns());
	mod_timer(&st_timer, jiffies + ST_EXPIRY_PERIOD);
}

void st_timer_start(void)
{
	timer_setup(&st_timer, st_timer_fn, 0);
	mod_timer(&st_timer, jiffies + ST_EXPIRY_PERIOD);
}

void st_timer_stop(void)
{
	timer_shutdown_sync(&st_timer);
}

static void st_reap_fn(struct work_struct *w)
{
	st_rs_reap();
}

static DECLARE_WORK(st_reap_work, st_reap_fn);

void st_schedule_reap(void)
{
	schedule_work(&st_reap_work);
}

void st_flush_reap(void)
{
	flush_work(&st_reap_work);
}
