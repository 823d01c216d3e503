#!/usr/bin/env python3
"""Makes the view's test fixture: spans as the demo's receiver writes them (one JSON object
per line, demo/receiver.py), for the twenty requests of demo/drive.py, shaped as the demo's
services and spantrack's two exporters make them: the Python frontend (preload/python
spantrack_hook: `thread.id` and `thread.name`) and the Rust currency service
(spantrack-otel: `thread.id`); each span slower than the 10 ms threshold carries
`spantrack.syscalls.*` and one child span per system call (`spantrack.syscall.nr`,
`spantrack.syscall.ret`, `thread.id`; a failed call has status ERROR and `error.type`).
Deterministic (fixed seed and clock).

Usage: make_fixture.py [OUT.jsonl]   (default: fixture/spans.jsonl beside this file)
`big_trace(n)` makes one trace with n system-call spans (for the tests of aggregation).
"""

import errno
import json
import os
import random
import sys

BASE_NS = 1_796_119_200_000_000_000  # 2026-12-01 10:00:00 UTC
THRESHOLD_NS = 10_000_000
NR = {"read": 0, "write": 1, "close": 3, "poll": 7, "mmap": 9, "mprotect": 10,
      "rt_sigprocmask": 14, "clone3": 435, "futex": 202, "openat": 257, "unlink": 87,
      "fsync": 74, "clock_nanosleep": 230, "socket": 41, "connect": 42, "sendto": 44,
      "recvfrom": 45, "setsockopt": 54, "getsockname": 51, "madvise": 28}
SDK = {"python": {"telemetry.sdk.language": "python", "telemetry.sdk.name": "opentelemetry",
                  "telemetry.sdk.version": "1.39.1"},
       "rust": {"telemetry.sdk.language": "rust", "telemetry.sdk.name": "opentelemetry",
                "telemetry.sdk.version": "0.33.0"}}
PLAN = [
    "/fast", "/receipt?lines=24", "/fast", "/report?sleep_ms=60", "/inventory",
    "/inventory?refresh=1&hold_ms=60", "/checkout", "/checkout?fsync=8", "/fast",
    "/checkout?sleep_ms=50", "/checkout?lock=1", "/receipt?lines=12", "/report?sleep_ms=30",
    "/inventory?refresh=1&hold_ms=40", "/fast", "/checkout?fsync=8", "/inventory",
    "/report?sleep_ms=80", "/checkout", "/fast",
]


class Maker:
    def __init__(self, seed=17):
        self.rng = random.Random(seed)
        self.out = []

    def hex(self, n):
        return "".join(f"{self.rng.getrandbits(8):02x}" for _ in range(n))

    def us(self, lo, hi):
        return int(self.rng.uniform(lo, hi) * 1000)

    def span(self, service, lang, trace_id, parent, name, kind, start, end, attrs=None,
             status=("UNSET", "")):
        s = {"service": service, "trace_id": trace_id, "span_id": self.hex(8),
             "parent_span_id": parent, "name": name, "kind": kind, "start_ns": start,
             "end_ns": end, "attributes": dict(attrs or {}),
             "status": {"code": status[0], "message": status[1]}, "events": [],
             "scope": service if lang == "python" else "spantrack-rust-demo-svc",
             "resource": dict(SDK[lang], **{"service.name": service})}
        self.out.append(s)
        return s

    def annotate(self, s, calls, tid, thread_name=None):
        """Adds spantrack's attributes to span s and one child span per call; calls are
        (name, start, end, ret) with times in the span."""
        if s["end_ns"] - s["start_ns"] < THRESHOLD_NS:
            return
        a = s["attributes"]
        total = sum(e - b for _, b, e, _ in calls)
        by = {}
        for name, b, e, _ in calls:
            t, n = by.get(name, (0, 0))
            by[name] = (t + e - b, n + 1)
        top = sorted(by.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))[:5]
        a.update({"spantrack.syscalls.count": len(calls), "spantrack.syscalls.duration_ns": total,
                  "spantrack.syscalls.itemised": len(calls),
                  "spantrack.syscalls.top": ", ".join(
                      f"{n}:{t / 1e6:.1f}ms({c})" if t >= 100_000 else f"{n}:{t / 1e3:.0f}us({c})"
                      for n, (t, c) in top),
                  "spantrack.dropped.unitemised_calls": 0, "spantrack.dropped.unitemised_ns": 0,
                  "spantrack.dropped.records_before": 0, "thread.id": tid})
        if thread_name:
            a["thread.name"] = thread_name
        lang = "python" if s["resource"]["telemetry.sdk.language"] == "python" else "rust"
        for name, b, e, ret in calls:
            b, e = min(max(b, s["start_ns"]), s["end_ns"]), min(max(e, b), s["end_ns"])
            ca = {"spantrack.syscall.nr": NR[name], "spantrack.syscall.ret": ret, "thread.id": tid}
            status = ("UNSET", "")
            if -4095 <= ret < 0:
                ca["error.type"] = errno.errorcode[-ret]
                status = ("ERROR", f"{errno.errorcode[-ret]}: {os.strerror(-ret)}")
            self.span(s["service"], lang, s["trace_id"], s["span_id"], name, "INTERNAL", b, e, ca, status)

    def seq(self, t, items):
        """Calls one after the other from t: items are (name, duration ns, ret); a small gap
        of user-space work between them. Returns (calls, end)."""
        calls = []
        for name, d, ret in items:
            t += self.us(2, 30)
            calls.append((name, t, t + d, ret))
            t += d
        return calls, t


def request(m, i, path, t, tids):
    """One traced request of the demo at time t; returns when it ended."""
    trace_id = m.hex(16)
    route, _, query = path.partition("?")
    q = dict(p.split("=") for p in query.split("&") if p)
    ftid = tids["frontend"] + i
    fname = f"Thread-{i + 2} (process_request_thread)"
    attrs = {"http.request.method": "GET", "url.path": route}
    if query:
        attrs["url.query"] = query
    server = m.span("frontend", "python", trace_id, m.hex(8), f"GET {route}", "SERVER", t, 0, attrs)
    t0 = t + m.us(80, 200)
    own = []  # the server span's own calls (outside its child spans)
    if route == "/fast":
        t1 = t0 + m.us(200, 600)
    elif route == "/receipt":
        lines = int(q["lines"])
        items = [("openat", m.us(15, 40), 7)]
        for _ in range(lines):
            items += [("write", m.us(8, 30), 38), ("fsync", m.us(3500, 9000), 0)]
        items += [("close", m.us(3, 8), 0), ("unlink", m.us(20, 60), 0)]
        calls, t1 = m.seq(t0 + m.us(20, 50), items)
        child = m.span("frontend", "python", trace_id, server["span_id"], "save receipt", "INTERNAL",
                       t0, t1 + m.us(10, 30), {"file.path": f"/run/spout/demo-output/data/receipt-{ftid}.txt"})
        m.annotate(child, calls, ftid, fname)
        t1 = child["end_ns"]
    elif route == "/report":
        ms = int(q["sleep_ms"])
        calls, t1 = m.seq(t0 + m.us(10, 30), [("openat", m.us(6, 20), -errno.ENOENT),
                                              ("clock_nanosleep", ms * 1_000_000 + m.us(60, 300), 0)])
        child = m.span("frontend", "python", trace_id, server["span_id"], "render report", "INTERNAL",
                       t0, t1 + m.us(10, 40))
        m.annotate(child, calls, ftid, fname)
        t1 = child["end_ns"]
    elif route == "/inventory":
        if q.get("refresh") == "1":
            hold = int(q["hold_ms"]) * 1_000_000
            own, t0 = m.seq(t0, [("mmap", m.us(5, 15), 0x7F3A5C000000), ("mprotect", m.us(3, 8), 0),
                                 ("clone3", m.us(60, 160), ftid + 1000), ("futex", m.us(5, 12), -errno.EAGAIN),
                                 ("futex", m.us(300, 900), 0)])
            calls, t1 = m.seq(t0 + m.us(10, 30), [("futex", m.us(4, 10), -errno.EAGAIN),
                                                  ("futex", hold - m.us(1200, 2500), 0)])
        else:
            calls, t1 = [], t0 + m.us(30, 90)
        child = m.span("frontend", "python", trace_id, server["span_id"], "read inventory", "INTERNAL",
                       t0, t1 + m.us(10, 30))
        m.annotate(child, calls, ftid, fname)
        t1 = child["end_ns"]
    elif route == "/checkout":
        ctid = tids["currency"] + i % 4
        cl_start = t0
        net, c0 = m.seq(cl_start + m.us(30, 80), [("socket", m.us(4, 10), 5), ("setsockopt", m.us(2, 5), 0),
                                                  ("connect", m.us(40, 90), 0), ("getsockname", m.us(2, 4), 0),
                                                  ("sendto", m.us(15, 40), 236)])
        # the currency service's server span
        s0 = c0 + m.us(120, 300)
        work = []
        if "fsync" in q:
            items = [("openat", m.us(15, 40), 6)]
            for _ in range(int(q["fsync"])):
                items += [("write", m.us(90, 250), 65536), ("fsync", m.us(3000, 8000), 0)]
            items.append(("close", m.us(4, 10), 0))
            work, s1 = m.seq(s0 + m.us(20, 60), items)
        elif "sleep_ms" in q:
            work, s1 = m.seq(s0 + m.us(20, 60), [("clock_nanosleep", int(q["sleep_ms"]) * 1_000_000 + m.us(50, 200), 0)])
        elif "lock" in q:
            work, s1 = m.seq(s0 + m.us(20, 60), [("futex", m.us(2, 6), 0), ("futex", m.us(150, 300), 0),
                                                 ("futex", m.us(3, 7), -errno.EAGAIN),
                                                 ("futex", 20_000_000 - m.us(200, 900), 0),
                                                 ("futex", m.us(2, 5), 1)])
        else:
            s1 = s0 + m.us(300, 900)
        cattrs = {"http.request.method": "GET", "url.path": "/convert", "http.route": "/convert",
                  "http.response.status_code": 200}
        client = m.span("frontend", "python", trace_id, server["span_id"], "GET currency /convert",
                        "CLIENT", cl_start, 0, {"url.full": f"http://127.0.0.1:8082/convert?{query}"})
        srv = m.span("currency", "rust", trace_id, client["span_id"], "GET /convert", "SERVER",
                     s0, s1 + m.us(20, 60), cattrs)
        m.annotate(srv, work, ctid)
        wait_end = srv["end_ns"] + m.us(150, 400)
        more, t1 = m.seq(c0, [("recvfrom", m.us(3, 8), -errno.EAGAIN), ("poll", wait_end - c0, 1),
                              ("recvfrom", m.us(10, 25), 412), ("close", m.us(5, 12), 0)])
        client["end_ns"] = t1 + m.us(20, 60)
        client["attributes"]["http.response.status_code"] = 200
        m.annotate(client, net + more, ftid, fname)
        t1 = client["end_ns"]
    t_end = t1 + m.us(60, 200)
    tail, t_end = m.seq(t1, [("futex", m.us(3, 9), 0), ("sendto", m.us(20, 50), 180)])
    server["end_ns"] = t_end + m.us(20, 50)
    server["attributes"]["http.response.status_code"] = 200
    m.annotate(server, own + tail, ftid, fname)
    return server["end_ns"]


def demo_spans(seed=17):
    m = Maker(seed)
    t = BASE_NS
    for i, path in enumerate(PLAN):
        t = request(m, i, path, t, {"frontend": 4130, "currency": 4021}) + 50_000_000 + m.us(500, 3000)
    return m.out


def big_trace(n=5000, seed=5):
    """One trace: a batch import span on one thread with n system calls (reads, writes, a few
    fsyncs and futex waits), under a server span."""
    m = Maker(seed)
    trace_id = m.hex(16)
    t = BASE_NS
    server = m.span("importer", "rust", trace_id, "", "POST /import", "SERVER", t, 0)
    items = []
    for k in range(n):
        if k % 500 == 499:
            items.append(("fsync", m.us(2000, 6000), 0))
        elif k % 97 == 0:
            items.append(("futex", m.us(200, 1500), -errno.EAGAIN if k % 2 else 0))
        else:
            items.append(("read" if k % 2 else "write", m.us(2, 40), 4096))
    calls, t1 = m.seq(t + 100_000, items)
    batch = m.span("importer", "rust", trace_id, server["span_id"], "import batch", "INTERNAL",
                   t + 50_000, t1 + 30_000, {"batch.rows": n})
    m.annotate(batch, calls, 777)
    server["end_ns"] = batch["end_ns"] + 100_000
    return m.out


def write_jsonl(spans, path):
    with open(path, "w", encoding="utf-8") as f:
        for s in spans:
            f.write(json.dumps(s, sort_keys=True) + "\n")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "fixture", "spans.jsonl")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    write_jsonl(demo_spans(), out)
    print(f"{out}: {len(demo_spans())} spans")
