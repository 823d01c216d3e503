//! The module's global state and the entry points `glue.c` calls (`st_rs_*`).
//!
//! One [`Tracker`] (from `logic/tracker.rs`) holds every process, thread, open span and
//! itemised system call, in memory reserved at load. It is guarded by one spinlock taken
//! with interrupts off (`st_lock_irqsave`), so probes, the expiry timer (softirq) and the
//! proc/sysfs handlers can all reach it; nothing under the lock allocates or sleeps. The
//! "is this thread tracked?" test of every system call on the machine is a bit test done
//! in C before any Rust is reached. The system calls of a tracked thread in a span do not
//! take the lock: the thread notes them in its own slot, and the tracker charges them when
//! its stack next changes, or (a thread with an active-span slot) when a span of its
//! process ends (`logic/hot.rs`, issue 16). Relay channels are created and closed in sleeping
//! context only: registration holds a mutex, and channels of processes that exit (probe
//! context) are parked and closed by a work item.

use core::cell::UnsafeCell;
use core::ffi::{c_char, c_int, c_long, c_uint, c_void};
use core::ptr::{null_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use kernel::prelude::*;

use crate::facilities::{self as fac, RelayChannel, TrackedBitmaps, VSlice};
use crate::record::{record_size, MAX_CALLS_LIMIT};
use crate::hot::{HotExit, HotPath};
use crate::tracker::{DefaultStorage, EndOutcome, Tracker, DEFAULT_PROCESSES, SLOT_HINTS, TRACKED_WORDS};
use crate::tunables::{self, TextBuf};
use crate::uapi;

const EINVAL: i32 = 22;
const EIO: i32 = 5;
const EFAULT: i32 = 14;
const ENOENT: i32 = 2;
const ENOMEM: i32 = 12;
const ENOTTY: i32 = 25;

/// Everything the entry points share. Reached through [`GLOBAL`].
struct Global {
    /// Guarded by the C spinlock (`Locked`).
    tracker: UnsafeCell<Tracker<'static>>,
    /// Scratch space for one encoded record; guarded by the same lock.
    record_buf: UnsafeCell<&'static mut [u8]>,
    /// Relay channel of each process slot (`ProcIdx`); set and cleared under `st_reg_lock`
    /// and the spinlock, read under the spinlock.
    channels: [AtomicPtr<c_void>; DEFAULT_PROCESSES],
    /// Channels of processes that went away in probe context, closed by the reap work.
    closing: [AtomicPtr<c_void>; DEFAULT_PROCESSES],
    threshold_ns: AtomicU64,
    timeout_ns: AtomicU64,
    /// The system-call path of threads stacking their spans, without the lock (hot.rs).
    hot: HotPath<'static>,
}

// SAFETY: the UnsafeCells are only accessed under the spinlock (see `Locked`); the rest are
// atomics.
unsafe impl Sync for Global {}

/// Set when the module starts to unload: from then on every span write fails with `EIO`
/// and every ioctl with `ENOTTY`, at once for all files (as after the entries are gone),
/// rather than file by file as the proc entries are removed (where `begin` could still
/// open spans that `end`, already gone, can no longer close).
static UNLOADING: AtomicBool = AtomicBool::new(false);

/// Called first thing on unload (see `UNLOADING`).
pub(crate) fn start_unload() {
    UNLOADING.store(true, Ordering::Release);
}

/// The installed state, or null when the module is not (yet/any more) initialised.
static GLOBAL: AtomicPtr<Global> = AtomicPtr::new(null_mut());

fn global() -> Option<&'static Global> {
    let p = GLOBAL.load(Ordering::Acquire);
    // SAFETY: GLOBAL points to a live Global from `Installed::new` until `Installed` drops,
    // which happens only after every entry point has been unregistered and drained.
    unsafe { p.as_ref() }
}

/// The tracker with the spinlock held (interrupts off on this CPU).
struct Locked<'g> {
    g: &'g Global,
    flags: core::ffi::c_ulong,
}

impl Global {
    fn lock(&self) -> Locked<'_> {
        // SAFETY: plain spin_lock_irqsave on the module's lock.
        let flags = unsafe { fac::st_lock_irqsave() };
        Locked { g: self, flags }
    }
}

impl Locked<'_> {
    fn tracker(&mut self) -> &mut Tracker<'static> {
        // SAFETY: we hold the lock, so no other reference to the tracker exists.
        unsafe { &mut *self.g.tracker.get() }
    }

    /// The tracker and the record scratch buffer together.
    fn tracker_and_buf(&mut self) -> (&mut Tracker<'static>, &mut [u8]) {
        // SAFETY: both are guarded by the lock we hold; they are distinct objects.
        unsafe { (&mut *self.g.tracker.get(), &mut **self.g.record_buf.get()) }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: releases the lock taken in `Global::lock` with its saved flags.
        unsafe { fac::st_unlock_irqrestore(self.flags) };
    }
}

/// Owner of the global state: allocates it at load and frees it at unload.
pub(crate) struct Installed {
    _global: KBox<Global>,
    bitmap: *mut u64,
    active: *mut u64,
    active_slot: *mut u64,
    skip: *mut u64,
    registered: *mut u64,
    hints: *mut c_void,
    _storage: VSlice<DefaultStorage>,
    _record_buf: VSlice<u8>,
}

/// A thread entered the open-span set: the kernel gives it the traced system-call path
/// back (glue.c). Called by the tracker under the lock.
fn trace_need(tid: u32) {
    // SAFETY: sets a flag in the task's syscall work, if the task exists; no lock, no sleep.
    unsafe { fac::st_trace_need(tid as c_int) };
}

impl Installed {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: DefaultStorage is integers, atomics and (the hot rings) `UnsafeCell`s of
        // integers only: all-zero is valid.
        let mut storage = unsafe { VSlice::<DefaultStorage>::zeroed(1)? };
        let rec_len = record_size(MAX_CALLS_LIMIT).max(fac_subbuf_size());
        // SAFETY: bytes.
        let mut record_buf = unsafe { VSlice::<u8>::zeroed(rec_len)? };
        // SAFETY: the storage outlives the tracker: `global` (holding the tracker) is
        // dropped before `_storage` (field order), and this is the only borrow.
        let block: &'static mut DefaultStorage = unsafe { &mut storage.leak_mut()[0] };
        // SAFETY: as above, for the record buffer.
        let buf: &'static mut [u8] = unsafe { record_buf.leak_mut() };
        let seed = {
            let mut s = [0u8; 8];
            // SAFETY: fills `s` with random bytes.
            unsafe { kernel::bindings::get_random_bytes(s.as_mut_ptr() as *mut c_void, 8) };
            u64::from_ne_bytes(s)
        };
        let bitmap = block.tracked.as_ptr() as *mut u64;
        let active = block.active.as_ptr() as *mut u64;
        let active_slot = block.active_slot.as_ptr() as *mut u64;
        let skip = block.skip_exit.as_ptr() as *mut u64;
        let registered = block.registered.as_ptr() as *mut u64;
        let hints = block.slot_hints.as_ptr() as *mut c_void;
        let mut tracker = Tracker::new(block.storage(), seed);
        tracker.set_trace_hook(trace_need);
        let hot = tracker.hot_path();
        let global = KBox::new(
            Global {
                tracker: UnsafeCell::new(tracker),
                record_buf: UnsafeCell::new(buf),
                channels: [const { AtomicPtr::new(null_mut()) }; DEFAULT_PROCESSES],
                closing: [const { AtomicPtr::new(null_mut()) }; DEFAULT_PROCESSES],
                threshold_ns: AtomicU64::new(tunables::DEFAULT_THRESHOLD_NS),
                timeout_ns: AtomicU64::new(tunables::DEFAULT_TIMEOUT_NS),
                hot,
            },
            GFP_KERNEL,
        )?;
        GLOBAL.store(&*global as *const Global as *mut Global, Ordering::Release);
        Ok(Self { _global: global, bitmap, active, active_slot, skip, registered, hints, _storage: storage, _record_buf: record_buf })
    }

    /// Hands the tracked-thread and open-span bitmaps to the C probes.
    pub(crate) fn publish_bitmap(&self) -> TrackedBitmaps {
        // SAFETY: the bitmap (TRACKED_WORDS words, one bit per possible tid) lives in
        // `_storage`, which outlives the returned value (`SpanTrack` drops `_bitmap`
        // before `_state`). AtomicU64 has the layout of u64, C's unsigned long here.
        unsafe {
            TrackedBitmaps::publish(
                self.bitmap,
                self.active,
                self.active_slot,
                self.skip,
                self.registered,
                self.hints,
                SLOT_HINTS,
                TRACKED_WORDS * 64,
            )
        }
    }

    pub(crate) fn reserved_bytes(&self) -> usize {
        self._storage.byte_len().saturating_add(self._record_buf.byte_len())
    }
}

// SAFETY: `bitmap`, `active`, `active_slot`, `skip`, `registered` and `hints` point into `_storage`, owned by this value; the state behind it is
// synchronised by the lock and atomics (see `Global`).
unsafe impl Send for Installed {}
// SAFETY: as above.
unsafe impl Sync for Installed {}

impl Drop for Installed {
    fn drop(&mut self) {
        GLOBAL.store(null_mut(), Ordering::Release);
    }
}

fn fac_subbuf_size() -> usize {
    // SAFETY: plain query of a constant.
    unsafe { fac::st_subbuf_size() }
}

/// Closes every relay channel still open when the module unloads.
pub(crate) struct Channels;

impl Drop for Channels {
    fn drop(&mut self) {
        let Some(g) = global() else { return };
        for slot in Iterator::chain(g.channels.iter(), g.closing.iter()) {
            if let Some(p) = NonNull::new(slot.swap(null_mut(), Ordering::AcqRel)) {
                // SAFETY: every pointer in these slots came from `RelayChannel::into_raw`
                // and the swap makes this its only owner.
                drop(unsafe { RelayChannel::from_raw(p) });
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Probes (called by glue.c only for tracked threads)
// ---------------------------------------------------------------------------------------

#[no_mangle]
extern "C" fn st_rs_sys_enter(tid: c_int, nr: c_long, mono: u64, have_slot: c_int, slot: u64) {
    let Some(g) = global() else { return };
    g.lock().tracker().sys_enter_with(tid as u32, nr as u32, mono, |addr| {
        // The probe read the slot already (through the slot table).
        if have_slot != 0 {
            return Some(slot);
        }
        let mut v = 0u64;
        // SAFETY: `st_read_slot` reads the current task's memory without faulting and
        // writes only `v`, a local.
        (unsafe { fac::st_read_slot(addr, &mut v) } == 0).then_some(v)
    });
}

/// `sys_enter` of a tracked thread with spans on its stack (no active-span slot): on the
/// lock-free path (hot.rs) when its hint finds it, else under the lock.
#[no_mangle]
extern "C" fn st_rs_sys_enter_stacked(tid: c_int, nr: c_long, mono: u64) {
    let Some(g) = global() else { return };
    if !g.hot.sys_enter(tid as u32, nr as u32, mono) {
        st_rs_sys_enter(tid, nr, mono, 0, 0);
    }
}

/// `sys_enter` of a tracked thread with an active-span slot, whose slot the probe read as
/// `v` (not 0): on the lock-free path (hot.rs) when its hint finds it, else under the lock.
/// The span `v` names is looked up when the call is charged.
#[no_mangle]
extern "C" fn st_rs_sys_enter_slot(tid: c_int, nr: c_long, mono: u64, v: u64) {
    let Some(g) = global() else { return };
    if !g.hot.sys_enter_slot(tid as u32, nr as u32, mono, v) {
        st_rs_sys_enter(tid, nr, mono, 1, v);
    }
}

/// `sys_exit` of a tracked thread with an active-span slot: as the stacked one's, except
/// that an exit without an enter is normal there (not counted).
#[no_mangle]
extern "C" fn st_rs_sys_exit_slot(tid: c_int, ret: c_long, mono: u64) {
    let Some(g) = global() else { return };
    if g.hot.sys_exit_slot(tid as u32, ret as i64, mono) != HotExit::Done {
        g.lock().tracker().sys_exit(tid as u32, ret as i64, mono);
    }
}

/// `sys_exit` of a tracked thread with spans on its stack: on the lock-free path unless its
/// hint misses or its ring is full.
#[no_mangle]
extern "C" fn st_rs_sys_exit_stacked(tid: c_int, ret: c_long, mono: u64) {
    let Some(g) = global() else { return };
    if g.hot.sys_exit(tid as u32, ret as i64, mono) != HotExit::Done {
        g.lock().tracker().sys_exit(tid as u32, ret as i64, mono);
    }
}

/// What glue.c's `sched_waking` probe knows of the waker (`struct st_waker`).
#[repr(C)]
pub(crate) struct StWaker {
    ctx: u8,
    softirq: u8,
    flags: u8,
    _pad: u8,
    tid: u32,
    tgid: u32,
    nr: u32,
    on_cpu_ns: u64,
    comm: [u8; 16],
}

/// `sched_switch` with `prev` or `next` (or both) tracked with an open span (`*_on`); the
/// runqueue lock is held and interrupts are off. `slot` is prev's active-span slot value
/// when `have_slot`; `kstack`/`ustack` hold prev's stacks at a blocking switch.
///
/// # Safety
/// `kstack` and `ustack` are null or point to `n_kstack`/`n_ustack` readable `u64`s, alive
/// for the call.
#[no_mangle]
unsafe extern "C" fn st_rs_sched_switch(
    prev_tid: c_int,
    prev_on: c_int,
    preempt: c_int,
    prev_state: c_uint,
    in_iowait: c_int,
    have_slot: c_int,
    slot: u64,
    next_tid: c_int,
    next_on: c_int,
    cpu: c_uint,
    mono: u64,
    kstack: *const u64,
    n_kstack: c_uint,
    ustack: *const u64,
    n_ustack: c_uint,
) {
    let Some(g) = global() else { return };
    let stack = |p: *const u64, n: c_uint| -> &[u64] {
        if p.is_null() || n == 0 {
            return &[];
        }
        // SAFETY: the caller's contract: `n` readable entries, alive for this call.
        unsafe { core::slice::from_raw_parts(p, n as usize) }
    };
    let (ks, us) = (stack(kstack, n_kstack), stack(ustack, n_ustack));
    let mut l = g.lock();
    let t = l.tracker();
    if prev_on != 0 {
        let slot = (have_slot != 0).then_some(slot);
        t.sched_out(prev_tid as u32, cpu, preempt != 0, prev_state, in_iowait != 0, slot, mono, ks, us);
    }
    if next_on != 0 {
        t.sched_in(next_tid as u32, cpu, mono);
    }
}

/// `sched_waking` of tracked thread `tid` (p->pi_lock held, interrupts off).
///
/// # Safety
/// `w` points to a valid `struct st_waker` for the duration of the call.
#[no_mangle]
unsafe extern "C" fn st_rs_sched_waking(tid: c_int, mono: u64, w: *const StWaker, have_slot: c_int, slot: u64) {
    let Some(g) = global() else { return };
    // SAFETY: the caller's contract.
    let Some(w) = (unsafe { w.as_ref() }) else { return };
    let k = crate::sched::Waker {
        ctx: w.ctx,
        softirq: w.softirq,
        flags: w.flags,
        tid: w.tid,
        tgid: w.tgid,
        comm: w.comm,
        nr: w.nr,
        on_cpu_ns: w.on_cpu_ns,
    };
    g.lock().tracker().sched_waking(tid as u32, mono, &k, (have_slot != 0).then_some(slot));
}

/// `sched_stat_runtime` of tracked thread `tid` with an active-span slot (runqueue lock
/// held, interrupts off): `delta` ns more on a CPU; `current`: it is the current task, and
/// `slot` its slot value when `have_slot`.
#[no_mangle]
extern "C" fn st_rs_sched_runtime(tid: c_int, delta: u64, current: c_int, have_slot: c_int, slot: u64) {
    let Some(g) = global() else { return };
    g.lock().tracker().sched_runtime(tid as u32, delta, current != 0, (have_slot != 0).then_some(slot));
}

/// Scheduler accounting switched on or off by `st_sched_set` (its probes are registered
/// before on and unregistered after off).
#[no_mangle]
extern "C" fn st_rs_sched_enable(on: c_int) {
    let Some(g) = global() else { return };
    g.lock().tracker().set_sched(on != 0);
}

#[no_mangle]
extern "C" fn st_rs_task_exit(tid: c_int, tgid: c_int) {
    let Some(g) = global() else { return };
    let mut l = g.lock();
    let t = l.tracker();
    if t.remove_thread(tid as u32) {
        // The process's last tracked thread is gone: so is the process.
        retire_process(g, t, tgid as u32);
        drop(l);
        // SAFETY: schedules the reap work (allowed in atomic context).
        unsafe { fac::st_schedule_reap() };
    }
}

/// A tracked thread completed an execve (`old_tid` is the pid it had; `tid` the one it has
/// now, the tgid if it was not the main thread). The process stays registered; see
/// `Tracker::exec_thread`.
#[no_mangle]
extern "C" fn st_rs_exec(old_tid: c_int, tid: c_int, tgid: c_int) {
    let Some(g) = global() else { return };
    let mut l = g.lock();
    let t = l.tracker();
    if t.exec_thread(old_tid as u32, tid as u32) {
        retire_process(g, t, tgid as u32);
        drop(l);
        // SAFETY: schedules the reap work (allowed in atomic context).
        unsafe { fac::st_schedule_reap() };
    }
}

#[no_mangle]
extern "C" fn st_rs_new_thread(tid: c_int, tgid: c_int) {
    let Some(g) = global() else { return };
    let mut l = g.lock();
    let t = l.tracker();
    if t.process_of(tgid as u32).is_some() && !t.is_tracked(tid as u32) {
        // A full thread table is counted by the tracker.
        let _ = t.add_thread(tgid as u32, tid as u32);
    }
}

/// Unregisters `tgid` (lock held) and parks its channel for the reap work.
///
/// There is always a free parking slot: `register` reaps before it opens a channel, so
/// open plus parked channels never outnumber the process slots.
fn retire_process(g: &Global, t: &mut Tracker<'static>, tgid: u32) {
    let Some(idx) = t.process_of(tgid) else { return };
    let _ = t.unregister_process(tgid);
    let Some(p) = g.channels.get(idx.index()).map(|c| c.swap(null_mut(), Ordering::AcqRel)) else {
        return;
    };
    if p.is_null() {
        return;
    }
    for park in g.closing.iter() {
        if park.compare_exchange(null_mut(), p, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            return;
        }
    }
    // Unreachable by the argument above; should it happen, keep the channel reachable
    // for unload rather than close it here, in atomic context.
    if let Some(c) = g.channels.get(idx.index()) {
        c.store(p, Ordering::Release);
    }
}

/// The reap work: closes the parked channels, under the registration mutex (so that a
/// channel found under that mutex, parked or not, stays open until it is released).
#[no_mangle]
extern "C" fn st_rs_reap() {
    let Some(g) = global() else { return };
    // SAFETY: work-item context, may sleep; released below.
    unsafe { fac::st_reg_lock() };
    reap_parked(g);
    // SAFETY: taken above.
    unsafe { fac::st_reg_unlock() };
}

/// Closes the channels parked by `retire_process`. Runs under `st_reg_lock`.
fn reap_parked(g: &Global) {
    for slot in g.closing.iter() {
        if let Some(p) = NonNull::new(slot.swap(null_mut(), Ordering::AcqRel)) {
            // SAFETY: parked by `retire_process` from `into_raw`; the swap gives sole
            // ownership. We are in a work item: closing may sleep.
            drop(unsafe { RelayChannel::from_raw(p) });
        }
    }
}

#[no_mangle]
extern "C" fn st_rs_expire(mono: u64) {
    let Some(g) = global() else { return };
    let timeout = g.timeout_ns.load(Ordering::Relaxed);
    g.lock().tracker().expire(mono, timeout);
}

// ---------------------------------------------------------------------------------------
// /proc/spantrack/{begin,end,control}
// ---------------------------------------------------------------------------------------

/// A write to `/proc/spantrack/begin` (`is_end == 0`) or `/end` by thread `tid`.
///
/// # Safety
/// `buf` points to `len` readable bytes (glue.c's kernel copy of the user's line) that stay
/// valid and unchanged for the call.
#[no_mangle]
unsafe extern "C" fn st_rs_span_write(
    is_end: c_int,
    tid: c_int,
    _tgid: c_int,
    buf: *const u8,
    len: usize,
) -> c_long {
    let Some(g) = global() else { return -(ENOENT as c_long) };
    if UNLOADING.load(Ordering::Acquire) {
        return -(EIO as c_long);
    }
    // SAFETY: the caller's contract: `buf` holds `len` readable bytes for the call.
    let line = unsafe { core::slice::from_raw_parts(buf, len) };
    let tid = tid as u32;
    if is_end == 0 {
        let mut l = g.lock();
        let (mono, real) = now();
        return match l.tracker().begin_line(tid, line, mono, real) {
            Ok(()) => 0,
            Err(e) => -(e as c_long),
        };
    }
    let threshold = g.threshold_ns.load(Ordering::Relaxed);
    let mut l = g.lock();
    // Stamped with the lock held: a call of the span's thread applied before this end
    // (another thread may end it) was stamped before it.
    let (mono, real) = now();
    let (t, out) = l.tracker_and_buf();
    match t.end_line(tid, line, mono, real, threshold, out) {
        Ok(EndOutcome::Fast) => 0,
        Ok(EndOutcome::Slow { len, tgid }) => {
            let written = match t.process_of(tgid).and_then(|i| g.channels.get(i.index())) {
                Some(ch) => {
                    let p = ch.load(Ordering::Acquire);
                    match NonNull::new(p) {
                        Some(p) => {
                            // SAFETY: the channel stays open while it is in `channels` and
                            // we hold the lock (closing takes it out under the lock first).
                            let ch = core::mem::ManuallyDrop::new(unsafe { RelayChannel::from_raw(p) });
                            out.get(..len).map_or(false, |r| len > 0 && ch.write(r).is_ok())
                        }
                        None => false,
                    }
                }
                None => false,
            };
            if written {
                t.note_record_written(tgid);
            } else {
                t.note_record_dropped(tgid);
            }
            drop(l);
            if written {
                // SAFETY: process context, no lock held.
                unsafe { fac::st_wake_readers() };
            }
            0
        }
        Err(e) => -(e as c_long),
    }
}

/// CLOCK_MONOTONIC and CLOCK_REALTIME now (read with the spinlock held by the callers).
fn now() -> (u64, u64) {
    let (mut mono, mut real) = (0u64, 0u64);
    // SAFETY: the C side writes both through valid pointers; callable with irqs off.
    unsafe { fac::st_clocks(&mut mono, &mut real) };
    (mono, real)
}

struct RegisterCtx<'t> {
    tracker: &'t mut Tracker<'static>,
    failed: bool,
}

/// Adds one thread of the registering process; nonzero stops the walk (table full).
unsafe extern "C" fn add_thread_cb(ctx: *mut c_void, tid: c_int, tgid: c_int) -> c_int {
    // SAFETY: `ctx` is the RegisterCtx passed by `register`, alive during the walk, whose
    // tracker reference is valid because `register` holds the spinlock around the walk.
    let ctx = unsafe { &mut *(ctx as *mut RegisterCtx<'_>) };
    let t = &mut *ctx.tracker;
    if !t.is_tracked(tid as u32) && t.add_thread(tgid as u32, tid as u32).is_err() {
        ctx.failed = true;
        return 1;
    }
    0
}

/// IOCTL_REGISTER for the calling process. Runs under `st_reg_lock`.
///
/// The channel is opened first (it sleeps); then, in one critical section of the spinlock,
/// the process is registered, its channel published and its live threads added. No exit
/// or new-thread probe can interleave with that section, so a thread that exits while the
/// process registers is either never added (already exiting) or removed by its exit probe
/// afterwards, and the process is never retired half-registered (when the exit of the only
/// thread added so far emptied it).
fn register(g: &Global, tgid: u32, uid: u32) -> core::result::Result<c_long, c_int> {
    // Close parked channels first (see `retire_process`).
    reap_parked(g);
    // Registration only happens here, under `st_reg_lock`: this answer holds below, and no
    // channel of this tgid (debugfs directory of the same name) is open or parked.
    if g.lock().tracker().process_of(tgid).is_some() {
        return Err(crate::tracker::EALREADY);
    }
    let per_uid = g.lock().tracker().max_procs_per_uid();
    // SAFETY: plain call; we hold `st_reg_lock`, as it requires.
    let may = unsafe { fac::st_chan_may_open(uid as c_uint, per_uid as c_uint) };
    if may < 0 {
        let user = -may == uapi::ERR_USER_LIMIT;
        g.lock().tracker().note_process_refused(user);
        return Err(if user { uapi::ERR_USER_LIMIT } else { uapi::ERR_TABLE_FULL });
    }
    let chan = RelayChannel::open(tgid as i32, uid).map_err(|_| ENOMEM)?;
    // SAFETY: plain capability query of the calling task, in process context.
    let kernel_addrs = unsafe { fac::st_may_see_kernel_addrs() } != 0;
    let mut l = g.lock();
    let idx = match l.tracker().register_process(tgid, uid) {
        Ok(i) => {
            l.tracker().set_kernel_addrs(tgid, kernel_addrs);
            i
        }
        Err(e) => {
            drop(l);
            drop(chan);
            return Err(e);
        }
    };
    let Some(slot) = g.channels.get(idx.index()) else {
        let _ = l.tracker().unregister_process(tgid);
        drop(l);
        drop(chan);
        return Err(ENOMEM);
    };
    slot.store(chan.into_raw(), Ordering::Release);
    let mut ctx = RegisterCtx { tracker: l.tracker(), failed: false };
    // SAFETY: the callback neither sleeps nor takes the lock (we hold it); ctx outlives
    // the call.
    unsafe {
        fac::st_for_each_thread_of_current(add_thread_cb, &mut ctx as *mut _ as *mut c_void)
    };
    if !ctx.failed {
        return Ok(0);
    }
    let _ = l.tracker().unregister_process(tgid);
    let p = slot.swap(null_mut(), Ordering::AcqRel);
    drop(l);
    if let Some(p) = NonNull::new(p) {
        // SAFETY: taken out of `channels` under the lock: no writer can use it any more.
        drop(unsafe { RelayChannel::from_raw(p) });
    }
    Err(uapi::ERR_TABLE_FULL)
}

/// IOCTL_UNREGISTER for the calling process. Runs under `st_reg_lock`.
fn unregister(g: &Global, tgid: u32) -> core::result::Result<c_long, c_int> {
    let chan = {
        let mut l = g.lock();
        let t = l.tracker();
        let idx = t.process_of(tgid).ok_or(ENOENT)?;
        t.unregister_process(tgid)?;
        g.channels.get(idx.index()).map_or(null_mut(), |c| c.swap(null_mut(), Ordering::AcqRel))
    };
    if let Some(p) = NonNull::new(chan) {
        // SAFETY: taken out of `channels` under the lock: no writer can use it any more.
        drop(unsafe { RelayChannel::from_raw(p) });
    }
    Ok(0)
}

/// IOCTL_RELAY_FDS for the calling process. Runs under `st_reg_lock`.
fn relay_fds(g: &Global, tgid: u32, arg: *mut c_void) -> core::result::Result<c_long, c_int> {
    let p = {
        let mut l = g.lock();
        let idx = l.tracker().process_of(tgid).ok_or(ENOENT)?;
        g.channels.get(idx.index()).map_or(null_mut(), |c| c.load(Ordering::Acquire))
    };
    let p = NonNull::new(p).ok_or(ENOENT)?;
    // SAFETY: a channel is closed only by UNREGISTER and the reap work, both under
    // `st_reg_lock`, which we hold, and at unload, after the proc entries (and so this
    // ioctl) are gone: it stays open while we use it. ManuallyDrop: we do not own it.
    let ch = core::mem::ManuallyDrop::new(unsafe { RelayChannel::from_raw(p) });
    match ch.give_fds(arg) {
        r if r < 0 => Err(-r),
        _ => Ok(0),
    }
}

/// An ioctl on `/proc/spantrack/control` by thread `tid` of process `tgid`, user `uid`.
///
/// # Safety
/// `out` points to `out_len` writable bytes owned by glue.c for the call (or `out_len` is
/// 0); `arg` is the user's untouched ioctl argument (only ever passed to user-copy helpers).
#[no_mangle]
unsafe extern "C" fn st_rs_ioctl(
    cmd: c_uint,
    tid: c_int,
    tgid: c_int,
    uid: c_uint,
    out: *mut c_void,
    out_len: usize,
    arg: *mut c_void,
) -> c_long {
    let Some(g) = global() else { return -(ENOENT as c_long) };
    if UNLOADING.load(Ordering::Acquire) {
        return -(ENOTTY as c_long);
    }
    let (tid, tgid) = (tid as u32, tgid as u32);
    let r = match cmd {
        uapi::IOCTL_REGISTER => {
            // SAFETY: mutex around registration; released below.
            unsafe { fac::st_reg_lock() };
            let r = register(g, tgid, uid as u32);
            // SAFETY: taken above.
            unsafe { fac::st_reg_unlock() };
            r
        }
        uapi::IOCTL_UNREGISTER => {
            // SAFETY: as above.
            unsafe { fac::st_reg_lock() };
            let r = unregister(g, tgid);
            // SAFETY: taken above.
            unsafe { fac::st_reg_unlock() };
            r
        }
        uapi::IOCTL_RELAY_FDS => {
            // SAFETY: as above.
            unsafe { fac::st_reg_lock() };
            let r = relay_fds(g, tgid, arg);
            // SAFETY: taken above.
            unsafe { fac::st_reg_unlock() };
            r
        }
        uapi::IOCTL_UNREGISTER_THREAD => {
            let mut l = g.lock();
            let t = l.tracker();
            if t.is_tracked(tid) {
                // The process stays registered even if this was its last tracked thread:
                // new threads are still tracked, and UNREGISTER ends it.
                t.remove_thread(tid);
                Ok(0)
            } else {
                Err(ENOENT)
            }
        }
        uapi::IOCTL_SET_ACTIVE_SLOT => {
            let addr = arg as u64;
            // Checked before the lock: a first touch of the page may fault (and sleep).
            // SAFETY: reads 8 bytes of the caller's own memory in process context.
            let readable = addr == 0 || addr % 8 != 0 || unsafe { fac::st_check_slot(addr) } == 0;
            let mut l = g.lock();
            let t = l.tracker();
            if readable {
                t.set_active_slot(tid, addr).map(|()| 0)
            } else if !t.is_tracked(tid) {
                Err(uapi::ERR_UNTRACKED)
            } else {
                t.exclude_call(tid);
                Err(EFAULT)
            }
        }
        uapi::IOCTL_INFO => {
            let mut info = uapi::Info {
                abi_version: uapi::ABI_VERSION,
                // SAFETY: plain queries.
                relay_files: unsafe { fac::st_possible_cpus() },
                subbuf_size: fac_subbuf_size() as u32,
                // SAFETY: plain query.
                n_subbufs: unsafe { fac::st_n_subbufs() } as u32,
                max_calls_limit: MAX_CALLS_LIMIT,
                ..Default::default()
            };
            if let Some(p) = g.lock().tracker().process_info(tgid) {
                info.registered = 1;
                info.records_written = p.records_written;
                info.records_dropped = p.records_dropped;
            }
            let n = core::mem::size_of::<uapi::Info>();
            if out_len < n {
                Err(ENOMEM)
            } else {
                // SAFETY: `out` has `out_len >= n` writable bytes (the caller's contract); Info is POD.
                unsafe { core::ptr::copy_nonoverlapping(&info as *const _ as *const u8, out as *mut u8, n) };
                Ok(n as c_long)
            }
        }
        _ => Err(ENOTTY),
    };
    fac::to_c(r)
}

/// Poll readiness of `/proc/spantrack/control` for the process `tgid`: 1 while its relay
/// buffers hold unread bytes. Derived from the buffers under the lock every write holds; no
/// state per file, so level-triggered epoll keeps reporting unread records and threads
/// polling one descriptor do not race.
#[no_mangle]
extern "C" fn st_rs_poll(tgid: c_int) -> c_int {
    let Some(g) = global() else { return 0 };
    let mut l = g.lock();
    let Some(idx) = l.tracker().process_of(tgid as u32) else { return 0 };
    let p = g.channels.get(idx.index()).map_or(null_mut(), |c| c.load(Ordering::Acquire));
    if p.is_null() {
        return 0;
    }
    // SAFETY: the channel stays open while it is in `channels` and we hold the lock
    // (closing takes it out under the lock first); `st_chan_unread` requires the lock.
    unsafe { fac::st_chan_unread(p) }
}

/// `/proc/spantrack/stats`: every counter as `name value` lines into `buf` (`len` bytes);
/// the text's length.
///
/// # Safety
/// `buf` points to `len` writable bytes that nothing else touches during the call.
#[no_mangle]
unsafe extern "C" fn st_rs_stats_show(buf: *mut c_char, len: usize) -> c_long {
    let Some(g) = global() else { return -(ENOENT as c_long) };
    // SAFETY: the caller's contract: `buf` holds `len` writable bytes for the call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, len) };
    // SAFETY: sums per-CPU counters.
    let fast = unsafe { fac::st_fast_uncharged_sum() };
    let (mut lazy, mut foreign, mut dropped, mut restores) = (0, 0, 0, 0);
    // SAFETY: four valid u64 destinations; reads gauges and sums per-CPU counters.
    unsafe { fac::st_trace_stats(&mut lazy, &mut foreign, &mut dropped, &mut restores) };
    let mut l = g.lock();
    let t = l.tracker();
    t.set_fast_uncharged(fast);
    t.set_syscall_trace(lazy, foreign, dropped, restores);
    t.format_stats(out) as c_long
}

// ---------------------------------------------------------------------------------------
// /sys/kernel/spantrack
// ---------------------------------------------------------------------------------------

const ATTR_THRESHOLD: c_int = 0;
const ATTR_TIMEOUT: c_int = 1;
const ATTR_MAX_CALLS: c_int = 2;
const ATTR_FILTER: c_int = 3;
const ATTR_MAX_PROCS_PER_UID: c_int = 4;
const ATTR_SCHED: c_int = 5;
const ATTR_SCHED_STACKS: c_int = 6;
const PAGE: usize = 4096;

/// A read of sysfs attribute `attr`.
///
/// # Safety
/// `buf` is the one-page (4096 bytes) buffer sysfs hands a `show` callback.
#[no_mangle]
unsafe extern "C" fn st_rs_sysfs_show(attr: c_int, buf: *mut c_char) -> c_long {
    let Some(g) = global() else { return -(ENOENT as c_long) };
    // SAFETY: the caller's contract: `buf` is sysfs's one-page buffer.
    let out = unsafe { core::slice::from_raw_parts_mut(buf as *mut u8, PAGE) };
    let n = match attr {
        ATTR_THRESHOLD | ATTR_TIMEOUT | ATTR_MAX_CALLS | ATTR_MAX_PROCS_PER_UID | ATTR_SCHED
        | ATTR_SCHED_STACKS => {
            let v = match attr {
                ATTR_THRESHOLD => g.threshold_ns.load(Ordering::Relaxed),
                ATTR_TIMEOUT => g.timeout_ns.load(Ordering::Relaxed),
                ATTR_MAX_CALLS => g.lock().tracker().max_calls() as u64,
                ATTR_SCHED => u64::from(g.lock().tracker().sched_on()),
                // SAFETY: plain read of a flag.
                ATTR_SCHED_STACKS => u64::from(unsafe { fac::st_stacks_get() } != 0),
                _ => g.lock().tracker().max_procs_per_uid() as u64,
            };
            let mut t = TextBuf::new(out);
            t.push_u64(v);
            t.push_str("\n");
            t.len()
        }
        ATTR_FILTER => {
            let f = *g.lock().tracker().filter();
            tunables::format_filter(&f, out)
        }
        _ => return -(EINVAL as c_long),
    };
    n as c_long
}

/// A write to sysfs attribute `attr`.
///
/// # Safety
/// `buf` points to `len` readable bytes (the buffer sysfs hands a `store` callback).
#[no_mangle]
unsafe extern "C" fn st_rs_sysfs_store(attr: c_int, buf: *const c_char, len: usize) -> c_long {
    let Some(g) = global() else { return -(ENOENT as c_long) };
    // SAFETY: the caller's contract: `buf` holds `len` readable bytes.
    let input = unsafe { core::slice::from_raw_parts(buf as *const u8, len) };
    let r: core::result::Result<(), i32> = match attr {
        ATTR_THRESHOLD => tunables::parse_u64(input, 0, tunables::MAX_THRESHOLD_NS)
            .map(|v| g.threshold_ns.store(v, Ordering::Relaxed)),
        ATTR_TIMEOUT => tunables::parse_u64(input, tunables::MIN_TIMEOUT_NS, tunables::MAX_TIMEOUT_NS)
            .map(|v| g.timeout_ns.store(v, Ordering::Relaxed)),
        ATTR_MAX_CALLS => tunables::parse_u64(input, 0, MAX_CALLS_LIMIT as u64)
            .and_then(|v| g.lock().tracker().set_max_calls(v as u32)),
        ATTR_MAX_PROCS_PER_UID => tunables::parse_u64(input, 1, u64::from(u32::MAX))
            .and_then(|v| g.lock().tracker().set_max_procs_per_uid(v as u32)),
        ATTR_FILTER => {
            let mut f = *g.lock().tracker().filter();
            tunables::parse_filter(input, &mut f).map(|()| g.lock().tracker().set_filter(f))
        }
        // SAFETY: st_sched_set sleeps; a sysfs store is sleeping context.
        ATTR_SCHED => tunables::parse_u64(input, 0, 1).and_then(|v| match unsafe { fac::st_sched_set(v as c_int) } {
            0 => Ok(()),
            e => Err(-e),
        }),
        // SAFETY: plain write of a flag.
        ATTR_SCHED_STACKS => tunables::parse_u64(input, 0, 1).map(|v| unsafe { fac::st_stacks_set(v as c_int) }),
        _ => Err(EINVAL),
    };
    match r {
        Ok(()) => 0,
        Err(e) => -(e as c_long),
    }
}
