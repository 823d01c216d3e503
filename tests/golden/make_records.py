#!/usr/bin/env python3
"""Writes tests/golden/records.json: the golden kernel records, each as the readable fields
below and as the bytes spantrack.ko would write (hex), encoded here from the layout of
uapi/src/lib.rs (RecordHeader 1544 bytes: 128 of span and call figures, then the SchedPart of
104 bytes and 4 WaitEntry of 328, each ending with its kernel and user stacks; SyscallEntry 32
bytes; little-endian) without the
integrations' own code. Run it only when a case is added or changed, and review the diff of
records.json and of the hand-checked spans.json; the tests never regenerate either.

Usage: python3 tests/golden/make_records.py
"""
import json
import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
HEAD = struct.Struct("<IHHII16s8sIIQQQQHHIQQQQQ")
SCHED = struct.Struct("<QQQ5QIIIIQQII")
KSTACK_DEPTH, USTACK_DEPTH = 16, 12
WAIT = struct.Struct(f"<QQQQ16s8s16sIIIIIBBBB{KSTACK_DEPTH}Q{USTACK_DEPTH}QBB6x")
MAX_WAITS = 4
HEADER_SIZE = HEAD.size + SCHED.size + MAX_WAITS * WAIT.size
assert (HEAD.size, SCHED.size, WAIT.size, HEADER_SIZE) == (128, 104, 328, 1544)
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
SCHED_ON, SCHED_PARTIAL, SCHED_LOST = 32, 64, 128
IO, LOCK, NET, TIMER, OTHER, PREEMPTED = range(6)        # WaitEntry.cause
TASK, HARDIRQ, SOFTIRQ, NMI, TIMER_CTX, NO_CTX = 0, 1, 2, 3, 4, 255  # WaitEntry.waker_ctx
NO_SOFTIRQ = 255
NO_CALL = 0xFFFF_FFFF
IN_SPAN, KTHREAD = 1, 2                                 # WaitEntry.flags
MS = 1_000_000


def call(nr, ret, start_us, end_us, tid=TID):
    """A system call from start_us to end_us after the span's begin."""
    return [nr, tid, ret, T0_MONO + start_us * 1000, T0_MONO + end_us * 1000]


def call_ns(nr, ret, start_ns, end_ns, tid=TID):
    return [nr, tid, ret, T0_MONO + start_ns, T0_MONO + end_ns]


def header(entries, **kw):
    h = dict(magic=MAGIC, version=ABI_VERSION, header_size=HEADER_SIZE,
             total_size=HEADER_SIZE + len(entries) * ENTRY.size, n_entries=len(entries),
             trace_id=TRACE, span_id=SPAN, tid=TID, tgid=4200,
             begin_mono_ns=T0_MONO, end_mono_ns=T0_MONO + 20_000_000,
             begin_real_ns=T0_REAL, end_real_ns=T0_REAL + 20_000_000,
             depth=0, n_threads=1 if entries else 0, flags=0,
             total_calls=len(entries),
             total_call_ns=sum(max(0, e[4] - e[3]) for e in entries),
             unitemised_calls=0, unitemised_ns=0, records_dropped_before=0)
    h.update(kw)
    return h


ZERO_WAIT = dict(start_mono_ns=0, blocked_ns=0, runq_ns=0, waker_on_cpu_ns=0,
                 waker_trace_id="00" * 16, waker_span_id="00" * 8, waker_comm="00" * 16, tid=0,
                 nr=0, waker_tid=0, waker_tgid=0, waker_nr=0, cause=0, waker_ctx=0, softirq=0,
                 flags=0, kstack=[], ustack=[], n_kstack=0, n_ustack=0)


def wait(start_ms, cause, blocked_ns, runq_ns, nr, ctx, softirq=NO_SOFTIRQ, waker_tid=0,
         waker_tgid=0, comm=b"", waker_nr=NO_CALL, waker_on_cpu_ns=0, flags=0,
         waker_trace="00" * 16, waker_span="00" * 8, tid=TID, kstack=(), ustack=(),
         n_kstack=None, n_ustack=None):
    """A wait that began start_ms after the span's begin (a float: fractions of a ms). Its
    stacks are spelled as hex strings, trailing zero entries left out; n_kstack and n_ustack
    default to their lengths."""
    return dict(start_mono_ns=T0_MONO + round(start_ms * MS), blocked_ns=blocked_ns,
                runq_ns=runq_ns, waker_on_cpu_ns=waker_on_cpu_ns, waker_trace_id=waker_trace,
                waker_span_id=waker_span, waker_comm=comm.ljust(16, b"\0").hex(), tid=tid,
                nr=nr, waker_tid=waker_tid, waker_tgid=waker_tgid, waker_nr=waker_nr,
                cause=cause, waker_ctx=ctx, softirq=softirq, flags=flags,
                kstack=[f"{a:#x}" for a in kstack], ustack=[f"{a:#x}" for a in ustack],
                n_kstack=len(kstack) if n_kstack is None else n_kstack,
                n_ustack=len(ustack) if n_ustack is None else n_ustack)


def addrs(spelled, depth):
    a = [int(x, 16) for x in spelled]
    assert len(a) <= depth and (not a or a[-1] != 0)
    return a + [0] * (depth - len(a))


def sched(waits, n_waits=None, **kw):
    """A scheduler part: blocked_ns is [io, lock, net, timer, other]."""
    p = dict(on_cpu_ns=0, runq_wakeup_ns=0, runq_preempt_ns=0, blocked_ns=[0] * 5, blocks=0,
             preemptions=0, migrations=0, wakeups=0, wakeup_total_ns=0, wakeup_max_ns=0,
             n_waits=len(waits) if n_waits is None else n_waits, lost_events=0)
    p.update(kw)
    p["waits"] = waits + [ZERO_WAIT] * (MAX_WAITS - len(waits))
    return p


def encode_sched(p):
    b = SCHED.pack(p["on_cpu_ns"], p["runq_wakeup_ns"], p["runq_preempt_ns"], *p["blocked_ns"],
                   p["blocks"], p["preemptions"], p["migrations"], p["wakeups"],
                   p["wakeup_total_ns"], p["wakeup_max_ns"], p["n_waits"], p["lost_events"])
    for w in p["waits"]:
        b += WAIT.pack(w["start_mono_ns"], w["blocked_ns"], w["runq_ns"], w["waker_on_cpu_ns"],
                       bytes.fromhex(w["waker_trace_id"]), bytes.fromhex(w["waker_span_id"]),
                       bytes.fromhex(w["waker_comm"]), w["tid"], w["nr"], w["waker_tid"],
                       w["waker_tgid"], w["waker_nr"], w["cause"], w["waker_ctx"], w["softirq"],
                       w["flags"], *addrs(w["kstack"], KSTACK_DEPTH),
                       *addrs(w["ustack"], USTACK_DEPTH), w["n_kstack"], w["n_ustack"])
    return b


def encode(h, entries, sched_part=None):
    b = HEAD.pack(h["magic"], h["version"], h["header_size"], h["total_size"], h["n_entries"],
                    bytes.fromhex(h["trace_id"]), bytes.fromhex(h["span_id"]), h["tid"], h["tgid"],
                    h["begin_mono_ns"], h["end_mono_ns"], h["begin_real_ns"], h["end_real_ns"],
                    h["depth"], h["n_threads"], h["flags"], h["total_calls"], h["total_call_ns"],
                    h["unitemised_calls"], h["unitemised_ns"], h["records_dropped_before"])
    b += encode_sched(sched_part) if sched_part else bytes(HEADER_SIZE - HEAD.size)
    return b + b"".join(ENTRY.pack(*e) for e in entries)


def case(name, about, entries, sched_part=None, **kw):
    """A record; `sched_part` (absent: all zero) is spelled out beside the header."""
    h = header(entries, **kw)
    c = {"about": about, "header": h}
    if sched_part:
        c["sched"] = sched_part
    c.update({"entries": entries, "hex": encode(h, entries, sched_part).hex()})
    return name, c


OTHER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
WAKER_SPAN = "00f067aa0ba902b7"        # a span of the same trace, in the same process
REMOTE_SPAN = "53995c3f42cd8ad8"       # a span of another trace, in another process
SCHED_PART = sched([
    # The example of the README: a lock held by another thread of the process.
    wait(10.1, LOCK, 60 * MS, 200_000, 202, TASK, waker_tid=4251, waker_tgid=4200,
         comm=b"refresh", waker_nr=202, waker_on_cpu_ns=58 * MS),
    # A sleep, woken by a timer (from the idle task: no waker thread); 1.5 ms then on
    # the run queue, which the summary says (>= 1 ms).
    wait(80.05, TIMER, 50_100_000, 1_500_000, 230, TIMER_CTX),
    # A reply over loopback: NET_RX ran in the sending thread of another process.
    wait(135, NET, 40 * MS, 300_000, 45, SOFTIRQ, softirq=3, waker_tid=4301, waker_tgid=4300,
         comm=b"currency", waker_nr=44, waker_on_cpu_ns=400_000),
    wait(180, PREEMPTED, 0, 12 * MS, NO_CALL, NO_CTX),
], on_cpu_ns=30 * MS, runq_wakeup_ns=2 * MS, runq_preempt_ns=12 * MS,
    blocked_ns=[0, 60 * MS, 40 * MS, 50_100_000, 0], blocks=3, preemptions=1, migrations=2,
    wakeups=3, wakeup_total_ns=2 * MS, wakeup_max_ns=1_500_000, lost_events=2)

# Kernel stacks as stack_trace_save() keeps them (innermost first: the module's probe, the
# tracepoint's iterator, the scheduler, then the blocking path), user stacks as the module
# reads them (the user IP in libc's wrapper, then the frame-pointer chain), in the address
# space of tests/golden/kallsyms.txt and maps.txt.
PROBE = [0xffffffffc0a1005a, 0xffffffff810c4a7c, 0xffffffff81c5e591]  # st_probe_sched_switch+0x5a,
#                                    __traceiter_sched_switch+0x3c, __schedule+0x3f1
SCHEDULE = 0xffffffff81c5ea97                                        # schedule+0x27
SYSENTRY = [0xffffffff81c4b942, 0xffffffff81e0008e]  # do_syscall_64+0x82, entry_SYSCALL_64_after_hwframe+0x76
STACK_NANOSLEEP = PROBE + [SCHEDULE, 0xffffffff81c63f8e, 0xffffffff811e00b4, 0xffffffff811e01ba] + SYSENTRY
STACK_FUTEX = PROBE + [SCHEDULE, 0xffffffff81148e80, 0xffffffff81149193, 0xffffffff811492dc,
                       0xffffffff81147b3b, 0xffffffff81147c90] + SYSENTRY
STACK_ODD = PROBE + [
    0xffffffff81c5ec46,  # io_schedule+0x46: the leading frames end here
    SCHEDULE,            # kept: not leading
    0xffffffff81c5eb40,  # schedule_preempt_disabled's first byte: the call before it, in schedule
    0xffffffff81000000,  # the first symbol's first byte: nothing before it
    0xffffffff80000010,  # below every symbol
    0xffffffffc0a2002d,  # ext2_fsync+0x2d [ext2]
    0xffffffff81402d63,  # file_write_and_wait_range+0x63
    0xffffffff81001008,  # arch_cpu_idle_dead+0x8 (a weak symbol, W)
    0xffffffffc0a10902,  # in __func__.0 (r: not text): st_probe_sched_waking's
    0xffffffff81c5f34a,  # __mutex_lock.constprop.0+0x4a
] + SYSENTRY + [SYSENTRY[1]]
STACK_SCHED_ONLY = PROBE + [0xffffffff81c5eb55]  # schedule_preempt_disabled+0x15
USTACK_ODD = [
    0x7f2a93ae8f3a,      # libc.so.6+0xe8f3a
    0x55d0c0b12345,      # catalog-svc+0x112345
    0x55d0c0a00010,      # catalog-svc+0x10 (its first mapping)
    0x7f2a93b7b000,      # just past libc's text: in no mapping
    0x7f2a93a26000,      # libc.so.6+0x26000 (its text's first byte)
    0x7ffd8e3f1008,      # [stack]+0x8
    0x55d0c1e5a100,      # [heap]+0x100
    0x7f2a93a00020,      # libc.so.6+0x20
    0xffffffffffffffff,  # in no mapping
    0x55d0c0c3e000,      # catalog-svc+0x23e000
    0x55d0c0b00000,      # catalog-svc+0x100000
    0x7f2a93c3ffff,      # libplug in.so+0x40fff (its last byte)
]
assert (len(STACK_ODD), len(USTACK_ODD)) == (KSTACK_DEPTH, USTACK_DEPTH)

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
    case("sched", "REC_SCHED (and REC_SCHED_LOST): where 200 ms went, and the four longest "
         "waits: a lock released by another thread of the process, a timer, a loopback reply "
         "(NET_RX in another process's thread), a preemption", [
        call(202, 0, 10_000, 70_350),     # futex
        call(230, 0, 80_000, 131_700),    # clock_nanosleep
        call(45, 512, 134_900, 175_300),  # recvfrom
        call(1, 64, 176_000, 176_010),    # write
    ], SCHED_PART, flags=SCHED_ON | SCHED_LOST, end_mono_ns=T0_MONO + 200 * MS,
        end_real_ns=T0_REAL + 200 * MS),
    case("sched_wakers", "REC_SCHED_PARTIAL alone; wakers inside spans: two waits woken from "
         "one span of the same process (one link, the first wait's), one from a span of "
         "another process (a remote link); a kernel thread in a BLOCK softirq; a waker command "
         "of invalid UTF-8; n_waits above MAX_WAITS; dominant tied with inactive (the first "
         "in order wins)", [
        call(202, 0, 5_000, 35_200),
    ], sched([
        wait(5, LOCK, 30 * MS, 100_000, 202, TASK, waker_tid=4260, waker_tgid=4200,
             comm=b"worker", waker_nr=202, waker_on_cpu_ns=29 * MS, flags=IN_SPAN,
             waker_trace=TRACE, waker_span=WAKER_SPAN),
        wait(50, LOCK, 16 * MS, 400_000, 202, TASK, waker_tid=4261, waker_tgid=4200,
             comm=b"worker-2", waker_nr=202, waker_on_cpu_ns=15 * MS, flags=IN_SPAN,
             waker_trace=TRACE, waker_span=WAKER_SPAN),
        wait(70, IO, 3 * MS, 50_000, NO_CALL, SOFTIRQ, softirq=4, waker_tid=17, waker_tgid=17,
             comm=b"ksoftirqd/0", waker_on_cpu_ns=50_000, flags=KTHREAD),
        wait(90, OTHER, 2 * MS, 450_000, 0, TASK, waker_tid=4401, waker_tgid=4400,
             comm=b"a\xffb\xc3\xa9-\xe2\x82\0zz", waker_nr=1, waker_on_cpu_ns=1_250_000,
             flags=IN_SPAN, waker_trace=OTHER_TRACE, waker_span=REMOTE_SPAN),
    ], n_waits=6, on_cpu_ns=2 * MS, runq_wakeup_ns=1 * MS, blocked_ns=[3 * MS, 46 * MS, 0, 0, 2 * MS],
        blocks=4, wakeups=4, wakeup_total_ns=1 * MS, wakeup_max_ns=450_000),
        flags=SCHED_PARTIAL, end_mono_ns=T0_MONO + 100 * MS, end_real_ns=T0_REAL + 100 * MS),
    case("sched_odd", "REC_SCHED with odd values: on-CPU longer than the span (inactive 0), "
         "numbers without names (cause, context, softirq), a wait of thread 0 (the beginning "
         "thread's), waits outside the span (clamped into it), a waker span that is the span "
         "itself or all zero (no link), a hard interrupt, an unseen wake-up, a run-queue wait "
         "of exactly 1 ms", [], sched([
        wait(-1, 9, 5 * MS, 0, 230, 7, softirq=12, tid=0),
        wait(2, LOCK, 3 * MS, 20_000, 202, TASK, flags=IN_SPAN, waker_trace=TRACE,
             waker_span=SPAN),
        wait(30, NET, 2 * MS, 1 * MS, 7, NO_CTX, flags=IN_SPAN),
        wait(9, OTHER, 1 * MS, 10_000, 232, HARDIRQ, waker_tid=999, waker_tgid=999,
             comm=b"bash", waker_on_cpu_ns=7_000),
    ], on_cpu_ns=25 * MS, runq_wakeup_ns=1_030_000, blocked_ns=[0, 3 * MS, 2 * MS, 0, 6 * MS],
        blocks=4, preemptions=0, migrations=0, wakeups=3),
        flags=SCHED_ON),
    case("sched_off", "no REC_SCHED flag: the scheduler part is not exported, whatever it "
         "holds", [call(202, 0, 1_000, 15_000)], SCHED_PART),
    case("sched_stacks", "REC_SCHED with where each wait blocked (symbols: tests/golden/"
         "kallsyms.txt and maps.txt): a nanosleep and a futex with the probe's and the "
         "scheduler's leading frames; a wait with every kind of odd frame and counts above "
         "the depths; a wait whose kernel stack is only scheduler frames", [
        call(35, 0, 1_000, 51_200),       # nanosleep
        call(202, 0, 52_000, 82_100),     # futex
        call(74, 0, 83_000, 93_050),      # fsync
    ], sched([
        wait(1, TIMER, 50 * MS, 150_000, 35, TIMER_CTX, kstack=STACK_NANOSLEEP,
             ustack=[0x7f2a93ae8f3a, 0x55d0c0b12345, 0x55d0c0a5a0b7, 0x7f2a90000100]),
        wait(52, LOCK, 30 * MS, 80_000, 202, TASK, waker_tid=4251, waker_tgid=4200,
             comm=b"refresh", waker_nr=202, waker_on_cpu_ns=29 * MS, kstack=STACK_FUTEX,
             ustack=[0x7f2a93a9a1b6, 0x7f2a93c01234, 0x7f2a93d00010, 0x7ffd8e5f6a10, 0x1234]),
        wait(83, IO, 10 * MS, 50_000, 74, SOFTIRQ, softirq=4, kstack=STACK_ODD, n_kstack=20,
             ustack=USTACK_ODD, n_ustack=200),
        wait(95, OTHER, 2 * MS, 10_000, NO_CALL, HARDIRQ, kstack=STACK_SCHED_ONLY, n_kstack=4,
             ustack=[0x7f2a93ae8f3a, 0x55d0c0b12345]),
    ], on_cpu_ns=5 * MS, runq_wakeup_ns=290_000, blocked_ns=[10 * MS, 30 * MS, 0, 50 * MS, 2 * MS],
        blocks=4, wakeups=4, wakeup_total_ns=290_000, wakeup_max_ns=150_000),
        flags=SCHED_ON, end_mono_ns=T0_MONO + 100 * MS, end_real_ns=T0_REAL + 100 * MS),
]

BAD = {
    "bad_magic": "not a record",
    "bad_version": "a record of ABI version 2",
    "bad_total_size": "total_size disagrees with n_entries",
    "short": "fewer bytes than a header",
    "short_sched": "a header cut in its scheduler part",
}


def bad_records():
    good = bytes.fromhex(dict(CASES)["plain"]["hex"])
    out = {}
    b = bytearray(good); b[0:4] = b"XXXX"; out["bad_magic"] = bytes(b)
    b = bytearray(good); b[4:6] = (2).to_bytes(2, "little"); out["bad_version"] = bytes(b)
    b = bytearray(good); b[8:12] = (len(good) + 32).to_bytes(4, "little"); out["bad_total_size"] = bytes(b)
    out["short"] = good[:100]
    out["short_sched"] = good[:300]
    return {k: {"about": BAD[k], "hex": v.hex()} for k, v in out.items()}


def main():
    doc = {
        "about": "Golden kernel records (tests/golden/README.md). Written by make_records.py; "
                 "reviewed data: the tests only read it.",
        "layout": {"abi_version": ABI_VERSION, "record_magic": MAGIC,
                   "record_header_size": HEADER_SIZE, "syscall_entry_size": ENTRY.size,
                   "sched_part_size": SCHED.size + MAX_WAITS * WAIT.size,
                   "wait_entry_size": WAIT.size, "max_waits": MAX_WAITS,
                   "kstack_depth": KSTACK_DEPTH, "ustack_depth": USTACK_DEPTH,
                   "record_max_size": 256 * 1024,
                   "flags": {"calls_truncated": TRUNCATED, "pool_exhausted": POOL,
                             "ended_elsewhere": ELSEWHERE, "many_threads": MANY_THREADS,
                             "activation": ACTIVATION, "sched": SCHED_ON,
                             "sched_partial": SCHED_PARTIAL, "sched_lost": SCHED_LOST},
                   "causes": {"io": IO, "lock": LOCK, "net": NET, "timer": TIMER, "other": OTHER,
                              "preempted": PREEMPTED},
                   "contexts": {"task": TASK, "hardirq": HARDIRQ, "softirq": SOFTIRQ, "nmi": NMI,
                                "timer": TIMER_CTX, "none": NO_CTX},
                   "softirq_none": NO_SOFTIRQ, "no_call": NO_CALL,
                   # Linux's softirq vectors (include/linux/interrupt.h), as exported.
                   "softirqs": ["HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL",
                                "TASKLET", "SCHED", "HRTIMER", "RCU"],
                   "wait_flags": {"waker_in_span": IN_SPAN, "waker_kthread": KTHREAD},
                   "max_span_threads": 8},
        "records": dict(CASES),
        "bad_records": bad_records(),
    }
    text = json.dumps(doc, indent=1)
    # One line per entry: [nr, tid, ret, start_mono_ns, end_mono_ns].
    text = re.sub(r"\[\s+(-?\d+),\s+(-?\d+),\s+(-?\d+),\s+(-?\d+),\s+(-?\d+)\s+\]",
                  r"[\1, \2, \3, \4, \5]", text)
    # One line per wait and per blocked_ns.
    text = re.sub(r"\{\n\s+\"start_mono_ns\"[^}]*\}",
                  lambda m: "{" + re.sub(r"\s*\n\s*", " ", m.group(0)[1:-1]).strip()
                  .replace("[ ", "[").replace(" ]", "]") + "}", text)
    text = re.sub(r"\"blocked_ns\": \[[^\]]*\]",
                  lambda m: re.sub(r"\s*\n\s*", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]"), text)
    with open(os.path.join(HERE, "records.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
