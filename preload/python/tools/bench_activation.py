"""What attribution by activation costs the Python interpreter: one asyncio step
(`await asyncio.sleep(0)` inside a span, i.e. one `Handle._run`) and one OpenTelemetry
`attach`+`detach` pair, with the hook's slot writes and without them (SPANTRACK_ACTIVATION=0).
Uses a stand-in library that hands out real slots, so no module is needed; inside the VM
under `-icount shift=0` (scripts/bench-micro.sh) a guest nanosecond is one instruction.

Usage: bench_activation.py            both configurations, best of 5 runs each
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.dirname(HERE)
TESTS = os.path.join(PYDIR, "tests")

CHILD = r'''
import asyncio, ctypes, json, sys, threading, time
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import fake_spanhook, spantrack_hook

class SlotLib(fake_spanhook.FakeSpanHook):
    def __init__(self):
        super().__init__(threshold_ns=1 << 62)
        self.slots = {}
    def active_slot(self):
        return ctypes.addressof(self.slots.setdefault(threading.get_ident(), ctypes.c_uint64(0)))

spantrack_hook.install(SlotLib())
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
trace.set_tracer_provider(TracerProvider())
tracer = trace.get_tracer("bench")
STEPS, TASKS, PAIRS = 20000, 10, 100000

async def task():
    with tracer.start_as_current_span("t"):
        for _ in range(STEPS // TASKS):
            await asyncio.sleep(0)

async def main():
    t0 = time.perf_counter_ns()
    await asyncio.gather(*(task() for _ in range(TASKS)))
    return (time.perf_counter_ns() - t0) / STEPS

step = asyncio.run(main())
with tracer.start_as_current_span("s") as s:
    ctx = trace.set_span_in_context(s)
t0 = time.perf_counter_ns()
for _ in range(PAIRS):
    context.detach(context.attach(ctx))
pair = (time.perf_counter_ns() - t0) / PAIRS
print(json.dumps({"step": step, "pair": pair}))
'''


def run(activation: str):
    best = None
    for _ in range(5):
        r = subprocess.run([sys.executable, "-c", CHILD, PYDIR, TESTS], capture_output=True,
                           text=True, timeout=300,
                           env={**os.environ, "SPANTRACK_ACTIVATION": activation})
        if r.returncode != 0:
            sys.exit(f"bench child failed: {r.stderr[-2000:]}")
        v = json.loads(r.stdout.strip().splitlines()[-1])
        best = v if best is None else {k: min(best[k], v[k]) for k in v}
    return best


def main():
    off, on = run("0"), run("1")
    print(f"{'':38} {'without':>9} {'with':>9} {'hook':>9}")
    for k, label in (("step", "asyncio step (Handle._run)"), ("pair", "OTel attach+detach pair")):
        print(f"{label + ', ns':38} {off[k]:9.0f} {on[k]:9.0f} {on[k] - off[k]:+9.0f}")


if __name__ == "__main__":
    main()
