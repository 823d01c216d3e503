#!/usr/bin/env python3
"""Issue 19's load, measured once (not a timed test): runs tests/vm_overload.py's `bench`
(THREADS x SPANS slow spans, ~25 calls each, into a slow synchronous exporter) without the
preload and with it (module loaded, default 1 ms threshold), at the default budget and at
the budgets given; prints spans made vs exported, annotated / summary only / nothing, and
the service's time. Run in the VM as root, the module loaded:

  bench_overload.py LIBSPANHOOK [THREADS SPANS [BUDGET_PCT ...]]
"""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOAD = os.path.join(HERE, "..", "tests", "vm_overload.py")


def once(env_extra, threads, spans):
    env = dict(os.environ, SPANHOOK_QUIET="1", **env_extra)
    r = subprocess.run([sys.executable, WORKLOAD, "bench", str(threads), str(spans)],
                       env=env, capture_output=True, text=True, timeout=1800)
    line = [x for x in r.stdout.splitlines() if x.startswith("made ")]
    if r.returncode != 0 or not line:
        return None, r.stderr[-400:]
    words = line[0].split()
    return dict(zip(words[0::2], words[1::2])), ""


def main():
    lib = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    spans = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    budgets = sys.argv[4:] or ["10"]
    runs = [("without spantrack", {})]
    pp = os.path.join(HERE, "..")
    for b in budgets:
        runs.append((f"spantrack, budget {b}%",
                     {"LD_PRELOAD": lib, "PYTHONPATH": pp, "SPANTRACK_BUDGET_PCT": b}))
    print(f"{threads} threads x {spans} spans (3 writes + 1.5 ms sleep each), SimpleSpanProcessor"
          " + to_json exporter")
    print(f"{'run':<28} {'made':>6} {'exported':>8} {'annotated':>9} {'summary':>7} "
          f"{'nothing':>7} {'children':>8} {'service s':>9}")
    base = None
    for name, env in runs:
        got, err = once(env, threads, spans)
        if got is None:
            print(f"{name:<28} failed: {err}")
            continue
        t = float(got["service_s"])
        base = base or t
        print(f"{name:<28} {got['made']:>6} {got['exported']:>8} {got['annotated']:>9} "
              f"{got['summary']:>7} {got['nothing']:>7} {got['children']:>8} {t:>9.2f}"
              f"  ({100 * (t / base - 1):+.1f}%) {got.get('reasons', '')}")


if __name__ == "__main__":
    main()
