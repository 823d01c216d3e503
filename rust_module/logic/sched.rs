//! Scheduler accounting of a span (issue 12): where its wall time went (on a CPU, waiting
//! for one, blocked and why) and who woke it. Pure logic on `core` only: the tracker calls
//! it from the `sched_switch` and `sched_waking` probes with its lock held, and host tests
//! drive it with made-up events.
//!
//! A thread's off-CPU stretch runs from its switch-out to its next switch-in. It is charged
//! to the span that was active on the thread at the switch-out, split at the wake-up into
//! blocked time (by cause) and run-queue time; a preemption is run-queue time throughout.
//! On-CPU time of a thread-per-request span is exact: charged between checkpoints
//! (switch-in, switch-out, span begin and end) to the span active there, which changes only
//! at those points. A thread with an active-span slot (asyncio, tokio) switches spans in
//! user space, unseen; its on-CPU time comes from the kernel's own runtime updates
//! (`sched_stat_runtime`: every tick and scheduler update), each charged to the span the
//! slot names at that moment: exact in total, placed to within one tick (4 ms at HZ=250)
//! around a switch. Off-CPU time is exact in both models.

use crate::uapi::{
    SchedPart, WaitEntry, CAUSE_IO, CAUSE_LOCK, CAUSE_NET, CAUSE_OTHER, CAUSE_PREEMPTED,
    CAUSE_TIMER, CTX_NONE, CTX_SOFTIRQ, CTX_TIMER, KSTACK_DEPTH, MAX_WAITS, NO_CALL, N_CAUSES,
    SOFTIRQ_NONE, USTACK_DEPTH,
};

/// `TASK_UNINTERRUPTIBLE` in `sched_switch`'s `prev_state` (include/linux/sched.h).
pub const TASK_UNINTERRUPTIBLE: u32 = 0x2;
/// `TASK_RUNNING`.
pub const TASK_RUNNING: u32 = 0;

/// Softirq vectors (include/linux/interrupt.h).
pub const SOFTIRQ_TIMER: u8 = 1;
pub const SOFTIRQ_NET_TX: u8 = 2;
pub const SOFTIRQ_NET_RX: u8 = 3;
pub const SOFTIRQ_BLOCK: u8 = 4;
pub const SOFTIRQ_HRTIMER: u8 = 8;

/// x86_64 system calls that wait on a futex.
fn is_lock_call(nr: u32) -> bool {
    matches!(nr, 202 /* futex */ | 449 /* futex_waitv */)
}

/// x86_64 system calls that sleep for a time.
fn is_sleep_call(nr: u32) -> bool {
    matches!(nr, 35 /* nanosleep */ | 230 /* clock_nanosleep */)
}

/// x86_64 socket calls that wait for the network.
fn is_socket_call(nr: u32) -> bool {
    matches!(
        nr,
        42 /* connect */ | 43 /* accept */ | 44 /* sendto */ | 45 /* recvfrom */
            | 46 /* sendmsg */ | 47 /* recvmsg */ | 288 /* accept4 */ | 299 /* recvmmsg */
            | 307 /* sendmmsg */
    )
}

/// Why a blocked stretch blocked (`CAUSE_*`), from what the switch-out saw (the task state,
/// `in_iowait`, the system call in progress) and who woke it (`CTX_*`, softirq vector).
///
/// - uninterruptible with `in_iowait` (or woken by the BLOCK softirq): io; without: other;
/// - a futex: lock; the nanosleep family: timer;
/// - woken by the NET_RX/NET_TX softirq, or a socket call: net (poll, epoll and select on
///   sockets are told from those on pipes by their wake-up);
/// - woken by a timer: timer (e.g. a poll that timed out);
/// - the rest: other.
pub fn cause(state: u32, in_iowait: bool, nr: u32, ctx: u8, softirq: u8) -> u8 {
    if state & TASK_UNINTERRUPTIBLE != 0 {
        return if in_iowait || (ctx == CTX_SOFTIRQ && softirq == SOFTIRQ_BLOCK) {
            CAUSE_IO
        } else {
            CAUSE_OTHER
        };
    }
    if is_lock_call(nr) {
        return CAUSE_LOCK;
    }
    if is_sleep_call(nr) {
        return CAUSE_TIMER;
    }
    if ctx == CTX_SOFTIRQ && matches!(softirq, SOFTIRQ_NET_RX | SOFTIRQ_NET_TX) {
        return CAUSE_NET;
    }
    if is_socket_call(nr) {
        return CAUSE_NET;
    }
    if ctx == CTX_TIMER || (ctx == CTX_SOFTIRQ && matches!(softirq, SOFTIRQ_TIMER | SOFTIRQ_HRTIMER)) {
        return CAUSE_TIMER;
    }
    CAUSE_OTHER
}

/// A thread's pending off-CPU stretch, from its switch-out to its switch-in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffCpu {
    /// Switch-out time; 0: none pending (on a CPU, or off it outside any span).
    pub since: u64,
    /// The wake-up (0: not seen).
    pub woken_at: u64,
    /// The CPU it left.
    pub cpu: u32,
    /// `prev_state` at the switch-out (masked); with `preempted`, the stretch is run-queue
    /// time throughout.
    pub state: u32,
    pub preempted: u32,
    pub in_iowait: u32,
    /// The wake-up's context and waker, as a [`WaitEntry`] with its waker fields filled
    /// (the rest is completed at the switch-in).
    pub wait: WaitEntry,
}

impl OffCpu {
    pub const NONE: Self = OffCpu {
        since: 0,
        woken_at: 0,
        cpu: 0,
        state: 0,
        preempted: 0,
        in_iowait: 0,
        wait: EMPTY_WAIT,
    };
}

/// An unused entry of `SchedPart::waits` (all zero).
pub const UNUSED_WAIT: WaitEntry = WaitEntry {
    start_mono_ns: 0,
    blocked_ns: 0,
    runq_ns: 0,
    waker_on_cpu_ns: 0,
    waker_trace_id: [0; 16],
    waker_span_id: [0; 8],
    waker_comm: [0; 16],
    tid: 0,
    nr: 0,
    waker_tid: 0,
    waker_tgid: 0,
    waker_nr: 0,
    cause: 0,
    waker_ctx: 0,
    softirq: 0,
    flags: 0,
    kstack: [0; KSTACK_DEPTH],
    ustack: [0; USTACK_DEPTH],
    n_kstack: 0,
    n_ustack: 0,
    _pad: [0; 6],
};

/// A wait with no waker.
pub const EMPTY_WAIT: WaitEntry = WaitEntry {
    nr: NO_CALL,
    waker_nr: NO_CALL,
    cause: CAUSE_OTHER,
    waker_ctx: CTX_NONE,
    softirq: SOFTIRQ_NONE,
    ..UNUSED_WAIT
};

/// What a `sched_waking` probe knows of the waker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waker {
    /// `CTX_*` and the softirq vector (`SOFTIRQ_NONE`).
    pub ctx: u8,
    pub softirq: u8,
    /// `WAIT_WAKER_*` bits known in C (`WAIT_WAKER_KTHREAD`).
    pub flags: u8,
    /// 0 where the context has no meaningful task (hard interrupt, timer, NMI).
    pub tid: u32,
    pub tgid: u32,
    pub comm: [u8; 16],
    /// The system call the waker is in (`NO_CALL`).
    pub nr: u32,
    pub on_cpu_ns: u64,
}

/// Total length of a wait, for ordering.
fn wait_len(w: &WaitEntry) -> u64 {
    w.blocked_ns.saturating_add(w.runq_ns)
}

/// Where a wait of length `len` goes among `p.waits` (longest first), making room there;
/// `None` if it is not among the [`MAX_WAITS`] longest.
fn make_room(p: &mut SchedPart, len: u64) -> Option<usize> {
    let n = (p.n_waits as usize).min(MAX_WAITS);
    let mut at = n;
    while at > 0 && p.waits.get(at - 1).is_some_and(|x| wait_len(x) < len) {
        at -= 1;
    }
    if at >= MAX_WAITS {
        return None;
    }
    let mut i = n.min(MAX_WAITS - 1);
    while i > at {
        if let Some(prev) = p.waits.get(i - 1).copied() {
            if let Some(x) = p.waits.get_mut(i) {
                *x = prev;
            }
        }
        i -= 1;
    }
    p.n_waits = (n + 1).min(MAX_WAITS) as u32;
    Some(at)
}

/// Keeps `w` among `p.waits` if it is one of the [`MAX_WAITS`] longest, longest first.
pub fn keep_wait(p: &mut SchedPart, w: WaitEntry) {
    if let Some(x) = make_room(p, wait_len(&w)).and_then(|at| p.waits.get_mut(at)) {
        *x = w;
    }
}

/// Resets the figures of a span part for a new span. The waits beyond `n_waits` (0) are
/// left as they are: the encoder writes only the first `n_waits`.
pub fn clear(p: &mut SchedPart) {
    p.on_cpu_ns = 0;
    p.runq_wakeup_ns = 0;
    p.runq_preempt_ns = 0;
    p.blocked_ns = [0; N_CAUSES];
    p.blocks = 0;
    p.preemptions = 0;
    p.migrations = 0;
    p.wakeups = 0;
    p.wakeup_total_ns = 0;
    p.wakeup_max_ns = 0;
    p.n_waits = 0;
    p.lost_events = 0;
}

/// Starts the off-CPU stretch `off` at a switch-out at `now` from `cpu`, with the task's
/// state and, for a blocking switch, where it blocked (`kstack`, `ustack`, innermost first).
/// Only what a stretch reads is written (the stacks' unused entries are not).
#[allow(clippy::too_many_arguments)]
pub fn start_off_cpu(
    off: &mut OffCpu,
    now: u64,
    cpu: u32,
    state: u32,
    preempt: bool,
    in_iowait: bool,
    kstack: &[u64],
    ustack: &[u64],
) {
    off.since = now;
    off.woken_at = 0;
    off.cpu = cpu;
    off.state = state;
    off.preempted = u32::from(preempt);
    off.in_iowait = u32::from(in_iowait);
    let w = &mut off.wait;
    w.waker_ctx = CTX_NONE;
    w.softirq = SOFTIRQ_NONE;
    w.flags = 0;
    w.waker_tid = 0;
    w.waker_tgid = 0;
    w.waker_nr = NO_CALL;
    w.waker_on_cpu_ns = 0;
    w.waker_comm = [0; 16];
    w.waker_trace_id = [0; 16];
    w.waker_span_id = [0; 8];
    let nk = kstack.len().min(KSTACK_DEPTH);
    let nu = ustack.len().min(USTACK_DEPTH);
    if let (Some(d), Some(s)) = (w.kstack.get_mut(..nk), kstack.get(..nk)) {
        d.copy_from_slice(s);
    }
    if let (Some(d), Some(s)) = (w.ustack.get_mut(..nu), ustack.get(..nu)) {
        d.copy_from_slice(s);
    }
    w.n_kstack = nk as u8;
    w.n_ustack = nu as u8;
}

/// Charges the off-CPU stretch `off` (begun at `since`) of thread `tid`, ended by a
/// switch-in on `cpu` at `now`, to the span part `p`; `nr` is the call it blocked in
/// (`NO_CALL`). The wait is copied into `p.waits` only if it is among the longest.
pub fn charge_off_cpu(p: &mut SchedPart, off: &OffCpu, since: u64, tid: u32, nr: u32, cpu: u32, now: u64) {
    let total = now.saturating_sub(since);
    let (cause, blocked, runq, ctx) = if off.preempted != 0 || off.state == TASK_RUNNING {
        p.runq_preempt_ns = p.runq_preempt_ns.saturating_add(total);
        p.preemptions = p.preemptions.saturating_add(1);
        (CAUSE_PREEMPTED, 0, total, CTX_NONE)
    } else {
        let woken = off.woken_at >= since && off.woken_at <= now && off.woken_at != 0;
        let (blocked, runq) = if woken { (off.woken_at - since, now - off.woken_at) } else { (total, 0) };
        let c = cause(off.state, off.in_iowait != 0, nr, off.wait.waker_ctx, off.wait.softirq);
        if let Some(b) = p.blocked_ns.get_mut(c as usize % N_CAUSES) {
            *b = b.saturating_add(blocked);
        }
        p.runq_wakeup_ns = p.runq_wakeup_ns.saturating_add(runq);
        p.blocks = p.blocks.saturating_add(1);
        if woken {
            p.wakeups = p.wakeups.saturating_add(1);
            p.wakeup_total_ns = p.wakeup_total_ns.saturating_add(runq);
            p.wakeup_max_ns = p.wakeup_max_ns.max(runq);
        } else {
            // Every wake-up passes sched_waking; a blocked stretch without one (its probe
            // registered while the thread slept) has no waker and no run-queue part.
            p.lost_events = p.lost_events.saturating_add(1);
        }
        (c, blocked, runq, off.wait.waker_ctx)
    };
    if cpu != off.cpu {
        p.migrations = p.migrations.saturating_add(1);
    }
    if let Some(w) = make_room(p, blocked.saturating_add(runq)).and_then(|at| p.waits.get_mut(at)) {
        *w = off.wait;
        w.start_mono_ns = since;
        w.tid = tid;
        w.nr = nr;
        w.cause = cause;
        w.blocked_ns = blocked;
        w.runq_ns = runq;
        w.waker_ctx = ctx;
        if cause == CAUSE_PREEMPTED {
            w.n_kstack = 0;
            w.n_ustack = 0;
        }
    }
}

/// Fills `off.wait`'s waker fields from `k` at a wake-up at `now` (the first wake-up of the
/// stretch counts; a second, e.g. a signal racing a futex wake, does not replace it).
pub fn note_wakeup(off: &mut OffCpu, k: &Waker, now: u64) {
    if off.since == 0 || off.woken_at != 0 || off.preempted != 0 || now < off.since {
        return;
    }
    off.woken_at = now;
    let w = &mut off.wait;
    w.waker_ctx = k.ctx;
    w.softirq = k.softirq;
    w.flags = k.flags;
    w.waker_tid = k.tid;
    w.waker_tgid = k.tgid;
    w.waker_comm = k.comm;
    w.waker_nr = k.nr;
    w.waker_on_cpu_ns = k.on_cpu_ns;
}

/// Sum of the parts charged to `p` (on CPU, run queue, blocked).
pub fn charged(p: &SchedPart) -> u64 {
    p.blocked_ns
        .iter()
        .fold(p.on_cpu_ns.saturating_add(p.runq_wakeup_ns).saturating_add(p.runq_preempt_ns), |a, b| {
            a.saturating_add(*b)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::{CTX_HARDIRQ, CTX_TASK};

    fn waker(ctx: u8, softirq: u8, tid: u32) -> Waker {
        Waker { ctx, softirq, flags: 0, tid, tgid: tid, comm: *b"refresh\0\0\0\0\0\0\0\0\0", nr: 202, on_cpu_ns: 5 }
    }

    #[test]
    fn causes() {
        assert_eq!(cause(TASK_UNINTERRUPTIBLE, true, 74, CTX_HARDIRQ, SOFTIRQ_NONE), CAUSE_IO);
        assert_eq!(cause(TASK_UNINTERRUPTIBLE, false, 0, CTX_TASK, SOFTIRQ_NONE), CAUSE_OTHER);
        assert_eq!(cause(TASK_UNINTERRUPTIBLE, false, 0, CTX_SOFTIRQ, SOFTIRQ_BLOCK), CAUSE_IO);
        assert_eq!(cause(1, false, 202, CTX_TASK, SOFTIRQ_NONE), CAUSE_LOCK);
        assert_eq!(cause(1, false, 230, CTX_TIMER, SOFTIRQ_NONE), CAUSE_TIMER);
        assert_eq!(cause(1, false, 232, CTX_SOFTIRQ, SOFTIRQ_NET_RX), CAUSE_NET);
        assert_eq!(cause(1, false, 0, CTX_SOFTIRQ, SOFTIRQ_NET_RX), CAUSE_NET);
        assert_eq!(cause(1, false, 45, CTX_TASK, SOFTIRQ_NONE), CAUSE_NET);
        assert_eq!(cause(1, false, 232, CTX_TIMER, SOFTIRQ_NONE), CAUSE_TIMER);
        assert_eq!(cause(1, false, 0, CTX_TASK, SOFTIRQ_NONE), CAUSE_OTHER);
        assert_eq!(cause(1, false, 7, CTX_TASK, SOFTIRQ_NONE), CAUSE_OTHER);
    }

    #[test]
    fn a_blocked_stretch_splits_at_its_wakeup() {
        let mut p = SchedPart::default();
        let mut off = OffCpu::NONE;
        start_off_cpu(&mut off, 1000, 0, 1, false, false, &[1, 2, 3], &[4]);
        note_wakeup(&mut off, &waker(CTX_TASK, SOFTIRQ_NONE, 131), 61_000);
        note_wakeup(&mut off, &waker(CTX_TASK, SOFTIRQ_NONE, 999), 62_000);
        charge_off_cpu(&mut p, &off, 1000, 7, 202, 1, 63_000);
        assert_eq!(p.blocked_ns[CAUSE_LOCK as usize], 60_000);
        assert_eq!((p.runq_wakeup_ns, p.blocks, p.wakeups, p.migrations), (2_000, 1, 1, 1));
        assert_eq!((p.wakeup_total_ns, p.wakeup_max_ns), (2_000, 2_000));
        assert_eq!(p.n_waits, 1);
        let w = p.waits[0];
        assert_eq!((w.waker_tid, w.tid, w.nr, w.cause, w.start_mono_ns), (131, 7, 202, CAUSE_LOCK, 1000));
        assert_eq!((w.n_kstack, &w.kstack[..3], w.n_ustack, w.ustack[0]), (3, &[1, 2, 3][..], 1, 4));
        assert_eq!(charged(&p), 62_000);
    }

    #[test]
    fn a_preemption_is_runqueue_time() {
        let mut p = SchedPart::default();
        let mut off = OffCpu::NONE;
        start_off_cpu(&mut off, 10, 2, 0, true, false, &[], &[]);
        note_wakeup(&mut off, &waker(CTX_TASK, SOFTIRQ_NONE, 1), 20);
        charge_off_cpu(&mut p, &off, 10, 7, NO_CALL, 2, 110);
        assert_eq!((p.runq_preempt_ns, p.preemptions, p.blocks, p.wakeups, p.migrations), (100, 1, 0, 0, 0));
        assert_eq!((p.waits[0].cause, p.waits[0].waker_ctx), (CAUSE_PREEMPTED, CTX_NONE));
    }

    #[test]
    fn an_unseen_wakeup_leaves_the_stretch_blocked() {
        let mut p = SchedPart::default();
        let off = OffCpu { since: 10, state: 1, ..OffCpu::NONE };
        charge_off_cpu(&mut p, &off, 10, 7, 230, 0, 110);
        assert_eq!((p.blocked_ns[CAUSE_TIMER as usize], p.runq_wakeup_ns, p.wakeups, p.lost_events), (100, 0, 0, 1));
    }

    #[test]
    fn the_longest_waits_are_kept_longest_first() {
        let mut p = SchedPart::default();
        for (i, len) in [5u64, 50, 1, 30, 40, 2, 60].iter().enumerate() {
            keep_wait(&mut p, WaitEntry { blocked_ns: *len, tid: i as u32, ..EMPTY_WAIT });
        }
        assert_eq!(p.n_waits as usize, MAX_WAITS);
        let lens: [u64; MAX_WAITS] = core::array::from_fn(|i| p.waits[i].blocked_ns);
        assert_eq!(lens, [60, 50, 40, 30]);
    }
}
