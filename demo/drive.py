#!/usr/bin/env python3
"""Drives the demo: about twenty requests to the frontend, some slow for each reason. Each
request carries a fresh W3C traceparent so that its trace can be found again; the list
(trace id, path, why, status, client-side latency) is written to a JSON file.

First a warm-up, as a service in production has had: WARMUP requests to /inventory, so
that spantrack knows the usual latency of its operations ("read inventory" takes well
under a millisecond) and judges them by their own adaptive threshold (the operation's p95)
rather than the module's global one: the lock waits of the plan below are then annotated
as outliers of that operation. The other operations are still warming up (59 spans each),
and are judged by the module's threshold_ns.

Usage: drive.py FRONTEND_URL OUT.json
"""

import json
import os
import sys
import time
import urllib.request

WARMUP = 80

PLAN = [
    ("/fast", "fast"),
    ("/receipt?lines=48", "own fsync: journals a receipt, fsync per line"),
    ("/fast", "fast"),
    ("/report?sleep_ms=60", "sleep: waits 60 ms before rendering"),
    ("/inventory", "fast: inventory lock free"),
    ("/inventory?refresh=1&hold_ms=60", "lock: a refresh thread holds the inventory lock 60 ms"),
    ("/checkout", "fast downstream"),
    ("/checkout?fsync=8", "slow downstream: currency fsyncs its ledger 8 times"),
    ("/fast", "fast"),
    ("/checkout?sleep_ms=50", "slow downstream: currency sleeps 50 ms"),
    ("/checkout?lock=1", "slow downstream: currency waits for its rates lock"),
    ("/receipt?lines=24", "own fsync: journals a shorter receipt"),
    ("/report?sleep_ms=30", "sleep: waits 30 ms before rendering"),
    ("/inventory?refresh=1&hold_ms=40", "lock: a refresh thread holds the inventory lock 40 ms"),
    ("/fast", "fast"),
    ("/checkout?fsync=8", "slow downstream: currency fsyncs its ledger 8 times"),
    ("/inventory", "fast: inventory lock free"),
    ("/report?sleep_ms=80", "sleep: waits 80 ms before rendering"),
    ("/checkout", "fast downstream"),
    ("/fast", "fast"),
    ("/catalog?fsync=6&stat=300", "async downstream: catalog runs an fsync search and a stat search at once on one event loop"),
    ("/catalog?fsync=10&stat=500", "async downstream: catalog runs an fsync search and a stat search at once on one event loop"),
]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    base, out = sys.argv[1].rstrip("/"), sys.argv[2]
    done = []
    t0 = time.monotonic()
    for _ in range(WARMUP):
        with urllib.request.urlopen(base + "/inventory", timeout=60) as r:
            r.read()
    print(f"warm-up: {WARMUP} x GET /inventory in {time.monotonic() - t0:.1f} s "
          f"(its operations now have an adaptive threshold)", flush=True)
    print(f"{'#':>3}  {'request':<34} {'status':>6} {'client ms':>10}  why")
    for i, (path, why) in enumerate(PLAN, 1):
        trace_id, span_id = os.urandom(16).hex(), os.urandom(8).hex()
        req = urllib.request.Request(base + path,
                                     headers={"traceparent": f"00-{trace_id}-{span_id}-01"})
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                r.read()
                status = r.status
        except Exception as e:
            status = getattr(e, "code", 0) or 0
            print(f"     request failed: {e}", file=sys.stderr)
        ms = (time.monotonic() - t0) * 1000
        done.append({"trace_id": trace_id, "path": path, "why": why, "status": status,
                     "client_ms": round(ms, 1)})
        print(f"{i:>3}  GET {path:<30} {status:>6} {ms:>10.1f}  {why}", flush=True)
        time.sleep(0.05)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(done, f, indent=1)


if __name__ == "__main__":
    main()
