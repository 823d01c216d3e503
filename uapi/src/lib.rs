//! spantrack's user/kernel ABI: the one place where paths, ioctl numbers, errnos and the
//! relay record layout are written down. Compiled into `spantrack.ko` (as a module of the
//! kernel crate, `#[path]`-included) and into user space (`libspanhook.so`, tests) as the
//! `spantrack-uapi` crate. Uses `core` only.
#![no_std]

/// Version of everything in this file. Bumped on any incompatible change (4: a begin line
/// may carry the span's own threshold; 5: records carry the scheduler part, [`SchedPart`]).
pub const ABI_VERSION: u32 = 5;

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// Directory of the proc entries.
pub const PROC_DIR: &str = "/proc/spantrack";
/// Control file: `ioctl`s (registration, info) and `poll` (records ready for this process).
pub const PROC_CONTROL: &str = "/proc/spantrack/control";
/// Span begin: write one line `"<32 hex trace id> <16 hex span id>\n"`, or (ABI 4)
/// `"<32 hex trace id> <16 hex span id> <threshold ns>\n"`: the span's own threshold, 1 to
/// 13 decimal digits, at most [`BEGIN_THRESHOLD_MAX_NS`]; the span is reported when it lasts
/// at least that long, whatever the sysfs `threshold_ns` (which applies to spans begun
/// without one).
pub const PROC_BEGIN: &str = "/proc/spantrack/begin";
/// Span end: the same line as the begin.
pub const PROC_END: &str = "/proc/spantrack/end";
/// Counters, one `name value` line each (read-only, readable by all). Names are stable:
/// new counters may be added, none is renamed or removed within an ABI version.
pub const PROC_STATS: &str = "/proc/spantrack/stats";
/// Tunables (one value per file).
pub const SYSFS_DIR: &str = "/sys/kernel/spantrack";
/// Relay buffers of process `tgid` live in `RELAY_DIR/<tgid>/cpu<N>`.
pub const RELAY_DIR: &str = "/sys/kernel/debug/spantrack";
/// Base name of the per-CPU relay files inside a process's relay directory.
pub const RELAY_FILE_BASE: &str = "cpu";

// ---------------------------------------------------------------------------------------
// ioctl (on PROC_CONTROL)
// ---------------------------------------------------------------------------------------

/// ioctl type byte (the `'S'`-style magic in `_IO(type, nr)`): 0xB9, free in the kernel's
/// `Documentation/userspace-api/ioctl/ioctl-number.rst` (6.12). ABI versions 1 and 2 used
/// 0xF6, which is LTTng's.
pub const IOCTL_TYPE: u32 = 0xB9;
/// The ioctl type of ABI versions 1 and 2 (LTTng's 0xF6). Used only by
/// [`IOCTL_INFO_ABI2`].
pub const IOCTL_TYPE_ABI2: u32 = 0xF6;

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_READ: u32 = 2;

const fn io(nr: u32) -> u32 {
    (IOCTL_TYPE << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)
}
const fn ior(nr: u32, size: usize) -> u32 {
    (IOC_READ << IOC_DIRSHIFT) | ((size as u32) << IOC_SIZESHIFT) | io(nr)
}

/// Track every thread of the calling process, existing and future; create its relay channel.
/// Errors: `EALREADY` already registered, `ENOSPC` process or thread table full, or 64
/// closed relay channels are still held by descriptors (see [`IOCTL_RELAY_FDS`]).
pub const IOCTL_REGISTER: u32 = io(0x91);
/// Stop tracking the calling thread only (the preload's own threads). Its open spans are
/// dropped. Errors: `ENOENT` the thread is not tracked.
pub const IOCTL_UNREGISTER_THREAD: u32 = io(0x92);
/// Stop tracking the whole calling process; its open spans are dropped and its relay
/// channel removed. Errors: `ENOENT` the process is not registered.
pub const IOCTL_UNREGISTER: u32 = io(0x93);
/// Fill an [`Info`] for the calling process. Works whether or not it is registered.
pub const IOCTL_INFO: u32 = ior(0x94, core::mem::size_of::<Info>());
/// `IOCTL_INFO` as a module of ABI version 1 or 2 numbers it (type [`IOCTL_TYPE_ABI2`],
/// same [`Info`]). A module of this version answers it with `ENOTTY`; user space asks it
/// only after `IOCTL_INFO` got `ENOTTY`, to say which ABI the loaded module speaks.
pub const IOCTL_INFO_ABI2: u32 =
    (IOC_READ << IOC_DIRSHIFT) | ((core::mem::size_of::<Info>() as u32) << IOC_SIZESHIFT) | (IOCTL_TYPE_ABI2 << IOC_TYPESHIFT) | 0x94;

/// Register (or, with address 0, clear) the calling thread's *active-span slot*: an aligned
/// [`ActiveSlot`] in the thread's own memory, passed as the ioctl argument (its address).
/// From then on the thread's system calls go to the span whose id the slot holds when the
/// call is made (0: no span is active, the call is charged to none), instead of the
/// innermost span begun on the thread. The runtime writes the slot at every switch (a task
/// resumed or suspended, a context attached or detached): one store, no system call. The
/// module reads it at system-call entry without faulting; an unreadable slot (paged out)
/// counts in `PROC_STATS` (`slot_faults`) and the call is charged to no span. Spans the thread
/// had begun before are kept open, no longer on its stack: with a slot, spans belong to
/// the process and can be active on any of its threads, in any number (no depth limit).
/// A new thread starts without a slot; `exec` clears it. The ioctl call itself is never
/// recorded. Errors: `EPERM` the thread is not tracked, `EINVAL` address not 8-aligned,
/// `EFAULT` not readable.
pub const IOCTL_SET_ACTIVE_SLOT: u32 = io(0x96);

/// The per-thread active-span slot of [`IOCTL_SET_ACTIVE_SLOT`].
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActiveSlot {
    /// The active span's id as an integer: the number whose big-endian bytes are the W3C
    /// span id (OpenTelemetry's `int` in Python, `u64::from_be_bytes` in Rust); 0 when no
    /// span is active. An id the module does not know (an unsampled span, a remote parent)
    /// charges the call to no span.
    pub span_id: u64,
}

/// The slot value of span id bytes `id` (see [`ActiveSlot::span_id`]).
#[inline]
pub const fn slot_value(id: &[u8; 8]) -> u64 {
    u64::from_be_bytes(*id)
}

/// Hand the calling process already-open, read-only descriptors (`O_CLOEXEC`, not seekable)
/// for its own per-CPU relay buffers, filling a [`RelayFds`]. This is how a process reads
/// its records without access to debugfs (root-only): it needs no privilege, and no other
/// process can obtain them (only through the descriptors themselves, e.g. `SCM_RIGHTS` or
/// `pidfd_getfd`, which needs ptrace rights over the process). Each descriptor reads, polls
/// and `mmap`s (read-only) like the debugfs file `RELAY_DIR/<tgid>/cpu<N>` and keeps its
/// buffer alive until closed: after UNREGISTER, the process's exit or the module's unload
/// it still reads the records written before. Each call returns new descriptors; close
/// them when done (an `exec` closes them): while 64 closed channels are still held by
/// descriptors, REGISTER fails with `ENOSPC` (kernel memory pinned that way is bounded). Errors: `ENOENT` the process is not registered,
/// `E2BIG` more than [`RELAY_FDS_MAX`] CPUs, `EMFILE` out of descriptors, `EFAULT`.
pub const IOCTL_RELAY_FDS: u32 = ior(0x95, core::mem::size_of::<RelayFds>());

/// Most CPUs [`IOCTL_RELAY_FDS`] serves.
pub const RELAY_FDS_MAX: usize = 64;

/// Answer of [`IOCTL_RELAY_FDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayFds {
    /// Entries of `fds` that are meaningful: CPU ids `0 .. count` (possible CPUs).
    pub count: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// `fds[cpu]`: descriptor of CPU `cpu`'s buffer, or -1 (no buffer for that CPU).
    pub fds: [i32; RELAY_FDS_MAX],
}

impl Default for RelayFds {
    fn default() -> Self {
        RelayFds { count: 0, flags: 0, fds: [-1; RELAY_FDS_MAX] }
    }
}

/// Answer of [`IOCTL_INFO`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Info {
    /// [`ABI_VERSION`] of the loaded module.
    pub abi_version: u32,
    /// 1 when the calling process is registered.
    pub registered: u32,
    /// Number of per-CPU relay files (`cpu0` .. `cpu{n-1}`, possible CPUs).
    pub relay_files: u32,
    /// Size of one relay sub-buffer; no record is larger.
    pub subbuf_size: u32,
    /// Number of sub-buffers per CPU.
    pub n_subbufs: u32,
    /// Maximum itemised calls per span the module can be set to.
    pub max_calls_limit: u32,
    /// Records of this process written to relay so far.
    pub records_written: u64,
    /// Records of this process dropped because its relay buffer was full.
    pub records_dropped: u64,
}

// ---------------------------------------------------------------------------------------
// Errors returned by writes to PROC_BEGIN / PROC_END (positive errno values).
// ---------------------------------------------------------------------------------------

/// The line is not `"<32 hex> <16 hex>"` (for a begin: optionally followed by `" <decimal
/// threshold ns>"`) with an optional `'\n'`, or an id is all zero.
pub const ERR_MALFORMED: i32 = 22; // EINVAL
/// The writing thread is not tracked (its process did not register).
pub const ERR_UNTRACKED: i32 = 1; // EPERM
/// Begin of a span that is already open.
pub const ERR_DUPLICATE: i32 = 17; // EEXIST
/// End of a span that is not open in the writer's process.
pub const ERR_UNKNOWN_SPAN: i32 = 2; // ENOENT
/// The span table is full: the span is not tracked (counted in `PROC_STATS`).
pub const ERR_TABLE_FULL: i32 = 28; // ENOSPC
/// The thread already has `MAX_DEPTH` open spans (counted in `PROC_STATS`).
pub const ERR_TOO_DEEP: i32 = 75; // EOVERFLOW
/// `IOCTL_REGISTER`: the calling user (not root) already has `max_procs_per_uid`
/// (sysfs) processes registered (counted as `processes_refused_uid` in `PROC_STATS`).
pub const ERR_USER_LIMIT: i32 = 122; // EDQUOT

/// A begin line's threshold is out of range (above [`BEGIN_THRESHOLD_MAX_NS`]).
pub const ERR_THRESHOLD_RANGE: i32 = 34; // ERANGE

/// Largest threshold a begin line may carry (1 hour, the sysfs `threshold_ns` maximum).
pub const BEGIN_THRESHOLD_MAX_NS: u64 = 3_600_000_000_000;
/// Longest accepted line, newline included: a begin line with a 13-digit threshold.
pub const SPAN_LINE_MAX: usize = 32 + 1 + 16 + 1 + 13 + 1;
/// Open spans one thread can nest.
pub const MAX_DEPTH: usize = 16;

// ---------------------------------------------------------------------------------------
// Relay records
// ---------------------------------------------------------------------------------------

/// `RecordHeader::magic`: "SPTR" little-endian.
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"SPTR");

/// `RecordHeader::flags`: some calls were not itemised (per-span limit reached).
pub const REC_CALLS_TRUNCATED: u32 = 1 << 0;
/// `RecordHeader::flags`: some calls were not itemised because the entry pool was empty.
pub const REC_POOL_EXHAUSTED: u32 = 1 << 1;
/// `RecordHeader::flags`: the span was ended from a thread other than the one that began it.
pub const REC_ENDED_ELSEWHERE: u32 = 1 << 2;
/// `RecordHeader::flags`: calls came from more threads than the module tells apart
/// ([`MAX_SPAN_THREADS`]); `n_threads` is then a lower bound.
pub const REC_MANY_THREADS: u32 = 1 << 3;
/// `RecordHeader::flags`: the span was begun by a thread with an active-span slot (its
/// calls are charged by activation, see [`IOCTL_SET_ACTIVE_SLOT`]).
pub const REC_ACTIVATION: u32 = 1 << 4;

/// `RecordHeader::flags`: scheduler accounting was on for the whole span: `sched` holds
/// its figures (otherwise `sched` is all zero).
pub const REC_SCHED: u32 = 1 << 5;
/// `RecordHeader::flags`: scheduler accounting was switched on or off while the span was
/// open: `sched` covers only part of it.
pub const REC_SCHED_PARTIAL: u32 = 1 << 6;
/// `RecordHeader::flags`: scheduler events of the span were lost (`sched.lost_events`).
pub const REC_SCHED_LOST: u32 = 1 << 7;

/// `h` with the scheduler-part flags (`REC_SCHED*`) cleared: for readers that check only a
/// record's system calls.
pub fn without_sched_flags(mut h: RecordHeader) -> RecordHeader {
    h.flags &= !(REC_SCHED | REC_SCHED_PARTIAL | REC_SCHED_LOST);
    h
}

/// Distinct threads a span's record counts exactly (`n_threads`).
pub const MAX_SPAN_THREADS: usize = 8;

/// One slow span. Followed by `n_entries` [`SyscallEntry`]s; `total_size` covers both.
/// All times in nanoseconds; `*_mono_ns` are CLOCK_MONOTONIC, `*_real_ns` CLOCK_REALTIME
/// read at the same instant as the matching monotonic stamp.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    pub magic: u32,
    pub version: u16,
    /// `size_of::<RecordHeader>()` of the writer.
    pub header_size: u16,
    /// Header plus entries, in bytes.
    pub total_size: u32,
    /// Itemised calls following the header.
    pub n_entries: u32,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Thread that began the span.
    pub tid: u32,
    pub tgid: u32,
    pub begin_mono_ns: u64,
    pub end_mono_ns: u64,
    pub begin_real_ns: u64,
    pub end_real_ns: u64,
    /// Nesting depth at begin (0 = outermost open span of the thread; 0 for a span begun
    /// by a thread with an active-span slot).
    pub depth: u16,
    /// Threads whose calls were charged to the span (0 if none; see [`REC_MANY_THREADS`]).
    pub n_threads: u16,
    /// `REC_*` bits.
    pub flags: u32,
    /// All system calls attributed to the span, itemised or not (filtered-out calls excluded).
    pub total_calls: u64,
    /// Nanoseconds spent in all of them.
    pub total_call_ns: u64,
    /// Calls counted but not itemised.
    pub unitemised_calls: u64,
    /// Nanoseconds spent in the calls that were not itemised.
    pub unitemised_ns: u64,
    /// Records of this process dropped (relay buffer full) before this one was written.
    pub records_dropped_before: u64,
    /// Where the span's wall time went on the scheduler's side (valid with [`REC_SCHED`]).
    pub sched: SchedPart,
}

/// Blocked-time causes: index into [`SchedPart::blocked_ns`], [`WaitEntry::cause`].
/// Uninterruptible sleep with `in_iowait` (fsync, a page fault on a file).
pub const CAUSE_IO: u8 = 0;
/// A futex wait.
pub const CAUSE_LOCK: u8 = 1;
/// A socket call, poll/epoll/select, or a wake-up by the NET_RX/NET_TX softirq.
pub const CAUSE_NET: u8 = 2;
/// The nanosleep family, or a wake-up by a timer.
pub const CAUSE_TIMER: u8 = 3;
/// The rest (including uninterruptible sleep without `in_iowait`).
pub const CAUSE_OTHER: u8 = 4;
/// Number of causes.
pub const N_CAUSES: usize = 5;
/// `WaitEntry::cause` of a wait that was a preemption (runnable throughout).
pub const CAUSE_PREEMPTED: u8 = 5;

/// [`WaitEntry::waker_ctx`]: woken from task context (`waker_*` is that task).
pub const CTX_TASK: u8 = 0;
/// Woken from a hard interrupt (`waker_*` is whoever was interrupted: not the cause).
pub const CTX_HARDIRQ: u8 = 1;
/// Woken from a softirq ([`WaitEntry::softirq`] says which); `waker_*` is the task the
/// softirq ran in (on loopback, the sender's `local_bh_enable`).
pub const CTX_SOFTIRQ: u8 = 2;
/// Woken from an NMI.
pub const CTX_NMI: u8 = 3;
/// Woken by a timer callback (hrtimer or timer wheel, hard or soft interrupt).
pub const CTX_TIMER: u8 = 4;
/// Not woken: the wait was a preemption, or its wake-up was not seen.
pub const CTX_NONE: u8 = 255;
/// [`WaitEntry::softirq`] when not a softirq.
pub const SOFTIRQ_NONE: u8 = 255;
/// [`WaitEntry::nr`], [`WaitEntry::waker_nr`]: not in a system call.
pub const NO_CALL: u32 = u32::MAX;
/// [`WaitEntry::flags`]: the waker was inside a tracked span (`waker_trace_id`,
/// `waker_span_id`).
pub const WAIT_WAKER_IN_SPAN: u8 = 1 << 0;
/// [`WaitEntry::flags`]: the waker was a kernel thread.
pub const WAIT_WAKER_KTHREAD: u8 = 1 << 1;

/// The longest waits a record keeps, with their wakers.
pub const MAX_WAITS: usize = 4;
/// Kernel return addresses kept per wait (innermost first; the scheduler's own frames
/// included, for user space to drop).
pub const KSTACK_DEPTH: usize = 16;
/// User return addresses kept per wait (innermost first: the user IP of the system call,
/// then the frame-pointer chain).
pub const USTACK_DEPTH: usize = 12;

/// One of a span's longest off-CPU stretches: from switch-out to switch-in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitEntry {
    /// Switch-out (CLOCK_MONOTONIC).
    pub start_mono_ns: u64,
    /// Switch-out to wake-up (0 for a preemption).
    pub blocked_ns: u64,
    /// Wake-up (or preemption) to switch-in: waiting for a CPU.
    pub runq_ns: u64,
    /// How long the waker had been on its CPU when it woke this thread.
    pub waker_on_cpu_ns: u64,
    /// The span the waker was running ([`WAIT_WAKER_IN_SPAN`]).
    pub waker_trace_id: [u8; 16],
    pub waker_span_id: [u8; 8],
    /// The waker's command name (NUL-padded).
    pub waker_comm: [u8; 16],
    /// The thread that waited.
    pub tid: u32,
    /// The system call it blocked in ([`NO_CALL`]: none).
    pub nr: u32,
    /// The waker's thread and process ids (0: none, e.g. a hard interrupt).
    pub waker_tid: u32,
    pub waker_tgid: u32,
    /// The system call the waker was in ([`NO_CALL`]: none).
    pub waker_nr: u32,
    /// `CAUSE_*`.
    pub cause: u8,
    /// `CTX_*`.
    pub waker_ctx: u8,
    /// The softirq vector with [`CTX_SOFTIRQ`] (`NET_RX` = 3, ...), else [`SOFTIRQ_NONE`].
    pub softirq: u8,
    /// `WAIT_*` bits.
    pub flags: u8,
    /// The kernel stack at the switch-out (`stack_trace_save`): `kstack[..n_kstack]`.
    pub kstack: [u64; KSTACK_DEPTH],
    /// The user stack of the blocking call: `ustack[..n_ustack]` (see [`USTACK_DEPTH`];
    /// deeper than the first frame only where the code keeps frame pointers).
    pub ustack: [u64; USTACK_DEPTH],
    pub n_kstack: u8,
    pub n_ustack: u8,
    pub _pad: [u8; 6],
}

/// The scheduler's view of a span: the parts of its wall time and its longest waits.
/// Time is charged to the span while it is the thread's active span (see the rule of
/// attribution); the time it was open but not active (a child span or another task ran,
/// or its task was suspended) is the duration minus the parts.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedPart {
    /// Running on a CPU.
    pub on_cpu_ns: u64,
    /// Runnable after a wake-up, waiting for a CPU.
    pub runq_wakeup_ns: u64,
    /// Runnable after a preemption (or a yield), waiting for a CPU.
    pub runq_preempt_ns: u64,
    /// Blocked, by `CAUSE_*`.
    pub blocked_ns: [u64; N_CAUSES],
    /// Times the span's thread blocked, was preempted, and came back on another CPU.
    pub blocks: u32,
    pub preemptions: u32,
    pub migrations: u32,
    /// Wake-ups seen (wake-up latency: `wakeup_total_ns`, `wakeup_max_ns`).
    pub wakeups: u32,
    pub wakeup_total_ns: u64,
    pub wakeup_max_ns: u64,
    /// Valid entries of `waits`, longest first.
    pub n_waits: u32,
    /// Wake-ups not seen: blocked stretches that ended without a `sched_waking` (counted
    /// as blocked throughout, no waker); [`REC_SCHED_LOST`].
    pub lost_events: u32,
    pub waits: [WaitEntry; MAX_WAITS],
}

/// The record's fixed part: [`RecordHeader`] with its [`SchedPart`].
pub const SCHED_PART_SIZE: usize = core::mem::size_of::<SchedPart>();
/// One [`WaitEntry`].
pub const WAIT_ENTRY_SIZE: usize = core::mem::size_of::<WaitEntry>();

/// One system call of a slow span.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallEntry {
    /// x86_64 system call number.
    pub nr: u32,
    /// Thread that made the call.
    pub tid: u32,
    /// Return value (negative errno on failure).
    pub ret: i64,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
}

pub const RECORD_HEADER_SIZE: usize = core::mem::size_of::<RecordHeader>();
pub const SYSCALL_ENTRY_SIZE: usize = core::mem::size_of::<SyscallEntry>();

// Layout is ABI: pinned here, checked again by tests on both sides.
const _: () = assert!(RECORD_HEADER_SIZE == 128 + SCHED_PART_SIZE);
const _: () = assert!(SCHED_PART_SIZE == 104 + MAX_WAITS * WAIT_ENTRY_SIZE);
const _: () = assert!(WAIT_ENTRY_SIZE == 96 + 8 * (KSTACK_DEPTH + USTACK_DEPTH) + 8);
const _: () = assert!(SYSCALL_ENTRY_SIZE == 32);
const _: () = assert!(core::mem::size_of::<Info>() == 40);
const _: () = assert!(core::mem::size_of::<ActiveSlot>() == 8);
const _: () = assert!(core::mem::size_of::<RelayFds>() == 8 + 4 * RELAY_FDS_MAX);

// ---------------------------------------------------------------------------------------
// Record decoding (user space)
// ---------------------------------------------------------------------------------------

/// Why [`decode_record`] refused a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer holds only the start of a record: read at least `needed` bytes in all and
    /// decode again. Not an error for a stream reader.
    Incomplete {
        /// Bytes the record needs (known once the size fields are in).
        needed: usize,
    },
    /// `magic` is not [`RECORD_MAGIC`] (not a record, or the stream lost sync).
    BadMagic(u32),
    /// `version` is not [`ABI_VERSION`].
    BadVersion(u16),
    /// `header_size` is not [`RECORD_HEADER_SIZE`].
    BadHeaderSize(u16),
    /// `total_size` disagrees with `header_size + n_entries * SYSCALL_ENTRY_SIZE`.
    BadTotalSize {
        /// The header's `total_size`.
        total_size: u32,
        /// The header's `n_entries`.
        n_entries: u32,
    },
}

/// `N` bytes at `off`; the callers check the length first, a short buffer reads as zeros.
fn le_array<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    off.checked_add(N)
        .and_then(|end| b.get(off..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}
fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(le_array(b, off))
}
fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(le_array(b, off))
}
fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(le_array(b, off))
}

impl RecordHeader {
    /// Reads a header from the first [`RECORD_HEADER_SIZE`] bytes of `b` (no validation);
    /// `None` if `b` is shorter.
    pub fn from_bytes(b: &[u8]) -> Option<RecordHeader> {
        use core::mem::offset_of;
        if b.len() < RECORD_HEADER_SIZE {
            return None;
        }
        Some(RecordHeader {
            magic: le_u32(b, offset_of!(RecordHeader, magic)),
            version: le_u16(b, offset_of!(RecordHeader, version)),
            header_size: le_u16(b, offset_of!(RecordHeader, header_size)),
            total_size: le_u32(b, offset_of!(RecordHeader, total_size)),
            n_entries: le_u32(b, offset_of!(RecordHeader, n_entries)),
            trace_id: le_array(b, offset_of!(RecordHeader, trace_id)),
            span_id: le_array(b, offset_of!(RecordHeader, span_id)),
            tid: le_u32(b, offset_of!(RecordHeader, tid)),
            tgid: le_u32(b, offset_of!(RecordHeader, tgid)),
            begin_mono_ns: le_u64(b, offset_of!(RecordHeader, begin_mono_ns)),
            end_mono_ns: le_u64(b, offset_of!(RecordHeader, end_mono_ns)),
            begin_real_ns: le_u64(b, offset_of!(RecordHeader, begin_real_ns)),
            end_real_ns: le_u64(b, offset_of!(RecordHeader, end_real_ns)),
            depth: le_u16(b, offset_of!(RecordHeader, depth)),
            n_threads: le_u16(b, offset_of!(RecordHeader, n_threads)),
            flags: le_u32(b, offset_of!(RecordHeader, flags)),
            total_calls: le_u64(b, offset_of!(RecordHeader, total_calls)),
            total_call_ns: le_u64(b, offset_of!(RecordHeader, total_call_ns)),
            unitemised_calls: le_u64(b, offset_of!(RecordHeader, unitemised_calls)),
            unitemised_ns: le_u64(b, offset_of!(RecordHeader, unitemised_ns)),
            records_dropped_before: le_u64(b, offset_of!(RecordHeader, records_dropped_before)),
            sched: SchedPart::from_bytes(b.get(offset_of!(RecordHeader, sched)..).unwrap_or(&[])),
        })
    }
}

impl SchedPart {
    /// Reads a scheduler part from the first [`SCHED_PART_SIZE`] bytes of `b` (a short
    /// buffer reads as zeros). Only the first `n_waits` waits are read; the others are
    /// zero, as the module writes them.
    pub fn from_bytes(b: &[u8]) -> SchedPart {
        use core::mem::offset_of;
        let mut blocked_ns = [0u64; N_CAUSES];
        for (i, v) in blocked_ns.iter_mut().enumerate() {
            *v = le_u64(b, offset_of!(SchedPart, blocked_ns) + 8 * i);
        }
        // Only the kept waits (the module writes zeros after them): most records keep none.
        let n_waits = le_u32(b, offset_of!(SchedPart, n_waits));
        let kept = usize::try_from(n_waits).unwrap_or(MAX_WAITS).min(MAX_WAITS);
        let mut waits = [WaitEntry::default(); MAX_WAITS];
        for (i, w) in waits.iter_mut().enumerate().take(kept) {
            *w = WaitEntry::from_bytes(b.get(offset_of!(SchedPart, waits) + WAIT_ENTRY_SIZE * i..).unwrap_or(&[]));
        }
        SchedPart {
            on_cpu_ns: le_u64(b, offset_of!(SchedPart, on_cpu_ns)),
            runq_wakeup_ns: le_u64(b, offset_of!(SchedPart, runq_wakeup_ns)),
            runq_preempt_ns: le_u64(b, offset_of!(SchedPart, runq_preempt_ns)),
            blocked_ns,
            blocks: le_u32(b, offset_of!(SchedPart, blocks)),
            preemptions: le_u32(b, offset_of!(SchedPart, preemptions)),
            migrations: le_u32(b, offset_of!(SchedPart, migrations)),
            wakeups: le_u32(b, offset_of!(SchedPart, wakeups)),
            wakeup_total_ns: le_u64(b, offset_of!(SchedPart, wakeup_total_ns)),
            wakeup_max_ns: le_u64(b, offset_of!(SchedPart, wakeup_max_ns)),
            n_waits,
            lost_events: le_u32(b, offset_of!(SchedPart, lost_events)),
            waits,
        }
    }
}

impl WaitEntry {
    /// Reads a wait from the first [`WAIT_ENTRY_SIZE`] bytes of `b` (short: zeros).
    pub fn from_bytes(b: &[u8]) -> WaitEntry {
        use core::mem::offset_of;
        WaitEntry {
            start_mono_ns: le_u64(b, offset_of!(WaitEntry, start_mono_ns)),
            blocked_ns: le_u64(b, offset_of!(WaitEntry, blocked_ns)),
            runq_ns: le_u64(b, offset_of!(WaitEntry, runq_ns)),
            waker_on_cpu_ns: le_u64(b, offset_of!(WaitEntry, waker_on_cpu_ns)),
            waker_trace_id: le_array(b, offset_of!(WaitEntry, waker_trace_id)),
            waker_span_id: le_array(b, offset_of!(WaitEntry, waker_span_id)),
            waker_comm: le_array(b, offset_of!(WaitEntry, waker_comm)),
            tid: le_u32(b, offset_of!(WaitEntry, tid)),
            nr: le_u32(b, offset_of!(WaitEntry, nr)),
            waker_tid: le_u32(b, offset_of!(WaitEntry, waker_tid)),
            waker_tgid: le_u32(b, offset_of!(WaitEntry, waker_tgid)),
            waker_nr: le_u32(b, offset_of!(WaitEntry, waker_nr)),
            cause: le_array::<1>(b, offset_of!(WaitEntry, cause))[0],
            waker_ctx: le_array::<1>(b, offset_of!(WaitEntry, waker_ctx))[0],
            softirq: le_array::<1>(b, offset_of!(WaitEntry, softirq))[0],
            flags: le_array::<1>(b, offset_of!(WaitEntry, flags))[0],
            kstack: core::array::from_fn(|i| le_u64(b, offset_of!(WaitEntry, kstack) + 8 * i)),
            ustack: core::array::from_fn(|i| le_u64(b, offset_of!(WaitEntry, ustack) + 8 * i)),
            n_kstack: le_array::<1>(b, offset_of!(WaitEntry, n_kstack))[0],
            n_ustack: le_array::<1>(b, offset_of!(WaitEntry, n_ustack))[0],
            _pad: [0; 6],
        }
    }
}

impl SyscallEntry {
    /// Reads an entry from the first [`SYSCALL_ENTRY_SIZE`] bytes of `b`; `None` if shorter.
    pub fn from_bytes(b: &[u8]) -> Option<SyscallEntry> {
        use core::mem::offset_of;
        if b.len() < SYSCALL_ENTRY_SIZE {
            return None;
        }
        Some(SyscallEntry {
            nr: le_u32(b, offset_of!(SyscallEntry, nr)),
            tid: le_u32(b, offset_of!(SyscallEntry, tid)),
            ret: le_u64(b, offset_of!(SyscallEntry, ret)) as i64,
            start_mono_ns: le_u64(b, offset_of!(SyscallEntry, start_mono_ns)),
            end_mono_ns: le_u64(b, offset_of!(SyscallEntry, end_mono_ns)),
        })
    }
}

/// The itemised calls of a decoded record, in the order they ended.
#[derive(Clone, Debug)]
pub struct EntriesIter<'a> {
    rest: &'a [u8],
}

impl<'a> EntriesIter<'a> {
    /// The raw bytes of the entries not yet returned.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.rest
    }
}

impl Iterator for EntriesIter<'_> {
    type Item = SyscallEntry;

    fn next(&mut self) -> Option<SyscallEntry> {
        let e = SyscallEntry::from_bytes(self.rest)?;
        self.rest = self.rest.get(SYSCALL_ENTRY_SIZE..).unwrap_or(&[]);
        Some(e)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len() / SYSCALL_ENTRY_SIZE;
        (n, Some(n))
    }
}

impl ExactSizeIterator for EntriesIter<'_> {}

/// Decodes the record at the start of `buf` (a relay stream): its header, its entries and
/// the number of bytes it occupies (`total_size`; the next record starts there).
///
/// Validates magic, version, header size and `total_size == header_size + n_entries * 32`.
/// A buffer that ends inside the record gives [`DecodeError::Incomplete`] (checked after
/// what can be checked from the bytes at hand, so garbage is reported as soon as visible).
pub fn decode_record(buf: &[u8]) -> Result<(RecordHeader, EntriesIter<'_>, usize), DecodeError> {
    use core::mem::offset_of;
    // The fixed fields that say how long the record is.
    let sizes_end = offset_of!(RecordHeader, n_entries) + 4;
    if buf.len() >= 4 {
        let magic = le_u32(buf, offset_of!(RecordHeader, magic));
        if magic != RECORD_MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
    }
    if buf.len() < sizes_end {
        return Err(DecodeError::Incomplete {
            needed: RECORD_HEADER_SIZE,
        });
    }
    let version = le_u16(buf, offset_of!(RecordHeader, version));
    if u32::from(version) != ABI_VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let header_size = le_u16(buf, offset_of!(RecordHeader, header_size));
    if usize::from(header_size) != RECORD_HEADER_SIZE {
        return Err(DecodeError::BadHeaderSize(header_size));
    }
    let total_size = le_u32(buf, offset_of!(RecordHeader, total_size));
    let n_entries = le_u32(buf, offset_of!(RecordHeader, n_entries));
    let expected = u64::from(n_entries)
        .checked_mul(SYSCALL_ENTRY_SIZE as u64)
        .and_then(|e| e.checked_add(RECORD_HEADER_SIZE as u64));
    if expected != Some(u64::from(total_size)) {
        return Err(DecodeError::BadTotalSize {
            total_size,
            n_entries,
        });
    }
    let total = total_size as usize;
    let incomplete = DecodeError::Incomplete { needed: total };
    let record = buf.get(..total).ok_or(incomplete)?;
    let header = RecordHeader::from_bytes(record).ok_or(incomplete)?;
    let entries = EntriesIter {
        rest: record.get(RECORD_HEADER_SIZE..).unwrap_or(&[]),
    };
    Ok((header, entries, total))
}

#[cfg(test)]
mod tests {
    /// The ioctl type is not LTTng's 0xF6 (issue 13); INFO of ABI 1-2 keeps 0xF6 and the
    /// same number, so a library can name an older module's version.
    #[test]
    fn ioctl_type_is_not_lttngs() {
        assert_eq!(ABI_VERSION, 5);
        assert_eq!(SPAN_LINE_MAX, 64); // glue.c's ST_LINE_BUF
        for cmd in [IOCTL_REGISTER, IOCTL_UNREGISTER_THREAD, IOCTL_UNREGISTER, IOCTL_INFO, IOCTL_RELAY_FDS, IOCTL_SET_ACTIVE_SLOT] {
            assert_eq!((cmd >> 8) & 0xff, 0xB9, "{cmd:#x}");
        }
        assert_eq!(IOCTL_INFO_ABI2, (IOCTL_INFO & !0xff00) | (0xF6 << 8));
    }

    extern crate std;
    use super::*;
    use core::mem::{align_of, offset_of};

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(RECORD_HEADER_SIZE, 1544);
        assert_eq!(WAIT_ENTRY_SIZE, 328);
        assert_eq!(offset_of!(WaitEntry, kstack), 96);
        assert_eq!(offset_of!(WaitEntry, ustack), 224);
        assert_eq!(offset_of!(WaitEntry, n_kstack), 320);
        assert_eq!(offset_of!(WaitEntry, n_ustack), 321);
        assert_eq!(offset_of!(RecordHeader, sched), 128);
        assert_eq!(offset_of!(SchedPart, blocked_ns), 24);
        assert_eq!(offset_of!(SchedPart, blocks), 64);
        assert_eq!(offset_of!(SchedPart, wakeup_total_ns), 80);
        assert_eq!(offset_of!(SchedPart, n_waits), 96);
        assert_eq!(offset_of!(SchedPart, waits), 104);
        assert_eq!(offset_of!(WaitEntry, waker_trace_id), 32);
        assert_eq!(offset_of!(WaitEntry, waker_comm), 56);
        assert_eq!(offset_of!(WaitEntry, tid), 72);
        assert_eq!(offset_of!(WaitEntry, cause), 92);
        assert_eq!(offset_of!(WaitEntry, flags), 95);
        assert_eq!(SYSCALL_ENTRY_SIZE, 32);
        assert_eq!(align_of::<RecordHeader>(), 8);
        assert_eq!(offset_of!(RecordHeader, trace_id), 16);
        assert_eq!(offset_of!(RecordHeader, span_id), 32);
        assert_eq!(offset_of!(RecordHeader, tid), 40);
        assert_eq!(offset_of!(RecordHeader, begin_mono_ns), 48);
        assert_eq!(offset_of!(RecordHeader, depth), 80);
        assert_eq!(offset_of!(RecordHeader, n_threads), 82);
        assert_eq!(offset_of!(RecordHeader, flags), 84);
        assert_eq!(offset_of!(SyscallEntry, tid), 4);
        assert_eq!(slot_value(&[0, 0, 0, 0, 0, 0, 1, 2]), 0x102);
        assert_eq!(offset_of!(RecordHeader, total_calls), 88);
        assert_eq!(offset_of!(RecordHeader, records_dropped_before), 120);
        assert_eq!(offset_of!(SyscallEntry, ret), 8);
        assert_eq!(offset_of!(SyscallEntry, end_mono_ns), 24);
        assert_eq!(RECORD_MAGIC.to_le_bytes(), *b"SPTR");
    }

    fn header_bytes(n_entries: u32) -> std::vec::Vec<u8> {
        let mut b = std::vec![0u8; RECORD_HEADER_SIZE + n_entries as usize * SYSCALL_ENTRY_SIZE];
        b[0..4].copy_from_slice(b"SPTR");
        b[4..6].copy_from_slice(&(ABI_VERSION as u16).to_le_bytes());
        b[6..8].copy_from_slice(&(RECORD_HEADER_SIZE as u16).to_le_bytes());
        let total = b.len() as u32;
        b[8..12].copy_from_slice(&total.to_le_bytes());
        b[12..16].copy_from_slice(&n_entries.to_le_bytes());
        b
    }

    #[test]
    fn decode_validates() {
        let mut b = header_bytes(2);
        const H: usize = RECORD_HEADER_SIZE;
        b[H..H + 4].copy_from_slice(&7u32.to_le_bytes());
        b[H + 8..H + 16].copy_from_slice(&(-11i64).to_le_bytes());
        b[H + 32..H + 36].copy_from_slice(&9u32.to_le_bytes());
        let (h, it, used) = decode_record(&b).unwrap();
        assert_eq!(
            (h.n_entries, h.total_size as usize, used),
            (2, b.len(), b.len())
        );
        let e: std::vec::Vec<_> = it.collect();
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].nr, e[0].ret, e[1].nr), (7, -11, 9));
        // Trailing bytes belong to the next record.
        let mut longer = b.clone();
        longer.extend_from_slice(b"SPTR");
        assert_eq!(decode_record(&longer).unwrap().2, b.len());
        for cut in 0..b.len() {
            assert!(
                matches!(
                    decode_record(&b[..cut]),
                    Err(DecodeError::Incomplete { .. })
                ),
                "cut {cut}"
            );
        }
        assert_eq!(
            decode_record(&b[..100]).map(|_| ()),
            Err(DecodeError::Incomplete { needed: RECORD_HEADER_SIZE + 2 * SYSCALL_ENTRY_SIZE })
        );
        assert_eq!(
            decode_record(&b[..10]).map(|_| ()),
            Err(DecodeError::Incomplete { needed: RECORD_HEADER_SIZE })
        );
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(matches!(decode_record(&bad), Err(DecodeError::BadMagic(_))));
        assert!(matches!(
            decode_record(&bad[..5]),
            Err(DecodeError::BadMagic(_))
        ));
        let mut bad = b.clone();
        bad[4] = 9;
        assert_eq!(
            decode_record(&bad).map(|_| ()),
            Err(DecodeError::BadVersion(9))
        );
        let mut bad = b.clone();
        bad[6..8].copy_from_slice(&64u16.to_le_bytes());
        assert_eq!(
            decode_record(&bad).map(|_| ()),
            Err(DecodeError::BadHeaderSize(64))
        );
        let mut bad = b.clone();
        bad[12] = 3;
        assert!(matches!(
            decode_record(&bad),
            Err(DecodeError::BadTotalSize { .. })
        ));
        let mut bad = b.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_record(&bad),
            Err(DecodeError::BadTotalSize { .. })
        ));
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        // A cheap deterministic fuzz (xorshift): random bytes, and valid prefixes with noise.
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let len = (rnd() % 300) as usize;
            let mut b: std::vec::Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| rnd() as u8).collect()
            } else {
                let mut h = header_bytes((rnd() % 6) as u32);
                h.truncate(len.min(h.len()));
                h
            };
            if !b.is_empty() && i % 3 == 0 {
                let p = (rnd() as usize) % b.len();
                b[p] = rnd() as u8;
            }
            if let Ok((h, it, used)) = decode_record(&b) {
                assert_eq!(used, h.total_size as usize);
                assert!(used <= b.len());
                assert_eq!(it.len(), h.n_entries as usize);
            }
        }
    }
}
