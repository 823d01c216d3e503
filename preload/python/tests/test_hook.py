"""Host tests of spantrack_hook against FakeSpanHook (no module, no libspanhook.so needed).
Run: $(scripts/python-env.sh)/bin/python -m unittest discover -s preload/python/tests"""

import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_DIR = os.path.dirname(HERE)
sys.path.insert(0, PKG_DIR)
sys.path.insert(0, HERE)

from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from fake_spanhook import FakeSpanHook, make_record, wait_until  # noqa: E402
from spantrack_hook import annotate, record  # noqa: E402
from spantrack_hook.processor import SpantrackSpanProcessor  # noqa: E402
from spantrack_hook.syscalls import syscall_name  # noqa: E402

MS = 1_000_000
NR = {"read": 0, "write": 1, "getpid": 39, "fsync": 74, "futex": 202, "clock_nanosleep": 230}


def ids(span):
    c = span.get_span_context()
    return c.trace_id.to_bytes(16, "big"), c.span_id.to_bytes(8, "big")


class Pipeline:
    """A provider whose head is SpantrackSpanProcessor over an in-memory exporter."""

    def __init__(self, fake, exporter_processor=SimpleSpanProcessor):
        self.fake = fake
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(shutdown_on_exit=False)
        self.head = SpantrackSpanProcessor(fake, self.provider._active_span_processor)
        self.provider._active_span_processor = self.head
        self.provider.add_span_processor(exporter_processor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def span(self, name, duration_ns, record_entries=None, **kw):
        """Starts and ends a span lasting duration_ns (SDK times); with record_entries the
        fake module has a record for it, begun 10 us after the SDK start."""
        t0 = 1_800_000_000_000_000_000
        s = self.tracer.start_span(name, start_time=t0)
        if record_entries is not None:
            tid, sid = ids(s)
            begin_mono = 5_000 * MS
            self.fake.records[(tid, sid)] = make_record(
                tid, sid, record_entries, begin_mono=begin_mono,
                real_offset=t0 + 10_000 - begin_mono, duration=duration_ns - 20_000, **kw)
        s.end(end_time=t0 + duration_ns)
        return s

    def finished(self):
        return self.exporter.get_finished_spans()


class RecordTest(unittest.TestCase):
    def test_roundtrip_and_layout(self):
        raw = make_record(b"\x01" * 16, b"\x02" * 8, [(NR["fsync"], 0, 100, 2 * MS)],
                          unitemised=(3, 500), dropped_before=7)
        self.assertEqual(len(raw), record.HEADER_SIZE + 32)
        self.assertEqual(record.HEADER_SIZE, 1544)
        self.assertEqual(raw[:4], b"SPTR")
        self.assertEqual(raw[128:1544], bytes(1416))  # no scheduler part
        rec = record.decode(raw)
        self.assertEqual(rec.sched, record.SchedPart())
        self.assertEqual(rec.trace_id, b"\x01" * 16)
        self.assertEqual(rec.span_id, b"\x02" * 8)
        self.assertEqual(rec.total_calls, 4)
        self.assertEqual(rec.unitemised_calls, 3)
        self.assertEqual(rec.records_dropped_before, 7)
        self.assertEqual(rec.entries[0].nr, NR["fsync"])
        self.assertEqual(record.encode(rec), raw)

    def test_sched_part_roundtrip(self):
        w = record.WaitEntry(start_mono_ns=5, blocked_ns=6, runq_ns=7, waker_on_cpu_ns=8,
                             waker_trace_id=b"\x03" * 16, waker_span_id=b"\x04" * 8,
                             waker_comm=b"refresh".ljust(16, b"\0"), tid=9, nr=202,
                             waker_tid=10, waker_tgid=11, waker_nr=record.NO_CALL,
                             cause=record.CAUSE_LOCK, waker_ctx=record.CTX_TASK,
                             softirq=record.SOFTIRQ_NONE, flags=record.WAIT_WAKER_IN_SPAN)
        sp = record.SchedPart(on_cpu_ns=1, runq_wakeup_ns=2, runq_preempt_ns=3,
                              blocked_ns=(4, 5, 6, 7, 8), blocks=9, preemptions=10,
                              migrations=11, wakeups=12, wakeup_total_ns=13, wakeup_max_ns=14,
                              n_waits=1, lost_events=15, waits=(w,))
        raw = make_record(b"\x01" * 16, b"\x02" * 8, [(1, 5, 0, 10)], flags=record.REC_SCHED)
        rec = record.decode(raw)._replace(sched=sp)
        raw2 = record.encode(rec)
        self.assertEqual(len(raw2), len(raw))
        back = record.decode(raw2)
        self.assertEqual(back.sched.waits[0], w)
        self.assertEqual(back.sched.waits[1:], (record.WaitEntry._make(
            (0, 0, 0, 0, bytes(16), bytes(8), bytes(16)) + (0,) * 9
            + ((0,) * record.KSTACK_DEPTH, (0,) * record.USTACK_DEPTH, 0, 0)),) * 3)
        self.assertEqual(back.sched._replace(waits=(w,)), sp)
        # The part starts right after the first 128 bytes: on_cpu_ns, then the waits at 104.
        self.assertEqual(raw2[128:136], (1).to_bytes(8, "little"))
        self.assertEqual(raw2[128 + 104 + 72:128 + 104 + 76], (9).to_bytes(4, "little"))
        self.assertEqual(raw2[128 + 104 + 95], record.WAIT_WAKER_IN_SPAN)

    def test_bad_records(self):
        raw = make_record(b"\x01" * 16, b"\x02" * 8, [(1, 5, 0, 10)])
        for bad in (raw[:100], raw[:600], b"XXXX" + raw[4:], raw[:-1]):
            with self.assertRaises(record.RecordError):
                record.decode(bad)

    def test_generated_table_matches_the_module(self):
        root = os.path.abspath(os.path.join(PKG_DIR, "..", ".."))
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "syscalls.py")
            subprocess.run([sys.executable, os.path.join(PKG_DIR, "tools", "gen_syscalls.py"), out],
                           check=True)
            with open(out) as a, open(os.path.join(PKG_DIR, "spantrack_hook", "syscalls.py")) as b:
                self.assertEqual(a.read(), b.read(), "regenerate: python3 preload/python/tools/gen_syscalls.py")
        self.assertTrue(os.path.exists(os.path.join(root, "rust_module", "logic", "syscalls.rs")))

    def test_syscall_names(self):
        self.assertEqual(syscall_name(0), "read")
        self.assertEqual(syscall_name(74), "fsync")
        self.assertEqual(syscall_name(230), "clock_nanosleep")
        self.assertEqual(syscall_name(202), "futex")
        self.assertEqual(syscall_name(511), "syscall_511")


class AnnotateTest(unittest.TestCase):
    def test_top_and_errno(self):
        raw = make_record(b"\x01" * 16, b"\x02" * 8,
                          [(NR["write"], 10, 0, 100_000), (NR["fsync"], 0, 200_000, 12_300_000),
                           (NR["write"], 10, 13 * MS, 100_000), (NR["read"], -11, 14 * MS, 5_000)])
        rec = record.decode(raw)
        self.assertEqual(annotate.top_calls(rec), "fsync:12.3ms(1), write:200.0us(2), read:5.0us(1)")
        self.assertEqual(annotate.errno_name(-11), "EAGAIN")
        self.assertIsNone(annotate.errno_name(0))
        self.assertIsNone(annotate.errno_name(-4096))
        self.assertIsNone(annotate.errno_name(7))


class ProcessorTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSpanHook(threshold_ns=1 * MS)
        self.p = Pipeline(self.fake)

    def tearDown(self):
        self.p.provider.shutdown()

    def test_fast_span_passes_through_at_once(self):
        s = self.p.span("fast", 100_000)  # < threshold/2
        # Exported synchronously on the ending thread: no worker involved.
        spans = self.p.finished()
        self.assertEqual([x.name for x in spans], ["fast"])
        self.assertNotIn("spantrack.syscalls.count", spans[0].attributes)
        self.assertEqual(self.fake.take_calls, [])
        tid, sid = ids(s)
        me = threading.get_ident()
        self.assertEqual(self.fake.calls, [("begin", tid, sid, me), ("end", tid, sid, me)])

    def test_slow_span_gets_annotated_with_children(self):
        entries = [(NR["write"], 4096, 1_000, 200_000), (NR["fsync"], 0, 300_000, 12_300_000),
                   (NR["futex"], -110, 13 * MS, 1 * MS)]
        s = self.p.span("slow", 20 * MS, entries, unitemised=(2, 3_000), dropped_before=1)
        self.assertTrue(self.p.provider.force_flush(5000))
        spans = {x.name: x for x in self.p.finished()}
        self.assertEqual(sorted(spans), ["fsync", "futex", "slow", "write"])
        parent = spans["slow"]
        self.assertEqual(parent.context.span_id, s.get_span_context().span_id)
        a = parent.attributes
        self.assertEqual(a["spantrack.syscalls.count"], 5)
        self.assertEqual(a["spantrack.syscalls.top"], "fsync:12.3ms(1), futex:1.0ms(1), write:200.0us(1)")
        self.assertEqual(a["spantrack.dropped.unitemised_calls"], 2)
        self.assertEqual(a["spantrack.dropped.unitemised_ns"], 3_000)
        self.assertEqual(a["spantrack.dropped.records_before"], 1)
        self.assertEqual(a["thread.id"], 4242)
        self.assertNotIn("thread.name", a)  # the Rust processor cannot know it: not exported
        for name in ("write", "fsync", "futex"):
            c = spans[name]
            self.assertEqual(c.parent.span_id, parent.context.span_id)
            self.assertEqual(c.context.trace_id, parent.context.trace_id)
            self.assertNotEqual(c.context.span_id, parent.context.span_id)
            self.assertEqual(c.kind, SpanKind.INTERNAL)
            self.assertTrue(parent.start_time <= c.start_time <= c.end_time <= parent.end_time)
        # Kernel times converted through the record's (real, mono) pair at begin.
        self.assertEqual(spans["fsync"].start_time - parent.start_time, 10_000 + 300_000)
        self.assertEqual(spans["fsync"].end_time - spans["fsync"].start_time, 12_300_000)
        self.assertEqual(spans["fsync"].attributes["spantrack.syscall.nr"], NR["fsync"])
        self.assertEqual(spans["write"].attributes["spantrack.syscall.ret"], 4096)
        self.assertEqual(spans["fsync"].status.status_code, StatusCode.UNSET)
        self.assertEqual(spans["futex"].attributes["error.type"], "ETIMEDOUT")
        self.assertEqual(spans["futex"].status.status_code, StatusCode.ERROR)
        self.assertNotIn("error.type", spans["write"].attributes)
        # The worker took the record on its own thread, which it unregistered first.
        self.assertEqual(len(self.fake.unregistered), 1)
        self.assertEqual(self.fake.take_calls[0][3], self.fake.unregistered[0])
        self.assertNotEqual(self.fake.unregistered[0], threading.get_ident())
        # It waits for the record until TAKE_TIMEOUT_MS after the span's end, no longer.
        self.assertLessEqual(self.fake.take_calls[0][2], SpantrackSpanProcessor.TAKE_TIMEOUT_MS)

    def test_scheduler_part_becomes_attributes_events_and_a_link(self):
        """Through the SDK's pipeline: the exported span keeps its own event and link and
        gets the wait events and the waker link (the golden tests check every value)."""
        from opentelemetry.trace import Link, SpanContext, TraceFlags
        mine = SpanContext(0x11, 0x22, True, TraceFlags(TraceFlags.SAMPLED))
        t0 = 1_800_000_000_000_000_000
        s = self.p.tracer.start_span("waits", start_time=t0, links=[Link(mine, {"k": 1})])
        s.add_event("mine", {"x": 1}, timestamp=t0 + 5)
        tid, sid = ids(s)
        waker_trace, waker_span = b"\x33" * 16, b"\x44" * 8
        w = record.WaitEntry(start_mono_ns=2 * MS, blocked_ns=8 * MS, runq_ns=30_000,
                             waker_on_cpu_ns=7 * MS, waker_trace_id=waker_trace,
                             waker_span_id=waker_span, waker_comm=b"refresh".ljust(16, b"\0"),
                             tid=4242, nr=NR["futex"], waker_tid=4251, waker_tgid=4000,
                             waker_nr=NR["futex"], cause=record.CAUSE_LOCK,
                             waker_ctx=record.CTX_TASK, flags=record.WAIT_WAKER_IN_SPAN)
        p = record.SchedPart(on_cpu_ns=5 * MS, runq_wakeup_ns=30_000,
                             blocked_ns=(0, 8 * MS, 0, 0, 0), blocks=1, wakeups=1, n_waits=1,
                             waits=(w,))
        begin_mono = 5_000 * MS
        self.fake.records[(tid, sid)] = make_record(
            tid, sid, [(NR["futex"], 0, 2 * MS, 8 * MS)], begin_mono=begin_mono,
            real_offset=t0 + 10_000 - begin_mono, duration=20 * MS - 20_000,
            flags=record.REC_SCHED, sched=p)
        s.end(end_time=t0 + 20 * MS)
        self.assertTrue(self.p.provider.force_flush(5000))
        spans = {x.name: x for x in self.p.finished()}
        self.assertEqual(sorted(spans), ["futex", "waits"])
        parent = spans["waits"]
        self.assertEqual(parent.attributes["spantrack.sched.blocked.lock_ns"], 8 * MS)
        self.assertEqual(parent.attributes["spantrack.sched.dominant"], "blocked.lock")
        # The record's span lasts 20 ms - 20 us: the rest is inactive.
        self.assertEqual(parent.attributes["spantrack.sched.inactive_ns"],
                         20 * MS - 20_000 - 5 * MS - 30_000 - 8 * MS)
        self.assertEqual([e.name for e in parent.events], ["mine", "spantrack.wait"])
        ev = parent.events[1]
        self.assertEqual(ev.timestamp, t0 + 10_000 + 2 * MS)
        self.assertEqual(ev.attributes["spantrack.wait.summary"],
                         'lock 8.0ms in futex; woken by thread 4251 "refresh" (same process, '
                         'in futex) after 7.0ms on CPU')
        self.assertEqual(ev.attributes["spantrack.waker.span_id"], "44" * 8)
        self.assertEqual([(l.context.trace_id, l.context.span_id) for l in parent.links],
                         [(0x11, 0x22), (int.from_bytes(waker_trace, "big"),
                                         int.from_bytes(waker_span, "big"))])
        link = parent.links[1]
        self.assertFalse(link.context.is_remote)  # the waker is in the span's process
        self.assertEqual(dict(link.attributes), {"spantrack.link.kind": "waker",
                                                 "spantrack.wait.blocked_ns": 8 * MS})
        self.assertEqual(spans["futex"].events, ())

    def test_min_child_duration_leaves_short_calls_without_children(self):
        self.p.head.MIN_CHILD_NS = 1 * MS
        entries = [(NR["write"], 4096, 1_000, 200_000), (NR["fsync"], 0, 300_000, 12_300_000),
                   (NR["futex"], -110, 13 * MS, 1 * MS)]
        self.p.span("slow", 20 * MS, entries)
        self.assertTrue(self.p.provider.force_flush(5000))
        spans = {x.name: x for x in self.p.finished()}
        # futex lasted exactly 1 ms: kept; write (0.2 ms) summarised.
        self.assertEqual(sorted(spans), ["fsync", "futex", "slow"])
        a = spans["slow"].attributes
        self.assertEqual(a["spantrack.syscalls.itemised"], 3)
        self.assertEqual(a["spantrack.syscalls.summarised"], 1)
        self.assertIn("write:200.0us(1)", a["spantrack.syscalls.top"])
        self.assertEqual(self.p.head.counters["syscall_spans"], 2)

    def test_children_are_clamped_inside_the_parent(self):
        # A call that (by clock skew) starts before the span and one that ends after it.
        self.p.span("skewed", 5 * MS, [(NR["read"], 1, -1 * MS, 2 * MS),
                                        (NR["write"], 1, 4 * MS, 3 * MS)])
        self.p.provider.force_flush(5000)
        spans = {x.name: x for x in self.p.finished()}
        parent = spans["skewed"]
        for name in ("read", "write"):
            c = spans[name]
            self.assertTrue(parent.start_time <= c.start_time <= c.end_time <= parent.end_time, name)

    def test_slow_span_without_record_goes_on_unchanged(self):
        self.p.span("slow-norecord", 10 * MS)
        self.p.provider.force_flush(5000)
        spans = self.p.finished()
        self.assertEqual([x.name for x in spans], ["slow-norecord"])
        self.assertNotIn("spantrack.syscalls.count", spans[0].attributes)
        self.assertEqual(self.p.head.counters["no_record"], 1)

    def test_borderline_span_waits_briefly(self):
        self.p.span("borderline", 700_000)  # between threshold/2 and threshold
        self.p.provider.force_flush(5000)
        self.assertEqual(len(self.p.finished()), 1)
        self.assertLessEqual(self.fake.take_calls[0][2],
                             SpantrackSpanProcessor.TAKE_TIMEOUT_BORDERLINE_MS)
        # No record expected there: it goes on unchanged, saying nothing.
        self.assertNotIn("spantrack.annotation.missing", self.p.finished()[0].attributes)

    def test_threshold_change_is_followed(self):
        self.p.span("a", 2 * MS)
        self.p.provider.force_flush(5000)
        self.assertEqual(len(self.fake.take_calls), 1)
        self.fake.threshold = 100 * MS
        self.p.head._threshold_read_at = -1e9  # as if THRESHOLD_REFRESH_S had passed
        self.p.span("b", 2 * MS)
        self.p.provider.force_flush(5000)
        self.assertEqual(len(self.fake.take_calls), 1)

    def test_inactive_threshold_passes_everything(self):
        self.fake.threshold = (1 << 64) - 1
        self.p.span("x", 500 * MS)
        self.assertEqual(len(self.p.finished()), 1)
        self.assertEqual(self.fake.take_calls, [])

    def test_failed_begin_is_not_ended_nor_annotated(self):
        self.fake.begin_rc = -1
        self.p.span("untracked", 50 * MS)
        self.assertEqual(len(self.p.finished()), 1)
        self.assertEqual([c[0] for c in self.fake.calls], ["begin"])
        self.assertEqual(self.p.head.counters["begin_error_1"], 1)

    def test_unsampled_spans_are_not_tracked(self):
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
        provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
        provider._active_span_processor = SpantrackSpanProcessor(self.fake, provider._active_span_processor)
        with provider.get_tracer("t").start_as_current_span("off"):
            pass
        self.assertEqual(self.fake.calls, [])

    def test_queue_overflow_passes_through_and_counts(self):
        gate = threading.Event()
        entered = threading.Event()
        orig = self.fake.take_record

        def slow_take(*a):
            entered.set()
            gate.wait(5)
            return orig(*a)
        self.fake.take_record = slow_take
        old = SpantrackSpanProcessor.QUEUE_SIZE
        self.p.head.QUEUE_SIZE = 2
        try:
            # The worker holds s0 (blocked in take) before the others end: otherwise it may
            # take two in its first batch, and only two overflow.
            self.p.span("s0", 5 * MS)
            self.assertTrue(entered.wait(5))
            for i in range(1, 6):
                self.p.span(f"s{i}", 5 * MS)
            # 1 taken by the worker (blocked), 2 queued, 3 overflowed and exported at once.
            self.assertTrue(wait_until(lambda: self.p.head.counters["queue_overflow"] >= 3))
            self.assertEqual(len(self.p.finished()), self.p.head.counters["queue_overflow"])
        finally:
            gate.set()
            self.p.head.QUEUE_SIZE = old
        self.p.provider.force_flush(5000)
        self.assertEqual(sorted(x.name for x in self.p.finished()), [f"s{i}" for i in range(6)])

    def test_service_thread_never_waits_for_the_worker(self):
        gate = threading.Event()
        self.fake.take_record = lambda *a: gate.wait(5) and None
        import time
        t0 = time.monotonic()
        for i in range(20):
            self.p.span(f"s{i}", 5 * MS)
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertFalse(self.p.provider.force_flush(200))  # worker still blocked
        gate.set()
        self.assertTrue(self.p.provider.force_flush(5000))
        self.assertEqual(len(self.p.finished()), 20)

    def test_shutdown_drains(self):
        for i in range(5):
            self.p.span(f"s{i}", 5 * MS, [(NR["getpid"], 4000, 0, 1000)])
        self.p.provider.shutdown()
        names = sorted(x.name for x in self.p.finished())
        self.assertEqual(names.count("getpid"), 5)
        self.assertEqual(len(names), 10)

    def test_processors_added_later_still_get_spans(self):
        late = InMemorySpanExporter()
        self.p.provider.add_span_processor(SimpleSpanProcessor(late))
        self.p.span("x", 5 * MS, [(NR["getpid"], 1, 0, 1000)])
        self.p.provider.force_flush(5000)
        self.assertEqual(sorted(x.name for x in late.get_finished_spans()), ["getpid", "x"])
        self.assertEqual(len(self.p.head._span_processors), 2)

    def test_forked_child_without_registration_passes_spans_through(self):
        self.fake.active = lambda: 0
        self.p.head._after_fork()
        self.p.span("child", 5 * MS)
        self.assertEqual([x.name for x in self.p.finished()], ["child"])
        self.assertEqual(self.fake.calls, [])

    def test_worker_exception_exports_the_original(self):
        self.fake.take_record = lambda *a: b"garbage"
        with self.assertLogs("spantrack", "ERROR"):
            self.p.span("x", 5 * MS)
            self.p.provider.force_flush(5000)
        self.assertEqual([x.name for x in self.p.finished()], ["x"])
        self.assertEqual(self.p.head.counters["worker_error"], 1)


def run_py(code, env_extra=None, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPANTRACK", "PYTHON"))}
    env["PYTHONPATH"] = pythonpath if pythonpath is not None else PKG_DIR
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60)


class StartupTest(unittest.TestCase):
    def test_without_library_nothing_changes(self):
        r = run_py("""
            import sys
            from opentelemetry.sdk.trace import TracerProvider, SynchronousMultiSpanProcessor
            p = TracerProvider(shutdown_on_exit=False)
            assert type(p._active_span_processor) is SynchronousMultiSpanProcessor, p._active_span_processor
            assert 'spantrack_hook' in sys.modules
            print('unchanged')
        """, {"SPANTRACK_HOOK_DEBUG": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("unchanged", r.stdout)
        self.assertIn("not in the process", r.stderr)

    def test_patch_on_import(self):
        r = run_py(f"""
            import sys
            sys.path[:0] = [{PKG_DIR!r}, {HERE!r}]
            import spantrack_hook, fake_spanhook
            assert 'opentelemetry.sdk.trace' not in sys.modules
            assert spantrack_hook.install(fake_spanhook.FakeSpanHook())
            from opentelemetry.sdk.trace import TracerProvider
            from spantrack_hook.processor import SpantrackSpanProcessor
            class Mine(TracerProvider):
                pass
            for cls in (TracerProvider, Mine):
                p = cls(shutdown_on_exit=False)
                assert isinstance(p._active_span_processor, SpantrackSpanProcessor), cls
            import opentelemetry.sdk.trace as m
            assert not any(type(f).__name__ == '_PatchOnImport' for f in sys.meta_path)
            print('patched')
        """, pythonpath="")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("patched", r.stdout)

    def test_disabled_by_env(self):
        r = run_py(f"""
            import sys
            sys.path.insert(0, {HERE!r})
            import spantrack_hook, fake_spanhook
            print(spantrack_hook.install(fake_spanhook.FakeSpanHook()))
        """, {"SPANTRACK_PYTHON_HOOK": "0"}, pythonpath=PKG_DIR)
        self.assertEqual(r.stdout.strip(), "False", r.stderr)

    def test_shadowed_sitecustomize_still_runs(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "sitecustomize.py"), "w") as f:
                f.write("import builtins\nbuiltins.SHADOWED_RAN = True\n")
            r = run_py("""
                import builtins, sys
                print(getattr(builtins, 'SHADOWED_RAN', False), sys.modules['sitecustomize'].__file__)
            """, pythonpath=PKG_DIR + os.pathsep + d)
        self.assertEqual(r.returncode, 0, r.stderr)
        ran, which = r.stdout.split()
        self.assertEqual(ran, "True")
        self.assertEqual(os.path.dirname(which), PKG_DIR)


if __name__ == "__main__":
    unittest.main()
