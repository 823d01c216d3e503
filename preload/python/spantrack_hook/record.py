"""Decoding of one span record as spantrack.ko writes it (the layout is uapi/src/lib.rs; these
constants are checked against it by tests/test_golden.py through tests/golden/records.json:
`RecordHeader`, 128 bytes, then `n_entries` x `SyscallEntry`, 32 bytes, little-endian)."""

import struct
from typing import List, NamedTuple

ABI_VERSION = 3
RECORD_MAGIC = int.from_bytes(b"SPTR", "little")

# RecordHeader: magic u32, version u16, header_size u16, total_size u32, n_entries u32,
# trace_id [16], span_id [8], tid u32, tgid u32, begin/end mono, begin/end real u64,
# depth u16, n_threads u16, flags u32, total_calls, total_call_ns, unitemised_calls, unitemised_ns,
# records_dropped_before u64.
_HEADER = struct.Struct("<IHHII16s8sIIQQQQHHIQQQQQ")
# SyscallEntry: nr u32, tid u32, ret i64, start_mono_ns u64, end_mono_ns u64.
_ENTRY = struct.Struct("<IIqQQ")
HEADER_SIZE = _HEADER.size
ENTRY_SIZE = _ENTRY.size
assert HEADER_SIZE == 128 and ENTRY_SIZE == 32
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


class SyscallEntry(NamedTuple):
    nr: int
    tid: int
    ret: int
    start_mono_ns: int
    end_mono_ns: int


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
                      unitemised_calls, unitemised_ns, dropped_before, entries, n_threads)


def encode(rec: SpanRecord) -> bytes:
    """The inverse of decode (tests and fakes build records with it)."""
    n = len(rec.entries)
    head = _HEADER.pack(RECORD_MAGIC, ABI_VERSION, HEADER_SIZE, HEADER_SIZE + n * ENTRY_SIZE, n,
                        rec.trace_id, rec.span_id, rec.tid, rec.tgid, rec.begin_mono_ns,
                        rec.end_mono_ns, rec.begin_real_ns, rec.end_real_ns, rec.depth,
                        rec.n_threads, rec.flags, rec.total_calls, rec.total_call_ns, rec.unitemised_calls,
                        rec.unitemised_ns, rec.records_dropped_before)
    return head + b"".join(_ENTRY.pack(*e) for e in rec.entries)
