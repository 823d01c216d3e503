"""Turns a slow span and its kernel record into what gets exported: a copy of the span with
spantrack's summary attributes, plus one child span per itemised system call (kernel
CLOCK_MONOTONIC times converted to wall clock, clamped inside the parent)."""

import errno
import os
import random
from typing import Iterator, Optional

from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, Status, StatusCode

from .record import REC_CALLS_TRUNCATED, REC_ENDED_ELSEWHERE, REC_POOL_EXHAUSTED, SpanRecord
from .syscalls import syscall_name

# The kernel's convention: a return value in -4095..-1 is a negated errno.
MAX_ERRNO = 4095
TOP_CALLS = 5


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
    """Compact duration: 12.3ms, 0.4ms, 35us."""
    if ns >= 100_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e3:.0f}us"


def top_calls(rec: SpanRecord, n: int = TOP_CALLS) -> str:
    """"fsync:12.3ms(1), write:0.2ms(4)": itemised calls by name, longest total first."""
    by_name = {}
    for e in rec.entries:
        name = syscall_name(e.nr)
        total, count = by_name.get(name, (0, 0))
        by_name[name] = (total + max(0, e.end_mono_ns - e.start_mono_ns), count + 1)
    ranked = sorted(by_name.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
    return ", ".join(f"{name}:{fmt_ns(total)}({count})" for name, (total, count) in ranked[:n])


def errno_name(ret: int) -> Optional[str]:
    """`EAGAIN` for ret == -11; None when ret is not a failure."""
    if -MAX_ERRNO <= ret <= -1:
        return errno.errorcode.get(-ret, f"E{-ret}")
    return None


def _new_span_id(taken: set) -> int:
    while True:
        sid = random.getrandbits(64)
        if sid != trace_api.INVALID_SPAN_ID and sid not in taken:
            taken.add(sid)
            return sid


def annotate(span: ReadableSpan, rec: SpanRecord, thread_name: Optional[str] = None,
             min_child_ns: int = 0) -> Iterator[ReadableSpan]:
    """Yields the annotated copy of `span`, then one child span per itemised system call
    that lasted at least `min_child_ns` (built one at a time, so that the caller can pause
    between them); with `min_child_ns` > 0 the others are counted in
    spantrack.syscalls.summarised."""
    ctx = span.context
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
    if thread_name and "thread.name" not in attrs:
        attrs["thread.name"] = thread_name

    common = dict(resource=span.resource,
                  instrumentation_scope=span.instrumentation_scope)
    info = getattr(span, "_instrumentation_info", None)
    if info is not None:
        common["instrumentation_info"] = info

    yield _CopiedSpan(span, name=span.name, context=ctx, parent=span.parent,
                      attributes=attrs, events=span.events, links=span.links, kind=span.kind,
                      status=span.status, start_time=span.start_time, end_time=span.end_time,
                      **common)

    lo, hi = span.start_time, span.end_time
    taken = {ctx.span_id}
    for e in rec.entries:
        if e.end_mono_ns - e.start_mono_ns < min_child_ns:
            continue
        start = min(max(rec.mono_to_real(e.start_mono_ns), lo), hi)
        end = min(max(rec.mono_to_real(e.end_mono_ns), start), hi)
        child_ctx = trace_api.SpanContext(ctx.trace_id, _new_span_id(taken), is_remote=False,
                                          trace_flags=ctx.trace_flags,
                                          trace_state=ctx.trace_state)
        cattrs = {"spantrack.syscall.nr": e.nr, "spantrack.syscall.ret": e.ret,
                  "thread.id": e.tid or rec.tid}
        status = Status(StatusCode.UNSET)
        err = errno_name(e.ret)
        if err is not None:
            cattrs["error.type"] = err
            status = Status(StatusCode.ERROR, f"{err}: {os.strerror(-e.ret)}")
        yield ReadableSpan(name=syscall_name(e.nr), context=child_ctx, parent=ctx,
                           attributes=cattrs, kind=SpanKind.INTERNAL, status=status,
                           start_time=start, end_time=end, **common)
