"""Host tests of attribution by activation (spantrack_hook/activation.py), without the
module: a stand-in library hands each thread a real uint64_t slot, and the program records
what its slot holds at the points where it would make a system call. In a child
interpreter: the patches are process-wide."""

import json
import os
import subprocess
import sys
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.dirname(HERE)

PROGRAM = textwrap.dedent(r'''
    import asyncio, ctypes, json, sys, threading
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import fake_spanhook, spantrack_hook

    class SlotLib(fake_spanhook.FakeSpanHook):
        """Each thread gets its own 8-byte slot (kept alive here)."""
        def __init__(self):
            super().__init__()
            self.slots = {}
        def active_slot(self):
            buf = self.slots.setdefault(threading.get_ident(), ctypes.c_uint64(0))
            return ctypes.addressof(buf)

    lib = SlotLib()
    assert spantrack_hook.install(lib)
    from spantrack_hook import activation
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider, SpanProcessor
    seen = []          # (who, expected span id, slot value)

    def point(who, expected):
        s = activation.slot()
        seen.append((who, expected, s.value if s is not None else None))

    class Mine(SpanProcessor):        # the application's processor: runs inside ours
        def on_start(self, span, parent_context=None):
            point("processor", 0)
        def on_end(self, span):
            point("processor", 0)

    provider = TracerProvider()
    provider.add_span_processor(Mine())
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("t")

    def in_thread(sid):
        point("pool", sid)

    async def request(i):
        with tracer.start_as_current_span(f"req{i}") as span:
            sid = span.get_span_context().span_id
            for step in range(4):
                point(f"req{i}", sid)
                await asyncio.sleep(0.001 * (i % 3))
            await asyncio.to_thread(in_thread, sid)
            point(f"req{i}", sid)
            with tracer.start_as_current_span("child") as c:
                point(f"req{i}/child", c.get_span_context().span_id)
                await asyncio.sleep(0)
                point(f"req{i}/child", c.get_span_context().span_id)
            point(f"req{i}", sid)
        point(f"after{i}", 0)

    async def main():
        await asyncio.gather(*(request(i) for i in range(6)))
        point("loop", 0)

    asyncio.run(main())
    # Thread-per-request: a plain thread with a current span, then none.
    def threaded():
        with tracer.start_as_current_span("threaded") as s:
            point("threaded", s.get_span_context().span_id)
        point("threaded-after", 0)
    t = threading.Thread(target=threaded); t.start(); t.join()
    print(json.dumps(seen))
''')


class ActivationTest(unittest.TestCase):
    def test_slot_holds_the_running_span(self):
        r = subprocess.run([sys.executable, "-c", PROGRAM, PYDIR, HERE],
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SPANTRACK_ACTIVATION": "1"})
        self.assertEqual(r.returncode, 0, r.stderr)
        seen = json.loads(r.stdout.strip().splitlines()[-1])
        wrong = [x for x in seen if x[1] != x[2]]
        self.assertFalse(wrong, f"slot held another span: {wrong[:10]}")
        whos = {w.split("/")[0].rstrip("0123456789") for w, _, _ in seen}
        self.assertTrue({"req", "pool", "processor", "threaded", "after", "loop"} <= whos, whos)
        self.assertGreaterEqual(sum(1 for w, _, _ in seen if w == "pool"), 6)


UVLOOP = textwrap.dedent(r'''
    import ctypes, json, os, sys, tempfile, threading
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    import fake_spanhook, spantrack_hook

    class SlotLib(fake_spanhook.FakeSpanHook):
        def __init__(self):
            super().__init__()
            self.slots = {}
        def active_slot(self):
            return ctypes.addressof(self.slots.setdefault(threading.get_ident(), ctypes.c_uint64(0)))

    assert spantrack_hook.install(SlotLib())
    from spantrack_hook import activation
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
    tracer = trace.get_tracer("t")
    # A stand-in "uvloop" module: importing it is what the hook watches for.
    d = tempfile.mkdtemp()
    open(os.path.join(d, "uvloop.py"), "w").write("")
    sys.path.insert(0, d)
    with tracer.start_as_current_span("before"):
        before = activation.slot().value
    import uvloop
    with tracer.start_as_current_span("after"):
        after = activation.slot().value
    print(json.dumps([before, after]))
''')


class UvloopTest(unittest.TestCase):
    def test_uvloop_keeps_slots_at_zero_and_says_so(self):
        r = subprocess.run([sys.executable, "-c", UVLOOP, PYDIR, HERE], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        before, after = json.loads(r.stdout.strip().splitlines()[-1])
        self.assertNotEqual(before, 0)
        self.assertEqual(after, 0)
        self.assertIn("uvloop is loaded and its event loop cannot be hooked", r.stderr)


if __name__ == "__main__":
    unittest.main()
