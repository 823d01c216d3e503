/* SPDX-License-Identifier: GPL-2.0 */
/* Functions glue.c offers to the Rust side (declared again, as `extern "C"`, in
 * facilities.rs). */
#ifndef SPANTRACK_GLUE_H
#define SPANTRACK_GLUE_H
#include <linux/types.h>

unsigned long st_lock_irqsave(void);
void st_unlock_irqrestore(unsigned long flags);
void st_clocks(u64 *mono, u64 *real);
int st_read_slot(u64 addr, u64 *val);
int st_check_slot(u64 addr);
void st_reg_lock(void);
void st_reg_unlock(void);
void *st_vzalloc(size_t size);
void st_vfree(void *p);
unsigned int st_possible_cpus(void);
void st_set_bitmaps(unsigned long *tracked, unsigned long *active, unsigned long *active_slot,
		    unsigned long *skip, unsigned long *registered, void *hints,
		    unsigned long n_hints, unsigned long nbits);
u64 st_fast_uncharged_sum(void);
void st_trace_need(int tid);
void st_trace_stats(u64 *lazy, u64 *foreign, u64 *dropped, u64 *restores);
void st_tracepoints_unregister(void);
int st_tracepoints_register(void);
int st_sched_set(int on);
int st_stacks_get(void);
void st_stacks_set(int on);
int st_may_see_kernel_addrs(void);
void st_for_each_thread_of_current(int (*cb)(void *ctx, int tid, int tgid), void *ctx);
size_t st_subbuf_size(void);
size_t st_n_subbufs(void);
int st_chan_may_open(unsigned int uid, unsigned int per_uid);
void *st_chan_open(int tgid, unsigned int uid);
void st_chan_close(void *p);
int st_chan_write(void *p, const void *data, size_t length);
int st_chan_give_fds(void *p, void __user *arg);
int st_chan_unread(void *p);
int st_debugfs_create(void);
void st_debugfs_remove(void);
void st_wake_readers(void);
void st_proc_remove(void);
int st_proc_create(void);
int st_sysfs_create(void);
void st_sysfs_remove(void);
void st_timer_start(void);
void st_timer_stop(void);
void st_schedule_reap(void);
void st_flush_reap(void);

#endif
