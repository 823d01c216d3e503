"""Decoding of one span record as spantrack.ko writes it (the layout is uapi/src/lib.rs; these
constants are checked against it by tests/test_golden.py through tests/golden/records.json:
`RecordHeader`, 1544 bytes (128 of span and call figures, then the 1416-byte `SchedPart`: 104
bytes of figures and 4 `WaitEntry` of 328 with their stacks), then `n_entries` x
`SyscallEntry`, 32 bytes, little-endian)."""

import struct
from typing import List, NamedTuple

ABI_VERSION = 5
RECORD_MAGIC = int.from_bytes(b"SPTR", "little")

# RecordHeader: magic u32, version u16, header_size u16, total_size u32, n_entries u32,
# trace_id [16], span_id [8], tid u32, tgid u32, begin/end mono, begin/end real u64,
# depth u16, n_threads u16, flags u32, total_calls, total_call_ns, unitemised_calls, unitemised_ns,
# records_dropped_before u64; then the SchedPart.
_HEADER = struct.Struct("<IHHII16s8sIIQQQQHHIQQQQQ")
# SchedPart: on_cpu_ns, runq_wakeup_ns, runq_preempt_ns u64, blocked_ns [u64; 5], blocks,
# preemptions, migrations, wakeups u32, wakeup_total_ns, wakeup_max_ns u64, n_waits,
# lost_events u32, then MAX_WAITS x WaitEntry.
_SCHED = struct.Struct("<QQQ5QIIIIQQII")
# WaitEntry: start_mono_ns, blocked_ns, runq_ns, waker_on_cpu_ns u64, waker_trace_id [16],
# waker_span_id [8], waker_comm [16], tid, nr, waker_tid, waker_tgid, waker_nr u32, cause,
# waker_ctx, softirq, flags u8, kstack [u64; KSTACK_DEPTH], ustack [u64; USTACK_DEPTH], n_kstack,
# n_ustack u8, 6 bytes of padding.
KSTACK_DEPTH = 16
USTACK_DEPTH = 12
_WAIT = struct.Struct(f"<QQQQ16s8s16sIIIIIBBBB{KSTACK_DEPTH}Q{USTACK_DEPTH}QBB6x")
# SyscallEntry: nr u32, tid u32, ret i64, start_mono_ns u64, end_mono_ns u64.
_ENTRY = struct.Struct("<IIqQQ")
MAX_WAITS = 4
SCHED_PART_SIZE = _SCHED.size + MAX_WAITS * _WAIT.size
WAIT_ENTRY_SIZE = _WAIT.size
HEADER_SIZE = _HEADER.size + SCHED_PART_SIZE
ENTRY_SIZE = _ENTRY.size
assert (HEADER_SIZE, SCHED_PART_SIZE, WAIT_ENTRY_SIZE, ENTRY_SIZE) == (1544, 1416, 328, 32)
# Largest record the module writes (rust_module/logic/record.rs RECORD_MAX_SIZE): a buffer
# this big takes any record.
RECORD_MAX_SIZE = 256 * 1024
# Distinct threads a record counts exactly (uapi MAX_SPAN_THREADS).
MAX_SPAN_THREADS = 8

# RecordHeader.flags
REC_CALLS_TRUNCATED = 1 << 0
REC_POOL_EXHAUSTED = 1 << 1
REC_ENDED_ELSEWHERE = 1 << 2
REC_MANY_THREADS = 1 << 3
REC_ACTIVATION = 1 << 4
REC_SCHED = 1 << 5          # the scheduler part covers the whole span
REC_SCHED_PARTIAL = 1 << 6  # ... only part of it (switched on or off meanwhile)
REC_SCHED_LOST = 1 << 7     # scheduler events were lost (SchedPart.lost_events)

# Blocked-time causes (SchedPart.blocked_ns index, WaitEntry.cause).
CAUSE_IO, CAUSE_LOCK, CAUSE_NET, CAUSE_TIMER, CAUSE_OTHER = range(5)
N_CAUSES = 5
CAUSE_PREEMPTED = 5
# WaitEntry.waker_ctx
CTX_TASK, CTX_HARDIRQ, CTX_SOFTIRQ, CTX_NMI, CTX_TIMER = range(5)
CTX_NONE = 255
SOFTIRQ_NONE = 255
NO_CALL = 0xFFFF_FFFF   # WaitEntry.nr / waker_nr: not in a system call
# WaitEntry.flags
WAIT_WAKER_IN_SPAN = 1 << 0
WAIT_WAKER_KTHREAD = 1 << 1


class SyscallEntry(NamedTuple):
    nr: int
    tid: int
    ret: int
    start_mono_ns: int
    end_mono_ns: int


class WaitEntry(NamedTuple):
    """One of a span's longest off-CPU stretches (uapi WaitEntry). The defaults describe a
    wait outside a system call whose wake-up was not seen; a record's unused entries are all
    zero (`_NO_WAIT`)."""
    start_mono_ns: int = 0
    blocked_ns: int = 0
    runq_ns: int = 0
    waker_on_cpu_ns: int = 0
    waker_trace_id: bytes = bytes(16)
    waker_span_id: bytes = bytes(8)
    waker_comm: bytes = bytes(16)
    tid: int = 0
    nr: int = NO_CALL
    waker_tid: int = 0
    waker_tgid: int = 0
    waker_nr: int = NO_CALL
    cause: int = 0
    waker_ctx: int = CTX_NONE
    softirq: int = SOFTIRQ_NONE
    flags: int = 0
    # Where it blocked (a blocking switch with sysfs sched_stacks on): kernel return
    # addresses (kstack[:n_kstack], innermost first, the scheduler's own frames included),
    # the user IP of the system call then the user frame-pointer chain (ustack[:n_ustack]).
    kstack: tuple = (0,) * KSTACK_DEPTH
    ustack: tuple = (0,) * USTACK_DEPTH
    n_kstack: int = 0
    n_ustack: int = 0


_NO_WAIT = WaitEntry(nr=0, waker_nr=0, waker_ctx=0, softirq=0)  # all zero bytes
_N_FIXED = 16  # WaitEntry's fields before the stacks


def _decode_wait(buf, off: int) -> WaitEntry:
    f = _WAIT.unpack_from(buf, off)
    k = _N_FIXED + KSTACK_DEPTH
    u = k + USTACK_DEPTH
    return WaitEntry(*f[:_N_FIXED], tuple(f[_N_FIXED:k]), tuple(f[k:u]), f[u], f[u + 1])


def _pad(addrs, n: int) -> tuple:
    return tuple(addrs[:n]) + (0,) * (n - len(addrs[:n]))


def _encode_wait(w: WaitEntry) -> bytes:
    return _WAIT.pack(*w[:_N_FIXED], *_pad(w.kstack, KSTACK_DEPTH), *_pad(w.ustack, USTACK_DEPTH),
                      w.n_kstack, w.n_ustack)


class SchedPart(NamedTuple):
    """The scheduler's view of the span (uapi SchedPart; valid with REC_SCHED or
    REC_SCHED_PARTIAL). `waits` holds all MAX_WAITS entries; the first n_waits are valid."""
    on_cpu_ns: int = 0
    runq_wakeup_ns: int = 0
    runq_preempt_ns: int = 0
    blocked_ns: tuple = (0,) * N_CAUSES
    blocks: int = 0
    preemptions: int = 0
    migrations: int = 0
    wakeups: int = 0
    wakeup_total_ns: int = 0
    wakeup_max_ns: int = 0
    n_waits: int = 0
    lost_events: int = 0
    waits: tuple = (_NO_WAIT,) * MAX_WAITS


_NO_SCHED = SchedPart()


def _decode_sched(buf, off: int) -> SchedPart:
    f = _SCHED.unpack_from(buf, off)
    waits = tuple(_decode_wait(buf, off + _SCHED.size + i * _WAIT.size) for i in range(MAX_WAITS))
    return SchedPart(f[0], f[1], f[2], tuple(f[3:8]), *f[8:16], waits)


def _encode_sched(p: SchedPart) -> bytes:
    waits = tuple(p.waits[:MAX_WAITS]) + (_NO_WAIT,) * (MAX_WAITS - len(p.waits))
    return (_SCHED.pack(p.on_cpu_ns, p.runq_wakeup_ns, p.runq_preempt_ns, *p.blocked_ns,
                        p.blocks, p.preemptions, p.migrations, p.wakeups, p.wakeup_total_ns,
                        p.wakeup_max_ns, p.n_waits, p.lost_events)
            + b"".join(_encode_wait(w) for w in waits))


class SpanRecord(NamedTuple):
    trace_id: bytes
    span_id: bytes
    tid: int
    tgid: int
    begin_mono_ns: int
    end_mono_ns: int
    begin_real_ns: int
    end_real_ns: int
    depth: int
    flags: int
    total_calls: int
    total_call_ns: int
    unitemised_calls: int
    unitemised_ns: int
    records_dropped_before: int
    entries: List[SyscallEntry]
    # Threads whose calls were charged to the span (REC_MANY_THREADS: maybe more).
    n_threads: int = 1
    # The scheduler part (all zero without REC_SCHED / REC_SCHED_PARTIAL).
    sched: SchedPart = _NO_SCHED

    def mono_to_real(self, mono_ns: int) -> int:
        """CLOCK_MONOTONIC stamp of this span's thread -> wall clock (ns since the epoch),
        through the (real, mono) pair the module read together at the span's begin."""
        return mono_ns + (self.begin_real_ns - self.begin_mono_ns)


class RecordError(ValueError):
    pass


def decode(buf: bytes) -> SpanRecord:
    """Decodes one whole record; raises RecordError when `buf` is not one."""
    if len(buf) < HEADER_SIZE:
        raise RecordError(f"record of {len(buf)} bytes is shorter than its header")
    (magic, version, header_size, total_size, n_entries, trace_id, span_id, tid, tgid,
     begin_mono, end_mono, begin_real, end_real, depth, n_threads, flags, total_calls,
     total_call_ns,
     unitemised_calls, unitemised_ns, dropped_before) = _HEADER.unpack_from(buf, 0)
    if magic != RECORD_MAGIC:
        raise RecordError(f"bad magic {magic:#x}")
    if version != ABI_VERSION:
        raise RecordError(f"record version {version}, expected {ABI_VERSION}")
    if header_size != HEADER_SIZE:
        raise RecordError(f"header_size {header_size}, expected {HEADER_SIZE}")
    if total_size != HEADER_SIZE + n_entries * ENTRY_SIZE or total_size > len(buf):
        raise RecordError(f"total_size {total_size} disagrees with {n_entries} entries "
                          f"or the {len(buf)} bytes read")
    entries = [SyscallEntry(*_ENTRY.unpack_from(buf, HEADER_SIZE + i * ENTRY_SIZE))
               for i in range(n_entries)]
    return SpanRecord(bytes(trace_id), bytes(span_id), tid, tgid, begin_mono, end_mono,
                      begin_real, end_real, depth, flags, total_calls, total_call_ns,
                      unitemised_calls, unitemised_ns, dropped_before, entries, n_threads,
                      _decode_sched(buf, _HEADER.size))


def encode(rec: SpanRecord) -> bytes:
    """The inverse of decode (tests and fakes build records with it)."""
    n = len(rec.entries)
    head = _HEADER.pack(RECORD_MAGIC, ABI_VERSION, HEADER_SIZE, HEADER_SIZE + n * ENTRY_SIZE, n,
                        rec.trace_id, rec.span_id, rec.tid, rec.tgid, rec.begin_mono_ns,
                        rec.end_mono_ns, rec.begin_real_ns, rec.end_real_ns, rec.depth,
                        rec.n_threads, rec.flags, rec.total_calls, rec.total_call_ns, rec.unitemised_calls,
                        rec.unitemised_ns, rec.records_dropped_before)
    head += _encode_sched(rec.sched)
    return head + b"".join(_ENTRY.pack(*e) for e in rec.entries)
