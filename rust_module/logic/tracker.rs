//! The span tracker: registered processes and their threads, each thread's stack of open
//! spans, the system calls attributed to the innermost open span, and the slow-span record
//! produced at span end. It is the whole state machine of `spantrack.ko`; the kernel glue
//! only feeds it events (ioctls, `/proc` writes, tracepoints, a timer) and ships records.
//!
//! Memory comes from the caller as slices ([`Storage`], or one [`DefaultStorage`] block),
//! allocated once and zero-filled; nothing here allocates, locks or panics. The caller
//! serialises every `&mut self` method with one irq-safe lock. The one lock-free query,
//! "is this thread tracked?", goes through [`TrackedSet`], a bitmap of atomics indexed by
//! tid that the tracker keeps in sync with its thread table.
//!
//! Errors are positive errno values (the kernel glue negates them).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::hot::{HotPath, HotThread, HOT_HINTS};

use crate::key::SpanKey;
use crate::record::{self, MAX_CALLS_LIMIT};
use crate::sched::{self, OffCpu, Waker};
use crate::syscalls::SyscallFilter;
use crate::table::{HashTable, IndexPool, TableKey, TableSlot};
use crate::tunables::TextBuf;
use crate::uapi::{
    self, RecordHeader, SchedPart, SyscallEntry, MAX_DEPTH, MAX_SPAN_THREADS, NO_CALL,
    RECORD_HEADER_SIZE, SYSCALL_ENTRY_SIZE,
};

/// `ENOENT`: the process is not registered.
pub const ENOENT: i32 = 2;
/// `ENOSPC`: a table is full (counted in [`Stats`]).
pub const ENOSPC: i32 = 28;
/// `ERANGE`: a tid beyond the tracked-thread bitmap, or a tunable out of range.
pub const ERANGE: i32 = 34;
/// `EALREADY`: the process is already registered.
pub const EALREADY: i32 = 114;
/// `EINVAL`: a misaligned active-span slot.
pub const EINVAL: i32 = 22;
/// `EDQUOT`: the registering user already has `max_procs_per_uid` processes registered.
pub const EDQUOT: i32 = 122;
/// The uid exempt from `max_procs_per_uid`: root may use the whole process table.
pub const ROOT_UID: u32 = 0;
/// Default `max_procs_per_uid`: a quarter of the default 64-process table, so that one user
/// can never take the table (or more than 16 relay buffers) from the others.
pub const DEFAULT_MAX_PROCS_PER_UID: u32 = 16;

/// "No slot" in the `u32` links.
pub const NIL: u32 = u32::MAX;
/// System call entries per chunk of the entry pool.
pub const CHUNK_ENTRIES: usize = 32;
/// Default of the per-span limit of itemised calls.
pub const DEFAULT_MAX_CALLS: u32 = 256;

/// Registered processes (the capacities the kernel module uses, see [`DefaultStorage`]).
pub const DEFAULT_PROCESSES: usize = 64;
/// Tracked threads, all processes together.
pub const DEFAULT_THREADS: usize = 4096;
/// Open spans, all processes together.
pub const DEFAULT_SPANS: usize = 4096;
/// Chunks of `CHUNK_ENTRIES` itemised calls, shared by all open spans.
pub const DEFAULT_CHUNKS: usize = 8192;
/// `PID_MAX_LIMIT` on 64-bit: tids are below it.
pub const PID_MAX_LIMIT: usize = 4 * 1024 * 1024;
/// Words of the tracked-thread bitmap covering every possible tid.
pub const TRACKED_WORDS: usize = PID_MAX_LIMIT / 64;
/// Entries of the slot-address table the probes read without the lock ([`SlotHint`]).
pub const SLOT_HINTS: usize = 4096;
/// Threads one merge of [`Tracker::fold_slotted`] takes at a time (a stack array).
pub const FOLD_BATCH: usize = 32;

/// Where thread `tid`'s active-span slot is, for the `sys_enter` probe to read it without
/// taking the tracker's lock (entry `tid % SLOT_HINTS`; `tid` 0: empty). Written only by the
/// tracker, under its lock: `tid` is cleared first and set last, so a reader that sees the
/// same `tid` before and after reading `addr` has that thread's address. A thread missing
/// from it (a collision) takes the locked path: the table only makes calls cheaper.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SlotHint {
    /// The thread, or 0.
    pub tid: AtomicU64,
    /// Its slot's user address.
    pub addr: AtomicU64,
}

/// `SpanSlot::open`: open.
const OPEN: u32 = 1;
/// `SpanSlot::open`: open, and in the activation index.
const OPEN_INDEXED: u32 = 3;

#[inline]
fn bump(c: &mut u64) {
    *c = c.wrapping_add(1);
}

/// Adds `tid` to the threads that made calls of span `s`.
#[inline(always)]
fn note_thread(s: &mut SpanSlot, tid: u32) {
    let n = s.n_threads as usize;
    if s.tids.get(..n.min(MAX_SPAN_THREADS)).is_some_and(|k| k.contains(&tid)) {
        return;
    }
    match s.tids.get_mut(n) {
        Some(x) => {
            *x = tid;
            s.n_threads = s.n_threads.wrapping_add(1);
        }
        None => s.flags |= uapi::REC_MANY_THREADS,
    }
}

#[inline]
fn slot_mut<T>(s: &mut [T], i: u32) -> Option<&mut T> {
    s.get_mut(i as usize)
}

// ---------------------------------------------------------------------------------------
// Storage
// ---------------------------------------------------------------------------------------

/// A registered process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessSlot {
    /// Non-zero while registered.
    in_use: u32,
    tgid: u32,
    /// The registering thread's uid (in the initial user namespace).
    uid: u32,
    n_threads: u32,
    /// Head of the list of its threads (thread slot indices linked by `next`).
    first_thread: u32,
    /// Its open spans (stacked or not).
    open_spans: u32,
    /// Its threads with an active-span slot. While there are any, its open spans are in
    /// the activation index (a process without them pays nothing for it).
    slot_threads: u32,
    /// Non-zero: its records may carry kernel addresses (the waits' kernel stacks): the
    /// registering thread could read kernel addresses itself (CAP_SYSLOG).
    kernel_addrs: u32,
    records_written: u64,
    records_dropped: u64,
}

impl ProcessSlot {
    /// A free slot (what [`Tracker::new`] writes; all-zero storage is equally valid).
    pub const EMPTY: Self = ProcessSlot {
        in_use: 0,
        tgid: 0,
        uid: 0,
        n_threads: 0,
        first_thread: NIL,
        open_spans: 0,
        slot_threads: 0,
        kernel_addrs: 0,
        records_written: 0,
        records_dropped: 0,
    };
}

/// A tracked thread: its stack of open spans and the system call it is in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSlot {
    tid: u32,
    /// Index of its process slot.
    proc: u32,
    /// Neighbours in the process's thread list.
    prev: u32,
    next: u32,
    /// Open spans: `stack[..depth]`, innermost last (span slot indices).
    depth: u32,
    stack: [u32; MAX_DEPTH],
    /// User address of the thread's active-span slot (`uapi::ActiveSlot`); 0: none, calls
    /// go to the innermost span of `stack`.
    slot_addr: u64,
    /// The slot value last resolved, and its span (`NIL`: not an open span): the probes
    /// look the span up again only when the value changes (a switch).
    slot_value: u64,
    slot_span: u32,
    /// `Tracker::begins` when `slot_span` was found `NIL` (a later begin may open it).
    slot_gen: u32,
}

/// A tracked thread's scheduler accounting (kept apart from [`ThreadSlot`], which the
/// system-call path reads: its cache lines stay few): the last on-CPU checkpoint (0: not
/// known to be on a CPU since one), and the pending off-CPU stretch with the span it goes to
/// (`off_span`, whose span id's slot value is `off_span_v`) and the call it blocked in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadSched {
    run_since: u64,
    off_span: u32,
    off_nr: u32,
    off_span_v: u64,
    off: OffCpu,
}

impl ThreadSched {
    /// Nothing pending (all-zero storage is equally valid: `off.since` 0).
    pub const EMPTY: Self = ThreadSched {
        run_since: 0,
        off_span: NIL,
        off_nr: NO_CALL,
        off_span_v: 0,
        off: OffCpu::NONE,
    };
}

impl ThreadSlot {
    /// A free slot (what [`Tracker::new`] writes; all-zero storage is equally valid).
    pub const EMPTY: Self = ThreadSlot {
        tid: 0,
        proc: NIL,
        prev: NIL,
        next: NIL,
        depth: 0,
        stack: [NIL; MAX_DEPTH],
        slot_addr: 0,
        slot_value: 0,
        slot_span: NIL,
        slot_gen: 0,
    };
}

/// An open span.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanSlot {
    key: SpanKey,
    /// Process slot, and the slot of the thread on whose stack it is (`NIL`: owned by the
    /// process, begun by a thread with an active-span slot).
    proc: u32,
    thread: u32,
    tid: u32,
    /// Depth at begin (0 = outermost).
    depth: u32,
    /// `uapi::REC_*` bits gathered so far.
    flags: u32,
    /// Non-zero while open.
    open: u32,
    /// Itemised calls, stored in `ceil(n_entries / CHUNK_ENTRIES)` chunks from `first_chunk`.
    n_entries: u32,
    first_chunk: u32,
    last_chunk: u32,
    /// Distinct threads whose calls were charged to it: `tids[..min(n_threads, 8)]`.
    n_threads: u32,
    tids: [u32; MAX_SPAN_THREADS],
    begin_mono_ns: u64,
    begin_real_ns: u64,
    total_calls: u64,
    total_call_ns: u64,
    unitemised_calls: u64,
    unitemised_ns: u64,
    /// The span's own threshold from its begin line; [`DEFAULT_THRESHOLD`]: the one
    /// [`Tracker::end`] is given (the sysfs `threshold_ns`).
    threshold_ns: u64,
    /// [`Tracker::sched_epoch`] at begin, and whether accounting was on then. (The figures
    /// charged so far are in the tracker's `span_sched`, at the same index.)
    sched_epoch: u32,
    sched_at_begin: u32,
}

/// `SpanSlot::threshold_ns` of a span begun without a threshold.
pub const DEFAULT_THRESHOLD: u64 = u64::MAX;

impl SpanSlot {
    /// A free slot (what [`Tracker::new`] writes; all-zero storage is equally valid).
    pub const EMPTY: Self = SpanSlot {
        key: SpanKey::EMPTY,
        proc: NIL,
        thread: NIL,
        tid: 0,
        depth: 0,
        flags: 0,
        open: 0,
        n_entries: 0,
        first_chunk: NIL,
        last_chunk: NIL,
        n_threads: 0,
        tids: [0; MAX_SPAN_THREADS],
        begin_mono_ns: 0,
        begin_real_ns: 0,
        total_calls: 0,
        total_call_ns: 0,
        unitemised_calls: 0,
        unitemised_ns: 0,
        threshold_ns: DEFAULT_THRESHOLD,
        sched_epoch: 0,
        sched_at_begin: 0,
    };
}

/// A span part with nothing charged.
const EMPTY_SCHED: SchedPart = SchedPart {
    on_cpu_ns: 0,
    runq_wakeup_ns: 0,
    runq_preempt_ns: 0,
    blocked_ns: [0; uapi::N_CAUSES],
    blocks: 0,
    preemptions: 0,
    migrations: 0,
    wakeups: 0,
    wakeup_total_ns: 0,
    wakeup_max_ns: 0,
    n_waits: 0,
    lost_events: 0,
    waits: [sched::UNUSED_WAIT; uapi::MAX_WAITS],
};

/// A chunk of itemised system calls of one span; chunks of a span are linked by `next`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryChunk {
    next: u32,
    _pad: u32,
    entries: [SyscallEntry; CHUNK_ENTRIES],
}

const EMPTY_ENTRY: SyscallEntry = SyscallEntry {
    nr: 0,
    tid: 0,
    ret: 0,
    start_mono_ns: 0,
    end_mono_ns: 0,
};

impl EntryChunk {
    /// A free slot (what [`Tracker::new`] writes; all-zero storage is equally valid).
    pub const EMPTY: Self = EntryChunk {
        next: NIL,
        _pad: 0,
        entries: [EMPTY_ENTRY; CHUNK_ENTRIES],
    };
}

/// Key of the open-span table: the span's ids and its process. Two processes may have a
/// span with the same ids open at once (Zipkin B3 "shared span" propagation gives a client
/// and a server span the same ids); a process can only see and end its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OpenSpanKey {
    /// The span's ids.
    pub key: SpanKey,
    /// Process slot index.
    pub proc: u32,
}

impl TableKey for OpenSpanKey {
    const ZERO: Self = OpenSpanKey {
        key: SpanKey::EMPTY,
        proc: 0,
    };
    #[inline]
    fn table_hash(&self, seed: u64) -> u32 {
        self.key
            .hash_seeded(seed ^ u64::from(self.proc).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

/// Key of the activation index: an open span's id as an active-span slot holds it
/// ([`uapi::slot_value`]) and its process. Unique within a process: a begin whose span id is
/// open in the process under another trace id is refused as a duplicate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActiveKey {
    /// The span id as a slot holds it.
    pub span_id: u64,
    /// Process slot index.
    pub proc: u32,
    /// Zero.
    pub pad: u32,
}

impl ActiveKey {
    fn of(key: &SpanKey, proc: u32) -> Self {
        ActiveKey {
            span_id: uapi::slot_value(&key.span_id),
            proc,
            pad: 0,
        }
    }
}

impl TableKey for ActiveKey {
    const ZERO: Self = ActiveKey {
        span_id: 0,
        proc: 0,
        pad: 0,
    };
    #[inline]
    fn table_hash(&self, seed: u64) -> u32 {
        // splitmix64's finaliser over id, process and seed.
        let mut x = self.span_id ^ seed ^ u64::from(self.proc).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (x ^ (x >> 32)) as u32
    }
}

/// The memory of a [`Tracker`], supplied by the caller. Every element type is valid as
/// all-zero bytes; [`Tracker::new`] initialises all of it. Capacities are the slice lengths:
/// - `threads` and `thread_free` (same length), `thread_index` about 2x that, a power of two
///   (the tables accept up to 7/8 of their buckets);
/// - `spans` and `span_free`, `span_index` likewise;
/// - `chunks` and `chunk_free`;
/// - `tracked`: bit `tid` of the bitmap, `TRACKED_WORDS` words for every possible tid.
pub struct Storage<'a> {
    /// Process slots.
    pub processes: &'a mut [ProcessSlot],
    /// Thread slots.
    pub threads: &'a mut [ThreadSlot],
    /// Free list of thread slots (same length as `threads`).
    pub thread_free: &'a mut [u32],
    /// Hash table tid -> thread slot (about 2x `threads`, a power of two).
    pub thread_index: &'a mut [TableSlot<u32>],
    /// Span slots.
    pub spans: &'a mut [SpanSlot],
    /// Free list of span slots (same length as `spans`).
    pub span_free: &'a mut [u32],
    /// Hash table (ids, process) -> span slot (about 2x `spans`, a power of two).
    pub span_index: &'a mut [TableSlot<OpenSpanKey>],
    /// Hash table (span id, process) -> span slot, for the active-span slots (same size).
    pub active_index: &'a mut [TableSlot<ActiveKey>],
    /// Chunks of itemised calls.
    pub chunks: &'a mut [EntryChunk],
    /// Free list of chunks (same length as `chunks`).
    pub chunk_free: &'a mut [u32],
    /// Tracked-thread bitmap, bit `tid % 64` of word `tid / 64`.
    pub tracked: &'a [AtomicU64],
    /// Bit `tid`: the probes look at the thread's calls: it has an open span on its stack,
    /// or an active-span slot and its process an open span (same size as `tracked`).
    pub active: &'a [AtomicU64],
    /// Bit `tid`: of those, the threads with an active-span slot (same size as `tracked`).
    pub active_slot: &'a [AtomicU64],
    /// Bit `tid`: the probes skip the thread's next call exit (set by the C `sys_enter`
    /// probe for a call charged to no span; same size as `tracked`).
    pub skip_exit: &'a [AtomicU64],
    /// Bit `tgid`: the process is registered (same size as `tracked`). The thread-creation
    /// probe tests it, so that a thread created in any other process costs a bit test and
    /// no lock.
    pub registered: &'a [AtomicU64],
    /// [`SlotHint`]s (`SLOT_HINTS` of them).
    pub slot_hints: &'a [SlotHint],
    /// Scheduler accounting of each thread slot (same length as `threads`).
    pub thread_sched: &'a mut [ThreadSched],
    /// Scheduler figures of each span slot (same length as `spans`).
    pub span_sched: &'a mut [SchedPart],
    /// The lock-free system-call part of each thread slot (same length as `threads`).
    pub hot: &'a [HotThread],
    /// Lock-free tid -> thread-slot hints (`HOT_HINTS` of them).
    pub hot_hints: &'a [AtomicU32],
}

/// All the storage of the kernel module's tracker in one block (about 11 MiB), for a
/// single zero-filled `vmalloc`. Never put it on a stack.
#[repr(C)]
pub struct DefaultStorage {
    /// See [`Storage::processes`].
    pub processes: [ProcessSlot; DEFAULT_PROCESSES],
    /// See [`Storage::threads`].
    pub threads: [ThreadSlot; DEFAULT_THREADS],
    /// See [`Storage::thread_free`].
    pub thread_free: [u32; DEFAULT_THREADS],
    /// See [`Storage::thread_index`].
    pub thread_index: [TableSlot<u32>; 2 * DEFAULT_THREADS],
    /// See [`Storage::spans`].
    pub spans: [SpanSlot; DEFAULT_SPANS],
    /// See [`Storage::span_free`].
    pub span_free: [u32; DEFAULT_SPANS],
    /// See [`Storage::span_index`].
    pub span_index: [TableSlot<OpenSpanKey>; 2 * DEFAULT_SPANS],
    /// See [`Storage::active_index`].
    pub active_index: [TableSlot<ActiveKey>; 2 * DEFAULT_SPANS],
    /// See [`Storage::chunks`].
    pub chunks: [EntryChunk; DEFAULT_CHUNKS],
    /// See [`Storage::chunk_free`].
    pub chunk_free: [u32; DEFAULT_CHUNKS],
    /// See [`Storage::tracked`].
    pub tracked: [AtomicU64; TRACKED_WORDS],
    /// See [`Storage::active`].
    pub active: [AtomicU64; TRACKED_WORDS],
    /// See [`Storage::active_slot`].
    pub active_slot: [AtomicU64; TRACKED_WORDS],
    /// See [`Storage::skip_exit`].
    pub skip_exit: [AtomicU64; TRACKED_WORDS],
    /// See [`Storage::registered`].
    pub registered: [AtomicU64; TRACKED_WORDS],
    /// See [`Storage::slot_hints`].
    pub slot_hints: [SlotHint; SLOT_HINTS],
    /// See [`Storage::thread_sched`].
    pub thread_sched: [ThreadSched; DEFAULT_THREADS],
    /// See [`Storage::span_sched`].
    pub span_sched: [SchedPart; DEFAULT_SPANS],
    /// See [`Storage::hot`].
    pub hot: [HotThread; DEFAULT_THREADS],
    /// See [`Storage::hot_hints`].
    pub hot_hints: [AtomicU32; HOT_HINTS],
}

impl DefaultStorage {
    /// Borrows the block as [`Storage`].
    pub fn storage(&mut self) -> Storage<'_> {
        Storage {
            processes: &mut self.processes,
            threads: &mut self.threads,
            thread_free: &mut self.thread_free,
            thread_index: &mut self.thread_index,
            spans: &mut self.spans,
            span_free: &mut self.span_free,
            span_index: &mut self.span_index,
            active_index: &mut self.active_index,
            chunks: &mut self.chunks,
            chunk_free: &mut self.chunk_free,
            tracked: &self.tracked,
            active: &self.active,
            active_slot: &self.active_slot,
            skip_exit: &self.skip_exit,
            registered: &self.registered,
            slot_hints: &self.slot_hints,
            thread_sched: &mut self.thread_sched,
            span_sched: &mut self.span_sched,
            hot: &self.hot,
            hot_hints: &self.hot_hints,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The tracked-thread bitmap
// ---------------------------------------------------------------------------------------

/// Set of tracked tids, readable without any lock: one relaxed load and a bit test.
/// Only the [`Tracker`] (under its lock) changes it; a reader racing with a change sees the
/// old or the new bit, and a tracked answer is confirmed by the tracker's own tables.
#[derive(Clone, Copy)]
pub struct TrackedSet<'a> {
    words: &'a [AtomicU64],
}

impl<'a> TrackedSet<'a> {
    /// A view of the bitmap `words` (bit `tid % 64` of word `tid / 64`).
    pub fn new(words: &'a [AtomicU64]) -> Self {
        TrackedSet { words }
    }

    /// Is `tid` tracked? False for tids beyond the bitmap.
    #[inline(always)]
    pub fn contains(&self, tid: u32) -> bool {
        match self.words.get((tid / 64) as usize) {
            Some(w) => (w.load(Ordering::Relaxed) >> (tid % 64)) & 1 != 0,
            None => false,
        }
    }

    /// Tids `0..limit()` can be tracked.
    pub fn limit(&self) -> u64 {
        (self.words.len() as u64).saturating_mul(64)
    }

    fn set(&self, tid: u32, on: bool) {
        if let Some(w) = self.words.get((tid / 64) as usize) {
            let bit = 1u64 << (tid % 64);
            if on {
                w.fetch_or(bit, Ordering::Relaxed);
            } else {
                w.fetch_and(!bit, Ordering::Relaxed);
            }
        }
    }

    fn clear_all(&self) {
        for w in self.words {
            w.store(0, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------

macro_rules! stats_struct {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// Counters and gauges of the tracker, shown by the sysfs `stats` file as
        /// `name value` lines in this order.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            /// Field names, in order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];

            /// Calls `f(name, value)` for every field, in order.
            pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
                $( f(stringify!($name), self.$name); )*
            }
        }
    };
}

stats_struct! {
    /// Registered processes now.
    processes,
    /// Process table capacity.
    process_capacity,
    /// Tracked threads now.
    threads,
    /// Thread table capacity.
    thread_capacity,
    /// Open spans now.
    open_spans,
    /// Span table capacity.
    span_capacity,
    /// Most spans open at once.
    spans_high_water,
    /// Entry chunks in use now.
    chunks_in_use,
    /// Chunk pool capacity (chunks of `CHUNK_ENTRIES` calls).
    chunk_capacity,
    /// Most chunks in use at once.
    chunks_high_water,
    /// Per-span limit of itemised calls (tunable `max_calls`).
    max_calls,
    /// Per-user limit of registered processes (tunable `max_procs_per_uid`; root exempt).
    max_procs_per_uid,
    /// Processes registered so far.
    processes_registered,
    /// Registrations refused: process table full (or, in the kernel, too many closed relay
    /// channels still held by descriptors).
    processes_refused,
    /// Registrations refused: the user already had `max_procs_per_uid` processes registered
    /// (or as many closed channels still held by descriptors).
    processes_refused_uid,
    /// Threads added so far.
    threads_added,
    /// Threads not tracked: thread table full (or tid beyond the bitmap).
    threads_refused,
    /// Spans begun.
    spans_begun,
    /// Spans ended (fast and slow).
    spans_ended,
    /// Spans ended at or above the threshold (a record was encoded).
    spans_slow,
    /// Spans dropped because they stayed open longer than the timeout.
    spans_expired,
    /// Spans dropped because their thread or process went away.
    spans_abandoned,
    /// Begin lines refused: malformed.
    begins_malformed,
    /// Begins refused: writer not tracked.
    begins_untracked,
    /// Begins refused: the span is already open.
    begins_duplicate,
    /// Begins refused: the thread has `MAX_DEPTH` open spans.
    begins_too_deep,
    /// Begins refused: span table full.
    begins_table_full,
    /// End lines refused: malformed.
    ends_malformed,
    /// Ends refused: writer not tracked.
    ends_untracked,
    /// Ends refused: no such span open in the writer's process.
    ends_unknown,
    /// System calls attributed to spans (itemised or not).
    calls_attributed,
    /// Calls counted but not itemised: per-span limit reached.
    calls_unitemised_limit,
    /// Calls counted but not itemised: entry pool empty.
    calls_unitemised_pool,
    /// Calls inside a span skipped by the syscall filter.
    calls_filtered,
    /// Call exits of tracked threads without a matching enter.
    calls_without_enter,
    /// 1 while spantrack's probes are the only ones on the system-call tracepoints: a
    /// thread outside any span then drops the kernel's traced system-call path (a gauge
    /// the kernel fills in).
    syscall_trace_lazy,
    /// Other probes on the `sys_enter`/`sys_exit` tracepoints at the last look (perf
    /// trace, ftrace syscall events, BPF): while there are any, every thread keeps the
    /// traced path (a gauge the kernel fills in).
    syscall_trace_foreign_probes,
    /// Times a thread outside any span dropped the traced path (the kernel's count).
    syscall_trace_dropped,
    /// Walks that gave every thread the traced path back for another tracer (the
    /// kernel's count).
    syscall_trace_restores,
    /// Threads that registered an active-span slot (`IOCTL_SET_ACTIVE_SLOT`).
    slots_set,
    /// Calls of threads with a slot made while no span was active on the thread (slot 0):
    /// charged to no span (seen by the tracker).
    calls_no_active_span,
    /// The same, answered by the probe from the slot alone, without the tracker (a gauge
    /// the kernel fills in).
    calls_no_active_span_fast,
    /// Calls of threads with a slot whose span id is not open in the module (unsampled,
    /// remote, already ended): charged to no span.
    calls_unknown_active_span,
    /// Calls of threads with a slot whose slot could not be read: charged to no span.
    slot_faults,
    /// Calls whose active span ended while the call was in progress: charged to no span.
    calls_span_ended,
    /// Calls noted by the lock-free path for a thread slot that was given to another
    /// thread before they were charged (a thread unregistered in the middle of a call):
    /// charged to no span.
    calls_stale,
    /// Open spans left out of the activation index when a process's first slot came:
    /// another open span of the process has the same span id (or the index was full).
    slot_index_conflicts,
    /// Records whose itemised calls were cut to fit the output buffer.
    records_truncated,
    /// Records written to relay (noted by the kernel).
    records_written,
    /// Records dropped because the relay buffer was full (noted by the kernel).
    records_dropped,
    /// Scheduler accounting on (sysfs `sched`): 1 or 0.
    sched_enabled,
    /// Off-CPU stretches charged to spans.
    sched_stretches,
    /// Off-CPU stretches charged to no span: their span ended while the thread was off
    /// its CPU.
    sched_unattributed,
    /// Wake-ups of a thread off its CPU inside a span.
    sched_wakeups,
}

// ---------------------------------------------------------------------------------------
// The tracker
// ---------------------------------------------------------------------------------------

/// Index of a process slot (stable while the process stays registered; the kernel may
/// index per-process data such as relay channels with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcIdx(pub u32);

impl ProcIdx {
    /// The slot index as `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Per-process view for the `IOCTL_INFO` answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its process slot.
    pub idx: ProcIdx,
    /// Its tgid.
    pub tgid: u32,
    /// The uid that registered it.
    pub uid: u32,
    /// Threads tracked now.
    pub threads: u32,
    /// Records written to its relay channel (as noted by the kernel).
    pub records_written: u64,
    /// Records dropped because its relay buffer was full.
    pub records_dropped: u64,
}

/// Result of a successful [`Tracker::end`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndOutcome {
    /// Shorter than the threshold: nothing to write.
    Fast,
    /// At or above the threshold: `out[..len]` holds the record, to be written to the relay
    /// channel of process `tgid`. `len` is 0 only if `out` could not hold a header.
    Slow {
        /// Bytes of the record at the start of `out`.
        len: usize,
        /// Process whose relay channel gets the record.
        tgid: u32,
    },
}

/// The state machine. See the module documentation.
///
/// # Invariants
/// - A thread slot is in use iff it is out of `thread_pool`, iff `thread_index` maps its tid
///   to it, iff its tid's bit is set in `tracked`; it is on the thread list of its process.
/// - A span slot is open iff it is out of `span_pool`, iff `span_index` maps its
///   `(key, proc)` to it, iff it appears exactly once in the stack of its thread.
/// - The chunks out of `chunk_pool` are exactly the chunk lists of the open spans, a span
///   with `n` itemised calls holding `ceil(n / CHUNK_ENTRIES)` of them.
pub struct Tracker<'a> {
    processes: &'a mut [ProcessSlot],
    threads: &'a mut [ThreadSlot],
    thread_pool: IndexPool<'a>,
    thread_index: HashTable<'a, u32>,
    spans: &'a mut [SpanSlot],
    span_pool: IndexPool<'a>,
    span_index: HashTable<'a, OpenSpanKey>,
    active_index: HashTable<'a, ActiveKey>,
    /// Spans begun so far (wrapping): validates the probes' cached "no such span" answers.
    begins: u32,
    chunks: &'a mut [EntryChunk],
    chunk_pool: IndexPool<'a>,
    tracked: TrackedSet<'a>,
    /// Threads with an open span: the system-call probes test this set, so a tracked
    /// thread outside any span costs what an untracked one does.
    active: TrackedSet<'a>,
    /// Threads with an active-span slot whose process has an open span: the probes read
    /// their slot.
    active_slot: TrackedSet<'a>,
    /// Registered processes, by tgid (see [`Storage::registered`]).
    registered: TrackedSet<'a>,
    slot_hints: &'a [SlotHint],
    filter: SyscallFilter,
    max_calls: u32,
    max_procs_per_uid: u32,
    stats: Stats,
    /// Scheduler accounting on, and a counter of its switches (a span begun in another
    /// epoch has partial figures).
    sched_on: bool,
    sched_epoch: u32,
    thread_sched: &'a mut [ThreadSched],
    span_sched: &'a mut [SchedPart],
    /// The system-call hot path's per-thread part (see `hot.rs`).
    hot: HotPath<'a>,
    /// Told the tid of every thread whose bit in `active` was just set: the kernel turns
    /// the traced system-call path back on for it (glue.c, "The traced path only for the
    /// threads that need it"). None in host builds.
    trace_hook: Option<fn(u32)>,
}


impl<'a> Tracker<'a> {
    /// Builds an empty tracker over `storage`, initialising all of it (O(size), at load).
    /// `seed` randomises the hash tables (pass a random number).
    pub fn new(storage: Storage<'a>, seed: u64) -> Self {
        let Storage {
            processes,
            threads,
            thread_free,
            thread_index,
            spans,
            span_free,
            span_index,
            active_index,
            chunks,
            chunk_free,
            tracked,
            active,
            active_slot,
            skip_exit,
            registered,
            slot_hints,
            thread_sched,
            span_sched,
            hot,
            hot_hints,
        } = storage;
        for h in hot {
            h.take_back();
            h.give(0);
        }
        for h in hot_hints {
            h.store(0, Ordering::Relaxed);
        }
        for t in thread_sched.iter_mut() {
            *t = ThreadSched::EMPTY;
        }
        for p in span_sched.iter_mut() {
            *p = EMPTY_SCHED;
        }
        for p in processes.iter_mut() {
            *p = ProcessSlot::EMPTY;
        }
        for t in threads.iter_mut() {
            *t = ThreadSlot::EMPTY;
        }
        for s in spans.iter_mut() {
            *s = SpanSlot::EMPTY;
        }
        for c in chunks.iter_mut() {
            c.next = NIL;
            c._pad = 0;
            for e in c.entries.iter_mut() {
                *e = EMPTY_ENTRY;
            }
        }
        let n_threads = threads.len();
        let n_spans = spans.len();
        let n_chunks = chunks.len();
        let tracked = TrackedSet::new(tracked);
        tracked.clear_all();
        let active = TrackedSet::new(active);
        active.clear_all();
        let active_slot = TrackedSet::new(active_slot);
        active_slot.clear_all();
        TrackedSet::new(skip_exit).clear_all();
        let registered = TrackedSet::new(registered);
        registered.clear_all();
        for h in slot_hints {
            h.tid.store(0, Ordering::Relaxed);
            h.addr.store(0, Ordering::Relaxed);
        }
        Tracker {
            processes,
            threads,
            thread_pool: IndexPool::new(thread_free, n_threads),
            thread_index: HashTable::new(thread_index, seed),
            spans,
            span_pool: IndexPool::new(span_free, n_spans),
            span_index: HashTable::new(span_index, seed.rotate_left(32) ^ 0x5bd1_e995),
            active_index: HashTable::new(active_index, seed.rotate_left(17) ^ 0x2545_f491),
            begins: 0,
            chunks,
            chunk_pool: IndexPool::new(chunk_free, n_chunks),
            tracked,
            active,
            active_slot,
            registered,
            slot_hints,
            filter: SyscallFilter::ALLOW_ALL,
            max_calls: DEFAULT_MAX_CALLS,
            max_procs_per_uid: DEFAULT_MAX_PROCS_PER_UID,
            stats: Stats::default(),
            sched_on: false,
            sched_epoch: 0,
            thread_sched,
            span_sched,
            hot: HotPath::new(hot, hot_hints),
            trace_hook: None,
        }
    }

    /// Sets the function told of every thread that the system-call probes must see from
    /// now on (its bit in the open-span set was just set), with the thread's tid. The
    /// kernel's hook turns the traced system-call path back on for the thread: a thread outside
    /// any span may have dropped it (glue.c).
    pub fn set_trace_hook(&mut self, f: fn(u32)) {
        self.trace_hook = Some(f);
    }

    /// Puts `tid` in the open-span set (`on`: the probes see its calls from now on, and the
    /// trace hook is told) or takes it out.
    fn set_active(&self, tid: u32, on: bool) {
        self.active.set(tid, on);
        if let (true, Some(f)) = (on, self.trace_hook) {
            f(tid);
        }
    }

    /// The lock-free system-call path (see `hot.rs`), to keep outside the lock.
    pub fn hot_path(&self) -> HotPath<'a> {
        self.hot
    }

    /// Calls noted by the lock-free path and not charged yet, over every thread slot.
    #[cfg(test)]
    pub fn pending_calls(&self) -> u64 {
        (0..self.threads.len() as u32)
            .filter_map(|ti| self.hot.slot(ti))
            .map(|h| u64::from(h.pending()))
            .sum()
    }

    // ---- lock-free query -------------------------------------------------------------

    /// The tracked-thread bitmap, to keep outside the lock and query from every system
    /// call of the machine ([`TrackedSet::contains`]).
    pub fn tracked_set(&self) -> TrackedSet<'a> {
        self.tracked
    }

    /// The set of threads with at least one open span (the system-call probes' test).
    pub fn active_set(&self) -> TrackedSet<'a> {
        self.active
    }

    /// The set of threads with an active-span slot whose process has an open span.
    pub fn active_slot_set(&self) -> TrackedSet<'a> {
        self.active_slot
    }

    /// Is `tid` tracked? One relaxed atomic load; false for tids beyond the bitmap.
    #[inline(always)]
    pub fn is_tracked(&self, tid: u32) -> bool {
        self.tracked.contains(tid)
    }

    // ---- tunables ----------------------------------------------------------------------

    /// The syscall filter in force.
    pub fn filter(&self) -> &SyscallFilter {
        &self.filter
    }

    /// Replaces the syscall filter (applies to calls that end from now on).
    pub fn set_filter(&mut self, filter: SyscallFilter) {
        // Calls made before the change are judged by the filter they were made under.
        self.fold_all();
        self.filter = filter;
    }

    /// Charges every thread's pending calls (before a tunable that judges them changes).
    /// O(thread capacity): for sysfs writes.
    fn fold_all(&mut self) {
        for ti in 0..self.threads.len() as u32 {
            self.fold(ti);
        }
    }

    /// Per-span limit of itemised calls.
    pub fn max_calls(&self) -> u32 {
        self.max_calls
    }

    /// Largest accepted `max_calls`: what a record of at most `record::RECORD_MAX_SIZE`
    /// (256 KiB) can carry.
    pub fn max_calls_limit(&self) -> u32 {
        MAX_CALLS_LIMIT
    }

    /// Sets the per-span limit of itemised calls (applies to spans already open too).
    /// Errors: `ERANGE` above [`Tracker::max_calls_limit`].
    pub fn set_max_calls(&mut self, n: u32) -> Result<(), i32> {
        if n > MAX_CALLS_LIMIT {
            return Err(ERANGE);
        }
        self.fold_all();
        self.max_calls = n;
        Ok(())
    }

    /// Per-user limit of registered processes (root exempt).
    pub fn max_procs_per_uid(&self) -> u32 {
        self.max_procs_per_uid
    }

    /// Sets the per-user limit of registered processes (applies to registrations from now
    /// on). Errors: `ERANGE` outside 1..=process capacity.
    pub fn set_max_procs_per_uid(&mut self, n: u32) -> Result<(), i32> {
        if n == 0 || n as usize > self.processes.len() {
            return Err(ERANGE);
        }
        self.max_procs_per_uid = n;
        Ok(())
    }

    // ---- processes and threads ---------------------------------------------------------

    fn find_process(&self, tgid: u32) -> Option<u32> {
        self.processes
            .iter()
            .position(|p| p.in_use != 0 && p.tgid == tgid)
            .map(|i| i as u32)
    }

    /// Slot of registered process `tgid`. O(process capacity).
    pub fn process_of(&self, tgid: u32) -> Option<ProcIdx> {
        self.find_process(tgid).map(ProcIdx)
    }

    /// Counters of registered process `tgid`.
    pub fn process_info(&self, tgid: u32) -> Option<ProcessInfo> {
        let i = self.find_process(tgid)?;
        let p = self.processes.get(i as usize)?;
        Some(ProcessInfo {
            idx: ProcIdx(i),
            tgid,
            uid: p.uid,
            threads: p.n_threads,
            records_written: p.records_written,
            records_dropped: p.records_dropped,
        })
    }

    /// Process (tgid) of tracked thread `tid`.
    pub fn thread_tgid(&self, tid: u32) -> Option<u32> {
        let ti = self.thread_index.get(&tid)?;
        let t = self.threads.get(ti as usize)?;
        self.processes.get(t.proc as usize).map(|p| p.tgid)
    }

    /// Registers process `tgid` for user `uid` (without threads: add them with
    /// [`Tracker::add_thread`]). Errors: `EALREADY` if registered, `EDQUOT` if `uid` (not
    /// root) already has `max_procs_per_uid` processes registered, `ENOSPC` if the process
    /// table is full (both counted).
    pub fn register_process(&mut self, tgid: u32, uid: u32) -> Result<ProcIdx, i32> {
        if self.find_process(tgid).is_some() {
            return Err(EALREADY);
        }
        if uid != ROOT_UID {
            let mine = self.processes.iter().filter(|p| p.in_use != 0 && p.uid == uid).count();
            if mine >= self.max_procs_per_uid as usize {
                bump(&mut self.stats.processes_refused_uid);
                return Err(EDQUOT);
            }
        }
        let Some((i, p)) = self
            .processes
            .iter_mut()
            .enumerate()
            .find(|(_, p)| p.in_use == 0)
        else {
            bump(&mut self.stats.processes_refused);
            return Err(ENOSPC);
        };
        *p = ProcessSlot {
            in_use: 1,
            tgid,
            uid,
            ..ProcessSlot::EMPTY
        };
        // Before the caller walks the process's threads: a thread created during the walk
        // either is on the list the walk reads or sees this bit (the kernel glue orders the
        // two with full barriers on both sides).
        self.registered.set(tgid, true);
        bump(&mut self.stats.processes_registered);
        Ok(ProcIdx(i as u32))
    }

    /// Counts a registration the kernel refused for a reason of its own (relay channels of
    /// closed registrations still held by descriptors): as `processes_refused_uid` when the
    /// user's own share was the limit (`user`), else as `processes_refused`.
    pub fn note_process_refused(&mut self, user: bool) {
        bump(if user { &mut self.stats.processes_refused_uid } else { &mut self.stats.processes_refused });
    }

    /// Unregisters process `tgid`: removes its threads, dropping their open spans (counted
    /// as abandoned). Errors: `ENOENT` if not registered.
    pub fn unregister_process(&mut self, tgid: u32) -> Result<(), i32> {
        let pi = self.find_process(tgid).ok_or(ENOENT)?;
        // Bounded by the thread capacity: each round frees one thread of the list.
        for _ in 0..self.threads.len() {
            let Some(first) = self.processes.get(pi as usize).map(|p| p.first_thread) else {
                break;
            };
            if first == NIL || !self.drop_thread(first) {
                break;
            }
        }
        self.drop_process_spans(pi);
        if let Some(p) = slot_mut(self.processes, pi) {
            *p = ProcessSlot::EMPTY;
        }
        self.registered.set(tgid, false);
        Ok(())
    }

    /// Tracks thread `tid` of registered process `tgid`. Adding a thread that is already
    /// tracked for `tgid` does nothing; one tracked for another process (a stale entry whose
    /// exit was missed) is removed first.
    /// Errors: `ENOENT` process not registered; `ENOSPC` thread table full and `ERANGE` tid
    /// beyond the bitmap (both counted in `threads_refused`).
    pub fn add_thread(&mut self, tgid: u32, tid: u32) -> Result<(), i32> {
        let pi = self.find_process(tgid).ok_or(ENOENT)?;
        if let Some(ti) = self.thread_index.get(&tid) {
            if self.threads.get(ti as usize).map(|t| t.proc) == Some(pi) {
                return Ok(());
            }
            self.remove_thread(tid);
        }
        if u64::from(tid) >= self.tracked.limit() {
            bump(&mut self.stats.threads_refused);
            return Err(ERANGE);
        }
        let Some(ti) = self.thread_pool.pop() else {
            bump(&mut self.stats.threads_refused);
            return Err(ENOSPC);
        };
        if self.thread_index.insert(tid, ti).is_err() {
            self.thread_pool.push(ti);
            bump(&mut self.stats.threads_refused);
            return Err(ENOSPC);
        }
        let Some(p) = slot_mut(self.processes, pi) else {
            return Err(ENOENT);
        };
        let old_first = p.first_thread;
        p.first_thread = ti;
        p.n_threads = p.n_threads.wrapping_add(1);
        if let Some(next) = slot_mut(self.threads, old_first) {
            next.prev = ti;
        }
        if let Some(t) = slot_mut(self.threads, ti) {
            *t = ThreadSlot {
                tid,
                proc: pi,
                prev: NIL,
                next: old_first,
                ..ThreadSlot::EMPTY
            };
        }
        if let Some(ts) = slot_mut(self.thread_sched, ti) {
            *ts = ThreadSched::EMPTY;
        }
        if let Some(h) = self.hot.slot(ti) {
            // Left by a producer that raced with the slot's reuse (see hot.rs): not charged.
            self.stats.calls_stale = self.stats.calls_stale.wrapping_add(u64::from(h.pending()));
            h.give(tid);
        }
        self.hot.set_hint(tid, ti);
        self.tracked.set(tid, true);
        bump(&mut self.stats.threads_added);
        Ok(())
    }

    /// Stops tracking thread `tid` (exit or `IOCTL_UNREGISTER_THREAD`), dropping its open
    /// spans (counted as abandoned). Returns true if its process has no tracked thread
    /// left. A tid that is not tracked costs one bitmap test and returns false.
    pub fn remove_thread(&mut self, tid: u32) -> bool {
        if !self.tracked.contains(tid) {
            return false;
        }
        let Some(ti) = self.thread_index.get(&tid) else {
            return false;
        };
        let Some(pi) = self.threads.get(ti as usize).map(|t| t.proc) else {
            return false;
        };
        self.drop_thread(ti);
        self.processes
            .get(pi as usize)
            .is_some_and(|p| p.n_threads == 0)
    }

    /// Thread `old_tid` of a registered process completed an `execve` and is now
    /// `new_tid` (a non-main thread that execs takes the thread-group leader's pid, so
    /// `new_tid` is the tgid; from the main thread the two are equal). The process stays
    /// registered and the thread stays tracked, under `new_tid`; its open spans belonged
    /// to the old image, which can no longer end them: they are dropped and counted as
    /// abandoned. Returns true if the process is left without a tracked thread (only if
    /// `new_tid` could not be tracked; the caller then retires it, as after an exit).
    /// Does nothing (false) if `old_tid` is not tracked.
    pub fn exec_thread(&mut self, old_tid: u32, new_tid: u32) -> bool {
        if !self.tracked.contains(old_tid) {
            return false;
        }
        let Some(tgid) = self.thread_tgid(old_tid) else {
            return false;
        };
        let Some(ti) = self.thread_index.get(&old_tid) else {
            return false;
        };
        let pi = self.threads.get(ti as usize).map_or(NIL, |t| t.proc);
        self.drop_thread(ti);
        self.drop_process_spans(pi);
        // Cannot fail for want of room (a slot was just freed); a failure is counted.
        let _ = self.add_thread(tgid, new_tid);
        self.process_info(tgid).is_some_and(|p| p.threads == 0)
    }

    /// Frees thread slot `ti` and everything it holds. False if `ti` is not a valid slot.
    fn drop_thread(&mut self, ti: u32) -> bool {
        // Its calls so far go to its spans (abandoned below, but counted).
        self.fold(ti);
        let Some(t) = self.threads.get(ti as usize).copied() else {
            return false;
        };
        if let Some(h) = self.hot.slot(ti) {
            let n = h.take_back();
            self.stats.calls_without_enter = self.stats.calls_without_enter.wrapping_add(n);
        }
        self.hot.clear_hint(t.tid, ti);
        let depth = (t.depth as usize).min(MAX_DEPTH);
        for &si in t.stack.get(..depth).unwrap_or(&[]).iter().rev() {
            if self.free_span(si) {
                bump(&mut self.stats.spans_abandoned);
            }
        }
        self.thread_index.remove(&t.tid);
        self.tracked.set(t.tid, false);
        self.active.set(t.tid, false);
        self.active_slot.set(t.tid, false);
        if t.slot_addr != 0 {
            self.set_hint(t.tid, 0);
            self.count_slot_thread(t.proc, false);
        }
        // Unlink from the process's thread list.
        match slot_mut(self.threads, t.prev) {
            Some(prev) => prev.next = t.next,
            None => {
                if let Some(p) = slot_mut(self.processes, t.proc) {
                    p.first_thread = t.next;
                }
            }
        }
        if let Some(next) = slot_mut(self.threads, t.next) {
            next.prev = t.prev;
        }
        if let Some(p) = slot_mut(self.processes, t.proc) {
            p.n_threads = p.n_threads.saturating_sub(1);
        }
        if let Some(slot) = slot_mut(self.threads, ti) {
            *slot = ThreadSlot::EMPTY;
        }
        self.thread_pool.push(ti);
        true
    }

    /// Removes open span `si` from the span table and frees its chunks and slot (not from
    /// its thread's stack: the caller does that). False if it was not open.
    fn free_span(&mut self, si: u32) -> bool {
        let Some(s) = slot_mut(self.spans, si) else {
            return false;
        };
        if s.open == 0 {
            return false;
        }
        let (key, proc, first, n, indexed) =
            (s.key, s.proc, s.first_chunk, s.n_entries, s.open == OPEN_INDEXED);
        *s = SpanSlot::EMPTY;
        self.span_index.remove(&OpenSpanKey { key, proc });
        if indexed {
            self.active_index.remove(&ActiveKey::of(&key, proc));
        }
        self.count_open(proc, false);
        let mut c = first;
        for _ in 0..n.div_ceil(CHUNK_ENTRIES as u32) {
            let next = self.chunks.get(c as usize).map_or(NIL, |ch| ch.next);
            self.chunk_pool.push(c);
            c = next;
        }
        self.span_pool.push(si);
        true
    }

    /// Frees the spans of process `pi` that are on no thread's stack (begun by threads with
    /// an active-span slot), counted as abandoned. O(span capacity): unregistration and exec.
    fn drop_process_spans(&mut self, pi: u32) {
        for si in 0..self.spans.len() {
            let owned = self
                .spans
                .get(si)
                .is_some_and(|s| s.open != 0 && s.proc == pi && s.thread == NIL);
            if owned && self.free_span(si as u32) {
                bump(&mut self.stats.spans_abandoned);
            }
        }
    }

    /// Open spans of process `pi` went up or down by one. The first one switches the
    /// system-call probes on for the process's threads with an active-span slot (a span
    /// can be active on any of them), the last one off.
    fn count_open(&mut self, pi: u32, up: bool) {
        let Some(p) = slot_mut(self.processes, pi) else {
            return;
        };
        let before = p.open_spans;
        p.open_spans = if up {
            before.wrapping_add(1)
        } else {
            before.saturating_sub(1)
        };
        let on = p.open_spans != 0;
        // Only threads with a slot follow the process's spans.
        if (before != 0) == on || p.slot_threads == 0 {
            return;
        }
        let mut ti = p.first_thread;
        for _ in 0..self.threads.len() {
            let Some(t) = self.threads.get(ti as usize) else {
                break;
            };
            if t.slot_addr != 0 {
                self.active_slot.set(t.tid, on);
                self.set_active(t.tid, on);
            }
            ti = t.next;
        }
    }

    /// Registers (`addr != 0`) or clears the active-span slot of tracked thread `tid`
    /// (`uapi::IOCTL_SET_ACTIVE_SLOT`; the caller has checked that `addr` is readable).
    /// The spans on the thread's stack become the process's. The writer's call in progress
    /// is not recorded. Errors: `ERR_UNTRACKED`, `EINVAL` (misaligned).
    pub fn set_active_slot(&mut self, tid: u32, addr: u64) -> Result<(), i32> {
        let Some(ti) = self.thread_index.get(&tid) else {
            return Err(uapi::ERR_UNTRACKED);
        };
        self.exclude_current_call(ti);
        if addr % 8 != 0 {
            return Err(EINVAL);
        }
        // Calls so far go to the stack's top, before the stack becomes the process's.
        self.fold(ti);
        let Some(t) = slot_mut(self.threads, ti) else {
            return Err(uapi::ERR_UNTRACKED);
        };
        let depth = (t.depth as usize).min(MAX_DEPTH);
        let stack = t.stack;
        let had = t.slot_addr != 0;
        t.depth = 0;
        t.stack = [NIL; MAX_DEPTH];
        t.slot_addr = addr;
        t.slot_value = 0;
        t.slot_span = NIL;
        if addr == 0 {
            if let Some(h) = self.hot.slot(ti) {
                h.clear_slot();
            }
        }
        let (tid, proc) = (t.tid, t.proc);
        self.set_hint(tid, addr);
        if had != (addr != 0) {
            self.count_slot_thread(proc, addr != 0);
        }
        for &si in stack.get(..depth).unwrap_or(&[]) {
            if let Some(s) = slot_mut(self.spans, si) {
                s.thread = NIL;
                s.depth = 0;
                s.flags |= uapi::REC_ACTIVATION;
            }
        }
        let on = addr != 0
            && self
                .processes
                .get(proc as usize)
                .is_some_and(|p| p.open_spans != 0);
        self.active_slot.set(tid, on);
        self.set_active(tid, on);
        if addr != 0 {
            bump(&mut self.stats.slots_set);
        }
        Ok(())
    }

    /// A thread of process `pi` got (`up`) or lost a slot. The first one puts the
    /// process's open spans into the activation index (conflicts counted).
    fn count_slot_thread(&mut self, pi: u32, up: bool) {
        let Some(p) = slot_mut(self.processes, pi) else {
            return;
        };
        let before = p.slot_threads;
        p.slot_threads = if up {
            before.wrapping_add(1)
        } else {
            before.saturating_sub(1)
        };
        if !(up && before == 0) {
            return;
        }
        for si in 0..self.spans.len() {
            let Some(s) = self.spans.get(si) else {
                break;
            };
            if s.open != OPEN || s.proc != pi {
                continue;
            }
            let akey = ActiveKey::of(&s.key, pi);
            if self.active_index.insert(akey, si as u32).is_ok() {
                if let Some(s) = self.spans.get_mut(si) {
                    s.open = OPEN_INDEXED;
                }
            } else {
                bump(&mut self.stats.slot_index_conflicts);
            }
        }
    }

    /// Publishes (`addr != 0`) or withdraws thread `tid`'s slot address for the probes.
    fn set_hint(&self, tid: u32, addr: u64) {
        let Some(h) = self.slot_hints.get((tid as usize) % SLOT_HINTS.max(1)) else {
            return;
        };
        let tid = u64::from(tid);
        if addr == 0 {
            // Only its own entry: another thread may hold the bucket.
            if h.tid.load(Ordering::Relaxed) == tid {
                h.tid.store(0, Ordering::Release);
            }
            return;
        }
        h.tid.store(0, Ordering::Release);
        h.addr.store(addr, Ordering::Release);
        h.tid.store(tid, Ordering::Release);
    }

    /// The slot address of `tid` as the probes see it (tests).
    pub fn hinted_slot(&self, tid: u32) -> Option<u64> {
        let h = self.slot_hints.get((tid as usize) % SLOT_HINTS.max(1))?;
        (h.tid.load(Ordering::Acquire) == u64::from(tid) && tid != 0)
            .then(|| h.addr.load(Ordering::Acquire))
    }

    /// The kernel's count of calls its probe charged to no span without the tracker.
    pub fn set_fast_uncharged(&mut self, n: u64) {
        self.stats.calls_no_active_span_fast = n;
    }

    /// The kernel's figures of the lazy traced path: lazy now (0/1), other probes seen,
    /// threads that dropped the path, walks that restored it.
    pub fn set_syscall_trace(&mut self, lazy: u64, foreign: u64, dropped: u64, restores: u64) {
        self.stats.syscall_trace_lazy = lazy;
        self.stats.syscall_trace_foreign_probes = foreign;
        self.stats.syscall_trace_dropped = dropped;
        self.stats.syscall_trace_restores = restores;
    }

    /// The call `tid` is in (a failed `IOCTL_SET_ACTIVE_SLOT`) is not recorded.
    pub fn exclude_call(&mut self, tid: u32) {
        if let Some(ti) = self.thread_index.get(&tid) {
            self.exclude_current_call(ti);
        }
    }

    /// The active-span slot address of tracked thread `tid` (0: none).
    pub fn active_slot(&self, tid: u32) -> Option<u64> {
        let ti = self.thread_index.get(&tid)?;
        self.threads.get(ti as usize).map(|t| t.slot_addr)
    }

    /// Removes span `si` from the stack of thread `ti` (anywhere in it).
    /// The caller folds the thread's pending calls first.
    fn unstack(&mut self, ti: u32, si: u32) {
        let Some(t) = slot_mut(self.threads, ti) else {
            return;
        };
        let depth = (t.depth as usize).min(MAX_DEPTH);
        let Some(stack) = t.stack.get_mut(..depth) else {
            return;
        };
        let Some(pos) = stack.iter().position(|&x| x == si) else {
            return;
        };
        // Shift the spans above it down by one.
        for j in pos..depth {
            let above = stack.get(j.wrapping_add(1)).copied().unwrap_or(NIL);
            if let Some(x) = stack.get_mut(j) {
                *x = above;
            }
        }
        t.depth = t.depth.saturating_sub(1);
        if t.depth == 0 {
            let tid = t.tid;
            self.active.set(tid, false);
        }
    }

    /// Marks the call `tid` is in (the write to a `/proc` file) as not to be recorded.
    fn exclude_current_call(&mut self, ti: u32) {
        if let Some(h) = self.hot.slot(ti) {
            h.exclude();
        }
    }

    /// Charges thread `ti`'s pending calls (noted by the lock-free path, see `hot.rs`) to
    /// the innermost span of its stack: the span that was innermost when they were made,
    /// since every change of the stack folds first.
    fn fold(&mut self, ti: u32) {
        self.fold_until(ti, u64::MAX);
    }

    /// [`Tracker::fold`] of the calls that ended by `cutoff`; later ones (a call of the
    /// thread that ended after a span end written by another thread) stay pending, for the
    /// stack as it is after that end.
    ///
    /// A thread with an active-span slot folds with its process's other such threads
    /// ([`Tracker::fold_slotted`]).
    fn fold_until(&mut self, ti: u32, cutoff: u64) {
        let Some(t) = self.threads.get(ti as usize) else {
            return;
        };
        if t.slot_addr != 0 {
            let pi = t.proc;
            self.fold_slotted(pi, cutoff);
            return;
        }
        let Some(h) = self.hot.slot(ti) else {
            return;
        };
        if h.pending() == 0 {
            return;
        }
        let tid = t.tid;
        h.drain(cutoff, |e, v| self.charge_entry(ti, tid, e, v));
    }

    /// Charges the pending calls that ended by `cutoff` of process `pi`'s threads with an
    /// active-span slot, each to the span its slot named, in the order they ended across
    /// those threads (a span's calls made on several threads are itemised as they
    /// happened, as when they were charged at once). Cost: O(pending calls × threads with
    /// some), in batches of [`FOLD_BATCH`] threads (beyond one batch the order across
    /// batches is by batch: never the span a call goes to).
    fn fold_slotted(&mut self, pi: u32, cutoff: u64) {
        let Some(p) = self.processes.get(pi as usize) else {
            return;
        };
        if p.slot_threads == 0 {
            return;
        }
        let mut ti = p.first_thread;
        // Bounded by the thread capacity: each step moves down the process's list.
        let mut steps = self.threads.len();
        while ti != NIL && steps != 0 {
            let mut set = [NIL; FOLD_BATCH];
            let mut n = 0usize;
            while ti != NIL && steps != 0 && n < FOLD_BATCH {
                steps -= 1;
                let Some(t) = self.threads.get(ti as usize) else {
                    break;
                };
                let next = t.next;
                if t.slot_addr != 0 && self.hot.slot(ti).is_some_and(|h| h.pending() != 0) {
                    if let Some(x) = set.get_mut(n) {
                        *x = ti;
                        n += 1;
                    }
                }
                ti = next;
            }
            let batch = set.get(..n).unwrap_or(&[]);
            // Merge: the oldest pending call of the batch next, until none ended by cutoff.
            loop {
                let mut best: Option<(u32, &HotThread, SyscallEntry, u64)> = None;
                for &x in batch {
                    let Some(h) = self.hot.slot(x) else {
                        continue;
                    };
                    let Some((e, v)) = h.peek() else {
                        continue;
                    };
                    if e.end_mono_ns <= cutoff && best.is_none_or(|b| e.end_mono_ns < b.2.end_mono_ns) {
                        best = Some((x, h, e, v));
                    }
                }
                let Some((x, h, e, v)) = best else {
                    break;
                };
                h.pop();
                let tid = self.threads.get(x as usize).map_or(0, |t| t.tid);
                self.charge_entry(x, tid, e, v);
            }
        }
    }

    /// Charges the finished call `e` of thread slot `ti` (owned by `tid`), made under slot
    /// value `v` (0: the thread stacked its spans): an entry another thread left in the slot
    /// (see hot.rs) is counted in `calls_stale` and charged to nobody.
    fn charge_entry(&mut self, ti: u32, tid: u32, e: SyscallEntry, v: u64) {
        if e.tid != tid {
            bump(&mut self.stats.calls_stale);
        } else if v == 0 {
            self.charge_stacked(ti, e);
        } else {
            self.charge_slotted(ti, e, v);
        }
    }

    /// Charges the finished call `e` of thread `ti`, made while its active-span slot held
    /// `v`, to the span `v` named then: the open span of that id in the thread's process,
    /// if it was begun by the call's start (open at the call's enter; a span that ended
    /// before the call did has left the index). Otherwise the call is charged to no span:
    /// `calls_span_ended` if this thread had found that span before (it ended during the
    /// call), else `calls_unknown_active_span` (unsampled, remote, not yet begun).
    fn charge_slotted(&mut self, ti: u32, e: SyscallEntry, v: u64) {
        let Some(t) = self.threads.get(ti as usize) else {
            return;
        };
        let (cached, cached_si, proc) = (t.slot_value, t.slot_span, t.proc);
        let ended = cached == v && cached_si != NIL && !self.span_is(cached_si, v, proc);
        let si = self.resolve_slot(ti, v);
        let open_at_enter = self
            .spans
            .get(si as usize)
            .is_some_and(|s| s.begin_mono_ns <= e.start_mono_ns);
        if open_at_enter {
            self.charge(si, e);
        } else if si == NIL && ended {
            bump(&mut self.stats.calls_span_ended);
        } else {
            bump(&mut self.stats.calls_unknown_active_span);
        }
    }

    /// Charges the finished call `e` of thread `ti` (stacking its spans) to its innermost
    /// open span; a call outside any span is not counted.
    fn charge_stacked(&mut self, ti: u32, e: SyscallEntry) {
        let Some(t) = self.threads.get(ti as usize) else {
            return;
        };
        let Some(top) = t.depth.checked_sub(1) else {
            return;
        };
        let Some(&si) = t.stack.get(top as usize) else {
            return;
        };
        self.charge(si, e);
    }

    // ---- spans -------------------------------------------------------------------------

    /// Begins span `key` on thread `tid` (the writer of the begin line), pushing it on the
    /// thread's stack. The writer's system call in progress is not recorded.
    /// Errors (each counted): `ERR_UNTRACKED`, `ERR_DUPLICATE` (open in this process),
    /// `ERR_TOO_DEEP`, `ERR_TABLE_FULL`.
    pub fn begin(
        &mut self,
        tid: u32,
        key: SpanKey,
        now_mono: u64,
        now_real: u64,
    ) -> Result<(), i32> {
        self.begin_with_threshold(tid, key, now_mono, now_real, None)
    }

    /// [`Tracker::begin`] of a span with its own threshold (`None`: the default given to
    /// [`Tracker::end`]).
    pub fn begin_with_threshold(
        &mut self,
        tid: u32,
        key: SpanKey,
        now_mono: u64,
        now_real: u64,
        threshold_ns: Option<u64>,
    ) -> Result<(), i32> {
        let Some((ti, t)) = self
            .thread_index
            .get(&tid)
            .and_then(|ti| self.threads.get(ti as usize).map(|t| (ti, *t)))
        else {
            bump(&mut self.stats.begins_untracked);
            return Err(uapi::ERR_UNTRACKED);
        };
        self.exclude_current_call(ti);
        // Calls so far go to the span innermost until now. (A thread with an active-span
        // slot has no stack; its calls are checked against their span's begin when charged.)
        if t.slot_addr == 0 {
            self.fold(ti);
        }
        let okey = OpenSpanKey { key, proc: t.proc };
        let akey = ActiveKey::of(&key, t.proc);
        let indexed = self
            .processes
            .get(t.proc as usize)
            .is_some_and(|p| p.slot_threads != 0);
        if self.span_index.contains(&okey) || (indexed && self.active_index.contains(&akey)) {
            bump(&mut self.stats.begins_duplicate);
            return Err(uapi::ERR_DUPLICATE);
        }
        // A thread with an active-span slot does not stack its spans: they are the process's.
        let stacked = t.slot_addr == 0;
        let depth = if stacked { t.depth } else { 0 };
        if stacked && depth as usize >= MAX_DEPTH {
            bump(&mut self.stats.begins_too_deep);
            return Err(uapi::ERR_TOO_DEEP);
        }
        if stacked {
            // The thread's time so far goes to its span active until now.
            let top = self.active_span(ti, None);
            self.charge_cpu(ti, top, now_mono);
        }
        let Some(si) = self.span_pool.pop() else {
            bump(&mut self.stats.begins_table_full);
            return Err(uapi::ERR_TABLE_FULL);
        };
        if self.span_index.insert(okey, si).is_err() {
            self.span_pool.push(si);
            bump(&mut self.stats.begins_table_full);
            return Err(uapi::ERR_TABLE_FULL);
        }
        if indexed && self.active_index.insert(akey, si).is_err() {
            self.span_index.remove(&okey);
            self.span_pool.push(si);
            bump(&mut self.stats.begins_table_full);
            return Err(uapi::ERR_TABLE_FULL);
        }
        if let Some(s) = slot_mut(self.spans, si) {
            *s = SpanSlot {
                key,
                proc: t.proc,
                thread: if stacked { ti } else { NIL },
                tid,
                depth,
                flags: if stacked { 0 } else { uapi::REC_ACTIVATION },
                open: if indexed { OPEN_INDEXED } else { OPEN },
                begin_mono_ns: now_mono,
                begin_real_ns: now_real,
                threshold_ns: threshold_ns.unwrap_or(DEFAULT_THRESHOLD),
                sched_epoch: self.sched_epoch,
                sched_at_begin: u32::from(self.sched_on),
                ..SpanSlot::EMPTY
            };
        }
        if let Some(p) = slot_mut(self.span_sched, si) {
            sched::clear(p);
        }
        if stacked {
            if let Some(t) = slot_mut(self.threads, ti) {
                if let Some(top) = t.stack.get_mut(depth as usize) {
                    *top = si;
                }
                t.depth = depth.wrapping_add(1);
                let tid = t.tid;
                self.set_active(tid, true);
            }
        }
        self.count_open(t.proc, true);
        self.begins = self.begins.wrapping_add(1);
        bump(&mut self.stats.spans_begun);
        Ok(())
    }

    /// [`Tracker::begin`] of a raw begin line, with its threshold if it has one
    /// ([`crate::key::parse_begin_line`]); a malformed line gives `ERR_MALFORMED` (a
    /// threshold out of range `ERR_THRESHOLD_RANGE`), counted in `begins_malformed`, and
    /// changes nothing else; the writer's call is excluded in every case.
    pub fn begin_line(
        &mut self,
        tid: u32,
        line: &[u8],
        now_mono: u64,
        now_real: u64,
    ) -> Result<(), i32> {
        match crate::key::parse_begin_line(line) {
            Ok((key, threshold)) => self.begin_with_threshold(tid, key, now_mono, now_real, threshold),
            Err(e) => {
                if let Some(ti) = self.thread_index.get(&tid) {
                    self.exclude_current_call(ti);
                }
                bump(&mut self.stats.begins_malformed);
                Err(e)
            }
        }
    }

    /// Ends span `key`, written by thread `writer_tid` (any thread of the span's process;
    /// the span need not be the innermost one of its thread). The writer's system call in
    /// progress is not recorded. If the span lasted at least its own threshold (from its
    /// begin line) or, when it was begun without one, `threshold_ns`, its record is
    /// encoded into `out` (which should hold `record::record_size(max_calls)` bytes; calls
    /// that do not fit are counted as unitemised and flagged `REC_CALLS_TRUNCATED`).
    /// Errors (each counted): `ERR_UNTRACKED`; `ERR_UNKNOWN_SPAN` if the span is not open in
    /// the writer's process.
    pub fn end(
        &mut self,
        writer_tid: u32,
        key: SpanKey,
        now_mono: u64,
        now_real: u64,
        threshold_ns: u64,
        out: &mut [u8],
    ) -> Result<EndOutcome, i32> {
        let Some((wi, proc)) = self
            .thread_index
            .get(&writer_tid)
            .and_then(|ti| self.threads.get(ti as usize).map(|t| (ti, t.proc)))
        else {
            bump(&mut self.stats.ends_untracked);
            return Err(uapi::ERR_UNTRACKED);
        };
        self.exclude_current_call(wi);
        let Some(si) = self.span_index.get(&OpenSpanKey { key, proc }) else {
            bump(&mut self.stats.ends_unknown);
            return Err(uapi::ERR_UNKNOWN_SPAN);
        };
        // The writer's time so far goes to its active span (the ending one, if innermost).
        if self.threads.get(wi as usize).is_some_and(|t| t.slot_addr == 0) {
            let top = self.active_span(wi, None);
            self.charge_cpu(wi, top, now_mono);
        }
        // The span's own thread's pending calls, before its figures are read.
        let owner = self.spans.get(si as usize).map_or(NIL, |s| s.thread);
        self.fold_until(owner, now_mono);
        // The calls of the process's threads with an active-span slot (hot.rs), to every
        // open span they name, this one included.
        self.fold_slotted(proc, now_mono);
        let Some(mut s) = self.spans.get(si as usize).copied() else {
            bump(&mut self.stats.ends_unknown);
            return Err(uapi::ERR_UNKNOWN_SPAN);
        };
        // Ended from another thread while its own thread is off its CPU: the stretch so far
        // is the span's (the rest, after the end, is not).
        self.charge_pending_stretch(s.thread, si, now_mono);
        self.unstack(s.thread, si);
        if s.tid != writer_tid {
            s.flags |= uapi::REC_ENDED_ELSEWHERE;
        }
        if self.sched_on && s.sched_at_begin != 0 && s.sched_epoch == self.sched_epoch {
            s.flags |= uapi::REC_SCHED;
        } else if self.sched_on || s.sched_at_begin != 0 {
            s.flags |= uapi::REC_SCHED_PARTIAL;
        }
        if self.span_sched.get(si as usize).is_some_and(|p| p.lost_events != 0) {
            s.flags |= uapi::REC_SCHED_LOST;
        }
        let threshold_ns = if s.threshold_ns == DEFAULT_THRESHOLD { threshold_ns } else { s.threshold_ns };
        let outcome = if now_mono.saturating_sub(s.begin_mono_ns) >= threshold_ns {
            bump(&mut self.stats.spans_slow);
            let (tgid, dropped) = self
                .processes
                .get(s.proc as usize)
                .map_or((0, 0), |p| (p.tgid, p.records_dropped));
            let len = self.encode(&mut s, si, tgid, dropped, now_mono, now_real, out);
            EndOutcome::Slow { len, tgid }
        } else {
            EndOutcome::Fast
        };
        self.free_span(si);
        bump(&mut self.stats.spans_ended);
        Ok(outcome)
    }

    /// [`Tracker::end`] of a raw end line; a malformed line gives `ERR_MALFORMED` (counted in
    /// `ends_malformed`), the writer's call is excluded in every case.
    pub fn end_line(
        &mut self,
        writer_tid: u32,
        line: &[u8],
        now_mono: u64,
        now_real: u64,
        threshold_ns: u64,
        out: &mut [u8],
    ) -> Result<EndOutcome, i32> {
        match crate::key::parse_span_line(line) {
            Ok(key) => self.end(writer_tid, key, now_mono, now_real, threshold_ns, out),
            Err(e) => {
                if let Some(ti) = self.thread_index.get(&writer_tid) {
                    self.exclude_current_call(ti);
                }
                bump(&mut self.stats.ends_malformed);
                Err(e)
            }
        }
    }

    /// Encodes the record of span `s` (ending now) into `out`; returns its length.
    #[allow(clippy::too_many_arguments)]
    fn encode(
        &mut self,
        s: &mut SpanSlot,
        si: u32,
        tgid: u32,
        dropped: u64,
        end_mono: u64,
        end_real: u64,
        out: &mut [u8],
    ) -> usize {
        let Some(room) = out.len().checked_sub(RECORD_HEADER_SIZE) else {
            bump(&mut self.stats.records_truncated);
            return 0;
        };
        let fit = (room / SYSCALL_ENTRY_SIZE).min(s.n_entries as usize) as u32;
        if fit < s.n_entries {
            bump(&mut self.stats.records_truncated);
            s.flags |= uapi::REC_CALLS_TRUNCATED;
        }
        // Copy the entries that fit; count the others as unitemised.
        let mut chunk = s.first_chunk;
        let mut off = RECORD_HEADER_SIZE;
        for i in 0..s.n_entries {
            let slot = (i as usize) % CHUNK_ENTRIES;
            let Some(c) = self.chunks.get(chunk as usize) else {
                break;
            };
            let Some(e) = c.entries.get(slot) else {
                break;
            };
            if i < fit {
                if let Some(dst) = out.get_mut(off..) {
                    record::encode_entry(e, dst);
                }
                off = off.wrapping_add(SYSCALL_ENTRY_SIZE);
            } else {
                s.unitemised_calls = s.unitemised_calls.wrapping_add(1);
                s.unitemised_ns = s
                    .unitemised_ns
                    .saturating_add(e.end_mono_ns.saturating_sub(e.start_mono_ns));
            }
            if slot == CHUNK_ENTRIES - 1 {
                chunk = c.next;
            }
        }
        let h = RecordHeader {
            magic: uapi::RECORD_MAGIC,
            version: uapi::ABI_VERSION as u16,
            header_size: RECORD_HEADER_SIZE as u16,
            total_size: record::record_size(fit) as u32,
            n_entries: fit,
            trace_id: s.key.trace_id,
            span_id: s.key.span_id,
            tid: s.tid,
            tgid,
            begin_mono_ns: s.begin_mono_ns,
            end_mono_ns: end_mono,
            begin_real_ns: s.begin_real_ns,
            end_real_ns: end_real,
            depth: s.depth as u16,
            n_threads: s.n_threads.min(u32::from(u16::MAX)) as u16,
            flags: s.flags,
            total_calls: s.total_calls,
            total_call_ns: s.total_call_ns,
            unitemised_calls: s.unitemised_calls,
            unitemised_ns: s.unitemised_ns,
            records_dropped_before: dropped,
            sched: EMPTY_SCHED,
        };
        // The fixed fields, then the scheduler part from where it was charged (not copied
        // through the header: it is most of the record's fixed part).
        record::encode_fixed(&h, out);
        let kernel_addrs = self.processes.get(s.proc as usize).is_some_and(|p| p.kernel_addrs != 0);
        if let Some(p) = self.span_sched.get(si as usize) {
            record::encode_sched_into(p, kernel_addrs, out);
        }
        record::record_size(fit)
    }

    /// Drops the spans open for more than `timeout_ns` (counted in `spans_expired`); returns
    /// how many. O(span capacity): for a periodic timer.
    pub fn expire(&mut self, now_mono: u64, timeout_ns: u64) -> u32 {
        let mut n: u32 = 0;
        for si in 0..self.spans.len() {
            let si = si as u32;
            let Some(s) = self.spans.get(si as usize) else {
                break;
            };
            if s.open == 0 || now_mono.saturating_sub(s.begin_mono_ns) <= timeout_ns {
                continue;
            }
            let (thread, proc) = (s.thread, s.proc);
            self.fold(thread);
            self.fold_slotted(proc, now_mono);
            self.unstack(thread, si);
            if self.free_span(si) {
                bump(&mut self.stats.spans_expired);
                n = n.wrapping_add(1);
            }
        }
        n
    }

    // ---- system calls (hot path) ------------------------------------------------------

    /// Slot of tracked thread `tid`, through the lock-free path's hints first (confirmed
    /// by the slot's owner, so never wrong, only sometimes missing; a miss points the hint
    /// at the slot found).
    #[inline(always)]
    fn hot_thread(&mut self, tid: u32) -> Option<u32> {
        if let Some(ti) = self.hot.find_index(tid) {
            return Some(ti);
        }
        let ti = self.thread_index.get(&tid)?;
        self.hot.set_hint(tid, ti);
        Some(ti)
    }

    /// Thread `tid` enters system call `nr` (the raw number, `u32::MAX` for `-1`), for a
    /// thread without an active-span slot (tests; the kernel uses [`Tracker::sys_enter_with`]).
    #[inline]
    pub fn sys_enter(&mut self, tid: u32, nr: u32, now_mono: u64) {
        self.sys_enter_with(tid, nr, now_mono, |_| None);
    }

    /// Is span slot `si` open, in process `proc`, with slot value `v`?
    #[inline(always)]
    fn span_is(&self, si: u32, v: u64, proc: u32) -> bool {
        self.spans.get(si as usize).is_some_and(|s| {
            s.open != 0 && s.proc == proc && uapi::slot_value(&s.key.span_id) == v
        })
    }

    /// Thread `tid` enters system call `nr`. A thread with an active-span slot reads it
    /// through `read_slot(address)` (`None`: unreadable) and the call is charged to the
    /// span the slot names, now; otherwise the call goes, at its exit, to the innermost
    /// span of the thread's stack.
    #[inline]
    pub fn sys_enter_with(
        &mut self,
        tid: u32,
        nr: u32,
        now_mono: u64,
        read_slot: impl FnOnce(u64) -> Option<u64>,
    ) {
        let Some(ti) = self.hot_thread(tid) else {
            return;
        };
        let Some(t) = slot_mut(self.threads, ti) else {
            return;
        };
        if t.slot_addr == 0 {
            // The thread-per-request path: the span is chosen at exit. The call is noted
            // where the lock-free path notes it (hot.rs).
            if let Some(h) = self.hot.slot(ti) {
                h.enter(nr, now_mono);
            }
            return;
        }
        // The slot is read now; the span it names is looked up when the call is charged
        // (`charge_slotted`), as for the lock-free path (`HotPath::sys_enter_slot`).
        let addr = t.slot_addr;
        let Some(h) = self.hot.slot(ti) else {
            return;
        };
        match read_slot(addr) {
            None => {
                bump(&mut self.stats.slot_faults);
                h.enter_uncharged(nr, now_mono);
            }
            Some(0) => {
                bump(&mut self.stats.calls_no_active_span);
                h.enter_uncharged(nr, now_mono);
            }
            Some(v) => h.enter_slot(nr, now_mono, v),
        }
    }

    /// Thread `tid` leaves its system call with `ret`: the call goes to the span active at
    /// its entry (a thread with an active-span slot) or to the innermost open span of the
    /// thread, unless excluded, filtered out, or without a matching enter.
    #[inline]
    pub fn sys_exit(&mut self, tid: u32, ret: i64, now_mono: u64) {
        let Some(ti) = self.hot_thread(tid) else {
            return;
        };
        // A thread with a slot is switched on and off by other threads' spans, so an exit
        // without an enter is normal there (not counted).
        let slotted = self.threads.get(ti as usize).is_some_and(|t| t.slot_addr != 0);
        // The calls the lock-free path noted come first, then this one (hot.rs).
        let e = self.hot.slot(ti).and_then(|h| h.take_call(tid, ret, now_mono, !slotted));
        self.fold(ti);
        if let Some((e, v)) = e {
            self.charge_entry(ti, tid, e, v);
        }
    }

    /// Charges the finished call `e` to open span `si`: counted, and itemised unless
    /// filtered out or beyond the span's limit or the chunk pool.
    #[inline]
    fn charge(&mut self, si: u32, e: SyscallEntry) {
        let SyscallEntry {
            nr,
            tid,
            start_mono_ns: start,
            end_mono_ns: now_mono,
            ..
        } = e;
        if !self.filter.allows(nr) {
            bump(&mut self.stats.calls_filtered);
            return;
        }
        let Some(s) = slot_mut(self.spans, si) else {
            return;
        };
        // (The common case, one thread, is one comparison.)
        if s.n_threads != 1 || s.tids[0] != tid {
            note_thread(s, tid);
        }
        let dur = now_mono.saturating_sub(start);
        s.total_calls = s.total_calls.wrapping_add(1);
        s.total_call_ns = s.total_call_ns.saturating_add(dur);
        bump(&mut self.stats.calls_attributed);
        if s.n_entries >= self.max_calls {
            s.unitemised_calls = s.unitemised_calls.wrapping_add(1);
            s.unitemised_ns = s.unitemised_ns.saturating_add(dur);
            s.flags |= uapi::REC_CALLS_TRUNCATED;
            bump(&mut self.stats.calls_unitemised_limit);
            return;
        }
        let slot = (s.n_entries as usize) % CHUNK_ENTRIES;
        let chunk = if slot == 0 {
            let Some(c) = self.chunk_pool.pop() else {
                s.unitemised_calls = s.unitemised_calls.wrapping_add(1);
                s.unitemised_ns = s.unitemised_ns.saturating_add(dur);
                s.flags |= uapi::REC_POOL_EXHAUSTED;
                bump(&mut self.stats.calls_unitemised_pool);
                return;
            };
            if s.n_entries == 0 {
                s.first_chunk = c;
            } else if let Some(last) = slot_mut(self.chunks, s.last_chunk) {
                last.next = c;
            }
            s.last_chunk = c;
            c
        } else {
            s.last_chunk
        };
        let Some(ch) = slot_mut(self.chunks, chunk) else {
            return;
        };
        if slot == 0 {
            ch.next = NIL;
        }
        if let Some(x) = ch.entries.get_mut(slot) {
            *x = e;
            s.n_entries = s.n_entries.wrapping_add(1);
        }
    }

    // ---- records and counters ---------------------------------------------------------

    /// A record of process `tgid` was written to relay.
    pub fn note_record_written(&mut self, tgid: u32) {
        bump(&mut self.stats.records_written);
        if let Some(p) = self
            .find_process(tgid)
            .and_then(|i| slot_mut(self.processes, i))
        {
            bump(&mut p.records_written);
        }
    }

    /// A record of process `tgid` was dropped (relay buffer full). The process's count goes
    /// into `records_dropped_before` of its later records (cumulative since registration).
    pub fn note_record_dropped(&mut self, tgid: u32) {
        bump(&mut self.stats.records_dropped);
        if let Some(p) = self
            .find_process(tgid)
            .and_then(|i| slot_mut(self.processes, i))
        {
            bump(&mut p.records_dropped);
        }
    }

    /// Snapshot of the counters and gauges.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        // (Not `Iterator::count`: its generic sum is compiled with overflow checks here.)
        s.processes =
            self.processes.iter().fold(
                0u64,
                |n, p| if p.in_use != 0 { n.wrapping_add(1) } else { n },
            );
        s.process_capacity = self.processes.len() as u64;
        s.threads = u64::from(self.thread_pool.in_use());
        s.thread_capacity = u64::from(self.thread_pool.capacity());
        s.open_spans = u64::from(self.span_pool.in_use());
        s.span_capacity = u64::from(self.span_pool.capacity());
        s.spans_high_water = u64::from(self.span_pool.high_water());
        s.chunks_in_use = u64::from(self.chunk_pool.in_use());
        s.chunk_capacity = u64::from(self.chunk_pool.capacity());
        s.chunks_high_water = u64::from(self.chunk_pool.high_water());
        s.max_calls = u64::from(self.max_calls);
        s.max_procs_per_uid = u64::from(self.max_procs_per_uid);
        s.sched_enabled = u64::from(self.sched_on);
        // The live slots' own counts (the lock-free path counts there).
        for ti in 0..self.threads.len() {
            if let (Some(t), Some(h)) = (self.threads.get(ti), self.hot.slot(ti as u32)) {
                if t.proc != NIL {
                    s.calls_without_enter = s.calls_without_enter.wrapping_add(h.without_enter());
                }
            }
        }
        s
    }

    // ---- scheduler accounting (sched_switch / sched_waking probes) --------------------

    /// Lets the records of registered process `tgid` carry kernel addresses (the kernel
    /// stacks of its waits), or not (the default: they are left out, `n_kstack` 0).
    pub fn set_kernel_addrs(&mut self, tgid: u32, allowed: bool) {
        if let Some(pi) = self.find_process(tgid) {
            if let Some(p) = slot_mut(self.processes, pi) {
                p.kernel_addrs = u32::from(allowed);
            }
        }
    }

    /// Whether scheduler accounting is on (sysfs `sched`).
    pub fn sched_on(&self) -> bool {
        self.sched_on
    }

    /// Switches scheduler accounting on or off. Spans open across a switch get
    /// `REC_SCHED_PARTIAL`; pending stretches and checkpoints are forgotten.
    pub fn set_sched(&mut self, on: bool) {
        if on == self.sched_on {
            return;
        }
        self.sched_on = on;
        self.sched_epoch = self.sched_epoch.wrapping_add(1);
        for t in self.thread_sched.iter_mut() {
            *t = ThreadSched::EMPTY;
        }
    }

    /// The span active on thread slot `ti` now: the innermost open span of its stack, or,
    /// with an active-span slot, the span its slot value `slot` names (`None`: not read,
    /// unreadable, or 0). `NIL` if none.
    fn active_span(&mut self, ti: u32, slot: Option<u64>) -> u32 {
        let Some(t) = self.threads.get(ti as usize) else {
            return NIL;
        };
        if t.slot_addr == 0 {
            return match t.depth {
                0 => NIL,
                d => t.stack.get(d as usize - 1).copied().unwrap_or(NIL),
            };
        }
        match slot {
            Some(v) if v != 0 => self.resolve_slot(ti, v),
            _ => NIL,
        }
    }

    /// The open span slot value `v` names in thread slot `ti`'s process (`NIL`: none),
    /// through the thread's cache of its last answer.
    fn resolve_slot(&mut self, ti: u32, v: u64) -> u32 {
        let Some(t) = self.threads.get(ti as usize) else {
            return NIL;
        };
        let (cached, cached_si, cached_gen, proc) = (t.slot_value, t.slot_span, t.slot_gen, t.proc);
        if v == cached && (self.span_is(cached_si, v, proc) || (cached_si == NIL && cached_gen == self.begins)) {
            return cached_si;
        }
        let si = self
            .active_index
            .get(&ActiveKey {
                span_id: v,
                proc,
                pad: 0,
            })
            .unwrap_or(NIL);
        let begins = self.begins;
        if let Some(t) = slot_mut(self.threads, ti) {
            t.slot_value = v;
            t.slot_span = si;
            t.slot_gen = begins;
        }
        si
    }

    /// An on-CPU checkpoint of thread slot `ti` at `now`: the time since the last one goes
    /// to span `si` (if open, and the checkpoint fell inside it), and `now` becomes the
    /// last checkpoint. Only for threads without an active-span slot: their active span
    /// changes only at checkpoints (span begin and end). A thread with a slot switches
    /// spans in user space, unseen: its on-CPU time comes from [`Tracker::sched_runtime`].
    fn charge_cpu(&mut self, ti: u32, si: u32, now: u64) {
        if !self.sched_on {
            return;
        }
        let slotted = self.threads.get(ti as usize).is_some_and(|t| t.slot_addr != 0);
        let Some(ts) = slot_mut(self.thread_sched, ti) else {
            return;
        };
        let since = core::mem::replace(&mut ts.run_since, now);
        if since == 0 || si == NIL || slotted {
            return;
        }
        if self.spans.get(si as usize).is_some_and(|s| s.open != 0 && since >= s.begin_mono_ns && now >= since) {
            if let Some(p) = slot_mut(self.span_sched, si) {
                p.on_cpu_ns = p.on_cpu_ns.saturating_add(now - since);
            }
        }
    }

    /// `sched_stat_runtime`: tracked thread `tid` ran `delta` ns more (the kernel's own
    /// `sum_exec_runtime` increment, at every tick and scheduler update). For a thread with
    /// an active-span slot it goes to the span its slot names now (`slot`, read when the
    /// thread is the current task: `current`), or, updated from another CPU, to the span
    /// it was last seen running. Threads without a slot are charged by checkpoints.
    pub fn sched_runtime(&mut self, tid: u32, delta: u64, current: bool, slot: Option<u64>) {
        if !self.sched_on {
            return;
        }
        let Some(ti) = self.hot_thread(tid) else {
            return;
        };
        let Some(t) = self.threads.get(ti as usize) else {
            return;
        };
        if t.slot_addr == 0 {
            return;
        }
        let si = if current {
            self.active_span(ti, slot)
        } else if self.span_is(t.slot_span, t.slot_value, t.proc) {
            t.slot_span
        } else {
            NIL
        };
        if let Some(p) = slot_mut(self.span_sched, si) {
            p.on_cpu_ns = p.on_cpu_ns.saturating_add(delta);
        }
    }

    /// `sched_switch`, the leaving side: tracked thread `tid` leaves CPU `cpu` at `now`,
    /// preempted (`preempt`, or `state` 0: a yield) or blocked in `state` (masked
    /// `prev_state`), with `in_iowait`; `slot` is its active-span slot value if it has
    /// one and it could be read. The time since its last checkpoint goes to its active
    /// span, and the stretch off the CPU starts, for that span, with the kernel and user
    /// stacks of the blocking call (`kstack`, `ustack`: return addresses, innermost first;
    /// empty when not taken), which the record keeps if the stretch is among its longest.
    #[allow(clippy::too_many_arguments)]
    pub fn sched_out(
        &mut self,
        tid: u32,
        cpu: u32,
        preempt: bool,
        state: u32,
        in_iowait: bool,
        slot: Option<u64>,
        now: u64,
        kstack: &[u64],
        ustack: &[u64],
    ) {
        if !self.sched_on {
            return;
        }
        let Some(ti) = self.hot_thread(tid) else {
            return;
        };
        let si = self.active_span(ti, slot);
        self.charge_cpu(ti, si, now);
        let v = self.spans.get(si as usize).map_or(0, |s| uapi::slot_value(&s.key.span_id));
        let nr = match self.threads.get(ti as usize) {
            Some(_) => self.hot.slot(ti).and_then(|h| h.call_in_progress()).unwrap_or(NO_CALL),
            None => NO_CALL,
        };
        let Some(ts) = slot_mut(self.thread_sched, ti) else {
            return;
        };
        ts.run_since = 0;
        if si == NIL {
            ts.off.since = 0;
            ts.off_span = NIL;
            return;
        }
        sched::start_off_cpu(&mut ts.off, now, cpu, state, preempt, in_iowait, kstack, ustack);
        ts.off_span = si;
        ts.off_span_v = v;
        ts.off_nr = nr;
    }

    /// `sched_waking` of tracked thread `tid` at `now`, by `waker` (whose active-span slot
    /// value, if it has one and it is the current task, is `waker_slot`).
    pub fn sched_waking(&mut self, tid: u32, now: u64, waker: &Waker, waker_slot: Option<u64>) {
        if !self.sched_on {
            return;
        }
        let Some(ti) = self.hot_thread(tid) else {
            return;
        };
        if self.thread_sched.get(ti as usize).is_none_or(|t| t.off.since == 0 || t.off.woken_at != 0) {
            return;
        }
        // Was the waker inside a tracked span? (Only a task waker: in a hard interrupt the
        // current task is merely whoever was interrupted, and C passes tid 0.)
        let mut ids = None;
        if waker.tid != 0 {
            if let Some(wi) = self.hot_thread(waker.tid) {
                let wsi = self.active_span(wi, waker_slot);
                ids = self.spans.get(wsi as usize).filter(|s| s.open != 0).map(|s| s.key);
            }
        }
        bump(&mut self.stats.sched_wakeups);
        if let Some(t) = slot_mut(self.thread_sched, ti) {
            sched::note_wakeup(&mut t.off, waker, now);
            if let Some(k) = ids {
                t.off.wait.waker_trace_id = k.trace_id;
                t.off.wait.waker_span_id = k.span_id;
                t.off.wait.flags |= uapi::WAIT_WAKER_IN_SPAN;
            }
        }
    }

    /// Charges the off-CPU stretch pending on thread slot `ti` for span `si` up to `now`
    /// (the span ends) and drops it.
    fn charge_pending_stretch(&mut self, ti: u32, si: u32, now: u64) {
        let tid = self.threads.get(ti as usize).map_or(0, |t| t.tid);
        let Some(ts) = slot_mut(self.thread_sched, ti) else {
            return;
        };
        if ts.off.since == 0 || ts.off_span != si {
            return;
        }
        let since = core::mem::replace(&mut ts.off.since, 0);
        ts.off_span = NIL;
        let (nr, cpu) = (ts.off_nr, ts.off.cpu);
        if let (Some(ts), Some(p)) = (self.thread_sched.get(ti as usize), self.span_sched.get_mut(si as usize)) {
            sched::charge_off_cpu(p, &ts.off, since, tid, nr, cpu, now);
        }
        bump(&mut self.stats.sched_stretches);
    }

    /// `sched_switch`, the arriving side: tracked thread `tid` comes on CPU `cpu` at `now`.
    /// Its pending off-CPU stretch goes to the span it was for, if still open.
    pub fn sched_in(&mut self, tid: u32, cpu: u32, now: u64) {
        if !self.sched_on {
            return;
        }
        let Some(ti) = self.hot_thread(tid) else {
            return;
        };
        let proc = self.threads.get(ti as usize).map_or(NIL, |t| t.proc);
        let Some(ts) = slot_mut(self.thread_sched, ti) else {
            return;
        };
        ts.run_since = now;
        let since = core::mem::replace(&mut ts.off.since, 0);
        let (si, v, nr) = (core::mem::replace(&mut ts.off_span, NIL), ts.off_span_v, ts.off_nr);
        if since == 0 || si == NIL {
            return;
        }
        if !self.span_is(si, v, proc) {
            bump(&mut self.stats.sched_unattributed);
            return;
        }
        if let (Some(ts), Some(p)) = (self.thread_sched.get(ti as usize), self.span_sched.get_mut(si as usize)) {
            sched::charge_off_cpu(p, &ts.off, since, tid, nr, cpu, now);
        }
        bump(&mut self.stats.sched_stretches);
    }

    /// Writes the stats as `name value\n` lines (about 1 KB; 4096 bytes always suffice).
    /// Returns the length written (whole lines only).
    pub fn format_stats(&self, out: &mut [u8]) -> usize {
        let mut w = TextBuf::new(out);
        self.stats().for_each(|name, v| {
            let _ = w.push_str(name) && w.push_str(" ") && w.push_u64(v) && w.push_str("\n");
        });
        // A line cut by the end of the buffer is not shown.
        let text = w.as_bytes();
        match text.iter().rposition(|&c| c == b'\n') {
            Some(last) if w.overflowed() => last.wrapping_add(1),
            Some(_) => text.len(),
            None => 0,
        }
    }
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
