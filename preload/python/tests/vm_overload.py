#!/usr/bin/env python3
"""In-VM workload of tests/vm/t_overload.sh (issue 19): the load of the issue, an ordinary
OpenTelemetry program run under LD_PRELOAD=libspanhook.so. THREADS threads run SPANS spans
each; every span makes three writes to /dev/null and sleeps 1.5 ms (slow at the default
1 ms threshold, ~25 calls). The exporter is slow on purpose: SimpleSpanProcessor, each span
serialised to JSON (to_json) and one short line written per span to OUT.

  vm_overload.py run OUT PATH [THREADS SPANS]   PATH: shutdown | flush | atexit | fork |
                                                unload (runs until the module is gone) |
                                                error (the annotator fails now and then)
  vm_overload.py check OUT PATH                 "ok - ..." / "not ok - ..." lines: every
                                                span made was exported once, no slow span
                                                silent; a summary line
  vm_overload.py bench [THREADS SPANS]          the load once, prints made / exported /
                                                annotated / summary / nothing and the time

OUT lines: pid, kind (made|span), name, missing reason or "-", has summary (0/1),
is a system-call child (0/1).
"""

import json
import os
import sys
import threading
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

MISSING = "spantrack.annotation.missing"


def append_line(fd, line):
    """One write(2) to an O_APPEND file: no lock a fork could leave held."""
    os.write(fd, line.encode())


class LineExporter(SpanExporter):
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def export(self, spans):
        for s in spans:
            s.to_json(indent=None)  # what a console exporter pays
            a = s.attributes or {}
            line = (f"{os.getpid()} span {s.name} {a.get(MISSING, '-')} "
                    f"{int('spantrack.syscalls.count' in a)} {int('spantrack.syscall.nr' in a)}\n")
            append_line(self.fd, line)
        return SpanExportResult.SUCCESS


def head_of(provider):
    p = provider._active_span_processor
    return p if type(p).__name__ == "SpantrackSpanProcessor" else None


def run(out, path, threads=8, spans=100):
    provider = TracerProvider(shutdown_on_exit=(path != "atexit"))
    provider.add_span_processor(SimpleSpanProcessor(LineExporter(out)))
    tracer = provider.get_tracer("overload")
    head = head_of(provider)
    made = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if path == "error" and head is not None:
        from spantrack_hook import annotate
        orig, n = annotate.build, [0]

        def sometimes_fails(*a, **kw):
            n[0] += 1
            if n[0] % 7 == 0:
                raise RuntimeError("injected annotator failure")
            return orig(*a, **kw)
        annotate.build = sometimes_fails
        import logging
        logging.getLogger("spantrack").disabled = True
    devnull = os.open("/dev/null", os.O_WRONLY)
    stop = threading.Event()

    def work(k, count):
        i = 0
        while (count is None and not stop.is_set()) or (count is not None and i < count):
            name = f"p{os.getpid()}-t{k}-{i}"
            append_line(made, f"{os.getpid()} made {name}\n")
            with tracer.start_as_current_span(name):
                for _ in range(3):
                    os.write(devnull, b"x" * 64)
                time.sleep(0.0015)
            i += 1

    def start(n, count):
        ts = [threading.Thread(target=work, args=(k, count)) for k in range(n)]
        for t in ts:
            t.start()
        return ts

    t0 = time.monotonic()
    if path == "unload":
        # Until the module has been gone for a while (the test unloads it under load).
        ts = start(threads, None)
        while os.path.exists("/proc/spantrack"):
            time.sleep(0.05)
        time.sleep(1.0)
        stop.set()
    elif path == "fork":
        ts = start(threads, spans)
        time.sleep(0.5)
        pid = os.fork()
        if pid == 0:  # only this thread: two threads of its own, then shutdown
            for t in start(2, spans // 4):
                t.join()
            provider.shutdown()
            os._exit(0)
        for t in ts:
            t.join()
        os.waitpid(pid, 0)
    else:
        ts = start(threads, spans)
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    counters = dict(head.counters) if head is not None else {}
    if path == "flush":
        ok = provider.force_flush()
        print(f"# force_flush: {ok}", flush=True)
        os._exit(0)  # no shutdown, no atexit: the flush alone must have exported all
    if path != "atexit":
        provider.shutdown()
    print(f"# service time {elapsed:.2f} s; counters {json.dumps(counters, sort_keys=True)}",
          flush=True)
    return elapsed


def tally(out):
    made, exported, kids = {}, {}, 0
    dup = 0
    with open(out) as f:
        for line in f:
            p = line.split()
            if p[1] == "made":
                made[p[2]] = p[0]
            elif p[5] == "1":
                kids += 1
            else:
                if p[2] in exported:
                    dup += 1
                exported[p[2]] = (p[0], p[3], p[4] == "1")
    return made, exported, kids, dup


def check(out, path):
    made, exported, kids, dup = tally(out)
    lost = [n for n in made if n not in exported]
    extra = [n for n in exported if n not in made]
    good = True

    def say(name, cond, why=""):
        nonlocal good
        good &= bool(cond)
        print(f"ok - {name}" if cond else f"not ok - {name}: {why}", flush=True)

    say(f"{path}: every span made was exported ({len(exported)} of {len(made)})",
        not lost and not extra, f"lost {len(lost)} {lost[:3]}, extra {extra[:3]}")
    say(f"{path}: each exactly once", dup == 0, f"{dup} exported twice")
    # Every span is slow (1.5 ms sleep, threshold 1 ms): annotated (a summary, and no
    # reason) or with a reason.
    silent = [n for n, (_, why, summary) in exported.items() if why == "-" and not summary]
    say(f"{path}: no slow span silent", not silent, f"{len(silent)} e.g. {silent[:3]}")
    if path == "fork":
        pids = {}
        for n, p in made.items():
            pids.setdefault(p, set()).add(n)
        say("fork: parent and child each exported their own spans in their own process",
            len(pids) == 2 and all(exported.get(n, ("",))[0] == p for p, ns in pids.items()
                                   for n in ns), f"{len(pids)} processes")
    annotated = sum(1 for _, why, summ in exported.values() if why == "-" and summ)
    reasons = {}
    for _, why, _ in exported.values():
        if why != "-":
            reasons[why] = reasons.get(why, 0) + 1
    print(f"# {path}: made {len(made)}, exported {len(exported)}, annotated {annotated} "
          f"({kids} system-call spans), without calls {json.dumps(reasons, sort_keys=True)}",
          flush=True)
    return good


def bench(threads, spans):
    out = f"/tmp/bench_overload.{os.getpid()}"
    try:
        elapsed = run(out, "shutdown", threads, spans)
        made, exported, kids, dup = tally(out)
        summary = sum(1 for _, why, _ in exported.values() if why == "over_budget")
        annotated = sum(1 for _, why, summ in exported.values() if why == "-" and summ)
        nothing = len(exported) - annotated - summary
        reasons = {}
        for _, why, _ in exported.values():
            if why not in ("-", "over_budget"):
                reasons[why] = reasons.get(why, 0) + 1
        print(f"made {len(made)} exported {len(exported)} annotated {annotated} "
              f"summary {summary} nothing {nothing} children {kids} service_s {elapsed:.2f} "
              f"reasons {json.dumps(reasons, separators=(',', ':'))}", flush=True)
    finally:
        os.unlink(out)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "run":
        extra = [int(x) for x in sys.argv[4:6]]
        run(sys.argv[2], sys.argv[3], *extra)
    elif cmd == "check":
        sys.exit(0 if check(sys.argv[2], sys.argv[3]) else 1)
    elif cmd == "bench":
        bench(*[int(x) for x in sys.argv[2:4]])
