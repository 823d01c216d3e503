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
#include <linux/debugfs.h>
#include <linux/irq_work.h>
#include <linux/kobject.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/proc_fs.h>
#include <linux/relay.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/timer.h>
#include <linux/tracepoint.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>

#include "glue.h"

/* Implemented in Rust. */
long st_rs_ioctl(unsigned int cmd, int tid, int tgid, void *out, size_t out_len);
long st_rs_span_write(int is_end, int tid, int tgid, const u8 *buf, size_t len, u64 mono,
		      u64 real);
int st_rs_poll(int tgid, u64 *seen);
void st_rs_sys_enter(int tid, long nr, u64 mono);
void st_rs_sys_exit(int tid, long ret, u64 mono);
void st_rs_task_exit(int tid, int tgid);
void st_rs_new_thread(int tid, int tgid);
void st_rs_expire(u64 mono);
void st_rs_reap(void);
long st_rs_sysfs_show(int attr, char *buf);
long st_rs_sysfs_store(int attr, const char *buf, size_t len);

/* ---------------------------------------------------------------------------------------
 * Lock, memory, clocks
 */

/* The one lock around the tracker's state. Probes take it from system-call context and the
 * expiry timer from softirq context: always with interrupts off. */
static DEFINE_SPINLOCK(st_lock);

unsigned long st_lock_irqsave(void)
{
	unsigned long flags;

	spin_lock_irqsave(&st_lock, flags);
	return flags;
}

void st_unlock_irqrestore(unsigned long flags)
{
	spin_unlock_irqrestore(&st_lock, flags);
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
static unsigned long st_nbits;

void st_set_bitmaps(unsigned long *tracked, unsigned long *active, unsigned long nbits)
{
	WRITE_ONCE(st_nbits, 0);
	smp_wmb();
	WRITE_ONCE(st_tracked_bits, tracked);
	WRITE_ONCE(st_active_bits, active);
	smp_wmb();
	WRITE_ONCE(st_nbits, nbits);
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

static void st_probe_sys_enter(void *data, struct pt_regs *regs, long id)
{
	pid_t pid = current->pid;

	if (likely(!st_active(pid)))
		return;
	st_rs_sys_enter(pid, id, ktime_get_ns());
}

static void st_probe_sys_exit(void *data, struct pt_regs *regs, long ret)
{
	pid_t pid = current->pid;

	if (likely(!st_active(pid)))
		return;
	st_rs_sys_exit(pid, ret, ktime_get_ns());
}

static void st_probe_process_exit(void *data, struct task_struct *p)
{
	if (likely(!st_tracked(p->pid)))
		return;
	st_rs_task_exit(p->pid, p->tgid);
}

static void st_probe_newtask(void *data, struct task_struct *task, unsigned long clone_flags)
{
	/* New threads of a process whose creating thread is tracked; a thread created by an
	 * untracked thread (the preload's own) is looked up by its group in Rust. */
	if (!(clone_flags & CLONE_THREAD))
		return;
	st_rs_new_thread(task->pid, task->tgid);
}

struct st_tp {
	const char *name;
	void *probe;
	struct tracepoint *tp;
	bool registered;
};

static struct st_tp st_tps[] = {
	{ .name = "sys_enter", .probe = st_probe_sys_enter },
	{ .name = "sys_exit", .probe = st_probe_sys_exit },
	{ .name = "sched_process_exit", .probe = st_probe_process_exit },
	{ .name = "task_newtask", .probe = st_probe_newtask },
};

static void st_find_tp(struct tracepoint *tp, void *priv)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(st_tps); i++)
		if (!strcmp(tp->name, st_tps[i].name))
			st_tps[i].tp = tp;
}

void st_tracepoints_unregister(void)
{
	int i;

	for (i = ARRAY_SIZE(st_tps) - 1; i >= 0; i--) {
		if (st_tps[i].registered)
			tracepoint_probe_unregister(st_tps[i].tp, st_tps[i].probe, NULL);
		st_tps[i].registered = false;
	}
	/* No probe runs any more once this returns. */
	tracepoint_synchronize_unregister();
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
	return 0;
}

/* Calls cb for every thread of the calling process (under RCU: cb must not sleep). */
void st_for_each_thread_of_current(void (*cb)(void *ctx, int tid, int tgid), void *ctx)
{
	struct task_struct *t;

	rcu_read_lock();
	for_each_thread(current, t)
		cb(ctx, t->pid, t->tgid);
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
};

static struct dentry *st_create_buf_file(const char *filename, struct dentry *parent,
					 umode_t mode, struct rchan_buf *buf, int *is_global)
{
	return debugfs_create_file(filename, 0400, parent, buf, &relay_file_operations);
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

void *st_chan_open(int tgid)
{
	char name[16];
	struct st_chan *c = kzalloc(sizeof(*c), GFP_KERNEL);

	if (!c)
		return NULL;
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
	relay_close(c->rchan);
	debugfs_remove(c->dir);
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

int st_debugfs_create(void)
{
	st_debugfs_root = debugfs_create_dir("spantrack", NULL);
	if (IS_ERR(st_debugfs_root)) {
		int err = PTR_ERR(st_debugfs_root);

		st_debugfs_root = NULL;
		return err;
	}
	return 0;
}

void st_debugfs_remove(void)
{
	debugfs_remove(st_debugfs_root);
	st_debugfs_root = NULL;
}

/* ---------------------------------------------------------------------------------------
 * Readers: poll() on /proc/spantrack/control wakes when the caller's process has new
 * records. Span ends run in process context, so the wake-up is direct.
 */

static DECLARE_WAIT_QUEUE_HEAD(st_readers);

void st_wake_readers(void)
{
	wake_up_interruptible(&st_readers);
}

/* ---------------------------------------------------------------------------------------
 * /proc/spantrack/{control,begin,end}
 */

#define ST_LINE_BUF 64

static ssize_t st_span_write(const char __user *ubuf, size_t len, int is_end)
{
	u8 kbuf[ST_LINE_BUF];
	u64 mono, real;
	long r;

	if (len == 0 || len > sizeof(kbuf))
		return -EINVAL;
	if (copy_from_user(kbuf, ubuf, len))
		return -EFAULT;
	mono = ktime_get_ns();
	real = ktime_get_real_ns();
	r = st_rs_span_write(is_end, current->pid, current->tgid, kbuf, len, mono, real);
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

	r = st_rs_ioctl(cmd, current->pid, current->tgid, out, sizeof(out));
	if (r > 0) {
		if (copy_to_user((void __user *)arg, out, r))
			return -EFAULT;
		return 0;
	}
	return r;
}

static __poll_t st_control_poll(struct file *f, struct poll_table_struct *pt)
{
	poll_wait(f, &st_readers, pt);
	if (st_rs_poll(current->tgid, (u64 *)&f->private_data))
		return EPOLLIN | EPOLLRDNORM;
	return 0;
}

static int st_control_open(struct inode *inode, struct file *f)
{
	f->private_data = NULL;
	return 0;
}

static const struct proc_ops st_control_ops = {
	.proc_open = st_control_open,
	.proc_ioctl = st_control_ioctl,
	.proc_poll = st_control_poll,
	.proc_lseek = noop_llseek,
};

static const struct proc_ops st_begin_ops = {
	.proc_write = st_begin_write,
	.proc_lseek = noop_llseek,
};

static const struct proc_ops st_end_ops = {
	.proc_write = st_end_write,
	.proc_lseek = noop_llseek,
};

static struct proc_dir_entry *st_proc_dir;

void st_proc_remove(void)
{
	/* Removes the subtree and waits for handlers still running. */
	proc_remove(st_proc_dir);
	st_proc_dir = NULL;
}

int st_proc_create(void)
{
	st_proc_dir = proc_mkdir("spantrack", NULL);
	if (!st_proc_dir)
		return -ENOMEM;
	if (!proc_create("control", 0666, st_proc_dir, &st_control_ops) ||
	    !proc_create("begin", 0666, st_proc_dir, &st_begin_ops) ||
	    !proc_create("end", 0666, st_proc_dir, &st_end_ops)) {
		st_proc_remove();
		return -ENOMEM;
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * /sys/kernel/spantrack: tunables (root writes) and counters.
 */

enum st_attr { ST_THRESHOLD, ST_TIMEOUT, ST_MAX_CALLS, ST_FILTER, ST_STATS };

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

static ssize_t stats_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return st_rs_sysfs_show(ST_STATS, buf);
}

static struct kobj_attribute st_threshold_attr = __ATTR(threshold_ns, 0644, threshold_ns_show, threshold_ns_store);
static struct kobj_attribute st_timeout_attr = __ATTR(timeout_ns, 0644, timeout_ns_show, timeout_ns_store);
static struct kobj_attribute st_max_calls_attr = __ATTR(max_calls, 0644, max_calls_show, max_calls_store);
static struct kobj_attribute st_filter_attr = __ATTR(filter, 0644, filter_show, filter_store);
static struct kobj_attribute st_stats_attr = __ATTR_RO(stats);

static struct attribute *st_attrs[] = {
	&st_threshold_attr.attr, &st_timeout_attr.attr, &st_max_calls_attr.attr,
	&st_filter_attr.attr,	 &st_stats_attr.attr,	NULL,
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
