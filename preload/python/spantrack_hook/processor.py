"""SpantrackSpanProcessor: the head of a TracerProvider's processor chain.

It takes the place of the provider's `_active_span_processor` and wraps it (the "inner"
processor, a SynchronousMultiSpanProcessor holding the application's processors, which
keeps receiving `add_span_processor`). For every sampled span:

- on_start (on the span's own thread): the inner processors first, then
  `spanhook_span_begin`, so that their work is not part of the span in the kernel;
- on_end: `spanhook_span_end` first, then either the inner processors at once (the span
  was much faster than the module's threshold, or its begin failed), or a bounded queue to
  one worker thread, which takes the queue whole (one lock), fetches the kernel's records
  and hands the inner processors an annotated copy of each span plus one child span per
  system call (annotate.py).

Every span that reaches on_end reaches the inner processors exactly once, on every path:
a full queue, no record, a worker error, the module unloaded, force_flush, shutdown,
interpreter exit without shutdown (atexit), fork. A slow span that goes on without its
calls says why in `spantrack.annotation.missing` (annotate.MISSING_*), counted in
`counters["missing_<reason>"]`.

A budget bounds what annotation costs the service (SPANTRACK_BUDGET_PCT, default 10: the
worker's CPU time for building child spans and handing them on, as a share of one CPU,
which in CPython is also its share of the GIL). Within it the slowest spans relative to
the threshold go first; past it a span gets only the summary attributes (count, duration,
top calls) and `spantrack.annotation.missing = over_budget`.

Service threads never wait for the worker: they only append to the queue under a lock
held for a few instructions.
"""

import atexit
import collections
import logging
import math
import os
import threading
import time
import weakref
from typing import Optional

from opentelemetry.sdk.trace import SpanProcessor

from . import activation, annotate, pystacks, record, stacks, threshold
from .abi import U64_MAX

log = logging.getLogger("spantrack")

_STOP = object()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class _Item:
    """A span waiting for the worker."""
    __slots__ = ("span", "thread_name", "borderline", "deadline", "ratio", "why", "claimed")

    def __init__(self, span, thread_name, borderline, deadline, ratio, why=None):
        self.span = span
        self.thread_name = thread_name
        self.borderline = borderline
        self.deadline = deadline  # monotonic: wait for the record until then
        self.ratio = ratio  # duration / threshold: the slowest go first within the budget
        self.why = why  # (threshold ns, source, operation or None): why it is slow
        self.claimed = False  # passed on (or being): by the worker or by _finish, once


# OpenTelemetry's SpanKind values (operation keys) by name, for `spantrack top`.
_KIND_NAMES = {0: "internal", 1: "server", 2: "client", 3: "producer", 4: "consumer"}

# The attributes that say why a span was annotated (the same in Rust: threshold::attr).
ATTR_THRESHOLD_NS = "spantrack.threshold_ns"
ATTR_THRESHOLD_SOURCE = "spantrack.threshold.source"
ATTR_OP_P50_NS = "spantrack.op.p50_ns"
ATTR_OP_P95_NS = "spantrack.op.p95_ns"
ATTR_OP_P99_NS = "spantrack.op.p99_ns"
ATTR_OP_SAMPLES = "spantrack.op.samples"
ATTR_OP_CV = "spantrack.op.cv"


def explain(span, why, missing: Optional[str] = None):
    """A copy of a slow span that says why it was slow: the threshold it was judged by,
    where that came from, and its operation's statistics now; with `missing`, also why it
    has no calls (annotate.mark in the same copy)."""
    if why is None:
        return span if missing is None else annotate.mark(span, missing)
    ns, source, op = why
    attrs = dict(span.attributes or {})
    attrs[ATTR_THRESHOLD_NS] = ns
    attrs[ATTR_THRESHOLD_SOURCE] = source
    if op is not None:
        e = op.estimate()
        for k, v in ((ATTR_OP_P50_NS, e["p50_ns"]), (ATTR_OP_P95_NS, e["p95_ns"]),
                     (ATTR_OP_P99_NS, e["p99_ns"])):
            if v is not None:
                attrs[k] = v
        attrs[ATTR_OP_SAMPLES] = e["samples"]
        attrs[ATTR_OP_CV] = e["cv"]
    if missing is not None:
        attrs[annotate.MISSING] = missing
    return annotate._copy(span, attrs)


class SpantrackSpanProcessor(SpanProcessor):
    # How long after a span's end the worker waits for the record of a span at least as
    # slow as the threshold, and of one between threshold/2 and the threshold (a record is
    # unlikely there).
    TAKE_TIMEOUT_MS = _env_int("SPANTRACK_TAKE_TIMEOUT_MS", 100)
    TAKE_TIMEOUT_BORDERLINE_MS = _env_int("SPANTRACK_TAKE_TIMEOUT_BORDERLINE_MS", 10)
    QUEUE_SIZE = _env_int("SPANTRACK_QUEUE_SIZE", 2048)
    # Child spans only for system calls at least this long (0: one per call); the others
    # stay in the slow span's attributes and are counted in spantrack.syscalls.summarised.
    MIN_CHILD_NS = max(0, _env_int("SPANTRACK_MIN_CHILD_US", 0)) * 1000
    # The annotation budget: CPU time the worker may spend building child spans and
    # handing them on, in percent of one CPU (0: summaries only; 100 or more: no limit),
    # and how much unused budget it may save up (seconds of CPU).
    BUDGET_PCT = max(0.0, _env_float("SPANTRACK_BUDGET_PCT", 10.0))
    BUDGET_BURST_S = 1.0  # a burst of slow spans (an incident) is annotated whole
    # shutdown(), and the interpreter's exit when nobody called it: the worker annotates
    # for at most this long, then passes what is left on unannotated (`shutdown`), leaving
    # the rest of it to the exporters' own shutdown.
    SHUTDOWN_TIMEOUT_MS = _env_int("SPANTRACK_SHUTDOWN_TIMEOUT_MS", 3000)
    # Of shutdown's and force_flush's time, the share for annotating (the rest: passing
    # the remaining spans on, and the inner processors).
    ANNOTATE_SHARE = 0.5
    # The annotator gives the GIL away after this many child spans handed on.
    YIELD_EVERY = 8
    # The threshold is read from the library at most this often (seconds).
    THRESHOLD_REFRESH_S = 0.2

    def __init__(self, lib, inner: SpanProcessor):
        self._lib = lib
        self._inner = inner
        self.counters = collections.Counter()
        self._threshold = U64_MAX
        self._threshold_read_at = -1e9
        # The last threshold an active library reported (spans that end after the module
        # went away are compared with it).
        self._last_threshold = lib.threshold_ns() if lib.active() == 1 else U64_MAX
        self._inactive = False
        self._shut = False
        # Per-operation thresholds (threshold.py; SPANTRACK_THRESHOLD* variables).
        self.threshold_config = threshold.ThresholdConfig()
        self.operations = threshold.OpTable(self.threshold_config)
        self._service = (None, None)  # (resource, its service.name)
        self._publish_dir = os.environ.get("SPANTRACK_OPS_DIR", threshold.DEFAULT_OPS_DIR)
        self._publisher = None
        self._reset_worker_state()
        if self._publish_dir and lib.active() == 1 and getattr(lib, "publishes", True):
            self._start_publisher()
        # The Python frames of waits (pystacks.py): a sampler that sleeps while no span is open.
        self._sampler = pystacks.start(lib, self) if lib.active() == 1 else None
        if hasattr(os, "register_at_fork"):
            weak = weakref.WeakMethod
            before, parent, child = (weak(self._before_fork), weak(self._after_fork_parent),
                                     weak(self._after_fork))
            os.register_at_fork(before=lambda: _call(before),
                                after_in_parent=lambda: _call(parent),
                                after_in_child=lambda: _call(child))
        weak_exit = weakref.WeakMethod(self._at_exit)
        atexit.register(lambda: _call(weak_exit))

    # --- what the provider and its tracers use ------------------------------------------

    @property
    def inner(self) -> SpanProcessor:
        return self._inner

    @property
    def _span_processors(self):
        """The application's processors (code that inspects a provider's processors)."""
        return getattr(self._inner, "_span_processors", (self._inner,))

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self._inner.add_span_processor(span_processor)

    def on_start(self, span, parent_context=None) -> None:
        # Our work (and the inner processors') on the service thread is no span's.
        with activation.suspended():
            self._on_start(span, parent_context)

    def _on_start(self, span, parent_context) -> None:
        self._inner.on_start(span, parent_context=parent_context)
        ctx = span.context
        if self._inactive or self._shut or ctx is None or not ctx.trace_flags.sampled:
            return
        if self._sampler is not None:
            self._sampler.span_starting()  # before the begin: a wake-up is not the span's
        own = op = None
        if self.threshold_config.adaptive:
            op = self._operation(span)
            own = op.threshold if op is not None else None
            rc = self._lib.span_begin_threshold(ctx.trace_id.to_bytes(16, "big"),
                                                ctx.span_id.to_bytes(8, "big"),
                                                U64_MAX if own is None else own)
        else:
            rc = self._lib.span_begin(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))
        if rc == 0:
            self._open[(ctx.trace_id, ctx.span_id)] = (threading.current_thread().name, own, op)
            self.counters["begun"] += 1
        else:
            self.counters[f"begin_error_{-rc}"] += 1

    def _on_ending(self, span) -> None:
        ending = getattr(self._inner, "_on_ending", None)
        if ending is not None:
            ending(span)

    def on_end(self, span) -> None:
        with activation.suspended():
            self._on_end(span)

    def _on_end(self, span) -> None:
        ctx = span.context
        opened = self._open.pop((ctx.trace_id, ctx.span_id), None) if ctx else None
        if opened is None:
            # Not tracked: spantrack inactive (forked child, module gone), the begin was
            # refused, or not sampled.
            self._pass_untracked(span)
            return
        rc = self._lib.span_end(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))
        if rc != 0:
            self.counters[f"end_error_{-rc}"] += 1
            self._pass_untracked(span)
            return
        thread_name, own, op = opened
        module_threshold = self._current_threshold()
        duration = (span.end_time or 0) - (span.start_time or 0)
        # The operation found at the start, unless the span was renamed since (service and
        # kind cannot change).
        if op is None or op.key[1] != span.name:
            op = self._operation(span)
        if op is not None:
            op.record(duration, span.end_time or 0, self.threshold_config.floor_ns)
        if own is not None:
            threshold_ns, source = own, threshold.SOURCE_ADAPTIVE
        else:
            threshold_ns = module_threshold
            source = threshold.SOURCE_WARMUP if self.threshold_config.adaptive else threshold.SOURCE_FIXED
        # A span's own threshold is the one the kernel used: only the clocks' difference (the
        # SDK's times vs the begin/end writes) is uncertain; the module's may have changed
        # since it was last read.
        margin = threshold_ns // 16 if own is not None else threshold_ns // 2
        if module_threshold == U64_MAX or duration < threshold_ns - margin:
            self.counters["fast"] += 1
            self._inner.on_end(span)
            return
        borderline = duration < threshold_ns
        wait = self.TAKE_TIMEOUT_BORDERLINE_MS if borderline else self.TAKE_TIMEOUT_MS
        item = _Item(span, thread_name, borderline, time.monotonic() + wait / 1000,
                     duration / max(1, threshold_ns), (threshold_ns, source, op))
        with self._lock:
            queued = not self._closed and len(self._pending) < self.QUEUE_SIZE
            if queued:
                self._pending.append(item)
                if self._worker is None:
                    queued = self._start_worker()
                    if not queued:
                        self._pending.pop()
                else:
                    self._work.notify()
        if not queued:
            if self._closed:
                self._forward_unannotated(item, annotate.MISSING_SHUTDOWN)
            elif self._worker_failed:
                self._forward_unannotated(item, annotate.MISSING_WORKER_ERROR)
            else:
                self.counters["queue_overflow"] += 1
                self._forward_unannotated(item, annotate.MISSING_QUEUE_FULL)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        start = time.monotonic()
        deadline = start + timeout_millis / 1000
        drained = self._finish(start + (deadline - start) * self.ANNOTATE_SHARE, deadline, stop=False)
        left = max(0, int((deadline - time.monotonic()) * 1000))
        return self._inner.force_flush(left) and drained

    def shutdown(self) -> None:
        if not self._shut:
            self._shut = True
            start = time.monotonic()
            deadline = start + self.SHUTDOWN_TIMEOUT_MS / 1000
            self._finish(start + (deadline - start) * self.ANNOTATE_SHARE, deadline, stop=True)
            self._stop_publisher()
        self._inner.shutdown()

    def _at_exit(self) -> None:
        """The interpreter exits: what is queued goes on (annotated while time allows),
        then the exporters flush; shutdown() (the provider's own atexit handler, which runs
        after this one) only finds an empty queue."""
        self._stop_publisher()
        if self._shut:
            return
        start = time.monotonic()
        deadline = start + self.SHUTDOWN_TIMEOUT_MS / 1000
        self._finish(start + (deadline - start) * self.ANNOTATE_SHARE, deadline, stop=True)
        try:
            self._inner.force_flush(max(0, int((deadline - time.monotonic()) * 1000)) + 1000)
        except Exception:
            log.exception("spantrack: flushing at exit failed")

    # --- threshold ------------------------------------------------------------------------

    PUBLISH_EVERY_S = 1.0

    def _start_publisher(self) -> None:
        """Publishes the per-operation statistics for `spantrack top` once a second from a
        thread of its own, untracked by the module (its writes are never a span's)."""
        stop = threading.Event()
        weak = weakref.ref(self)
        lib = self._lib

        def run():
            lib.unregister_thread()
            pystacks.HOOK_THREADS.add(threading.current_thread().native_id)
            pid = os.getpid()
            while not stop.wait(self.PUBLISH_EVERY_S):
                p = weak()
                if p is None:
                    return
                try:
                    threshold.publish(p._publish_dir, pid, p.operations_document())
                except Exception:
                    pass
                del p
        try:
            t = threading.Thread(target=run, name="spantrack-publisher", daemon=True)
            t.start()
            self._publisher = (t, stop)
        except Exception:
            self._publisher = None

    def _stop_publisher(self) -> None:
        pub, self._publisher = self._publisher, None
        if pub is not None:
            pub[1].set()
            threshold.unpublish(self._publish_dir, os.getpid())

    def operations_document(self) -> dict:
        """The per-operation statistics `spantrack top` shows (published as JSON)."""
        cfg = self.threshold_config
        ops = []
        for (service, name, kind), op in list(self.operations.ops.items()):
            e = op.estimate()
            ops.append({"service": service, "name": name,
                        "kind": _KIND_NAMES.get(kind, str(kind)), "spans": op.spans,
                        "annotated": op.annotated, "capped": op.capped, "samples": e["samples"],
                        "p50_ns": e["p50_ns"], "p95_ns": e["p95_ns"], "p99_ns": e["p99_ns"],
                        "cv": e["cv"],
                        "threshold_ns": op.threshold if cfg.adaptive else None,
                        "source": (threshold.SOURCE_FIXED if not cfg.adaptive else
                                   threshold.SOURCE_ADAPTIVE if op.threshold is not None
                                   else threshold.SOURCE_WARMUP)})
        c = self.counters
        return {"pid": os.getpid(), "time": time.time(), "runtime": "python",
                "mode": "adaptive" if cfg.adaptive else "fixed",
                "percentile_bp": cfg.percentile_bp, "warmup": cfg.warmup,
                "ops_overflow": self.operations.overflow, "annotated": c["annotated"],
                "missing": sum(v for k, v in c.items() if k.startswith("missing_")),
                "op_capped": c["op_capped"], "operations": ops}

    def _operation(self, span):
        """The span's operation (service, name, kind), None past the table's size."""
        resource = span.resource
        cached_resource, service = self._service
        if resource is not cached_resource:
            service = resource.attributes.get("service.name", "") if resource is not None else ""
            self._service = (resource, service)
        kind = span.kind
        return self.operations.get((service, span.name, kind.value if kind is not None else 0))

    def _current_threshold(self) -> int:
        now = time.monotonic()
        if now - self._threshold_read_at >= self.THRESHOLD_REFRESH_S:
            self._threshold = self._lib.threshold_ns()
            self._threshold_read_at = now
            if self._threshold != U64_MAX:
                self._last_threshold = self._threshold
        return self._threshold

    # --- paths that do not annotate -------------------------------------------------------

    def _pass_untracked(self, span) -> None:
        """A span the kernel did not track: as slow as the last threshold the library
        reported, it says `inactive`."""
        threshold = self._last_threshold
        if threshold != U64_MAX and (span.end_time or 0) - (span.start_time or 0) >= threshold:
            self._forward(annotate.mark(span, annotate.MISSING_INACTIVE), annotate.MISSING_INACTIVE)
        else:
            self._inner.on_end(span)

    def _claim(self, item: _Item) -> bool:
        """True for the one caller that may pass `item` on: the worker, or _finish when the
        worker is stuck with it in hand (then the worker's late result is dropped)."""
        with self._qlock:
            if item.claimed:
                return False
            item.claimed = True
            return True

    def _forward_unannotated(self, item: _Item, why: str) -> None:
        """Passes a queued span on without its calls; a slow one says why (a borderline one
        probably had no record: it goes on unchanged). Once: see _claim."""
        if not self._claim(item):
            self.counters["late_dropped"] += 1  # passed on already by _finish
            return
        # Its record, if one comes, is nobody's now (as in Rust: Shared::forget).
        ctx = item.span.context
        self._lib.forget(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))
        if item.borderline:
            self._inner.on_end(item.span)
        else:
            self._forward(explain(item.span, item.why, why), why)

    def _forward(self, span, why: Optional[str]) -> None:
        if why is not None:
            self.counters["missing_" + why] += 1
        self._progress += 1
        self._inner.on_end(span)

    # --- the worker -----------------------------------------------------------------------

    def _reset_worker_state(self):
        self._open = {}
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._pending = collections.deque()
        self._busy = False  # the worker holds spans taken from the queue
        self._batch = collections.deque()  # those it holds: spans, then (span, record)s
        self._ready = collections.deque()
        # The item the worker took from _batch or _ready and has not passed on yet. Taking
        # and noting it are one step under _qlock (as is _pass_rest's taking), so that a
        # held span is always in a queue or in hand: _finish passes it on when the worker is
        # stuck with it, before the exporters stop.
        self._qlock = threading.Lock()
        self._in_hand = None
        self._progress = 0  # spans it has passed on
        self._closed = False  # shut down: new spans pass straight on
        self._hurry_at = None  # monotonic: from then on queued spans go on unannotated
        self._worker_failed = False
        self._worker: Optional[threading.Thread] = None
        self._credit = self.BUDGET_BURST_S if self.BUDGET_PCT > 0 else 0.0
        self._credit_at = time.monotonic()

    def _before_fork(self):
        # The child gets a consistent copy: no thread holds the lock while fork runs.
        self._lock.acquire()

    def _after_fork_parent(self):
        self._lock.release()

    def _after_fork(self):
        # Only the forking thread survives: no worker, no open spans in the child. The spans
        # queued before the fork are the parent's: it exports them, the child does not. The
        # library does not register a forked child: then the child's spans pass through.
        self._reset_worker_state()
        self.counters = collections.Counter()
        self._publisher = None  # the parent's thread (its file is the parent's)
        self._sampler = None  # the parent's thread
        activation.reset_after_fork()
        self._inactive = self._lib.active() != 1

    def _start_worker(self) -> bool:  # with self._lock held
        try:
            t = threading.Thread(target=self._run, name="spantrack-annotator", daemon=True)
            t.start()
        except Exception:  # no thread: spans pass through (said on them)
            self._worker_failed = True
            self.counters["worker_error"] += 1
            log.exception("spantrack: cannot start the annotator thread")
            return False
        self._worker = t
        return True

    # Past its deadline, _finish still waits for a worker that keeps passing spans on (the
    # exporters' own work, which they would have had without spantrack), not for a stuck one.
    STALL_S = 1.0

    def _finish(self, hurry_at: float, deadline: float, stop: bool) -> bool:
        """Until the queue is empty: annotated until hurry_at, unannotated after it (the
        worker does that); past the deadline, or without a worker, this thread takes what
        is still queued (or held by a stuck worker) and passes it on. Returns whether the
        worker had finished."""
        with self._lock:
            if stop:
                self._closed = True
            self._hurry_at = hurry_at if self._hurry_at is None else min(self._hurry_at, hurry_at)
            self._work.notify()
            seen, seen_at = self._progress, time.monotonic()
            while self._pending or self._busy:
                now = time.monotonic()
                if self._progress != seen:
                    seen, seen_at = self._progress, now
                if now >= max(deadline, seen_at + self.STALL_S) or self._worker is None \
                        or not self._worker.is_alive():
                    break
                self._idle.wait(0.05)
            drained = not self._pending and not self._busy
            in_hand = None if drained else self._in_hand
            leftover = list(self._pending)
            self._pending.clear()
            worker = self._worker
            if stop and worker is not None:
                self._pending.append(_STOP)
                self._work.notify()
            elif not stop:
                self._hurry_at = None
        for item in leftover:
            self._forward_unannotated(item, annotate.MISSING_SHUTDOWN)
        if not drained:
            self._pass_rest(annotate.MISSING_SHUTDOWN)  # the worker is stuck
            if in_hand is not None:
                # With this span: if the worker ever finishes it, the exporters may be shut
                # down by then (or the process gone), and the span would be lost.
                self._forward_safely(in_hand, annotate.MISSING_SHUTDOWN)
        elif stop and worker is not None and worker is not threading.current_thread():
            worker.join(max(0.1, deadline - time.monotonic()))  # it stops at once
        return drained

    def _has_credit(self) -> bool:
        if self.BUDGET_PCT >= 100:
            return True
        now = time.monotonic()
        self._credit = min(self.BUDGET_BURST_S,
                           self._credit + (now - self._credit_at) * self.BUDGET_PCT / 100)
        self._credit_at = now
        return self._credit > 0

    def _run(self):
        # This thread's own system calls must never be attributed to anything.
        rc = self._lib.unregister_thread()
        if rc != 0:
            self.counters[f"unregister_error_{-rc}"] += 1
        pystacks.HOOK_THREADS.add(threading.current_thread().native_id)
        while True:
            with self._lock:
                while not self._pending:
                    self._work.wait()
                batch = self._pending
                self._pending = collections.deque()
                stop = batch[-1] is _STOP
                if stop:
                    batch.pop()
                self._busy = bool(batch)
            try:
                self._process(batch)
            except Exception:  # counted and logged where it happened; the worker goes on
                log.exception("spantrack: the annotator failed")
            finally:
                with self._lock:
                    self._busy = False
                    if stop:
                        self._worker = None
                    if not self._pending or stop:
                        self._idle.notify_all()
            if stop:
                return

    def _hurry(self) -> bool:
        h = self._hurry_at
        return h is not None and time.monotonic() >= h

    def _process(self, batch):
        """One batch: the records first (waiting for each until its deadline), then the
        spans, slowest (relative to the threshold) first while the budget lasts. The batch
        stays in self._batch and self._ready, from which the worker and _finish (when time
        is out and the worker stuck) both pop: each item is popped once."""
        self._batch = batch
        ready = []
        try:
            while not self._hurry():
                try:
                    with self._qlock:
                        item = self._in_hand = batch.popleft()
                except IndexError:
                    break
                raw, why = self._take(item)
                if raw is None:
                    if why == annotate.MISSING_NO_RECORD:
                        self.counters["no_record"] += 1
                    self._forward_safely(item, why)
                else:
                    ready.append((item, raw))
            ready.sort(key=lambda r: -r[0].ratio)
            ready = self._ready = collections.deque(ready)
            while not self._hurry():
                try:
                    with self._qlock:
                        item, raw = ready.popleft()
                        self._in_hand = item
                except IndexError:
                    break
                self._annotate_and_forward(item, raw)
        finally:
            # Time ran out (or something failed in here): the rest goes on unannotated.
            why = annotate.MISSING_SHUTDOWN if self._hurry() else annotate.MISSING_WORKER_ERROR
            self._pass_rest(why)

    def _pass_rest(self, why: str) -> None:
        """Passes on, unannotated, what the worker still holds (either thread)."""
        for q, pick in ((self._ready, lambda r: r[0]), (self._batch, lambda r: r)):
            while True:
                try:
                    with self._qlock:
                        item = pick(q.popleft())
                except IndexError:
                    break
                self._forward_safely(item, why)

    def _forward_safely(self, item: _Item, why: str) -> None:
        """_forward_unannotated on the worker: an inner processor's exception is logged."""
        try:
            self._forward_unannotated(item, why)
        except Exception:
            self.counters["inner_error"] += 1
            log.exception("spantrack: an inner processor's on_end failed")

    def _take(self, item: _Item):
        """(record bytes, None) or (None, why there is none)."""
        ctx = item.span.context
        timeout = max(0, math.ceil((item.deadline - time.monotonic()) * 1000))
        try:
            raw = self._lib.take_record(ctx.trace_id.to_bytes(16, "big"),
                                        ctx.span_id.to_bytes(8, "big"), timeout)
        except OSError as e:
            self.counters[f"take_error_{e.errno}"] += 1
            return None, (annotate.MISSING_INACTIVE if self._lib.active() != 1
                          else annotate.MISSING_WORKER_ERROR)
        if raw is None:
            return None, annotate.MISSING_NO_RECORD
        return raw, None

    def _annotate_and_forward(self, item: _Item, raw: bytes) -> None:
        t0 = time.thread_time()
        span = explain(item.span, item.why)
        op = item.why[2] if item.why is not None else None
        try:
            rec = record.decode(raw)
            # The symbol tables the waits' stacks need, loaded once: not the budget's (it is
            # for building and handing on the child spans; naming a frame then is cheap).
            tp = time.thread_time()
            stacks.host().prepare(rec)
            t0 += time.thread_time() - tp
            ctx = span.context
            if rec.trace_id != ctx.trace_id.to_bytes(16, "big") or \
                    rec.span_id != ctx.span_id.to_bytes(8, "big"):
                raise record.RecordError("the record is another span's")
            capped = op is not None and not op.allow_annotation(
                self.threshold_config.annotations_per_s, time.time_ns())
            if capped:
                self.counters["op_capped"] += 1
            if not capped and self._has_credit():
                why = None
                out = annotate.build(span, rec, item.thread_name, self.MIN_CHILD_NS)
            else:
                why = annotate.MISSING_OVER_BUDGET
                out = [annotate.summarise(span, rec, item.thread_name, self.MIN_CHILD_NS, why)]
        except Exception:  # never lose the span because of us
            self.counters["worker_error"] += 1
            log.exception("spantrack: annotating a span failed; exported without its calls")
            if self._claim(item):
                self._hand_on(annotate.mark(span, annotate.MISSING_WORKER_ERROR),
                              annotate.MISSING_WORKER_ERROR)
            return
        if not self._claim(item):
            # _finish passed it on already, unannotated (this worker was stuck too long).
            self.counters["late_dropped"] += 1
            return
        # Handed on once each: an inner processor's exception is its own, never a retry.
        t1 = time.thread_time()
        self._hand_on(out[0], why)
        if why is not None:
            return
        t0 += time.thread_time() - t1  # the parent would have been exported anyway
        self.counters["annotated"] += 1
        if op is not None:
            op.annotated += 1
        inner_on_end = self._inner.on_end
        for i in range(1, len(out)):
            try:
                inner_on_end(out[i])
            except Exception:
                self.counters["inner_error"] += 1
                log.exception("spantrack: an inner processor's on_end failed")
            if i % self.YIELD_EVERY == 0:
                # Hand the GIL to a waiting service thread now rather than after the
                # interpreter's switch interval (5 ms): this thread is never in a hurry.
                time.sleep(0)
        self.counters["syscall_spans"] += len(out) - 1
        # What annotating cost beyond passing the span on: building the copy and the
        # children, and the inner processors' work on the children.
        self._credit -= time.thread_time() - t0

    def _hand_on(self, span, why) -> None:
        try:
            self._forward(span, why)
        except Exception:
            self.counters["inner_error"] += 1
            log.exception("spantrack: an inner processor's on_end failed")


def _call(weak_method):
    m = weak_method()
    if m is not None:
        m()
