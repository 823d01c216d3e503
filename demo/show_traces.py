#!/usr/bin/env python3
"""Prints the slow traces that the demo's receiver stored, as indented trees: service, span
name, duration, the system calls spantrack attached to slow spans (grouped by name, with
their time and errors), and one line per trace saying what the time went to.

Usage: show_traces.py SPANS.jsonl... [--requests requests.json] [--json-out traces.json]
                      [--min-ms N] [--all]
A trace is shown when spantrack annotated one of its spans or its root took >= --min-ms
(default 20); --all shows every trace.
"""

import argparse
import json
import sys
from collections import defaultdict

# What a system call usually means, for a reader who does not know them by heart.
GLOSS = {
    "fsync": "flushing a file to disk", "fdatasync": "flushing a file to disk",
    "sync_file_range": "flushing a file to disk", "msync": "flushing a mapping to disk",
    "futex": "waiting for a lock, the GIL or another thread",
    "clock_nanosleep": "sleeping", "nanosleep": "sleeping",
    "poll": "waiting for a socket or file", "ppoll": "waiting for a socket or file",
    "select": "waiting for a socket or file", "pselect6": "waiting for a socket or file",
    "epoll_wait": "waiting for a socket or file", "epoll_pwait": "waiting for a socket or file",
    "recvfrom": "receiving from the network", "recvmsg": "receiving from the network",
    "connect": "connecting to another service", "accept4": "accepting a connection",
    "sendto": "sending to the network", "sendmsg": "sending to the network",
    "read": "reading", "write": "writing", "pread64": "reading a file",
    "pwrite64": "writing a file", "openat": "opening a file", "mmap": "mapping memory",
}

# Calls that wait for something else to happen (a socket, a timer, another thread).
WAITING = {"poll", "ppoll", "select", "pselect6", "epoll_wait", "epoll_pwait", "recvfrom",
           "recvmsg", "read", "futex"}


def ms(ns):
    return f"{ns / 1e6:.1f} ms"


def dur(ns):
    """A short duration: µs below a millisecond."""
    return f"{ns / 1e3:.0f} µs" if ns < 1e6 else ms(ns)


def is_syscall(span):
    return "spantrack.syscall.nr" in span["attributes"]


def is_annotated(span):
    return "spantrack.syscalls.count" in span["attributes"]


def load(paths):
    spans = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    s = json.loads(line)
                    spans[(s["trace_id"], s["span_id"])] = s
    traces = defaultdict(list)
    for s in spans.values():
        traces[s["trace_id"]].append(s)
    return traces


class Trace:
    def __init__(self, trace_id, spans):
        self.trace_id = trace_id
        self.spans = sorted(spans, key=lambda s: (s["start_ns"], -s["end_ns"]))
        ids = {s["span_id"] for s in self.spans}
        self.children = defaultdict(list)
        self.roots = []
        for s in self.spans:
            if s["parent_span_id"] and s["parent_span_id"] in ids:
                self.children[s["parent_span_id"]].append(s)
            else:
                self.roots.append(s)
        self.start = min(s["start_ns"] for s in self.spans)
        self.end = max(s["end_ns"] for s in self.spans)
        root = self.roots[0]
        self.duration = root["end_ns"] - root["start_ns"]
        self.annotated = [s for s in self.spans if is_annotated(s)]

    def descendants(self, span):
        out = []
        todo = list(self.children[span["span_id"]])
        while todo:
            s = todo.pop()
            out.append(s)
            todo.extend(self.children[s["span_id"]])
        return out

    def verdict(self):
        """(kind, text, details): where the root's time went, from the system calls of the
        annotated spans. Only the part of a call not covered by a descendant span counts (a
        parent waiting for a downstream call is explained by the downstream's own spans),
        and a client span's waits for a downstream that is in the trace are left out."""
        per_span = []  # (span, [(uncovered ns, name)], best ns)
        for s in self.annotated:
            below = [d for d in self.descendants(s) if not is_syscall(d)]
            covered = [(d["start_ns"], d["end_ns"]) for d in below]
            groups = defaultdict(int)
            for c in self.children[s["span_id"]]:
                if not is_syscall(c):
                    continue
                if s["kind"] == "CLIENT" and below and c["name"] in WAITING:
                    continue
                groups[c["name"]] += uncovered(c["start_ns"], c["end_ns"], covered)
            ranked = sorted(((ns, name) for name, ns in groups.items()), reverse=True)
            if ranked:
                per_span.append((s, ranked))
        if not per_span:
            if self.annotated:
                return ("cpu", "no system call stands out (none outside the child spans): "
                        "the time went to running code or waiting for a CPU", None)
            return ("none", "no kernel record (span faster than the threshold, or spantrack "
                    "not active in that service)", None)
        s, ranked = max(per_span, key=lambda x: x[1][0][0])
        root = self.duration or 1
        picked, cum = [], 0
        for ns, name in ranked[:3]:
            if picked and (cum >= 0.5 * root or ns < 0.1 * root):
                break
            picked.append((ns, name))
            cum += ns
        share = cum / root
        name0 = picked[0][1]
        calls = " + ".join(f"{name} {ms(ns)}" + (f" ({GLOSS[name]})" if name in GLOSS else "")
                           for ns, name in picked)
        where = f"in {s['service']} {s['name']}"
        detail = {"syscall": name0, "syscalls": [n for _, n in picked], "ns": cum,
                  "service": s["service"], "span": s["name"], "share": round(share, 3)}
        if share >= 0.5:
            return ("mostly", f"mostly {calls} {where}: {share:.0%} of the request", detail)
        if share >= 0.15:
            return ("partly", f"partly {calls} {where}: {share:.0%} of the request", detail)
        total = sum(ns for _, ranked in per_span for ns, _ in ranked)
        return ("cpu", f"no system call stands out ({ms(total)} in the kernel in all): the time "
                f"went to running code or waiting for a CPU; largest: {calls} {where}", detail)


def uncovered(start, end, covered):
    """Length of [start, end) minus the union of the covered intervals."""
    cuts = sorted((max(a, start), min(b, end)) for a, b in covered if b > start and a < end)
    total, pos = 0, start
    for a, b in cuts:
        if a > pos:
            total += a - pos
        pos = max(pos, b)
    return total + max(0, end - pos)


def syscall_groups(trace, span):
    groups = {}
    for c in trace.children[span["span_id"]]:
        if not is_syscall(c):
            continue
        g = groups.setdefault(c["name"], {"count": 0, "ns": 0, "max": 0, "errors": defaultdict(int)})
        d = c["end_ns"] - c["start_ns"]
        g["count"] += 1
        g["ns"] += d
        g["max"] = max(g["max"], d)
        err = c["attributes"].get("error.type")
        if err:
            g["errors"][err] += 1
    return sorted(groups.items(), key=lambda kv: -kv[1]["ns"])


def print_span(trace, span, depth, out, name_width):
    dur = span["end_ns"] - span["start_ns"]
    pad = "  " * depth
    label = f"{pad}{span['service']}  {span['name']}"
    kind = f" [{span['kind'].lower()}]" if span["kind"] in ("CLIENT", "SERVER") else ""
    err = "  ERROR" if span["status"]["code"] == "ERROR" else ""
    print(f"{label:<{name_width}} {ms(dur):>10}{kind}{err}", file=out)
    a = span["attributes"]
    if is_annotated(span):
        extra = []
        if a.get("spantrack.dropped.unitemised_calls"):
            extra.append(f"{a['spantrack.dropped.unitemised_calls']} calls "
                         f"({ms(a['spantrack.dropped.unitemised_ns'])}) counted, not itemised")
        if a.get("spantrack.dropped.records_before"):
            extra.append(f"{a['spantrack.dropped.records_before']} earlier records lost")
        thread = a.get("thread.name") or ""
        thread = f", thread {a.get('thread.id')}" + (f" '{thread}'" if thread else "")
        print(f"{pad}  ⤷ kernel: {a['spantrack.syscalls.count']} system calls, "
              f"{ms(a['spantrack.syscalls.duration_ns'])} in them{thread}"
              + (f"; {'; '.join(extra)}" if extra else ""), file=out)
        for name, g in syscall_groups(trace, span):
            errs = ", ".join(f"{n}× {e}" for e, n in sorted(g["errors"].items()))
            gloss = f"  {GLOSS[name]}" if name in GLOSS and g["ns"] >= 1e6 else ""
            longest = f" (longest {ms(g['max'])})" if g["count"] > 1 and g["max"] >= 1e5 else ""
            print(f"{pad}     {name:<16} ×{g['count']:<4} {ms(g['ns']):>10}{longest}"
                  + (f"  failed: {errs}" if errs else "") + gloss, file=out)
        print_sched(trace, span, pad, out)
    why = why_annotated(a)
    if why:
        print(f"{pad}  ⤷ why annotated: {why}", file=out)
    for c in trace.children[span["span_id"]]:
        if not is_syscall(c):
            print_span(trace, c, depth + 1, out, name_width)


def why_annotated(a):
    """Why spantrack judged the span slow: the threshold in force, where it came from, and the
    operation's latency estimates (issue 14's attributes); None on a span without them."""
    if "spantrack.threshold_ns" not in a:
        return None
    source = a.get("spantrack.threshold.source", "?")
    text = f"over {dur(a['spantrack.threshold_ns'])}, " + {
        "adaptive": "this operation's adaptive threshold",
        "warmup": "the module's threshold_ns (the operation is still warming up)",
        "fixed": "the module's threshold_ns (SPANTRACK_THRESHOLD=fixed)",
    }.get(source, f"source {source}")
    if a.get("spantrack.op.samples"):
        text += (f"; the operation: p50 {dur(a.get('spantrack.op.p50_ns', 0))}, "
                 f"p95 {dur(a.get('spantrack.op.p95_ns', 0))}, p99 {dur(a.get('spantrack.op.p99_ns', 0))}, "
                 f"cv {float(a.get('spantrack.op.cv', 0)):.2f}, {a['spantrack.op.samples']} spans")
    return text


SCHED_PARTS = [("on CPU", "on_cpu_ns"), ("waiting for a CPU", "runqueue_ns"),
               ("blocked on I/O", "blocked.io_ns"), ("blocked on a lock", "blocked.lock_ns"),
               ("blocked on the network", "blocked.net_ns"), ("sleeping", "blocked.timer_ns"),
               ("blocked (other)", "blocked.other_ns"), ("in child spans or awaiting", "inactive_ns")]


def print_sched(trace, span, pad, out):
    """Where the span's time went (spantrack.sched.*), its longest waits and who woke it."""
    a = span["attributes"]
    if "spantrack.sched.on_cpu_ns" not in a:
        return
    parts = [(label, a.get("spantrack.sched." + key, 0)) for label, key in SCHED_PARTS]
    shown = ", ".join(f"{label} {ms(ns)}" for label, ns in sorted(parts, key=lambda p: -p[1])
                      if ns >= 100_000)
    print(f"{pad}  ⤷ time: {shown or 'nothing over 0.1 ms'}", file=out)
    names = {s["span_id"]: s for s in trace.spans}
    for e in span.get("events", []):
        if e["name"] != "spantrack.wait":
            continue
        ea = e["attributes"]
        if ea.get("spantrack.wait.blocked_ns", 0) + ea.get("spantrack.wait.runqueue_ns", 0) < 1e6:
            continue
        held = ""
        sid = ea.get("spantrack.waker.span_id")
        if sid and sid in names:
            held = f"  ← held up by span '{names[sid]['name']}' ({names[sid]['service']})"
        print(f"{pad}     wait: {ea.get('spantrack.wait.summary', '?')}{held}", file=out)
        # Where it blocked: the innermost frames of each stack the wait carries.
        for key, label in (("spantrack.wait.python_stack", "python stack"),
                           ("spantrack.wait.user_stack", "user stack"),
                           ("spantrack.wait.kernel_stack", "kernel stack")):
            frames = ea.get(key)
            if isinstance(frames, str):
                frames = [frames]
            if frames:
                more = f" < ... ({len(frames) - 4} more)" if len(frames) > 4 else ""
                print(f"{pad}       {label}: {' < '.join(str(f) for f in frames[:4])}{more}", file=out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spans", nargs="+")
    ap.add_argument("--requests")
    ap.add_argument("--json-out")
    ap.add_argument("--min-ms", type=float, default=20)
    ap.add_argument("--all", action="store_true")
    args = ap.parse_args()
    try:
        sys.stdout.reconfigure(errors="replace")
    except AttributeError:
        pass

    traces = {tid: Trace(tid, spans) for tid, spans in load(args.spans).items()}
    requests = {}
    if args.requests:
        with open(args.requests, encoding="utf-8") as f:
            for i, r in enumerate(json.load(f), 1):
                requests[r["trace_id"]] = dict(r, n=i)
    order = sorted(traces.values(), key=lambda t: (requests.get(t.trace_id, {}).get("n", 1 << 30), t.start))

    services = sorted({s["service"] for t in traces.values() for s in t.spans})
    shown = [t for t in order if args.all or t.annotated or t.duration >= args.min_ms * 1e6]
    n_syscall_spans = sum(1 for t in traces.values() for s in t.spans if is_syscall(s))
    print(f"{len(traces)} traces from {', '.join(services) or 'no service'}; "
          f"{sum(1 for t in traces.values() if t.annotated)} with spans annotated by spantrack "
          f"({n_syscall_spans} system-call spans); showing {len(shown)}.\n")

    report = []
    for t in order:
        kind, text, detail = t.verdict()
        req = requests.get(t.trace_id)
        report.append({"trace_id": t.trace_id, "request": req, "duration_ns": t.duration,
                       "verdict": {"kind": kind, "text": text, **(detail or {})},
                       "spans": t.spans})
        if t not in shown:
            continue
        root = t.roots[0]
        head = f"{root['service']} {root['name']} {ms(t.duration)}"
        if req:
            head = f"request {req['n']}: {req.get('path', '')}  ({req.get('why', '')})\n  {head}"
        print(f"── trace {t.trace_id[:16]}  {head}  ← {text}")
        width = max(36, max(len(s["service"]) + len(s["name"]) + 4 for s in t.spans if not is_syscall(s)) + 10)
        for r in t.roots:
            print_span(t, r, 1, sys.stdout, width)
        print()
    fast = [t for t in order if t not in shown]
    if fast:
        print(f"{len(fast)} other traces were fast (< {args.min_ms:g} ms, no span over the "
              f"threshold): " + ", ".join(sorted({t.roots[0]['name'] for t in fast})))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump({"traces": report}, f, indent=1)


if __name__ == "__main__":
    main()
