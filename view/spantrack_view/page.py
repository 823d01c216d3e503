"""The self-contained HTML trace view: the traces as one JSON object (`page_data`) inside
`<script type="application/json" id="spantrack-data">`, and the template `view.html`
(CSS and JavaScript, no external resource) around it."""

import datetime
import json
import re
from collections import defaultdict
from importlib import resources

from .model import (CALLS_NS, ERROR_TYPE, KINDS, SYSCALL_RET, THREAD_ID, THREAD_NAME,
                    call_kind)

# numeric spantrack.*_ns attributes that are not a breakdown of the span's time
NOT_BREAKDOWN = {CALLS_NS, "spantrack.dropped.unitemised_ns"}
BREAKDOWN_RE = re.compile(r"^spantrack\.([a-z0-9_]+)\.(.+)_ns$")
PLACEHOLDER = "/*SPANTRACK_DATA*/"


def fmt_ms(ns):
    return f"{ns / 1e6:.1f} ms" if ns >= 100_000 else f"{ns / 1e3:.0f} µs"


def _breakdowns(span, calls):
    """Stacked bars of the span's time: its system calls by kind (with what was not itemised
    and what was outside the calls), then one bar per group of numeric `spantrack.G.X_ns`
    attributes (e.g. spantrack.sched.on_cpu_ns, spantrack.wait.runqueue_ns)."""
    a = span["attributes"]
    dur = span["end_ns"] - span["start_ns"]
    out = []
    if calls or CALLS_NS in a:
        by_kind = defaultdict(int)
        for c in calls:
            by_kind[call_kind(c["name"])] += c["end_ns"] - c["start_ns"]
        itemised = sum(by_kind.values())
        in_calls = max(itemised, int(a.get(CALLS_NS) or 0))
        parts = [[k, by_kind[k]] for k in KINDS if by_kind[k] > 0]
        if in_calls > itemised:
            parts.append(["calls without a child span", in_calls - itemised])
        if dur > in_calls:
            parts.append(["outside this span's system calls", dur - in_calls])
        out.append({"title": "system calls", "total": dur, "parts": parts})
    groups = defaultdict(list)
    for k, v in sorted(a.items()):
        m = BREAKDOWN_RE.match(k)
        if m and k not in NOT_BREAKDOWN and isinstance(v, (int, float)) and not isinstance(v, bool):
            groups[m.group(1)].append([m.group(2).replace(".", " ").replace("_", " "), v])
    for g, parts in groups.items():
        out.append({"title": g, "total": max(dur, sum(p[1] for p in parts)), "parts": parts})
    return out


def _wakers(attrs):
    out = []
    for k, v in sorted(attrs.items()):
        if k.startswith("spantrack.") and "waker" in k:
            if isinstance(v, list):
                out.extend(str(x) for x in v)
            elif isinstance(v, dict):
                out.extend(f"{x}: {y}" for x, y in v.items())
            else:
                out.extend(x.strip() for x in str(v).split(",") if x.strip())
    return out


def _calls(calls, t0, names, errnos, default_tid):
    """The calls of one span as rows, one per thread ({tid, calls: columns s, d, n, r, e}),
    and their groups by name."""
    rows = {}
    groups = {}
    for c in calls:
        name, d = c["name"], c["end_ns"] - c["start_ns"]
        if name not in names:
            names[name] = len(names)
        err = c["attributes"].get(ERROR_TYPE) or (
            c["status"].get("message") if c["status"]["code"] == "ERROR" else None)
        if err and err not in errnos:
            errnos[err] = len(errnos)
        tid = c["attributes"].get(THREAD_ID, default_tid)
        cols = rows.setdefault(tid, {"s": [], "d": [], "n": [], "r": [], "e": []})
        cols["s"].append(c["start_ns"] - t0)
        cols["d"].append(d)
        cols["n"].append(names[name])
        ret = c["attributes"].get(SYSCALL_RET)
        cols["r"].append(ret if isinstance(ret, int) else None)
        cols["e"].append(errnos[err] if err else -1)
        g = groups.setdefault(name, {"name": name, "kind": call_kind(name), "count": 0, "ns": 0,
                                     "max": 0, "errors": defaultdict(int)})
        g["count"] += 1
        g["ns"] += d
        g["max"] = max(g["max"], d)
        if err:
            g["errors"][err] += 1
    # the span's own thread first
    order = sorted(rows, key=lambda t: (t != default_tid, str(t)))
    return ([{"tid": t, "calls": rows[t]} for t in order],
            [dict(g, errors=dict(g["errors"])) for g in
             sorted(groups.values(), key=lambda g: (-g["ns"], g["name"]))])


def _uncovered(start, end, covered):
    """Length of [start, end) outside the union of the covered intervals."""
    total, pos = 0, start
    for a, b in sorted((max(a, start), min(b, end)) for a, b in covered if b > start and a < end):
        total += max(0, a - pos)
        pos = max(pos, b)
    return total + max(0, end - pos)


def _focus(trace):
    """The annotated span and system call that explain most of the trace: for each annotated
    span, its calls by name, counting only the time not covered by one of its descendant
    spans (a client waiting for a downstream call is explained by the downstream's spans).
    Returns (span id, name, ns, count) or None."""
    best = None
    for s in trace.annotated:
        below, todo = [], list(trace.children[s["span_id"]])
        while todo:
            d = todo.pop()
            below.append((d["start_ns"], d["end_ns"]))
            todo.extend(trace.children[d["span_id"]])
        by = defaultdict(lambda: [0, 0])
        for c in trace.calls.get(s["span_id"], []):
            g = by[c["name"]]
            g[0] += _uncovered(c["start_ns"], c["end_ns"], below)
            g[1] += 1
        for name, (ns, n) in by.items():
            if best is None or ns > best[2]:
                best = (s["span_id"], name, ns, n)
    return best


def _summary(trace, focus):
    if focus is None:
        return "annotated, no itemised calls" if trace.annotated else "no system-call spans"
    sid, name, ns, n = focus
    s = next(s for s in trace.spans if s["span_id"] == sid)
    return f"{name} ×{n} {fmt_ms(ns)} ({call_kind(name)}) in {s['service']} {s['name']}"


def trace_data(trace, names, errnos):
    t0 = trace.start_ns
    order = trace.tree_order()
    index = {s["span_id"]: i for i, (s, _) in enumerate(order)}
    spans = []
    for s, depth in order:
        a = s["attributes"]
        calls = trace.calls.get(s["span_id"], [])
        tid = a.get(THREAD_ID)
        if tid is None and calls:
            tid = calls[0]["attributes"].get(THREAD_ID)
        rows, groups = _calls(calls, t0, names, errnos, tid)
        for r in rows:
            r["tname"] = a.get(THREAD_NAME) if r["tid"] == tid else None
        spans.append({
            "id": s["span_id"], "parent": index.get(s["parent_span_id"], -1), "depth": depth,
            "svc": s["service"], "name": s["name"], "kind": s["kind"],
            "s": s["start_ns"] - t0, "e": s["end_ns"] - t0,
            "tid": tid, "tname": a.get(THREAD_NAME),
            "error": (s["status"].get("message") or "error") if s["status"]["code"] == "ERROR" else None,
            "attrs": a, "threads": rows, "ncalls": len(calls), "groups": groups,
            "breakdowns": _breakdowns(s, calls), "wakers": _wakers(a),
        })
    when = datetime.datetime.fromtimestamp(t0 / 1e9, datetime.timezone.utc)
    root = trace.root
    focus = _focus(trace)
    return {
        "id": trace.trace_id, "start": when.isoformat(timespec="milliseconds"),
        "dur": trace.duration_ns, "root": {"svc": root["service"], "name": root["name"]},
        "services": sorted({s["service"] for s in trace.spans}),
        "nspans": len(trace.spans), "ncalls": trace.n_calls,
        "annotated": len(trace.annotated),
        "error": any(s["error"] for s in spans),
        "summary": _summary(trace, focus), "focus": index[focus[0]] if focus else -1,
        "spans": spans,
    }


def page_data(traces, sources=()):
    names, errnos = {}, {}
    data = [trace_data(t, names, errnos) for t in traces]
    return {
        "generator": "spantrack view", "sources": list(sources),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kinds": KINDS, "names": list(names), "nameKind": [KINDS.index(call_kind(n)) for n in names],
        "errnos": list(errnos), "traces": data,
    }


def embed_json(obj):
    """JSON that can stand inside a <script> element."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
            .replace("<", "\\u003c")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render(traces, sources=()):
    template = resources.files(__package__).joinpath("view.html").read_text(encoding="utf-8")
    before, after = template.split(PLACEHOLDER)
    return before + embed_json(page_data(traces, sources)) + after
