"""Host tests of issue 19 against FakeSpanHook: every span reaches the application's
processors exactly once on every path (queue full, no record, budget, worker errors, module
gone, flush, shutdown, exit without shutdown, fork), and a slow span without its calls says
why in spantrack.annotation.missing. Assertions are on counts, never on speed."""

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_DIR = os.path.dirname(HERE)
sys.path.insert(0, PKG_DIR)
sys.path.insert(0, HERE)

from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult  # noqa: E402

from fake_spanhook import FakeSpanHook, wait_until  # noqa: E402
from spantrack_hook import annotate  # noqa: E402
from spantrack_hook.abi import U64_MAX  # noqa: E402
from test_hook import MS, NR, Pipeline  # noqa: E402

MISSING = annotate.MISSING
CALLS = [(NR["write"], 10, i * 100_000, 50_000) for i in range(5)]


class Recorder(SpanExporter):
    """Keeps every span it gets, noting those that came after its shutdown; `delay` s each."""

    def __init__(self, delay=0.0):
        self.spans = []
        self.after_shutdown = 0
        self.is_shut = False
        self.delay = delay
        self.lock = threading.Lock()

    def export(self, spans):
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            self.spans.extend(spans)
            if self.is_shut:
                self.after_shutdown += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.is_shut = True

    def parents(self):
        return [s for s in self.spans if "spantrack.syscall.nr" not in (s.attributes or {})]


class RecPipeline(Pipeline):
    def __init__(self, fake, delay=0.0):
        super().__init__(fake)
        self.rec = Recorder(delay)
        self.provider.add_span_processor(SimpleSpanProcessor(self.rec))


def ids_of(span):
    c = span.context
    return (c.trace_id.to_bytes(16, "big"), c.span_id.to_bytes(8, "big"))


def silent(parents, threshold=1 * MS):
    """Slow spans exported with neither children's summary nor a reason."""
    return [s for s in parents if s.end_time - s.start_time >= threshold
            and "spantrack.syscalls.count" not in s.attributes and MISSING not in s.attributes]


class OverloadTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeSpanHook(threshold_ns=1 * MS)
        self.p = RecPipeline(self.fake)
        self.head = self.p.head

    def tearDown(self):
        self.p.provider.shutdown()

    def test_no_record_is_said(self):
        self.p.span("slow", 5 * MS)
        self.p.provider.force_flush(5000)
        [s] = self.p.rec.spans
        self.assertEqual(s.attributes[MISSING], "no_record")
        self.assertEqual(self.head.counters["missing_no_record"], 1)
        # Its record, were it to come late, is forgotten (as in Rust).
        self.assertEqual(self.fake.forgotten, [ids_of(s)])

    def test_queue_full_is_said_and_nothing_is_lost(self):
        gate = threading.Event()
        orig = self.fake.take_record
        self.fake.take_record = lambda *a: gate.wait(10) and orig(*a)
        self.head.QUEUE_SIZE = 2
        for i in range(8):
            self.p.span(f"s{i}", 5 * MS, CALLS)
        self.assertTrue(wait_until(lambda: self.head.counters["queue_overflow"] >= 4))
        gate.set()
        self.assertTrue(self.p.provider.force_flush(10000))
        parents = self.p.rec.parents()
        self.assertEqual(sorted(s.name for s in parents), [f"s{i}" for i in range(8)])
        full = [s for s in parents if s.attributes.get(MISSING) == "queue_full"]
        self.assertEqual(len(full), self.head.counters["queue_overflow"])
        self.assertEqual(len(full), self.head.counters["missing_queue_full"])
        self.assertEqual(silent(parents), [])
        # Each span passed on without its record had it forgotten, once; the annotated ones
        # (record taken) were not.
        self.assertEqual(sorted(self.fake.forgotten), sorted(ids_of(s) for s in full))

    def test_over_budget_spans_get_the_summary(self):
        self.head.BUDGET_PCT = 0.0
        self.head._credit = 0.0
        for i in range(3):
            self.p.span(f"s{i}", 5 * MS, CALLS)
        self.p.provider.force_flush(5000)
        self.assertEqual(len(self.p.rec.spans), 3)  # no children
        for s in self.p.rec.spans:
            self.assertEqual(s.attributes[MISSING], "over_budget")
            self.assertEqual(s.attributes["spantrack.syscalls.count"], 5)
            self.assertIn("write:", s.attributes["spantrack.syscalls.top"])
        self.assertEqual(self.head.counters["missing_over_budget"], 3)

    def test_within_the_budget_the_slowest_go_first(self):
        gate = threading.Event()
        orig = self.fake.take_record
        first = []

        def take(*a):
            if not first:  # the first span (no record) holds the worker until all are queued
                first.append(1)
                gate.wait(10)
            return orig(*a)
        self.fake.take_record = take
        self.p.span("warmup", 5 * MS)
        self.assertTrue(wait_until(lambda: first))
        for name, dur in (("x2", 2 * MS), ("x9", 9 * MS), ("x4", 4 * MS)):
            self.p.span(name, dur, CALLS)
        self.head.BUDGET_PCT = 1e-9  # credit for one span: the one in hand
        self.head._credit = 1e-12
        gate.set()
        self.p.provider.force_flush(5000)
        parents = {s.name: s for s in self.p.rec.parents()}
        self.assertEqual(sorted(parents), ["warmup", "x2", "x4", "x9"])
        self.assertNotIn(MISSING, parents["x9"].attributes)
        self.assertEqual(parents["x4"].attributes[MISSING], "over_budget")
        self.assertEqual(parents["x2"].attributes[MISSING], "over_budget")
        self.assertEqual(len(self.p.rec.spans), 4 + len(CALLS))

    def test_worker_errors_are_said(self):
        self.fake.take_record = lambda *a: b"garbage"
        with self.assertLogs("spantrack", "ERROR"):
            self.p.span("bad", 5 * MS)
            self.p.provider.force_flush(5000)
        [s] = self.p.rec.spans
        self.assertEqual(s.attributes[MISSING], "worker_error")

    def test_a_failing_inner_processor_gets_each_span_once(self):
        class Boom(SpanExporter):
            def export(self, spans):
                raise RuntimeError("exporter bug")
        self.p.provider.add_span_processor(SimpleSpanProcessor(Boom()))
        with self.assertLogs(level="ERROR"):
            for i in range(3):
                self.p.span(f"s{i}", 5 * MS, CALLS)
            self.p.provider.force_flush(5000)
        parents = self.p.rec.parents()
        self.assertEqual(sorted(s.name for s in parents), ["s0", "s1", "s2"])
        self.assertEqual(len(self.p.rec.spans), 3 * (1 + len(CALLS)))

    def test_no_annotator_thread(self):
        real_start = threading.Thread.start

        def refuse(t):
            if t.name == "spantrack-annotator":
                raise RuntimeError("can't start new thread")
            return real_start(t)
        threading.Thread.start = refuse
        try:
            with self.assertLogs("spantrack", "ERROR"):
                self.p.span("a", 5 * MS, CALLS)
                self.p.span("b", 5 * MS, CALLS)
        finally:
            threading.Thread.start = real_start
        self.assertEqual([s.attributes[MISSING] for s in self.p.rec.spans],
                         ["worker_error", "worker_error"])

    def test_module_unloaded_mid_run(self):
        gate = threading.Event()
        orig = self.fake.take_record
        gone = []

        def take(*a):
            gate.wait(10)
            if gone:
                raise OSError(errno.ENODEV, "inactive")
            return orig(*a)
        self.fake.take_record = take
        self.p.span("annotated-or-not", 5 * MS, CALLS)  # queued: its take fails once gone
        open_span = self.p.tracer.start_span("open", start_time=1_800_000_000_000_000_000)
        self.p.span("fast", 100_000)
        self.assertEqual(self.head._current_threshold(), 1 * MS)
        # The module goes away.
        gone.append(1)
        self.fake.active = lambda: 0
        self.fake.span_begin = self.fake.span_end = lambda *a: -errno.ENODEV
        self.fake.threshold = U64_MAX
        self.head._threshold_read_at = -1e9
        gate.set()
        open_span.end(end_time=1_800_000_000_000_000_000 + 5 * MS)  # end refused
        self.p.span("after", 5 * MS)  # begin refused
        self.p.span("after-fast", 100_000)
        self.assertTrue(self.p.provider.force_flush(5000))
        parents = {s.name: s for s in self.p.rec.parents()}
        self.assertEqual(sorted(parents),
                         ["after", "after-fast", "annotated-or-not", "fast", "open"])
        for name in ("annotated-or-not", "open", "after"):
            self.assertEqual(parents[name].attributes.get(MISSING), "inactive", name)
        self.assertNotIn(MISSING, parents["after-fast"].attributes)
        self.assertNotIn(MISSING, parents["fast"].attributes)

    def test_shutdown_out_of_time_passes_the_rest_before_the_exporter_stops(self):
        self.p.rec.delay = 0.01  # 10 ms a span: 40 x 6 spans take 2.4 s to export
        self.head.SHUTDOWN_TIMEOUT_MS = 600
        gate = threading.Event()
        orig = self.fake.take_record
        self.fake.take_record = lambda *a: gate.wait(10) and orig(*a)
        for i in range(40):
            self.p.span(f"s{i}", 5 * MS, CALLS)
        gate.set()
        self.p.provider.shutdown()
        parents = self.p.rec.parents()
        self.assertEqual(sorted(s.name for s in parents), sorted(f"s{i}" for i in range(40)))
        self.assertEqual(self.p.rec.after_shutdown, 0)
        late = [s for s in parents if s.attributes.get(MISSING) == "shutdown"]
        self.assertGreater(len(late), 0)
        self.assertEqual(silent(parents), [])

    def test_shutdown_with_the_worker_stuck_on_a_span_passes_that_span_too(self):
        # The worker holds s0 (waiting for its record, or loading symbol tables on a busy
        # host) past the deadline and STALL_S: shutdown must pass s0 on before the exporter
        # stops, and the worker's late result must not follow it.
        self.head.SHUTDOWN_TIMEOUT_MS = 300
        self.head.STALL_S = 0.2
        gate, entered = threading.Event(), threading.Event()
        orig = self.fake.take_record

        def take(*a):
            entered.set()
            gate.wait(10)
            return orig(*a)
        self.fake.take_record = take
        for i in range(3):
            self.p.span(f"s{i}", 5 * MS, CALLS)
        self.assertTrue(entered.wait(5))
        worker = self.head._worker
        self.p.provider.shutdown()
        parents = self.p.rec.parents()
        self.assertEqual(sorted(s.name for s in parents), ["s0", "s1", "s2"])
        self.assertEqual([s.attributes.get(MISSING) for s in parents], ["shutdown"] * 3)
        self.assertEqual(self.p.rec.after_shutdown, 0)
        gate.set()
        worker.join(5)
        self.assertFalse(worker.is_alive())
        self.assertEqual(self.p.rec.after_shutdown, 0)
        self.assertEqual(len(self.p.rec.spans), 3)
        self.assertEqual(self.head.counters["late_dropped"], 1)

    def test_flush_out_of_time_then_annotating_resumes(self):
        gate = threading.Event()
        orig = self.fake.take_record
        self.fake.take_record = lambda *a: gate.wait(10) and orig(*a)
        for i in range(5):
            self.p.span(f"s{i}", 5 * MS, CALLS)
        self.assertFalse(self.p.provider.force_flush(200))
        gate.set()
        self.assertTrue(self.p.provider.force_flush(10000))
        self.p.span("next", 5 * MS, CALLS)
        self.assertTrue(self.p.provider.force_flush(10000))
        parents = {s.name: s for s in self.p.rec.parents()}
        self.assertEqual(len(parents), 6)
        self.assertNotIn(MISSING, parents["next"].attributes)
        self.assertEqual(silent(list(parents.values())), [])

    def test_many_threads_with_a_slow_exporter(self):
        self.p.rec.delay = 0.0005
        threads, per = 8, 150

        def work(k):
            for i in range(per):
                self.p.span(f"t{k}-{i}", 3 * MS, CALLS)
        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        self.p.provider.shutdown()
        parents = self.p.rec.parents()
        self.assertEqual(len(parents), threads * per)
        self.assertEqual(len({s.name for s in parents}), threads * per)
        self.assertEqual(silent(parents), [])
        kids = len(self.p.rec.spans) - len(parents)
        annotated = sum(1 for s in parents if MISSING not in s.attributes)
        self.assertEqual(kids, annotated * len(CALLS))
        self.assertEqual(self.p.rec.after_shutdown, 0)


def run_child(code):
    """Runs `code` after the prelude in a new interpreter (OUT: a file its exporter writes
    "pid name reason" lines to); returns (the completed process, those lines split)."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "spans")
        r = _run_child(code, out)
        rows = []
        if os.path.exists(out):
            with open(out) as f:
                rows = [line.split() for line in f]
        return r, rows


def _run_child(code, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPANTRACK", "PYTHON"))}
    env["PYTHONPATH"] = os.pathsep.join([PKG_DIR, HERE])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    prelude = textwrap.dedent("""\
        import os, sys, threading
        OUT = sys.argv[1]
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
        from fake_spanhook import FakeSpanHook, make_record
        from spantrack_hook.processor import SpantrackSpanProcessor

        class Lines(SpanExporter):
            def __init__(self, path):
                self.path = path
            def export(self, spans):
                with open(self.path, "a") as f:
                    for s in spans:
                        f.write(f"{os.getpid()} {s.name} {s.attributes.get('spantrack.annotation.missing', '-')}\\n")
                return SpanExportResult.SUCCESS

        def pipeline(path, shutdown_on_exit=False):
            fake = FakeSpanHook()
            provider = TracerProvider(shutdown_on_exit=shutdown_on_exit)
            head = SpantrackSpanProcessor(fake, provider._active_span_processor)
            provider._active_span_processor = head
            provider.add_span_processor(SimpleSpanProcessor(Lines(path)))
            return fake, provider, head, provider.get_tracer("t")

        def span(fake, tracer, name, ms, calls=()):
            t0 = 1_800_000_000_000_000_000
            s = tracer.start_span(name, start_time=t0)
            c = s.get_span_context()
            tid, sid = c.trace_id.to_bytes(16, "big"), c.span_id.to_bytes(8, "big")
            if calls:
                fake.records[(tid, sid)] = make_record(tid, sid, calls)
            s.end(end_time=t0 + ms * 1_000_000)
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code), out], env=env,
                          capture_output=True, text=True, timeout=120)


class ProcessTest(unittest.TestCase):
    def test_exit_without_shutdown_exports_everything(self):
        r, rows = run_child("""
            fake, provider, head, tracer = pipeline(OUT)
            gate = threading.Event()
            orig = fake.take_record
            fake.take_record = lambda *a: gate.wait(0.2) or orig(*a)
            for i in range(30):
                span(fake, tracer, f"s{i}", 5, [(1, 10, 0, 1000)] * 3)
            # no shutdown: the interpreter exits with the queue full of spans
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        names = [n for _, n, _ in rows if n.startswith("s")]
        self.assertEqual(sorted(names), sorted(f"s{i}" for i in range(30)))

    def test_fork_parent_and_child_each_export_their_own_once(self):
        r, rows = run_child("""
            fake, provider, head, tracer = pipeline(OUT)
            gate = threading.Event()
            orig = fake.take_record
            # Each take waits for the gate as long as the processor says (as the library
            # does): spans are still queued when the fork comes.
            fake.take_record = lambda t, s, ms: (gate.wait(ms / 1000) or True) and orig(t, s, ms)
            for i in range(10):
                span(fake, tracer, f"p{i}", 5, [(1, 10, 0, 1000)])
            pid = os.fork()
            if pid == 0:
                for i in range(5):
                    span(fake, tracer, f"c{i}", 5, [(1, 10, 0, 1000)])
                provider.shutdown()
                os._exit(0)
            gate.set()
            for i in range(10, 15):
                span(fake, tracer, f"p{i}", 5, [(1, 10, 0, 1000)])
            _, status = os.waitpid(pid, 0)
            provider.shutdown()
            sys.exit(status)
        """)
        self.assertEqual(r.returncode, 0, r.stderr)
        pids = sorted({p for p, _, _ in rows})
        self.assertEqual(len(pids), 2, rows)
        by_pid = {p: sorted(n for q, n, _ in rows if q == p and n != "write") for p in pids}
        parent = [p for p in pids if any(n.startswith("p") for n in by_pid[p])]
        self.assertEqual(len(parent), 1, by_pid)
        child = [p for p in pids if p != parent[0]][0]
        self.assertEqual(by_pid[parent[0]], sorted(f"p{i}" for i in range(15)))
        self.assertEqual(by_pid[child], sorted(f"c{i}" for i in range(5)))


if __name__ == "__main__":
    unittest.main()
