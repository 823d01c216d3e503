#!/usr/bin/env python3
"""Issue 19's load in a Python service, measured (`make bench`, part `overload`, runs
`one`; the Rust twin is otel/demo_svc/src/bin/spantrack-overload-bench.rs, which measures
the same things the same way).

THREADS service threads run SPANS spans each (a unique name per span, so that every span
is judged by the module's default threshold, as in the issue); every span makes three
64-byte writes to /dev/null and sleeps 1.5 ms. The application's pipeline is the SDK's
SimpleSpanProcessor with a console-like exporter: each span serialised to one JSON line
(`to_json`) and written to /dev/null, on the thread that hands it on. Whether spantrack
takes part is the environment's business (LD_PRELOAD=libspanhook.so, the module loaded,
the SPANTRACK_* variables).

  bench_overload.py one [THREADS SPANS]
      the load once in this process; prints one JSON line: spans made and exported
      (distinct, and exported twice), exported annotated (summary attributes, no missing
      reason), summary only (over_budget), nothing (another reason, per reason), silent
      (slow, neither), child spans; the service's time (its threads' first start to last
      end) and the whole run's (to the end of the shutdown); CPU time: the process's (from
      before the threads start to after the shutdown), the service threads', the main
      thread's, and the exporter's own (inside `export`), by parent and child span and by
      the thread it ran on (service, main, other); the processor's counters.
  bench_overload.py LIBSPANHOOK [THREADS SPANS [BUDGET_PCT ...]]
      a table: the load without the preload, then with it at each budget (default 10);
      run in the VM as root with the module loaded.
"""

import json
import os
import subprocess
import sys
import threading
import time

ON_SERVICE, ON_MAIN, ON_OTHER = 0, 1, 2
MISSING = "spantrack.annotation.missing"
COUNT = "spantrack.syscalls.count"
SYSCALL_NR = "spantrack.syscall.nr"


def one(threads=8, spans=1000):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (SimpleSpanProcessor, SpanExporter,
                                                SpanExportResult)

    role = threading.local()
    role.on = ON_MAIN
    lock = threading.Lock()
    parents = {}  # name -> [times exported, missing reason, has the summary attributes]
    children = [0]
    export_ns = [[0, 0, 0], [0, 0, 0]]  # [parent, child] x [service, main, other]
    out = os.open("/dev/null", os.O_WRONLY)

    class LineExporter(SpanExporter):
        def export(self, batch):
            for s in batch:
                t0 = time.thread_time_ns()
                os.write(out, (s.to_json(indent=None) + "\n").encode())
                a = s.attributes or {}
                child = SYSCALL_NR in a
                with lock:
                    if child:
                        children[0] += 1
                    else:
                        e = parents.setdefault(s.name, [0, None, False])
                        e[0] += 1
                        e[1] = a.get(MISSING)
                        e[2] = COUNT in a
                    export_ns[int(child)][getattr(role, "on", ON_OTHER)] += time.thread_time_ns() - t0
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(LineExporter()))
    head = provider._active_span_processor
    head = head if type(head).__name__ == "SpantrackSpanProcessor" else None
    tracer = provider.get_tracer("overload")
    made = [0]
    service_ns = [0]

    def work(k):
        role.on = ON_SERVICE
        c0 = time.thread_time_ns()
        devnull = os.open("/dev/null", os.O_WRONLY)
        for i in range(spans):
            with tracer.start_as_current_span(f"t{k}-{i}"):
                for _ in range(3):
                    os.write(devnull, b"x" * 64)
                time.sleep(0.0015)
        os.close(devnull)
        with lock:
            made[0] += spans
            service_ns[0] += time.thread_time_ns() - c0

    proc0, main0 = time.process_time_ns(), time.thread_time_ns()
    t0 = time.monotonic()
    ts = [threading.Thread(target=work, args=(k,), name=f"svc-{k}") for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    service = time.monotonic() - t0
    provider.shutdown()
    total = time.monotonic() - t0
    proc1, main1 = time.process_time_ns(), time.thread_time_ns()

    reasons = {}
    for _, why, _ in parents.values():
        if why is not None:
            reasons[why] = reasons.get(why, 0) + 1
    summary = reasons.get("over_budget", 0)
    result = {
        "lang": "python",
        "state": ("active" if head is not None else "plain"),
        "threads": threads, "spans": spans, "made": made[0],
        "exported": len(parents),
        "twice": sum(max(0, n - 1) for n, _, _ in parents.values()),
        "annotated": sum(1 for _, why, summ in parents.values() if why is None and summ),
        "summary": summary,
        "nothing": sum(reasons.values()) - summary,
        "silent": sum(1 for _, why, summ in parents.values() if why is None and not summ),
        "reasons": dict(sorted(reasons.items())),
        "children": children[0],
        "service_s": round(service, 6), "total_s": round(total, 6),
        "cpu_process_s": (proc1 - proc0) / 1e9,
        "cpu_service_s": service_ns[0] / 1e9,
        "cpu_main_s": (main1 - main0) / 1e9,
        "export_parent_s": [x / 1e9 for x in export_ns[0]],
        "export_child_s": [x / 1e9 for x in export_ns[1]],
        "shutdown": "done",
        "counters": dict(sorted(head.counters.items())) if head is not None else {},
    }
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return result


def table(lib, threads, spans, budgets):
    runs = [("without spantrack", {})]
    for b in budgets:
        runs.append((f"spantrack, budget {b}%", {"LD_PRELOAD": lib, "SPANTRACK_BUDGET_PCT": b}))
    print(f"{threads} threads x {spans} spans (3 writes + 1.5 ms sleep each), SimpleSpanProcessor"
          " + to_json exporter")
    print(f"{'run':<28} {'made':>6} {'exported':>8} {'annotated':>9} {'summary':>7} "
          f"{'nothing':>7} {'children':>8} {'service s':>9}")
    base = None
    for name, extra in runs:
        env = dict(os.environ, SPANHOOK_QUIET="1", **extra)
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "one", str(threads),
                            str(spans)], env=env, capture_output=True, text=True, timeout=1800)
        lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
        if r.returncode != 0 or not lines:
            print(f"{name:<28} failed: {r.stderr[-400:]}")
            continue
        got = json.loads(lines[-1])
        t = got["service_s"]
        base = base or t
        print(f"{name:<28} {got['made']:>6} {got['exported']:>8} {got['annotated']:>9} "
              f"{got['summary']:>7} {got['nothing']:>7} {got['children']:>8} {t:>9.2f}"
              f"  ({100 * (t / base - 1):+.1f}%) {json.dumps(got['reasons'])}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        one(*[int(x) for x in sys.argv[2:4]])
        return
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    spans = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    table(sys.argv[1], threads, spans, sys.argv[4:] or ["10"])


if __name__ == "__main__":
    main()
