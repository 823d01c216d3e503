//! Kernel facilities reached through `glue.c` (procfs, sysfs, debugfs, relay, tracepoints,
//! timers, vmalloc), each owned by one type whose `Drop` undoes the registration, so that no
//! error path can leak a probe, an entry or a channel.

use core::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use core::ptr::NonNull;
use kernel::prelude::*;

extern "C" {
    pub(crate) fn st_lock_irqsave() -> c_ulong;
    /// Reads the current task's active-span slot at user address `addr` without faulting
    /// (atomic context); 0 or `-EFAULT`.
    pub(crate) fn st_read_slot(addr: u64, val: *mut u64) -> c_int;
    /// Process context: 0 if the 8 bytes at user address `addr` are readable, else `-EFAULT`.
    pub(crate) fn st_check_slot(addr: u64) -> c_int;
    pub(crate) fn st_unlock_irqrestore(flags: c_ulong);
    pub(crate) fn st_clocks(mono: *mut u64, real: *mut u64);
    pub(crate) fn st_reg_lock();
    pub(crate) fn st_reg_unlock();
    fn st_vzalloc(size: usize) -> *mut c_void;
    fn st_vfree(p: *mut c_void);
    pub(crate) fn st_possible_cpus() -> c_uint;
    fn st_set_bitmaps(
        tracked: *mut c_ulong,
        active: *mut c_ulong,
        active_slot: *mut c_ulong,
        skip: *mut c_ulong,
        registered: *mut c_ulong,
        hints: *mut c_void,
        n_hints: c_ulong,
        nbits: c_ulong,
    );
    /// Calls the `sys_enter` probe charged to no span on its own (sum over CPUs).
    pub(crate) fn st_fast_uncharged_sum() -> u64;
    pub(crate) fn st_trace_need(tid: c_int);
    pub(crate) fn st_trace_stats(lazy: *mut u64, foreign: *mut u64, dropped: *mut u64, restores: *mut u64);
    fn st_tracepoints_register() -> c_int;
    fn st_tracepoints_unregister();
    /// Scheduler accounting on (1) or off (0): (un)registers its probes. Sleeps.
    pub(crate) fn st_sched_set(on: c_int) -> c_int;
    /// Whether blocking switches take their kernel and user stacks (sysfs sched_stacks).
    pub(crate) fn st_stacks_get() -> c_int;
    pub(crate) fn st_stacks_set(on: c_int);
    /// Process context: 1 if the calling task may read kernel addresses (CAP_SYSLOG).
    pub(crate) fn st_may_see_kernel_addrs() -> c_int;
    pub(crate) fn st_for_each_thread_of_current(
        cb: unsafe extern "C" fn(ctx: *mut c_void, tid: c_int, tgid: c_int) -> c_int,
        ctx: *mut c_void,
    );
    pub(crate) fn st_subbuf_size() -> usize;
    pub(crate) fn st_n_subbufs() -> usize;
    pub(crate) fn st_chan_may_open(uid: c_uint, per_uid: c_uint) -> c_int;
    fn st_chan_open(tgid: c_int, uid: c_uint) -> *mut c_void;
    fn st_chan_close(chan: *mut c_void);
    fn st_chan_write(chan: *mut c_void, data: *const c_void, len: usize) -> c_int;
    fn st_chan_give_fds(chan: *mut c_void, arg: *mut c_void) -> c_int;
    /// With `st_lock` held: 1 if a buffer of the live channel `chan` holds unread bytes.
    pub(crate) fn st_chan_unread(chan: *mut c_void) -> c_int;
    fn st_debugfs_create() -> c_int;
    fn st_debugfs_remove();
    pub(crate) fn st_wake_readers();
    fn st_proc_create() -> c_int;
    fn st_proc_remove();
    fn st_sysfs_create() -> c_int;
    fn st_sysfs_remove();
    fn st_timer_start();
    fn st_timer_stop();
    pub(crate) fn st_schedule_reap();
    fn st_flush_reap();
}

fn check(ret: c_int) -> Result {
    if ret < 0 {
        Err(Error::from_errno(ret))
    } else {
        Ok(())
    }
}

/// A zero-filled `vmalloc` array of `T`, freed on drop.
///
/// # Invariants
/// `ptr` points to `len` initialised `T`s allocated by `st_vzalloc`, owned by this value.
pub(crate) struct VSlice<T> {
    ptr: NonNull<T>,
    len: usize,
}

impl<T> VSlice<T> {
    /// Allocates `len` elements, all bytes zero.
    ///
    /// # Safety
    /// The all-zero bit pattern must be a valid `T` (plain integers, atomics, arrays of them).
    pub(crate) unsafe fn zeroed(len: usize) -> Result<Self> {
        let bytes = len.checked_mul(core::mem::size_of::<T>()).ok_or(ENOMEM)?;
        // SAFETY: st_vzalloc is vzalloc(): returns NULL or `bytes` zeroed, page-aligned bytes.
        let p = unsafe { st_vzalloc(bytes.max(1)) } as *mut T;
        let ptr = NonNull::new(p).ok_or(ENOMEM)?;
        // INVARIANT: zeroed memory is a valid `[T; len]` by the caller's guarantee.
        Ok(Self { ptr, len })
    }

    /// The elements, for the lifetime of the whole module state (see `state.rs`, which
    /// keeps the `VSlice` alive longer than every user of the slice).
    ///
    /// # Safety
    /// The caller must not let the returned slice outlive `self`, nor create two of them.
    pub(crate) unsafe fn leak_mut<'a>(&mut self) -> &'a mut [T] {
        // SAFETY: by the type invariant; aliasing and lifetime are the caller's duty.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn byte_len(&self) -> usize {
        self.len.saturating_mul(core::mem::size_of::<T>())
    }
}

impl<T> Drop for VSlice<T> {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the memory came from st_vzalloc and is freed once.
        unsafe { st_vfree(self.ptr.as_ptr() as *mut c_void) };
    }
}

// SAFETY: a VSlice is a uniquely owned heap allocation; access is synchronised by its users.
unsafe impl<T: Send> Send for VSlice<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for VSlice<T> {}

/// The bitmaps of tracked threads and of threads with an open span, handed to the C probes
/// for their one-bit tests.
pub(crate) struct TrackedBitmaps;

impl TrackedBitmaps {
    /// # Safety
    /// The five bitmaps must point to `nbits / 64` words, `hints` to `n_hints` slot hints
    /// (`tracker::SlotHint`), all valid until this value is dropped.
    pub(crate) unsafe fn publish(
        tracked: *mut u64,
        active: *mut u64,
        active_slot: *mut u64,
        skip: *mut u64,
        registered: *mut u64,
        hints: *mut c_void,
        n_hints: usize,
        nbits: usize,
    ) -> Self {
        // SAFETY: by the caller's guarantee; u64 and unsigned long are the same on x86_64,
        // and SlotHint is two u64s, as glue.c's struct st_slot_hint.
        unsafe {
            st_set_bitmaps(
                tracked as *mut c_ulong,
                active as *mut c_ulong,
                active_slot as *mut c_ulong,
                skip as *mut c_ulong,
                registered as *mut c_ulong,
                hints,
                n_hints as c_ulong,
                nbits as c_ulong,
            )
        };
        Self
    }
}

impl Drop for TrackedBitmaps {
    fn drop(&mut self) {
        // SAFETY: withdraws the pointers; probes are unregistered before this drops.
        unsafe {
            st_set_bitmaps(
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                core::ptr::null_mut(),
                0,
                0,
            )
        };
    }
}

/// `sys_enter`, `sys_exit`, `sched_process_exit` and `task_newtask` probes.
pub(crate) struct Tracepoints;

impl Tracepoints {
    pub(crate) fn register() -> Result<Self> {
        // SAFETY: registers the probes in glue.c; on failure it has undone what it did.
        check(unsafe { st_tracepoints_register() })?;
        Ok(Self)
    }
}

impl Drop for Tracepoints {
    fn drop(&mut self) {
        // SAFETY: unregisters and waits until no probe is running any more.
        unsafe { st_tracepoints_unregister() };
    }
}

/// `/proc/spantrack/{control,begin,end}`.
pub(crate) struct ProcEntries;

impl ProcEntries {
    pub(crate) fn create() -> Result<Self> {
        // SAFETY: creates the entries; on failure nothing is left behind.
        check(unsafe { st_proc_create() })?;
        Ok(Self)
    }
}

impl Drop for ProcEntries {
    fn drop(&mut self) {
        // SAFETY: removes the entries and waits for handlers still running.
        unsafe { st_proc_remove() };
    }
}

/// `/sys/kernel/spantrack/`.
pub(crate) struct SysfsDir;

impl SysfsDir {
    pub(crate) fn create() -> Result<Self> {
        // SAFETY: creates the kobject and its attributes; on failure nothing is left.
        check(unsafe { st_sysfs_create() })?;
        Ok(Self)
    }
}

impl Drop for SysfsDir {
    fn drop(&mut self) {
        // SAFETY: removes the kobject; kernfs drains handlers still running.
        unsafe { st_sysfs_remove() };
    }
}

/// `/sys/kernel/debug/spantrack/`, parent of the relay channels' directories.
pub(crate) struct DebugfsRoot;

impl DebugfsRoot {
    pub(crate) fn create() -> Result<Self> {
        // SAFETY: creates the directory.
        check(unsafe { st_debugfs_create() })?;
        Ok(Self)
    }
}

impl Drop for DebugfsRoot {
    fn drop(&mut self) {
        // SAFETY: every channel below it has been closed (RelayChannel drops first).
        unsafe { st_debugfs_remove() };
    }
}

/// The timer that expires spans that never end.
pub(crate) struct ExpiryTimer;

impl ExpiryTimer {
    pub(crate) fn start() -> Self {
        // SAFETY: sets up and arms the timer in glue.c.
        unsafe { st_timer_start() };
        Self
    }
}

impl Drop for ExpiryTimer {
    fn drop(&mut self) {
        // SAFETY: shuts the timer down and waits for a running callback.
        unsafe { st_timer_stop() };
    }
}

/// Waits for the deferred channel-closing work on drop.
pub(crate) struct ReapWork;

impl Drop for ReapWork {
    fn drop(&mut self) {
        // SAFETY: flushes the work item; nothing schedules it once probes are gone.
        unsafe { st_flush_reap() };
    }
}

/// One process's relay channel: `/sys/kernel/debug/spantrack/<tgid>/cpu<N>`.
///
/// # Invariants
/// `0` is a live channel from `st_chan_open`, closed exactly once (on drop).
pub(crate) struct RelayChannel(NonNull<c_void>);

impl RelayChannel {
    /// Creates the channel of process `tgid`, registered by user `uid` (charged to it while
    /// descriptors hold its buffers after it closes). Sleeps: not from probe context.
    pub(crate) fn open(tgid: i32, uid: u32) -> Result<Self> {
        // SAFETY: plain call; returns NULL on failure.
        let p = unsafe { st_chan_open(tgid, uid as c_uint) };
        NonNull::new(p).map(Self).ok_or(ENOMEM)
    }

    /// Writes one whole record to this CPU's buffer; `Err` when it was dropped (full).
    pub(crate) fn write(&self, record: &[u8]) -> core::result::Result<(), ()> {
        // SAFETY: the channel is live (invariant); `record` is valid for its length.
        let r = unsafe { st_chan_write(self.0.as_ptr(), record.as_ptr() as *const c_void, record.len()) };
        if r == 0 { Ok(()) } else { Err(()) }
    }

    /// `IOCTL_RELAY_FDS`: installs read-only descriptors of this channel's buffers in the
    /// calling process and writes a `uapi::RelayFds` to the user address `arg`. Sleeps.
    /// 0 or a negative errno.
    pub(crate) fn give_fds(&self, arg: *mut c_void) -> c_int {
        // SAFETY: the channel is live (invariant); `arg` is a user pointer, which the C side
        // only reaches through copy_to_user.
        unsafe { st_chan_give_fds(self.0.as_ptr(), arg) }
    }

    /// Gives up ownership (to park the channel in an atomic slot).
    pub(crate) fn into_raw(self) -> *mut c_void {
        let p = self.0.as_ptr();
        core::mem::forget(self);
        p
    }

    /// # Safety
    /// `p` must come from `into_raw` and be reclaimed once.
    pub(crate) unsafe fn from_raw(p: NonNull<c_void>) -> Self {
        Self(p)
    }
}

impl Drop for RelayChannel {
    fn drop(&mut self) {
        // SAFETY: live channel closed once (invariant); we are in sleeping context: the
        // callers are the ioctl handler, the reap work and module unload.
        unsafe { st_chan_close(self.0.as_ptr()) };
    }
}

/// Converts a kernel `Result` to the negative errno C expects.
pub(crate) fn to_c(r: core::result::Result<c_long, c_int>) -> c_long {
    match r {
        Ok(v) => v,
        Err(e) => -(e as c_long),
    }
}
