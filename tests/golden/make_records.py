#!/usr/bin/env python3
"""Writes tests/golden/records.json: the golden kernel records, each as the readable fields
below and as the bytes spantrack.ko would write (hex), encoded here from the layout of
uapi/src/lib.rs (RecordHeader 128 bytes, SyscallEntry 32 bytes, little-endian) without the
integrations' own code. Run it only when a case is added or changed, and review the diff of
records.json and of the hand-checked spans.json; the tests never regenerate either.

Usage: python3 tests/golden/make_records.py
"""
import json
import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = struct.Struct("<IHHII16s8sIIQQQQHHIQQQQQ")
ENTRY = struct.Struct("<IIqQQ")
MAGIC = int.from_bytes(b"SPTR", "little")
# The record's version is the ABI's: after a bump of uapi's ABI_VERSION, rerun this script.
with open(os.path.join(HERE, "..", "..", "uapi", "src", "lib.rs"), encoding="utf-8") as _f:
    ABI_VERSION = int(re.search(r"pub const ABI_VERSION: u32 = (\d+);", _f.read()).group(1))
T0_REAL = 1_700_000_000_000_000_000  # the span's begin, CLOCK_REALTIME
T0_MONO = 5_000_000_000              # the same instant, CLOCK_MONOTONIC
TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TID = 4242

TRUNCATED, POOL, ELSEWHERE, MANY_THREADS, ACTIVATION = 1, 2, 4, 8, 16


def call(nr, ret, start_us, end_us, tid=TID):
    """A system call from start_us to end_us after the span's begin."""
    return [nr, tid, ret, T0_MONO + start_us * 1000, T0_MONO + end_us * 1000]


def call_ns(nr, ret, start_ns, end_ns, tid=TID):
    return [nr, tid, ret, T0_MONO + start_ns, T0_MONO + end_ns]


def header(entries, **kw):
    h = dict(magic=MAGIC, version=ABI_VERSION, header_size=HEADER.size,
             total_size=HEADER.size + len(entries) * ENTRY.size, n_entries=len(entries),
             trace_id=TRACE, span_id=SPAN, tid=TID, tgid=4200,
             begin_mono_ns=T0_MONO, end_mono_ns=T0_MONO + 20_000_000,
             begin_real_ns=T0_REAL, end_real_ns=T0_REAL + 20_000_000,
             depth=0, n_threads=1 if entries else 0, flags=0,
             total_calls=len(entries),
             total_call_ns=sum(max(0, e[4] - e[3]) for e in entries),
             unitemised_calls=0, unitemised_ns=0, records_dropped_before=0)
    h.update(kw)
    return h


def encode(h, entries):
    b = HEADER.pack(h["magic"], h["version"], h["header_size"], h["total_size"], h["n_entries"],
                    bytes.fromhex(h["trace_id"]), bytes.fromhex(h["span_id"]), h["tid"], h["tgid"],
                    h["begin_mono_ns"], h["end_mono_ns"], h["begin_real_ns"], h["end_real_ns"],
                    h["depth"], h["n_threads"], h["flags"], h["total_calls"], h["total_call_ns"],
                    h["unitemised_calls"], h["unitemised_ns"], h["records_dropped_before"])
    return b + b"".join(ENTRY.pack(*e) for e in entries)


def case(name, about, entries, **kw):
    h = header(entries, **kw)
    return name, {"about": about, "header": h, "entries": entries, "hex": encode(h, entries).hex()}


CASES = [
    case("plain", "three successful calls on the thread that began the span", [
        call(1, 4096, 100, 300),          # write 200 us
        call(74, 0, 400, 12_400),         # fsync 12 ms
        call(0, 512, 12_500, 12_505),     # read 5 us
    ]),
    case("errors", "failed calls: named errnos (EDEADLK and EOPNOTSUPP, not their aliases), a "
         "kernel restart code, an errno without a name, -4096 (not an error), an unknown "
         "system call number", [
        call(2, -2, 100, 120),            # open: ENOENT
        call(202, -11, 200, 6_200),       # futex: EAGAIN
        call(7, -35, 6_300, 6_310),       # poll: EDEADLK
        call(54, -95, 6_400, 6_401),      # setsockopt: EOPNOTSUPP
        call(230, -512, 6_500, 9_500),    # clock_nanosleep: ERESTARTSYS
        call(16, -4000, 9_600, 9_610),    # ioctl: errno 4000 has no name
        call(9, -4096, 9_700, 9_720),     # mmap returning an address that looks negative
        call(999, -1, 9_800, 9_900),      # unknown system call: EPERM
    ]),
    case("truncated", "more calls than max_calls: counted, not itemised", [
        call(1, 1, 100, 200), call(1, 1, 300, 400),
    ], flags=TRUNCATED, total_calls=7, total_call_ns=900_000, unitemised_calls=5,
        unitemised_ns=700_000),
    case("pool_exhausted", "the module's entry pool was empty", [
        call(3, 0, 100, 150),
    ], flags=POOL, total_calls=4, total_call_ns=200_000, unitemised_calls=3, unitemised_ns=150_000),
    case("truncated_and_pool", "both reasons, and records dropped before this one", [
        call(3, 0, 100, 150),
    ], flags=TRUNCATED | POOL, total_calls=10, total_call_ns=1_000_000, unitemised_calls=9,
        unitemised_ns=950_000, records_dropped_before=17),
    case("ended_elsewhere", "ended by another thread than the one that began it", [
        call(202, 0, 1_000, 15_000),
    ], flags=ELSEWHERE),
    case("threads", "calls from three threads (an async task that moved); an entry with tid 0 is "
         "the beginning thread's", [
        call(45, 64, 100, 2_100, tid=4242),
        call(44, 64, 2_200, 2_300, tid=4243),
        call(232, 1, 2_400, 10_400, tid=4244),
        call(1, 8, 10_500, 10_600, tid=0),
    ], n_threads=3),
    case("many_threads_activation", "begun by a thread with an active-span slot; calls from more "
         "threads than the module tells apart (n_threads is a lower bound)", [
        call(0, 10, 100, 200, tid=5001), call(0, 10, 300, 400, tid=5002),
    ], n_threads=8, flags=MANY_THREADS | ACTIVATION, total_calls=12, total_call_ns=1_200_000,
        unitemised_calls=10, unitemised_ns=1_000_000),
    case("min_child", "with min_child_ns = 1 ms: children only for calls of at least 1 ms "
         "(inclusive); an entry that ends before it starts counts as 0 ns", [
        call(1, 4096, 100, 300),          # 200 us
        call(74, 0, 400, 12_400),         # 12 ms
        call(202, -110, 13_000, 14_000),  # exactly 1 ms: kept; ETIMEDOUT
        call(39, 7, 14_100, 14_101),      # 1 us
        call(39, 7, 14_300, 14_200),      # end before start
    ]),
    case("formatting", "spantrack.syscalls.top: ns/us/ms/s, rounding half up, the unit chosen "
         "before rounding, the five longest, ties by count then number (open 2 before close 3)", [
        call_ns(39, 1, 0, 999),                          # getpid 999 ns
        call_ns(102, 1000, 1_000, 2_000),                # getuid 1000 ns -> 1.0us
        call_ns(104, 1000, 2_000, 3_250),                # getgid 1250 ns -> 1.3us (half up)
        call_ns(3, 0, 10_000, 1_009_950),                # close 999950 ns -> 1000.0us
        call_ns(2, 3, 1_010_000, 2_009_950),             # open 999950 ns: ties close, lower nr
        call_ns(35, 0, 2_010_000, 2_010_000 + 2_345_000_000),  # nanosleep 2.345 s -> 2.35s
        call_ns(230, 0, 3_000_000, 3_050_000),           # clock_nanosleep 50 us
        call_ns(230, 0, 3_100_000, 3_150_000),           # ... twice: 100.0us(2)
    ], end_mono_ns=T0_MONO + 2_400_000_000, end_real_ns=T0_REAL + 2_400_000_000),
    case("clamped", "kernel times outside the SDK's span (clock skew) are clamped into it", [
        call(35, 0, 0, 30_000),           # starts before the SDK's start, ends after its end
        call(39, 7, 500, 400),            # ends before it starts: zero length
    ], begin_real_ns=T0_REAL - 100_000),
    case("empty", "a slow span without system calls", []),
    case("other_span", "the record of another span: refused, the span is left untouched", [
        call(39, 7, 100, 200),
    ], span_id="0101010101010101"),
]

BAD = {
    "bad_magic": "not a record",
    "bad_version": "a record of ABI version 2",
    "bad_total_size": "total_size disagrees with n_entries",
    "short": "fewer bytes than a header",
}


def bad_records():
    good = bytes.fromhex(dict(CASES)["plain"]["hex"])
    out = {}
    b = bytearray(good); b[0:4] = b"XXXX"; out["bad_magic"] = bytes(b)
    b = bytearray(good); b[4:6] = (2).to_bytes(2, "little"); out["bad_version"] = bytes(b)
    b = bytearray(good); b[8:12] = (len(good) + 32).to_bytes(4, "little"); out["bad_total_size"] = bytes(b)
    out["short"] = good[:100]
    return {k: {"about": BAD[k], "hex": v.hex()} for k, v in out.items()}


def main():
    doc = {
        "about": "Golden kernel records (tests/golden/README.md). Written by make_records.py; "
                 "reviewed data: the tests only read it.",
        "layout": {"abi_version": ABI_VERSION, "record_magic": MAGIC,
                   "record_header_size": HEADER.size, "syscall_entry_size": ENTRY.size,
                   "record_max_size": 256 * 1024,
                   "flags": {"calls_truncated": TRUNCATED, "pool_exhausted": POOL,
                             "ended_elsewhere": ELSEWHERE, "many_threads": MANY_THREADS,
                             "activation": ACTIVATION},
                   "max_span_threads": 8},
        "records": dict(CASES),
        "bad_records": bad_records(),
    }
    text = json.dumps(doc, indent=1)
    # One line per entry: [nr, tid, ret, start_mono_ns, end_mono_ns].
    text = re.sub(r"\[\s+(-?\d+),\s+(-?\d+),\s+(-?\d+),\s+(-?\d+),\s+(-?\d+)\s+\]",
                  r"[\1, \2, \3, \4, \5]", text)
    with open(os.path.join(HERE, "records.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
