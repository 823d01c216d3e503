"""The self-contained HTML trace view: the traces as one JSON object (`page_data`) inside
`<script type="application/json" id="spantrack-data">`, and the template `view.html`
(CSS and JavaScript, no external resource) around it."""

import datetime
import json
from collections import defaultdict
from importlib import resources

from .model import (CALLS_NS, ERROR_TYPE, KINDS, SYSCALL_RET, THREAD_ID, THREAD_NAME,
                    call_kind)

PLACEHOLDER = "/*SPANTRACK_DATA*/"

# The scheduler part of a slow span (README "Where the wall time went, and who held the span
# up"): `spantrack.sched.<key>` attributes, the parts of the span's wall time. The run queue
# is shown as its two parts (`runqueue_ns` is their sum, so it is not a part of its own).
SCHED = "spantrack.sched."
SCHED_PARTS = [  # (attribute key, label, CSS class, the `spantrack.sched.dominant` it is)
    ("on_cpu_ns", "on CPU", "s-cpu", "on_cpu"),
    ("runqueue.wakeup_ns", "waiting for a CPU after a wake-up", "s-wakeup", "runqueue"),
    ("runqueue.preempted_ns", "waiting for a CPU after a preemption", "s-preempted", "runqueue"),
    ("blocked.io_ns", "blocked: I/O", "k-disk", "blocked.io"),
    ("blocked.lock_ns", "blocked: lock", "k-lock", "blocked.lock"),
    ("blocked.net_ns", "blocked: network", "k-network", "blocked.net"),
    ("blocked.timer_ns", "blocked: timer", "k-sleep", "blocked.timer"),
    ("blocked.other_ns", "blocked: other", "k-other", "blocked.other"),
    ("inactive_ns", "inactive (child spans, awaiting)", "s-inactive", "inactive"),
]
# only when neither run-queue part is there
SCHED_RUNQUEUE = ("runqueue_ns", "waiting for a CPU", "s-wakeup", "runqueue")
DOMINANT_LABEL = {"on_cpu": "on CPU", "runqueue": "waiting for a CPU",
                  "blocked.io": "blocked: I/O", "blocked.lock": "blocked: lock",
                  "blocked.net": "blocked: network", "blocked.timer": "blocked: timer",
                  "blocked.other": "blocked: other", "inactive": "inactive"}
UNACCOUNTED = "not accounted by the scheduler"
WAIT_EVENT = "spantrack.wait"
WAIT = "spantrack.wait."
WAKER = "spantrack.waker."
LINK_KIND = "spantrack.link.kind"
# a wait's cause as the class of its colour (the blocked parts' colours)
CAUSE_CLASS = {"io": "k-disk", "lock": "k-lock", "net": "k-network", "timer": "k-sleep",
               "other": "k-other", "preempted": "s-preempted"}


def fmt_ms(ns):
    return f"{ns / 1e6:.1f} ms" if ns >= 100_000 else f"{ns / 1e3:.0f} µs"


def fmt(ns):
    """A duration as the page writes it (view.html's fmt)."""
    a = abs(ns)
    if a >= 1e9:
        return f"{ns / 1e9:.{1 if a >= 1e10 else 2}f} s"
    if a >= 1e6:
        return f"{ns / 1e6:.{0 if a >= 1e8 else 1}f} ms"
    if a >= 1e3:
        return f"{ns / 1e3:.{0 if a >= 1e5 else 1}f} µs"
    return f"{round(ns)} ns"


def _ns(v):
    """A duration attribute as a non-negative int, None when it is not a number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return max(0, int(v))


def _calls_breakdown(span, calls):
    """The span's time by its system calls' kinds, the calls counted without a child span,
    and the time outside its calls: parts [label, ns, class] that add up to its duration."""
    a = span["attributes"]
    dur = span["end_ns"] - span["start_ns"]
    by_kind = defaultdict(int)
    for c in calls:
        by_kind[call_kind(c["name"])] += c["end_ns"] - c["start_ns"]
    itemised = sum(by_kind.values())
    in_calls = max(itemised, _ns(a.get(CALLS_NS)) or 0)
    parts = [[k, by_kind[k], "k-" + k] for k in KINDS if by_kind[k] > 0]
    if in_calls > itemised:
        parts.append(["calls without a child span", in_calls - itemised, "p-unitemised"])
    if dur > in_calls:
        parts.append(["outside this span's system calls", dur - in_calls, "p-rest"])
    return {"title": "system calls", "kind": "calls", "total": max(dur, in_calls), "parts": parts}


def _sched_breakdown(span):
    """Where the span's wall time went by the scheduler: on CPU, waiting for a CPU (after a
    wake-up, after a preemption), blocked by cause, inactive, and what the scheduler did not
    account (the kernel's span is a little shorter than the SDK's; or `partial`). Parts
    [label, ns, class, dominant key] that add up to the span's duration; when the figures
    add up to more (odd, but possible: the kernel's clock is not the SDK's), the bar's total
    is their sum and `note` says so. None without the scheduler part."""
    a = span["attributes"]
    if not any(_ns(a.get(SCHED + k)) is not None for k, *_ in SCHED_PARTS + [SCHED_RUNQUEUE]):
        return None
    spec = list(SCHED_PARTS)
    if all(_ns(a.get(SCHED + k)) is None for k in ("runqueue.wakeup_ns", "runqueue.preempted_ns")):
        spec[1:3] = [SCHED_RUNQUEUE]
    parts = [[label, _ns(a.get(SCHED + k)) or 0, cls, dom] for k, label, cls, dom in spec]
    parts = [p for p in parts if p[1] > 0]
    dur = span["end_ns"] - span["start_ns"]
    accounted = sum(p[1] for p in parts)
    notes = []
    if a.get(SCHED + "partial") is True:
        notes.append("the figures cover only part of the span (accounting was switched on or "
                     "off while it was open)")
    if accounted <= dur:
        if dur > accounted:
            parts.append([UNACCOUNTED, dur - accounted, "s-unaccounted", ""])
        total = dur
    else:
        total = accounted
        notes.append(f"the scheduler's figures add up to {fmt(accounted)}, "
                     f"{fmt(accounted - dur)} more than the span's {fmt(dur)}: "
                     "the bar shows their shares of that sum")
    dominant = a.get(SCHED + "dominant")
    facts = []
    counts = [(_ns(a.get(SCHED + k)), what) for k, what in (
        ("blocks", "block"), ("preemptions", "preemption"), ("migrations", "migration"),
        ("wakeups", "wake-up"))]
    counts = [f"{v} {what}{'' if v == 1 else 's'}" for v, what in counts if v is not None]
    if counts:
        facts.append(", ".join(counts))
    lat_total = _ns(a.get(SCHED + "wakeup_latency.total_ns"))
    lat_max = _ns(a.get(SCHED + "wakeup_latency.max_ns"))
    if lat_total is not None:
        facts.append(f"wake-up to running: {fmt(lat_total)} in all"
                     + (f", {fmt(lat_max)} at most" if lat_max is not None else ""))
    lost = _ns(a.get("spantrack.dropped.sched_events"))
    if lost:
        facts.append(f"{lost} scheduler events not charged to the span")
    dom_ns = None
    if isinstance(dominant, str) and dominant in DOMINANT_LABEL:
        dom_ns = sum(p[1] for p in parts if p[3] == dominant)
    return {"title": "scheduler", "kind": "sched", "total": total, "parts": parts,
            "dominant": dominant if isinstance(dominant, str) else None,
            "dominantLabel": DOMINANT_LABEL.get(dominant, str(dominant)) if dominant is not None else None,
            "dominantNs": dom_ns, "notes": notes, "facts": facts}


def _breakdowns(span, calls):
    """Stacked bars of the span's time: by its system calls (when it is annotated), and by
    the scheduler (when it has the scheduler part)."""
    out = []
    if calls or CALLS_NS in span["attributes"]:
        out.append(_calls_breakdown(span, calls))
    sched = _sched_breakdown(span)
    if sched:
        out.append(sched)
    return out


def _ref(trace_id, span_id, own, known):
    """A reference to the span (trace_id, span_id): {trace, span, self, found, label}; None
    for no span (absent or all zero)."""
    span_id = str(span_id or "").lower()
    if not span_id or set(span_id) == {"0"}:
        return None
    trace_id = str(trace_id or own["trace_id"]).lower()
    label = known.get((trace_id, span_id))
    return {"trace": trace_id, "span": span_id,
            "self": (trace_id, span_id) == (own["trace_id"], own["span_id"]),
            "found": label is not None, "label": label}


def _waits(span, t0, known):
    """The span's `spantrack.wait` events (longest first, as the record keeps them): when
    (ns since the trace's start), cause, blocked and run-queue time, system call, the
    sentence, the waiting thread, the waker's attributes and the waker's span."""
    out = []
    for e in span.get("events") or []:
        if e.get("name") != WAIT_EVENT:
            continue
        a = e.get("attributes") or {}
        cause = str(a.get(WAIT + "cause", "?"))
        blocked, runq = _ns(a.get(WAIT + "blocked_ns")) or 0, _ns(a.get(WAIT + "runqueue_ns")) or 0
        syscall = a.get(WAIT + "syscall")
        summary = a.get(WAIT + "summary") or (
            f"{cause} {fmt(blocked)}" + (f" in {syscall}" if syscall else "")
            + (f"; {fmt(runq)} waiting for a CPU" if runq else ""))
        out.append({
            "t": int(e.get("time_ns", 0)) - t0, "cause": cause, "cls": CAUSE_CLASS.get(cause, "k-other"),
            "blocked": blocked, "runqueue": runq, "syscall": syscall, "summary": summary,
            "tid": a.get(THREAD_ID),
            "waker": {k[len(WAKER):]: v for k, v in a.items()
                      if k.startswith(WAKER) and k not in (WAKER + "trace_id", WAKER + "span_id")},
            "wakerSpan": _ref(a.get(WAKER + "trace_id"), a.get(WAKER + "span_id"), span, known),
        })
    return out


def _links(span, known):
    """The span's links (waker links first: `spantrack.link.kind` = waker), each with the
    span it points to."""
    out = []
    for l in span.get("links") or []:
        a = l.get("attributes") or {}
        ref = _ref(l.get("trace_id"), l.get("span_id"), span, known)
        if ref is None:
            continue
        out.append({"kind": str(a.get(LINK_KIND, "")), "ref": ref, "remote": l.get("remote"),
                    "blocked": _ns(a.get(WAIT + "blocked_ns")),
                    "attrs": {k: v for k, v in a.items() if k not in (LINK_KIND, WAIT + "blocked_ns")}})
    out.sort(key=lambda x: x["kind"] != "waker")
    return out


def _events(span, t0):
    """Its other events (not a wait): name, time since the trace's start, attributes."""
    return [{"name": e.get("name", ""), "t": int(e.get("time_ns", 0)) - t0,
             "attrs": e.get("attributes") or {}}
            for e in span.get("events") or [] if e.get("name") != WAIT_EVENT]


def _woke_index(traces, known):
    """(trace id, span id) -> the spans whose waker links point at it: [{ref, blocked}]."""
    woke = defaultdict(list)
    for t in traces:
        for s in t.spans:
            for l in _links(s, known):
                if l["kind"] == "waker" and not l["ref"]["self"]:
                    back = _ref(s["trace_id"], s["span_id"], {"trace_id": "", "span_id": ""}, known)
                    woke[(l["ref"]["trace"], l["ref"]["span"])].append(
                        {"ref": back, "blocked": l["blocked"]})
    return woke


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


def _fallback_focus(trace):
    """Without an itemised call: the longest annotated span, or None."""
    spans = sorted(trace.annotated, key=lambda s: (s["start_ns"] - s["end_ns"], s["start_ns"]))
    return spans[0] if spans else None


def _summary(trace, focus):
    if focus is None:
        s = _fallback_focus(trace)
        if s is None:
            return "no system-call spans"
        sched = _sched_breakdown(s)
        if sched and sched["dominantNs"] is not None:
            return (f"mostly {sched['dominantLabel']} {fmt_ms(sched['dominantNs'])} in "
                    f"{s['service']} {s['name']}")
        return "annotated, no itemised calls"
    sid, name, ns, n = focus
    s = next(s for s in trace.spans if s["span_id"] == sid)
    return f"{name} ×{n} {fmt_ms(ns)} ({call_kind(name)}) in {s['service']} {s['name']}"


def trace_data(trace, names, errnos, known=None, woke=None):
    """The page's data of one trace. known: (trace id, span id) -> "service: name" of every
    span on the page (to link a waker's span); woke: (trace id, span id) -> the spans whose
    waker links point at it."""
    known = known if known is not None else _known([trace])
    woke = woke if woke is not None else _woke_index([trace], known)
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
            "breakdowns": _breakdowns(s, calls),
            "waits": _waits(s, t0, known), "links": _links(s, known),
            "woke": woke.get((s["trace_id"], s["span_id"]), []), "events": _events(s, t0),
        })
    when = datetime.datetime.fromtimestamp(t0 / 1e9, datetime.timezone.utc)
    root = trace.root
    focus = _focus(trace)
    if focus:
        first = index[focus[0]]
    else:
        fb = _fallback_focus(trace)
        first = index[fb["span_id"]] if fb else -1
    return {
        "id": trace.trace_id, "start": when.isoformat(timespec="milliseconds"),
        "dur": trace.duration_ns, "root": {"svc": root["service"], "name": root["name"]},
        "services": sorted({s["service"] for s in trace.spans}),
        "nspans": len(trace.spans), "ncalls": trace.n_calls,
        "annotated": len(trace.annotated),
        "error": any(s["error"] for s in spans),
        "summary": _summary(trace, focus), "focus": first,
        "spans": spans,
    }


def _known(traces):
    return {(s["trace_id"], s["span_id"]): f"{s['service']}: {s['name']}"
            for t in traces for s in t.spans}


def page_data(traces, sources=()):
    names, errnos = {}, {}
    known = _known(traces)
    woke = _woke_index(traces, known)
    data = [trace_data(t, names, errnos, known, woke) for t in traces]
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
