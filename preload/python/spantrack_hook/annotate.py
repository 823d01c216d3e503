"""Turns a slow span and its kernel record into what gets exported: a copy of the span with
spantrack's summary attributes, plus one child span per itemised system call (kernel
CLOCK_MONOTONIC times converted to wall clock, clamped inside the parent). With the record's
scheduler part: `spantrack.sched.*` attributes, one `spantrack.wait` event per longest wait
(with where it blocked: stacks.py, pystacks.py) and a link to each distinct span whose thread
woke the span up. A slow span that
goes on without its calls gets `spantrack.annotation.missing` saying why (`mark`, or
`summarise` for the summary attributes alone)."""

import random
from typing import Iterator, List, Optional

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceFlags

from . import stacks as _stacks
from .errnos import error_type
from .record import (CAUSE_PREEMPTED, CTX_HARDIRQ, CTX_NMI, CTX_NONE, CTX_SOFTIRQ, CTX_TASK,
                     CTX_TIMER, KSTACK_DEPTH, MAX_WAITS, NO_CALL, REC_CALLS_TRUNCATED,
                     REC_ENDED_ELSEWHERE, REC_POOL_EXHAUSTED, REC_SCHED, REC_SCHED_PARTIAL,
                     SOFTIRQ_NONE, USTACK_DEPTH, WAIT_WAKER_IN_SPAN, WAIT_WAKER_KTHREAD,
                     RecordError, SpanRecord, WaitEntry)
from .syscalls import syscall_name

# The kernel's convention: a return value in -4095..-1 is a negated errno.
MAX_ERRNO = 4095
TOP_CALLS = 5

# Why a slow span has no child spans (the same values as the Rust processor's).
MISSING = "spantrack.annotation.missing"
MISSING_QUEUE_FULL = "queue_full"      # the annotator's queue was full
MISSING_NO_RECORD = "no_record"        # the kernel's record did not come in time
MISSING_SHUTDOWN = "shutdown"          # shutdown / force_flush / exit ran out of time
MISSING_OVER_BUDGET = "over_budget"    # past the annotation budget: summary attributes only
MISSING_WORKER_ERROR = "worker_error"  # the annotator failed (bad record, no thread, ...)
MISSING_INACTIVE = "inactive"          # the kernel did not track it (module gone, fork, ...)
MISSING_VALUES = (MISSING_QUEUE_FULL, MISSING_NO_RECORD, MISSING_SHUTDOWN, MISSING_OVER_BUDGET,
                  MISSING_WORKER_ERROR, MISSING_INACTIVE)
_UNSET = Status(StatusCode.UNSET)
I64_MAX = (1 << 63) - 1

# The scheduler part (README, "What a slow span carries"; the Rust processor's sched.rs
# has the same names).
WAIT_EVENT = "spantrack.wait"
CAUSE_NAMES = ("io", "lock", "net", "timer", "other", "preempted")  # by CAUSE_*
CONTEXT_NAMES = {CTX_TASK: "task", CTX_HARDIRQ: "hardirq", CTX_SOFTIRQ: "softirq",
                 CTX_NMI: "nmi", CTX_TIMER: "timer", CTX_NONE: "none"}
SOFTIRQ_NAMES = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
                 "HRTIMER", "RCU")
# The parts of a span's wall time, in the order `spantrack.sched.dominant` breaks ties.
SCHED_PARTS = ("on_cpu", "runqueue", "blocked.io", "blocked.lock", "blocked.net",
               "blocked.timer", "blocked.other", "inactive")
# A blocked wait's summary says how long it then waited for a CPU from this much on.
SUMMARY_RUNQ_MIN_NS = 1_000_000


class _CopiedSpan(ReadableSpan):
    """A ReadableSpan that keeps the original's counts of dropped attributes/events/links."""

    def __init__(self, original: ReadableSpan, **kw):
        super().__init__(**kw)
        self._dropped = (original.dropped_attributes, original.dropped_events,
                         original.dropped_links)

    @property
    def dropped_attributes(self) -> int:
        return self._dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._dropped[2]


def fmt_ns(ns: int) -> str:
    """789ns, 45.6us, 12.3ms, 1.23s: the unit by the exact value, then rounded half up in
    integers (the README's spec; the Rust processor's `format_ns` is the same)."""
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        t = (ns + 50) // 100
        return f"{t // 10}.{t % 10}us"
    if ns < 1_000_000_000:
        t = (ns + 50_000) // 100_000
        return f"{t // 10}.{t % 10}ms"
    h = (ns + 5_000_000) // 10_000_000
    return f"{h // 100}.{h % 100:02d}s"


def top_calls(rec: SpanRecord, n: int = TOP_CALLS) -> str:
    """"fsync:12.3ms(1), write:200.0us(4)": itemised calls by system call number, longest
    total first (then most calls, then lowest number)."""
    by_nr = {}
    for e in rec.entries:
        total, count = by_nr.get(e.nr, (0, 0))
        by_nr[e.nr] = (total + max(0, e.end_mono_ns - e.start_mono_ns), count + 1)
    ranked = sorted(by_nr.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return ", ".join(f"{syscall_name(nr)}:{fmt_ns(total)}({count})"
                     for nr, (total, count) in ranked[:n])


def errno_name(ret: int) -> Optional[str]:
    """`EAGAIN` for ret == -11, `errno_4000` for a number without a name (errnos.py, generated
    from the Rust table); None when ret is not a failure."""
    if -MAX_ERRNO <= ret <= -1:
        return error_type(-ret)
    return None


def _copy(span: ReadableSpan, attrs: dict, events=(), links=()) -> ReadableSpan:
    """A copy of `span` with `attrs` as its attributes and `events`, `links` added to its own."""
    common = dict(resource=span.resource, instrumentation_scope=span.instrumentation_scope)
    info = getattr(span, "_instrumentation_info", None)
    if info is not None:
        common["instrumentation_info"] = info
    return _CopiedSpan(span, name=span.name, context=span.context, parent=span.parent,
                       attributes=attrs,
                       events=tuple(span.events) + tuple(events) if events else span.events,
                       links=tuple(span.links) + tuple(links) if links else span.links,
                       kind=span.kind, status=span.status, start_time=span.start_time,
                       end_time=span.end_time, **common)


def _i64(v: int) -> int:
    """An exported int: the Rust side's `i64::try_from(v).unwrap_or(i64::MAX)`."""
    return v if v <= I64_MAX else I64_MAX


def has_sched(rec: SpanRecord) -> bool:
    return bool(rec.flags & (REC_SCHED | REC_SCHED_PARTIAL))


def sched_parts(rec: SpanRecord) -> list:
    """[(part name, ns)] in SCHED_PARTS order; `inactive` is the duration minus the others
    (at least 0)."""
    p = rec.sched
    runq = p.runq_wakeup_ns + p.runq_preempt_ns
    inactive = max(0, (rec.end_mono_ns - rec.begin_mono_ns) - p.on_cpu_ns - runq
                   - sum(p.blocked_ns))
    return list(zip(SCHED_PARTS, (p.on_cpu_ns, runq, *p.blocked_ns, inactive)))


def sched_attributes(rec: SpanRecord, attrs: dict) -> None:
    """Adds the `spantrack.sched.*` attributes of a record with REC_SCHED/REC_SCHED_PARTIAL."""
    if not has_sched(rec):
        return
    p = rec.sched
    parts = sched_parts(rec)
    attrs["spantrack.sched.on_cpu_ns"] = _i64(p.on_cpu_ns)
    attrs["spantrack.sched.runqueue_ns"] = _i64(parts[1][1])
    attrs["spantrack.sched.runqueue.wakeup_ns"] = _i64(p.runq_wakeup_ns)
    attrs["spantrack.sched.runqueue.preempted_ns"] = _i64(p.runq_preempt_ns)
    for name, ns in parts[2:7]:
        attrs[f"spantrack.sched.{name}_ns"] = _i64(ns)
    attrs["spantrack.sched.inactive_ns"] = _i64(parts[7][1])
    top = parts[0]
    for part in parts[1:]:
        if part[1] > top[1]:
            top = part
    attrs["spantrack.sched.dominant"] = top[0]
    attrs["spantrack.sched.blocks"] = p.blocks
    attrs["spantrack.sched.preemptions"] = p.preemptions
    attrs["spantrack.sched.migrations"] = p.migrations
    attrs["spantrack.sched.wakeups"] = p.wakeups
    attrs["spantrack.sched.wakeup_latency.total_ns"] = _i64(p.wakeup_total_ns)
    attrs["spantrack.sched.wakeup_latency.max_ns"] = _i64(p.wakeup_max_ns)
    if rec.flags & REC_SCHED_PARTIAL:
        attrs["spantrack.sched.partial"] = True
    attrs["spantrack.dropped.sched_events"] = p.lost_events


def waits(rec: SpanRecord) -> list:
    """The record's valid waits, longest first (none without the scheduler part)."""
    if not has_sched(rec):
        return []
    return list(rec.sched.waits[:min(rec.sched.n_waits, MAX_WAITS)])


def _name(table, i: int) -> str:
    return table[i] if 0 <= i < len(table) else str(i)


def comm(raw: bytes) -> str:
    """A command name: up to the first NUL, invalid UTF-8 replaced (U+FFFD)."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _waker_thread(rec: SpanRecord, w: WaitEntry) -> str:
    """`thread 131 "refresh" (same process, in futex) after 58.0ms on CPU`."""
    if w.flags & WAIT_WAKER_KTHREAD:
        where = ["kernel thread"]
    elif w.waker_tgid == rec.tgid:
        where = ["same process"]
    else:
        where = [f"process {w.waker_tgid}"]
    if w.waker_nr != NO_CALL:
        where.append(f"in {syscall_name(w.waker_nr)}")
    return (f'thread {w.waker_tid} "{comm(w.waker_comm)}" ({", ".join(where)}) '
            f"after {fmt_ns(w.waker_on_cpu_ns)} on CPU")


def wait_summary(rec: SpanRecord, w: WaitEntry) -> str:
    """`spantrack.wait.summary`: one sentence (the README gives the grammar)."""
    if w.cause == CAUSE_PREEMPTED:
        return f"preempted; {fmt_ns(w.runq_ns)} waiting for a CPU"
    s = f"{_name(CAUSE_NAMES, w.cause)} {fmt_ns(w.blocked_ns)}"
    if w.nr != NO_CALL:
        s += f" in {syscall_name(w.nr)}"
    ctx = w.waker_ctx
    if ctx == CTX_TASK:
        waker = f"woken by {_waker_thread(rec, w)}" if w.waker_tid else "woken by an unknown task"
    elif ctx == CTX_SOFTIRQ:
        waker = f"woken by softirq {_name(SOFTIRQ_NAMES, w.softirq)}"
        if w.waker_tid:
            waker += f" in {_waker_thread(rec, w)}"
    elif ctx == CTX_HARDIRQ:
        waker = "woken by a hard interrupt"
    elif ctx == CTX_NMI:
        waker = "woken by an NMI"
    elif ctx == CTX_TIMER:
        waker = "woken by a timer"
    elif ctx == CTX_NONE:
        waker = "wake-up not seen"
    else:
        waker = f"woken from context {ctx}"
    s += f"; {waker}"
    if w.runq_ns >= SUMMARY_RUNQ_MIN_NS:
        s += f"; {fmt_ns(w.runq_ns)} waiting for a CPU"
    return s


def wait_stacks(w: WaitEntry):
    """The wait's kernel stack (kstack[:n_kstack]) and user stack (ustack[:n_ustack])."""
    return w.kstack[:min(w.n_kstack, KSTACK_DEPTH)], w.ustack[:min(w.n_ustack, USTACK_DEPTH)]


def wait_attributes(rec: SpanRecord, w: WaitEntry, stacks=None) -> dict:
    """The attributes of one `spantrack.wait` event; `stacks` (stacks.HostSymbols, or fixed
    sources: stacks.Symbols) names the frames of its stacks and finds its Python frames."""
    a = {"spantrack.wait.cause": _name(CAUSE_NAMES, w.cause),
         "spantrack.wait.blocked_ns": _i64(w.blocked_ns),
         "spantrack.wait.runqueue_ns": _i64(w.runq_ns),
         "thread.id": w.tid or rec.tid}
    if w.nr != NO_CALL:
        a["spantrack.wait.syscall"] = syscall_name(w.nr)
    a["spantrack.waker.context"] = CONTEXT_NAMES.get(w.waker_ctx, str(w.waker_ctx))
    if w.softirq != SOFTIRQ_NONE:
        a["spantrack.waker.softirq"] = _name(SOFTIRQ_NAMES, w.softirq)
    if w.waker_tid:
        a["spantrack.waker.thread.id"] = w.waker_tid
        a["spantrack.waker.process.pid"] = w.waker_tgid
        a["spantrack.waker.command"] = comm(w.waker_comm)
        a["spantrack.waker.on_cpu_ns"] = _i64(w.waker_on_cpu_ns)
    if w.waker_nr != NO_CALL:
        a["spantrack.waker.syscall"] = syscall_name(w.waker_nr)
    if w.flags & WAIT_WAKER_KTHREAD:
        a["spantrack.waker.kthread"] = True
    if w.flags & WAIT_WAKER_IN_SPAN:
        a["spantrack.waker.trace_id"] = w.waker_trace_id.hex()
        a["spantrack.waker.span_id"] = w.waker_span_id.hex()
    a["spantrack.wait.summary"] = wait_summary(rec, w)
    kstack, ustack = wait_stacks(w)
    if kstack or ustack:
        if stacks is None:
            stacks = _stacks.host()
        if kstack:
            frames = stacks.kernel_stack(kstack)
            if frames:
                a[_stacks.KERNEL_STACK] = tuple(frames)
        if ustack:
            a[_stacks.USER_STACK] = tuple(stacks.user_stack(ustack))
        # Python only: the sampler's frames of the thread inside the wait (a blocking switch
        # the module kept stacks of).
        frames = stacks.python_stack(w.tid or rec.tid, w.start_mono_ns,
                                     w.start_mono_ns + w.blocked_ns)
        if frames:
            a[_stacks.PYTHON_STACK] = tuple(frames)
    return a


def wait_events(span: ReadableSpan, rec: SpanRecord, stacks=None) -> list:
    """One `spantrack.wait` event per valid wait, in record order (longest first), at the
    wait's start in wall-clock time, clamped into the span as the child spans are."""
    lo = span.start_time
    hi = max(span.end_time, lo)
    offset = rec.begin_real_ns - rec.begin_mono_ns
    out = []
    for w in waits(rec):
        t = min(max(w.start_mono_ns + offset, lo), hi)
        out.append(Event(WAIT_EVENT, wait_attributes(rec, w, stacks), t))
    return out


def waker_links(span: ReadableSpan, rec: SpanRecord) -> list:
    """One link per distinct span whose thread woke the span (WAIT_WAKER_IN_SPAN), the
    first (longest) wait's: not to the span itself, nor to an all-zero id."""
    ctx = span.context
    seen = {(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))}
    out = []
    for w in waits(rec):
        key = (w.waker_trace_id, w.waker_span_id)
        if not w.flags & WAIT_WAKER_IN_SPAN or key in seen or not any(key[0]) \
                or not any(key[1]):
            continue
        seen.add(key)
        link_ctx = trace_api.SpanContext(int.from_bytes(key[0], "big"),
                                         int.from_bytes(key[1], "big"),
                                         w.waker_tgid != rec.tgid, TraceFlags(TraceFlags.SAMPLED))
        out.append(Link(link_ctx, {"spantrack.link.kind": "waker",
                                   "spantrack.wait.blocked_ns": _i64(w.blocked_ns)}))
    return out


def mark(span: ReadableSpan, why: str) -> ReadableSpan:
    """A copy of `span` that says why it has no system calls."""
    attrs = dict(span.attributes or {})
    attrs[MISSING] = why
    return _copy(span, attrs)


def summary_attributes(span: ReadableSpan, rec: SpanRecord, thread_name: Optional[str] = None,
                       min_child_ns: int = 0) -> dict:
    """The span's attributes plus the record's summary (count, duration, top calls, ...).
    Raises RecordError for the record of another span (as the Rust `summarise`)."""
    ctx = span.context
    if rec.trace_id != ctx.trace_id.to_bytes(16, "big") or \
            rec.span_id != ctx.span_id.to_bytes(8, "big"):
        raise RecordError("the record is another span's")
    attrs = dict(span.attributes or {})
    attrs["spantrack.syscalls.count"] = rec.total_calls
    attrs["spantrack.syscalls.duration_ns"] = rec.total_call_ns
    attrs["spantrack.syscalls.itemised"] = len(rec.entries)
    attrs["spantrack.syscalls.top"] = top_calls(rec)
    attrs["spantrack.dropped.unitemised_calls"] = rec.unitemised_calls
    attrs["spantrack.dropped.unitemised_ns"] = rec.unitemised_ns
    attrs["spantrack.dropped.records_before"] = rec.records_dropped_before
    if rec.flags & (REC_CALLS_TRUNCATED | REC_POOL_EXHAUSTED):
        why = []
        if rec.flags & REC_CALLS_TRUNCATED:
            why.append("max_calls")
        if rec.flags & REC_POOL_EXHAUSTED:
            why.append("entry_pool")
        attrs["spantrack.dropped.reason"] = ",".join(why)
    if rec.flags & REC_ENDED_ELSEWHERE:
        attrs["spantrack.ended_elsewhere"] = True
    if min_child_ns > 0:
        attrs["spantrack.syscalls.summarised"] = sum(
            1 for e in rec.entries if e.end_mono_ns - e.start_mono_ns < min_child_ns)
    attrs["thread.id"] = rec.tid
    if rec.n_threads > 1:
        attrs["spantrack.threads"] = rec.n_threads
    sched_attributes(rec, attrs)
    # `thread_name` is not exported: the Rust processor cannot know it, and both export the
    # same attributes (README, "What a slow span carries"); `thread.id` names the thread.
    return attrs


def summarise(span: ReadableSpan, rec: SpanRecord, thread_name: Optional[str], min_child_ns: int,
              why: str) -> ReadableSpan:
    """The annotated copy of `span` without child spans, saying why there are none."""
    attrs = summary_attributes(span, rec, thread_name, min_child_ns)
    attrs[MISSING] = why
    return _copy(span, attrs)


def build(span: ReadableSpan, rec: SpanRecord, thread_name: Optional[str] = None,
          min_child_ns: int = 0, stacks=None) -> List[ReadableSpan]:
    """The annotated copy of `span` (with its wait events and waker links), then one child
    span per itemised system call that lasted at least `min_child_ns`; with `min_child_ns` > 0
    the others are counted in spantrack.syscalls.summarised. Per call: one SpanContext, one
    attributes dict, one ReadableSpan (the status, resource and scope are shared). `stacks`
    names the waits' frames (default: this process's, stacks.host())."""
    ctx = span.context
    out = [_copy(span, summary_attributes(span, rec, thread_name, min_child_ns),
                 wait_events(span, rec, stacks), waker_links(span, rec))]
    common = dict(resource=span.resource, instrumentation_scope=span.instrumentation_scope)
    info = getattr(span, "_instrumentation_info", None)
    if info is not None:
        common["instrumentation_info"] = info
    lo, hi = span.start_time, span.end_time
    hi = max(hi, lo)  # a parent that ends before it starts (bad clocks): children at its start
    offset = rec.begin_real_ns - rec.begin_mono_ns
    trace_id, flags, state, parent_id = ctx.trace_id, ctx.trace_flags, ctx.trace_state, ctx.span_id
    taken = {parent_id}
    getrandbits = random.getrandbits
    new_context = trace_api.SpanContext
    internal = SpanKind.INTERNAL
    default_tid = rec.tid
    append = out.append
    for nr, tid, ret, start_mono, end_mono in rec.entries:
        if min_child_ns and end_mono - start_mono < min_child_ns:
            continue  # (without a minimum, an entry that ends before it starts is a child too)
        start = start_mono + offset
        start = lo if start < lo else hi if start > hi else start
        end = end_mono + offset
        end = start if end < start else hi if end > hi else end
        sid = getrandbits(64)
        while sid == 0 or sid in taken:
            sid = getrandbits(64)
        taken.add(sid)
        cattrs = {"spantrack.syscall.nr": nr, "spantrack.syscall.ret": ret,
                  "thread.id": tid or default_tid}
        status = _UNSET
        if -MAX_ERRNO <= ret <= -1:
            err = errno_name(ret)
            cattrs["error.type"] = err
            status = Status(StatusCode.ERROR, err)
        append(ReadableSpan(name=syscall_name(nr),
                            context=new_context(trace_id, sid, False, flags, state),
                            parent=ctx, attributes=cattrs, kind=internal, status=status,
                            start_time=start, end_time=end, **common))
    return out


def annotate(span: ReadableSpan, rec: SpanRecord, thread_name: Optional[str] = None,
             min_child_ns: int = 0, stacks=None) -> Iterator[ReadableSpan]:
    """`build`, one span at a time."""
    return iter(build(span, rec, thread_name, min_child_ns, stacks))
