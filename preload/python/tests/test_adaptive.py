"""Adaptive per-operation thresholds in the Python processor (issue 14), against
FakeSpanHook: the begin carries the operation's threshold after warm-up, a slow span says
why (threshold, source, the operation's p50/p95/p99, samples, CV), fixed mode keeps the
module's threshold, the per-operation cap, and the statistics published for `spantrack top`."""

import json
import os
import sys
import tempfile
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402

from fake_spanhook import FakeSpanHook, make_record  # noqa: E402
from spantrack_hook import threshold  # noqa: E402
from spantrack_hook.processor import SpantrackSpanProcessor  # noqa: E402

MS = 1_000_000
T0 = 1_800_000_000_000_000_000


def ids(span):
    c = span.get_span_context()
    return c.trace_id.to_bytes(16, "big"), c.span_id.to_bytes(8, "big")


class Pipeline:
    def __init__(self, env):
        self.fake = FakeSpanHook(threshold_ns=1 * MS)
        self.exporter = InMemorySpanExporter()
        with mock.patch.dict(os.environ, env):
            self.provider = TracerProvider(shutdown_on_exit=False,
                                           resource=Resource.create({"service.name": "svc"}))
            self.head = SpantrackSpanProcessor(self.fake, self.provider._active_span_processor)
        self.provider._active_span_processor = self.head
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")
        self.t = T0

    def span(self, name, dur, slow_record=False):
        """A span of `dur` ns (SDK times); with slow_record the fake module has its record."""
        s = self.tracer.start_span(name, start_time=self.t)
        key = ids(s)
        if slow_record:
            self.fake.records[key] = make_record(*key, [(230, 0, 1000, dur - 2000)], begin_mono=5_000 * MS,
                                                 real_offset=self.t - 5_000 * MS, duration=dur)
        s.end(end_time=self.t + dur)
        self.t += dur + 1000
        return key

    def exported(self, name):
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


class AdaptiveTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        env = {"SPANTRACK_THRESHOLD_WARMUP": "20", "SPANTRACK_THRESHOLD_WINDOW": "100",
               "SPANTRACK_OPS_DIR": self.dir}
        self.p = Pipeline(env)

    def tearDown(self):
        self.p.provider.shutdown()

    def test_threshold_per_operation_after_warmup(self):
        p = self.p
        # Warm-up: no threshold of their own.
        for i in range(20):
            k = p.span("fast", 1 * MS + i * 1000)
            self.assertIsNone(p.fake.thresholds[k])
            k = p.span("slow", 200 * MS + i * 100_000)
            self.assertIsNone(p.fake.thresholds[k])
        # Then each operation's own p95 (the upper edge of its bucket).
        k = p.span("fast", 1 * MS)
        t_fast = p.fake.thresholds[k]
        k = p.span("slow", 200 * MS)
        t_slow = p.fake.thresholds[k]
        self.assertTrue(1 * MS < t_fast < 1.2 * MS, t_fast)
        self.assertTrue(200 * MS < t_slow < 230 * MS, t_slow)
        # Outliers x10 of both are slow and say why.
        p.span("fast", 10 * MS, slow_record=True)
        p.span("slow", 2000 * MS, slow_record=True)
        self.assertTrue(p.provider.force_flush(5000))
        for name, t in (("fast", t_fast), ("slow", t_slow)):
            out = [s for s in p.exported(name) if "spantrack.syscalls.count" in s.attributes]
            self.assertEqual(len(out), 1, name)
            a = out[0].attributes
            self.assertEqual(a["spantrack.threshold_ns"], t)
            self.assertEqual(a["spantrack.threshold.source"], "adaptive")
            self.assertEqual(a["spantrack.op.samples"], 22)
            self.assertLessEqual(a["spantrack.op.p50_ns"], a["spantrack.op.p95_ns"])
            self.assertLessEqual(a["spantrack.op.p95_ns"], a["spantrack.op.p99_ns"])
            self.assertGreater(a["spantrack.op.cv"], 0.0)
        # Fast spans carry none of it (slow ones without a record say why, and why slow).
        plain = [s for s in p.exported("fast") if "spantrack.syscalls.count" not in s.attributes
                 and "spantrack.annotation.missing" not in s.attributes]
        self.assertGreater(len(plain), 0)
        self.assertTrue(all("spantrack.threshold_ns" not in s.attributes for s in plain))

    def test_warmup_span_says_warmup_and_document_is_published(self):
        p = self.p
        p.span("op", 5 * MS, slow_record=True)
        self.assertTrue(p.provider.force_flush(5000))
        a = p.exported("op")[0].attributes
        self.assertEqual(a["spantrack.threshold.source"], "warmup")
        self.assertEqual(a["spantrack.threshold_ns"], 1 * MS)
        doc = p.head.operations_document()
        threshold.publish(self.dir, 4242, doc)
        with open(os.path.join(self.dir, "4242.json")) as f:
            got = json.load(f)
        self.assertEqual([(o["service"], o["name"], o["kind"], o["spans"], o["source"])
                          for o in got["operations"]], [("svc", "op", "internal", 1, "warmup")])
        self.assertEqual(got["mode"], "adaptive")

    def test_operations_are_bounded(self):
        p = self.p
        p.head.operations.cfg.max_ops = 2
        for name in ("a", "b", "c", "d"):
            p.span(name, 1000)
        self.assertEqual(sorted(k[1] for k in p.head.operations.ops), ["a", "b"])
        self.assertEqual(p.head.operations.overflow, 4)  # c and d, at start and at end

    def test_per_operation_cap(self):
        p = self.p
        p.head.threshold_config.annotations_per_s = 2
        for _ in range(5):
            p.span("burst", 5 * MS, slow_record=True)
        self.assertTrue(p.provider.force_flush(5000))
        got = p.exported("burst")
        annotated = [s for s in got if "spantrack.annotation.missing" not in s.attributes]
        self.assertEqual(len(annotated), 2)
        self.assertEqual(p.head.counters["op_capped"], 3)
        self.assertTrue(all(s.attributes.get("spantrack.annotation.missing") == "over_budget"
                            for s in got if s not in annotated))


class FixedTest(unittest.TestCase):
    def test_fixed_mode_keeps_the_module_threshold(self):
        p = Pipeline({"SPANTRACK_THRESHOLD": "fixed", "SPANTRACK_THRESHOLD_WARMUP": "5",
                      "SPANTRACK_OPS_DIR": ""})
        try:
            for _ in range(10):
                k = p.span("op", 1 * MS)
                self.assertNotIn(k, p.fake.thresholds)  # spanhook_span_begin, not _threshold
            p.span("op", 5 * MS, slow_record=True)
            self.assertTrue(p.provider.force_flush(5000))
            a = [s for s in p.exported("op") if "spantrack.syscalls.count" in s.attributes][0].attributes
            self.assertEqual(a["spantrack.threshold.source"], "fixed")
            self.assertEqual(a["spantrack.threshold_ns"], 1 * MS)
            self.assertIsNone(p.head._publisher)
        finally:
            p.provider.shutdown()


if __name__ == "__main__":
    unittest.main()
