//! The system-call hot path without the tracker's lock (issue 16).
//!
//! A thread that stacks its spans (thread-per-request: no active-span slot) has its calls
//! charged to the innermost span of its stack. That stack changes only under the tracker's
//! lock (begin, end, expiry, thread exit, a slot being set), and every such change first
//! *folds* the thread's pending calls into the span on top of the stack. So a call does not
//! need the lock when it happens: the thread notes it in its own [`HotThread`], and the
//! tracker charges it at the next fold, to the span that was innermost when the call was
//! made. Then an in-span system call touches only its own thread's state (two cache lines):
//! no lock, no shared counter, no shared pool.
//!
//! A thread with an active-span slot (asyncio, tokio) notes its calls the same way, each with
//! the slot value it was made under (read by the probe at enter). The tracker looks the span
//! up when it charges the call: the open span of that id in the process, if it was begun by
//! the call's start. A span end folds the pending calls of every slotted thread of its
//! process first (merged in the order they ended), so a span's record holds exactly the
//! calls that were made while its slot named it and ended before it did: what charging each
//! call at its exit under the lock gave.
//!
//! - **Enter** writes the call in progress (`call_state`, `call_nr`, `call_start_ns`).
//!   Only the thread itself writes these, from its own system-call probes or from an entry
//!   point it is itself inside (a begin/end write, an ioctl: "exclude the call I am in").
//! - **Exit** appends the finished call to a single-producer single-consumer ring of
//!   [`HOT_RING`] entries. The producer is the thread (in its `sys_exit` probe); the
//!   consumer is whoever holds the tracker's lock and folds. When the ring is full, the
//!   thread takes the lock itself, folds, and appends ([`HotExit::Full`]): the cost of the
//!   old path, once every [`HOT_RING`] calls of a long span.
//! - **Finding the slot** goes through `hints[tid % len]` (slot + 1, written under the lock)
//!   and is confirmed by the slot's `owner`: a miss (another tid with the same low bits) takes
//!   the locked path, which is always correct.
//!
//! A producer racing with the slot's reuse (its thread unregistered by another thread in
//! the middle of a call, and the slot given to a new thread at once) could leave one entry
//! in the new owner's ring: each entry carries its tid, and the fold drops entries of another
//! tid, counted in `calls_stale` (never charged to the new owner's spans).
//!
//! Memory ordering: the producer writes an entry, then publishes `head` (release); the
//! consumer reads `head` (acquire), the entries, then publishes `tail` (release); the
//! producer reads `tail` (acquire) before reusing a slot. A slot's reset happens before its
//! `owner` is stored (release), and the hot path reads `owner` with acquire.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::uapi::SyscallEntry;

/// Calls a thread notes before it must fold (take the lock). 16 covers the begin-to-end of
/// most spans; the memory is 16 × 32 bytes per thread slot.
pub const HOT_RING: usize = 16;
/// Entries of the lock-free tid → slot hints.
pub const HOT_HINTS: usize = 4096;

/// No call in progress.
pub const CALL_NONE: u32 = 0;
/// A call in progress, to be charged at its exit.
pub const CALL_ACTIVE: u32 = 1;
/// A call in progress that spantrack made itself (a begin/end write, an ioctl): not charged.
pub const CALL_EXCLUDED: u32 = 2;

const EMPTY: SyscallEntry = SyscallEntry {
    nr: 0,
    tid: 0,
    ret: 0,
    start_mono_ns: 0,
    end_mono_ns: 0,
};

/// One thread slot's lock-free part. All-zero is a valid free slot.
#[repr(C, align(64))]
pub struct HotThread {
    /// Tid owning the slot (0: free). Stored last when a slot is given, first when taken.
    pub(crate) owner: AtomicU32,
    /// `CALL_*`, and the call in progress.
    call_state: AtomicU32,
    call_nr: AtomicU32,
    /// Producer index (entries appended so far, wrapping).
    head: AtomicU32,
    call_start_ns: AtomicU64,
    /// Exits without a matching enter (the thread was tracked in the middle of a call).
    without_enter: AtomicU64,
    /// Consumer index (entries folded so far, wrapping).
    tail: AtomicU32,
    _pad: u32,
    /// The active-span slot value the call in progress was made under (0: a thread
    /// stacking its spans).
    call_slot: AtomicU64,
    ring: [UnsafeCell<HotEntry>; HOT_RING],
}

/// A finished call in the ring, with the slot value it was made under (0: stacked).
#[repr(C)]
#[derive(Clone, Copy)]
struct HotEntry {
    e: SyscallEntry,
    v: u64,
}

// SAFETY: the ring's cells are accessed under the single-producer single-consumer protocol
// above (the producer writes only `[head, tail + HOT_RING)`, the consumer reads only
// `[tail, head)`, both published with release/acquire); everything else is atomic.
unsafe impl Sync for HotThread {}

impl HotThread {
    /// A free slot.
    pub const EMPTY: Self = HotThread {
        owner: AtomicU32::new(0),
        call_state: AtomicU32::new(CALL_NONE),
        call_nr: AtomicU32::new(0),
        head: AtomicU32::new(0),
        call_start_ns: AtomicU64::new(0),
        without_enter: AtomicU64::new(0),
        tail: AtomicU32::new(0),
        _pad: 0,
        call_slot: AtomicU64::new(0),
        ring: [const { UnsafeCell::new(HotEntry { e: EMPTY, v: 0 }) }; HOT_RING],
    };

    /// The thread enters system call `nr` at `now`.
    #[inline(always)]
    pub(crate) fn enter(&self, nr: u32, now: u64) {
        // (`call_slot` stays 0 while the thread stacks its spans: see `clear_slot`.)
        self.call_nr.store(nr, Ordering::Relaxed);
        self.call_start_ns.store(now, Ordering::Relaxed);
        self.call_state.store(CALL_ACTIVE, Ordering::Relaxed);
    }

    /// The thread stops having an active-span slot (under the lock, from the thread's own
    /// ioctl, so it is not producing): its calls are stacked ones again.
    pub(crate) fn clear_slot(&self) {
        self.call_slot.store(0, Ordering::Relaxed);
    }

    /// The thread (with an active-span slot holding `v`) enters system call `nr` at `now`.
    #[inline(always)]
    pub(crate) fn enter_slot(&self, nr: u32, now: u64, v: u64) {
        self.call_nr.store(nr, Ordering::Relaxed);
        self.call_start_ns.store(now, Ordering::Relaxed);
        self.call_slot.store(v, Ordering::Relaxed);
        self.call_state.store(CALL_ACTIVE, Ordering::Relaxed);
    }

    /// The thread enters call `nr`, to be charged to no span (its slot unreadable or
    /// naming none): known as the call in progress, not charged at its exit.
    #[inline]
    pub(crate) fn enter_uncharged(&self, nr: u32, now: u64) {
        self.call_nr.store(nr, Ordering::Relaxed);
        self.call_start_ns.store(now, Ordering::Relaxed);
        self.call_state.store(CALL_EXCLUDED, Ordering::Relaxed);
    }

    /// The call in progress is spantrack's own: not charged.
    #[inline]
    pub(crate) fn exclude(&self) {
        self.call_state.store(CALL_EXCLUDED, Ordering::Relaxed);
    }

    /// The call in progress (its number), if any (excluded ones included).
    #[inline]
    pub(crate) fn call_in_progress(&self) -> Option<u32> {
        (self.call_state.load(Ordering::Relaxed) != CALL_NONE).then(|| self.call_nr.load(Ordering::Relaxed))
    }

    /// Ends the call in progress: `Some((entry, slot value))` for a call to charge, `None`
    /// for none (an excluded call, or an exit without an enter, counted when
    /// `count_missing`: a thread with an active-span slot is switched on and off by other
    /// threads' spans, so an exit without an enter is normal there).
    #[inline(always)]
    pub(crate) fn take_call(&self, tid: u32, ret: i64, now: u64, count_missing: bool) -> Option<(SyscallEntry, u64)> {
        let state = self.call_state.swap(CALL_NONE, Ordering::Relaxed);
        if state != CALL_ACTIVE {
            if state == CALL_NONE && count_missing {
                self.without_enter.fetch_add(1, Ordering::Relaxed);
            }
            return None;
        }
        let e = SyscallEntry {
            nr: self.call_nr.load(Ordering::Relaxed),
            tid,
            ret,
            start_mono_ns: self.call_start_ns.load(Ordering::Relaxed),
            end_mono_ns: now,
        };
        Some((e, self.call_slot.load(Ordering::Relaxed)))
    }

    /// Puts a call taken by [`HotThread::take_call`] back in progress.
    #[inline]
    fn untake(&self, e: SyscallEntry, v: u64) {
        self.call_nr.store(e.nr, Ordering::Relaxed);
        self.call_start_ns.store(e.start_mono_ns, Ordering::Relaxed);
        self.call_slot.store(v, Ordering::Relaxed);
        self.call_state.store(CALL_ACTIVE, Ordering::Relaxed);
    }

    /// Appends a finished call made under slot value `v` (producer side). False if the
    /// ring is full (nothing changed).
    #[inline(always)]
    pub(crate) fn push(&self, e: SyscallEntry, v: u64) -> bool {
        let h = self.head.load(Ordering::Relaxed);
        let t = self.tail.load(Ordering::Acquire);
        if h.wrapping_sub(t) as usize >= HOT_RING {
            return false;
        }
        let Some(cell) = self.ring.get(h as usize % HOT_RING) else {
            return false;
        };
        // SAFETY: slot `h` is outside `[tail, head)`, which the consumer alone reads; the
        // acquire load of `tail` orders its reads of this slot before our write. Only the
        // owning thread produces (see the module note for the one race with slot reuse).
        unsafe { *cell.get() = HotEntry { e, v } };
        self.head.store(h.wrapping_add(1), Ordering::Release);
        true
    }

    /// The oldest pending entry and its slot value, if any (the consumer side: the caller
    /// holds the tracker's lock, so there is one consumer).
    #[inline]
    pub(crate) fn peek(&self) -> Option<(SyscallEntry, u64)> {
        let h = self.head.load(Ordering::Acquire);
        let t = self.tail.load(Ordering::Relaxed);
        if t == h {
            return None;
        }
        let cell = self.ring.get(t as usize % HOT_RING)?;
        // SAFETY: slot `t` is in `[tail, head)`: published by the producer (acquire load of
        // `head` above) and not reused until the consumer advances `tail` past it.
        let x = unsafe { *cell.get() };
        Some((x.e, x.v))
    }

    /// Drops the oldest pending entry (after [`HotThread::peek`] found one; the consumer).
    #[inline]
    pub(crate) fn pop(&self) {
        let t = self.tail.load(Ordering::Relaxed);
        if t != self.head.load(Ordering::Acquire) {
            self.tail.store(t.wrapping_add(1), Ordering::Release);
        }
    }

    /// Takes the pending entries that ended by `cutoff`, oldest first, with their slot
    /// values, and stops at the first that did not (the consumer side, see
    /// [`HotThread::peek`]). The thread's entries are in time order.
    #[inline]
    pub(crate) fn drain(&self, cutoff: u64, mut f: impl FnMut(SyscallEntry, u64)) {
        let h = self.head.load(Ordering::Acquire);
        let mut t = self.tail.load(Ordering::Relaxed);
        while t != h {
            let Some(cell) = self.ring.get(t as usize % HOT_RING) else {
                break;
            };
            // SAFETY: slot `t` is in `[tail, head)`: published by the producer (acquire
            // load of `head` above) and not reused until we advance `tail` past it.
            let x = unsafe { *cell.get() };
            if x.e.end_mono_ns > cutoff {
                break;
            }
            f(x.e, x.v);
            t = t.wrapping_add(1);
        }
        self.tail.store(t, Ordering::Release);
    }

    /// Pending entries (a snapshot).
    pub fn pending(&self) -> u32 {
        self.head
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail.load(Ordering::Acquire))
    }

    /// Gives the slot to `tid` (under the lock; the ring was drained when it was freed).
    pub(crate) fn give(&self, tid: u32) {
        self.call_state.store(CALL_NONE, Ordering::Relaxed);
        self.call_slot.store(0, Ordering::Relaxed);
        let h = self.head.load(Ordering::Acquire);
        self.tail.store(h, Ordering::Release);
        self.owner.store(tid, Ordering::Release);
    }

    /// Takes the slot back (under the lock): the hot path stops finding it. Returns the
    /// exits without enter it counted.
    pub(crate) fn take_back(&self) -> u64 {
        self.owner.store(0, Ordering::Release);
        self.call_state.store(CALL_NONE, Ordering::Relaxed);
        self.without_enter.swap(0, Ordering::Relaxed)
    }

    /// Exits without enter counted so far by the live slot.
    pub(crate) fn without_enter(&self) -> u64 {
        self.without_enter.load(Ordering::Relaxed)
    }
}

/// What [`HotPath::sys_exit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotExit {
    /// Noted (or nothing to note).
    Done,
    /// The thread's ring is full: take the lock and call `Tracker::sys_exit`.
    Full,
    /// No hint for this tid: take the lock and call `Tracker::sys_exit`.
    Miss,
}

/// The lock-free side of the thread slots, shared by every CPU (see the module note).
#[derive(Clone, Copy)]
pub struct HotPath<'a> {
    threads: &'a [HotThread],
    hints: &'a [AtomicU32],
}

impl<'a> HotPath<'a> {
    pub(crate) fn new(threads: &'a [HotThread], hints: &'a [AtomicU32]) -> Self {
        HotPath { threads, hints }
    }

    /// Thread slot `ti`'s hot part.
    #[inline(always)]
    pub(crate) fn slot(&self, ti: u32) -> Option<&'a HotThread> {
        self.threads.get(ti as usize)
    }

    #[inline(always)]
    fn hint(&self, tid: u32) -> Option<&'a AtomicU32> {
        let n = self.hints.len();
        if n == 0 {
            return None;
        }
        self.hints.get(tid as usize % n)
    }

    /// The index of the slot of `tid`, if its hint names a slot `tid` owns.
    #[inline(always)]
    pub(crate) fn find_index(&self, tid: u32) -> Option<u32> {
        let ti = self.hint(tid)?.load(Ordering::Relaxed).checked_sub(1)?;
        let t = self.threads.get(ti as usize)?;
        (tid != 0 && t.owner.load(Ordering::Acquire) == tid).then_some(ti)
    }

    /// The slot of `tid`, if its hint names a slot `tid` owns.
    #[inline(always)]
    fn find(&self, tid: u32) -> Option<&'a HotThread> {
        self.slot(self.find_index(tid)?)
    }

    /// Points `tid`'s hint at slot `ti` (under the lock).
    pub(crate) fn set_hint(&self, tid: u32, ti: u32) {
        if let Some(h) = self.hint(tid) {
            h.store(ti.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// Clears `tid`'s hint if it names slot `ti` (under the lock).
    pub(crate) fn clear_hint(&self, tid: u32, ti: u32) {
        if let Some(h) = self.hint(tid) {
            if h.load(Ordering::Relaxed) == ti.wrapping_add(1) {
                h.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Thread `tid` (tracked, stacking its spans) enters call `nr`. False: no hint, take
    /// the lock and call `Tracker::sys_enter`.
    #[inline(always)]
    pub fn sys_enter(&self, tid: u32, nr: u32, now: u64) -> bool {
        match self.find(tid) {
            Some(t) => {
                t.enter(nr, now);
                true
            }
            None => false,
        }
    }

    /// Thread `tid` (with an active-span slot holding `v`, not 0) enters call `nr`. False:
    /// no hint, take the lock and call `Tracker::sys_enter_with`.
    #[inline(always)]
    pub fn sys_enter_slot(&self, tid: u32, nr: u32, now: u64, v: u64) -> bool {
        match self.find(tid) {
            Some(t) => {
                t.enter_slot(nr, now, v);
                true
            }
            None => false,
        }
    }

    /// Thread `tid` (stacking its spans) leaves its call with `ret` at `now`.
    #[inline(always)]
    pub fn sys_exit(&self, tid: u32, ret: i64, now: u64) -> HotExit {
        self.exit(tid, ret, now, true)
    }

    /// Thread `tid` (with an active-span slot) leaves its call with `ret` at `now`. An exit
    /// without an enter is not counted: such a thread is switched on and off by other
    /// threads' spans.
    #[inline(always)]
    pub fn sys_exit_slot(&self, tid: u32, ret: i64, now: u64) -> HotExit {
        self.exit(tid, ret, now, false)
    }

    #[inline(always)]
    fn exit(&self, tid: u32, ret: i64, now: u64, count_missing: bool) -> HotExit {
        let Some(t) = self.find(tid) else {
            return HotExit::Miss;
        };
        // A full ring: leave the call in progress for the locked path to take.
        if t.pending() as usize >= HOT_RING && t.call_state.load(Ordering::Relaxed) == CALL_ACTIVE {
            return HotExit::Full;
        }
        if let Some((e, v)) = t.take_call(tid, ret, now, count_missing) {
            if !t.push(e, v) {
                // (Cannot happen: only this thread produces, and it saw room.) Put the
                // call back for the locked path.
                t.untake(e, v);
                return HotExit::Full;
            }
        }
        HotExit::Done
    }
}
