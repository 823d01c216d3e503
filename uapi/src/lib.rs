//! spantrack's user/kernel ABI: the one place where paths, ioctl numbers, errnos and the
//! relay record layout are written down. Compiled into `spantrack.ko` (as a module of the
//! kernel crate, `#[path]`-included) and into user space (`libspanhook.so`, tests) as the
//! `spantrack-uapi` crate. Uses `core` only.
#![no_std]

/// Version of everything in this file. Bumped on any incompatible change.
pub const ABI_VERSION: u32 = 1;

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// Directory of the proc entries.
pub const PROC_DIR: &str = "/proc/spantrack";
/// Control file: `ioctl`s (registration, info) and `poll` (records ready for this process).
pub const PROC_CONTROL: &str = "/proc/spantrack/control";
/// Span begin: write one line `"<32 hex trace id> <16 hex span id>\n"`.
pub const PROC_BEGIN: &str = "/proc/spantrack/begin";
/// Span end: the same line as the begin.
pub const PROC_END: &str = "/proc/spantrack/end";
/// Tunables and counters.
pub const SYSFS_DIR: &str = "/sys/kernel/spantrack";
/// Relay buffers of process `tgid` live in `RELAY_DIR/<tgid>/cpu<N>`.
pub const RELAY_DIR: &str = "/sys/kernel/debug/spantrack";
/// Base name of the per-CPU relay files inside a process's relay directory.
pub const RELAY_FILE_BASE: &str = "cpu";

// ---------------------------------------------------------------------------------------
// ioctl (on PROC_CONTROL)
// ---------------------------------------------------------------------------------------

/// ioctl type byte (the `'S'`-style magic in `_IO(type, nr)`).
pub const IOCTL_TYPE: u32 = 0xF6;

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
/// Errors: `EALREADY` already registered, `ENOSPC` process or thread table full.
pub const IOCTL_REGISTER: u32 = io(0x91);
/// Stop tracking the calling thread only (the preload's own threads). Its open spans are
/// dropped. Errors: `ENOENT` the thread is not tracked.
pub const IOCTL_UNREGISTER_THREAD: u32 = io(0x92);
/// Stop tracking the whole calling process; its open spans are dropped and its relay
/// channel removed. Errors: `ENOENT` the process is not registered.
pub const IOCTL_UNREGISTER: u32 = io(0x93);
/// Fill an [`Info`] for the calling process. Works whether or not it is registered.
pub const IOCTL_INFO: u32 = ior(0x94, core::mem::size_of::<Info>());

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

/// The line is not `"<32 hex> <16 hex>"` with an optional `'\n'`, or an id is all zero.
pub const ERR_MALFORMED: i32 = 22; // EINVAL
/// The writing thread is not tracked (its process did not register).
pub const ERR_UNTRACKED: i32 = 1; // EPERM
/// Begin of a span that is already open.
pub const ERR_DUPLICATE: i32 = 17; // EEXIST
/// End of a span that is not open in the writer's process.
pub const ERR_UNKNOWN_SPAN: i32 = 2; // ENOENT
/// The span table is full: the span is not tracked (counted in `stats`).
pub const ERR_TABLE_FULL: i32 = 28; // ENOSPC
/// The thread already has `MAX_DEPTH` open spans (counted in `stats`).
pub const ERR_TOO_DEEP: i32 = 75; // EOVERFLOW

/// Longest accepted line, newline included.
pub const SPAN_LINE_MAX: usize = 32 + 1 + 16 + 1;
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
    /// Nesting depth at begin (0 = outermost open span of the thread).
    pub depth: u32,
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
}

/// One system call of a slow span.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallEntry {
    /// x86_64 system call number.
    pub nr: u32,
    /// Reserved, zero.
    pub flags: u32,
    /// Return value (negative errno on failure).
    pub ret: i64,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
}

pub const RECORD_HEADER_SIZE: usize = core::mem::size_of::<RecordHeader>();
pub const SYSCALL_ENTRY_SIZE: usize = core::mem::size_of::<SyscallEntry>();

// Layout is ABI: pinned here, checked again by tests on both sides.
const _: () = assert!(RECORD_HEADER_SIZE == 128);
const _: () = assert!(SYSCALL_ENTRY_SIZE == 32);
const _: () = assert!(core::mem::size_of::<Info>() == 40);
