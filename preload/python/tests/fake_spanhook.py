"""A stand-in for libspanhook.so's C ABI (same method names as abi.SpanHookLibrary), for
host tests of the hook's logic without the module: it records begins and ends with the
thread that made them, and hands out records the test prepared."""

import threading
import time

from spantrack_hook import record
from spantrack_hook.abi import U64_MAX


class FakeSpanHook:
    def __init__(self, threshold_ns=1_000_000):
        self.threshold = threshold_ns
        self.calls = []          # (what, trace_id, span_id, thread ident)
        self.records = {}        # (trace_id, span_id) -> bytes
        self.unregistered = []   # thread idents
        self.take_calls = []     # (trace_id, span_id, timeout_ms, thread ident)
        self.forgotten = []      # (trace_id, span_id) passed to forget, in order
        self.begin_rc = 0
        self.thresholds = {}     # (trace_id, span_id) -> own threshold or None
        self.publishes = False   # no `spantrack top` publisher thread in host tests
        self.lock = threading.Lock()

    def abi_version(self):
        return 1

    def active(self):
        return 1

    def span_begin(self, trace_id, span_id):
        self.calls.append(("begin", trace_id, span_id, threading.get_ident()))
        return self.begin_rc

    def span_begin_threshold(self, trace_id, span_id, threshold_ns):
        """ABI 4: the begin with the span's own threshold (U64_MAX: none), kept in
        self.thresholds[(trace_id, span_id)]."""
        self.thresholds[(trace_id, span_id)] = None if threshold_ns == U64_MAX else threshold_ns
        return self.span_begin(trace_id, span_id)

    def span_end(self, trace_id, span_id):
        self.calls.append(("end", trace_id, span_id, threading.get_ident()))
        return 0

    def threshold_ns(self):
        return self.threshold

    def take_record(self, trace_id, span_id, timeout_ms):
        self.take_calls.append((trace_id, span_id, timeout_ms, threading.get_ident()))
        with self.lock:
            return self.records.pop((trace_id, span_id), None)

    def forget(self, trace_id, span_id):
        with self.lock:
            self.records.pop((trace_id, span_id), None)
            self.forgotten.append((trace_id, span_id))

    def unregister_thread(self):
        self.unregistered.append(threading.get_ident())
        return 0

    def stats(self, n=32):
        return []


def make_record(trace_id: bytes, span_id: bytes, entries, begin_mono=1_000_000_000,
                real_offset=1_700_000_000_000_000_000, duration=50_000_000, tid=4242,
                unitemised=(0, 0), dropped_before=0, flags=0, sched=record.SchedPart()):
    """A record whose begin (mono, real) pair is (begin_mono, begin_mono + real_offset).
    entries: (nr, ret, start offset from begin ns, duration ns); sched: its scheduler part
    (the valid waits' start_mono_ns as offsets from begin_mono)."""
    ents = [record.SyscallEntry(nr, 0, ret, begin_mono + off, begin_mono + off + d)
            for nr, ret, off, d in entries]
    total_ns = sum(d for _, _, _, d in entries) + unitemised[1]
    sched = sched._replace(waits=tuple(
        w._replace(start_mono_ns=begin_mono + w.start_mono_ns) if i < sched.n_waits else w
        for i, w in enumerate(sched.waits)))
    return record.encode(record.SpanRecord(
        trace_id, span_id, tid, 4000, begin_mono, begin_mono + duration,
        begin_mono + real_offset, begin_mono + duration + real_offset, 0, flags,
        len(ents) + unitemised[0], total_ns, unitemised[0], unitemised[1], dropped_before, ents,
        sched=sched))


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


__all__ = ["FakeSpanHook", "make_record", "wait_until", "U64_MAX"]
