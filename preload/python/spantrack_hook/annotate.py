"""Turns a slow span and its kernel record into what gets exported: a copy of the span with
spantrack's summary attributes, plus one child span per itemised system call (kernel
CLOCK_MONOTONIC times converted to wall clock, clamped inside the parent). A slow span that
goes on without its calls gets `spantrack.annotation.missing` saying why (`mark`, or
`summarise` for the summary attributes alone)."""

import random
from typing import Iterator, List, Optional

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, Status, StatusCode

from .errnos import error_type
from .record import (REC_CALLS_TRUNCATED, REC_ENDED_ELSEWHERE, REC_POOL_EXHAUSTED, RecordError,
                     SpanRecord)
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


def _copy(span: ReadableSpan, attrs: dict) -> ReadableSpan:
    common = dict(resource=span.resource, instrumentation_scope=span.instrumentation_scope)
    info = getattr(span, "_instrumentation_info", None)
    if info is not None:
        common["instrumentation_info"] = info
    return _CopiedSpan(span, name=span.name, context=span.context, parent=span.parent,
                       attributes=attrs, events=span.events, links=span.links, kind=span.kind,
                       status=span.status, start_time=span.start_time, end_time=span.end_time,
                       **common)


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
          min_child_ns: int = 0) -> List[ReadableSpan]:
    """The annotated copy of `span`, then one child span per itemised system call that
    lasted at least `min_child_ns`; with `min_child_ns` > 0 the others are counted in
    spantrack.syscalls.summarised. Per call: one SpanContext, one attributes dict, one
    ReadableSpan (the status, resource and scope are shared)."""
    ctx = span.context
    out = [_copy(span, summary_attributes(span, rec, thread_name, min_child_ns))]
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
             min_child_ns: int = 0) -> Iterator[ReadableSpan]:
    """`build`, one span at a time."""
    return iter(build(span, rec, thread_name, min_child_ns))
