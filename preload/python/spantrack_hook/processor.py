"""SpantrackSpanProcessor: the head of a TracerProvider's processor chain.

It takes the place of the provider's `_active_span_processor` and wraps it (the "inner"
processor, a SynchronousMultiSpanProcessor holding the application's processors, which
keeps receiving `add_span_processor`). For every sampled span:

- on_start (on the span's own thread): the inner processors first, then
  `spanhook_span_begin`, so that their work is not part of the span in the kernel;
- on_end: `spanhook_span_end` first, then either the inner processors at once (the span
  was much faster than the module's threshold, or its begin failed), or a bounded queue to
  one worker thread, which takes the kernel's record and hands the inner processors an
  annotated copy plus one child span per system call (annotate.py). No record: the span
  goes on unchanged. A full queue: the span goes on unchanged and is counted.

Service threads never wait for the worker: they only append to the queue under a lock
held for a few instructions.
"""

import collections
import logging
import os
import threading
import time
from typing import Optional

from opentelemetry.sdk.trace import SpanProcessor

from . import activation, annotate, record
from .abi import U64_MAX

log = logging.getLogger("spantrack")

_STOP = object()


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


class SpantrackSpanProcessor(SpanProcessor):
    # How long the worker waits for the record of a span at least as slow as the threshold,
    # and of one between threshold/2 and the threshold (a record is unlikely there).
    TAKE_TIMEOUT_MS = _env_int("SPANTRACK_TAKE_TIMEOUT_MS", 100)
    TAKE_TIMEOUT_BORDERLINE_MS = _env_int("SPANTRACK_TAKE_TIMEOUT_BORDERLINE_MS", 10)
    QUEUE_SIZE = _env_int("SPANTRACK_QUEUE_SIZE", 2048)
    # Child spans only for system calls at least this long (0: one per call); the others
    # stay in the slow span's attributes and are counted in spantrack.syscalls.summarised.
    MIN_CHILD_NS = max(0, _env_int("SPANTRACK_MIN_CHILD_US", 0)) * 1000
    # The annotator gives the GIL away after this many spans handed on.
    YIELD_EVERY = 8
    # The threshold is read from the library at most this often (seconds).
    THRESHOLD_REFRESH_S = 0.2

    def __init__(self, lib, inner: SpanProcessor):
        self._lib = lib
        self._inner = inner
        self.counters = collections.Counter()
        self._threshold = U64_MAX
        self._threshold_read_at = -1e9
        self._inactive = False
        self._reset_worker_state()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

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
        if self._inactive or ctx is None or not ctx.trace_flags.sampled:
            return
        rc = self._lib.span_begin(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))
        if rc == 0:
            self._open[(ctx.trace_id, ctx.span_id)] = threading.current_thread().name
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
        thread_name = self._open.pop((ctx.trace_id, ctx.span_id), None) if ctx else None
        if thread_name is None:
            self._inner.on_end(span)
            return
        rc = self._lib.span_end(ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big"))
        if rc != 0:
            self.counters[f"end_error_{-rc}"] += 1
            self._inner.on_end(span)
            return
        threshold = self._current_threshold()
        duration = (span.end_time or 0) - (span.start_time or 0)
        if threshold == U64_MAX or duration < threshold // 2:
            self.counters["fast"] += 1
            self._inner.on_end(span)
            return
        borderline = duration < threshold
        with self._lock:
            if len(self._pending) >= self.QUEUE_SIZE:
                full = True
            else:
                full = False
                self._pending.append((span, thread_name, borderline))
                self._work.notify()
                if self._worker is None:
                    self._start_worker()
        if full:
            self.counters["queue_overflow"] += 1
            self._inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        drained = self._drain(deadline)
        left = max(0, int((deadline - time.monotonic()) * 1000))
        return self._inner.force_flush(left) and drained

    def shutdown(self) -> None:
        self._drain(time.monotonic() + 5)
        with self._lock:
            worker = self._worker
            if worker is not None:
                self._pending.append(_STOP)
                self._work.notify()
        if worker is not None and worker is not threading.current_thread():
            worker.join(5)
        self._inner.shutdown()

    # --- threshold ------------------------------------------------------------------------

    def _current_threshold(self) -> int:
        now = time.monotonic()
        if now - self._threshold_read_at >= self.THRESHOLD_REFRESH_S:
            self._threshold = self._lib.threshold_ns()
            self._threshold_read_at = now
        return self._threshold

    # --- the worker -----------------------------------------------------------------------

    def _reset_worker_state(self):
        self._open = {}
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._pending = collections.deque()
        self._busy = False
        self._worker: Optional[threading.Thread] = None

    def _after_fork(self):
        # Only the forking thread survives: no worker, no open spans in the child. The
        # library does not register a forked child: then the child's spans just pass through.
        self._reset_worker_state()
        activation.reset_after_fork()
        self._inactive = self._lib.active() != 1

    def _start_worker(self):  # with self._lock held
        self._worker = threading.Thread(target=self._run, name="spantrack-annotator", daemon=True)
        self._worker.start()

    def _drain(self, deadline: float) -> bool:
        with self._lock:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._worker is None:
                    return False
                self._idle.wait(left)
        return True

    def _run(self):
        # This thread's own system calls must never be attributed to anything.
        rc = self._lib.unregister_thread()
        if rc != 0:
            self.counters[f"unregister_error_{-rc}"] += 1
        while True:
            with self._lock:
                while not self._pending:
                    self._work.wait()
                item = self._pending.popleft()
                self._busy = item is not _STOP
            if item is _STOP:
                with self._lock:
                    self._worker = None
                    self._idle.notify_all()
                return
            try:
                self._annotate_and_forward(*item)
            except Exception:  # never lose the span because of us
                self.counters["worker_error"] += 1
                log.exception("spantrack: annotating a span failed; exported unchanged")
                try:
                    self._inner.on_end(item[0])
                except Exception:
                    log.exception("spantrack: inner on_end failed")
            finally:
                with self._lock:
                    self._busy = False
                    if not self._pending:
                        self._idle.notify_all()

    def _annotate_and_forward(self, span, thread_name, borderline):
        ctx = span.context
        trace_id = ctx.trace_id.to_bytes(16, "big")
        span_id = ctx.span_id.to_bytes(8, "big")
        timeout = self.TAKE_TIMEOUT_BORDERLINE_MS if borderline else self.TAKE_TIMEOUT_MS
        try:
            raw = self._lib.take_record(trace_id, span_id, timeout)
        except OSError as e:
            self.counters[f"take_error_{e.errno}"] += 1
            raw = None
        if raw is None:
            self.counters["no_record"] += 1
            self._inner.on_end(span)
            return
        rec = record.decode(raw)
        if rec.trace_id != trace_id or rec.span_id != span_id:
            raise record.RecordError("the record is another span's")
        self.counters["annotated"] += 1
        for i, s in enumerate(annotate.annotate(span, rec, thread_name, self.MIN_CHILD_NS)):
            if i > 0:
                self.counters["syscall_spans"] += 1
            self._inner.on_end(s)
            if i % self.YIELD_EVERY == self.YIELD_EVERY - 1:
                # Hand the GIL to a waiting service thread now rather than after the
                # interpreter's switch interval (5 ms): this thread is never in a hurry.
                time.sleep(0)
