"""Shared by the view's tests: paths, the fixture, spans made of the golden cases of the
scheduler part (tests/golden/spans.json), the page's embedded data, a checker of the Chrome
trace-event rules, and a PNG decoder (standard library only)."""

import hashlib
import json
import os
import re
import struct
import sys
import zlib
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "view"))
sys.path.insert(0, HERE)
FIXTURE = os.path.join(HERE, "fixture", "spans.jsonl")
GOLDEN = os.path.join(ROOT, "tests", "golden", "spans.json")
SPANTRACK = os.path.join(ROOT, "scripts", "spantrack")

from spantrack_view import model  # noqa: E402


def fixture_spans():
    return model.load([FIXTURE])


def golden_cases():
    """The golden cases by name: the record, the span as the SDK ended it, and what both
    integrations must export for it (`expected`: attributes, events, links, children)."""
    with open(GOLDEN, encoding="utf-8") as f:
        return {c["name"]: c for c in json.load(f)["cases"]}


# the golden cases with the scheduler part; sched_wakers keeps its ids (its waker spans are
# added), the others get ids of their own (every case has the same ones)
SCHED_CASES = ("sched", "sched_wakers", "sched_odd", "sched_over_budget")
WAKERS_CASE = "sched_wakers"
# the spans sched_wakers's waits were woken from: one of the span's own trace and process,
# one of another trace and process
WAKER_SPAN = ("0af7651916cd43dd8448eb211c80319c", "00f067aa0ba902b7")
REMOTE_WAKER_SPAN = ("4bf92f3577b34da6a3ce929d0e0e4736", "53995c3f42cd8ad8")


def _id(*words, n):
    return hashlib.sha256(" ".join(words).encode()).hexdigest()[:n]


def _flat(service, trace_id, span_id, parent, name, kind, start, end, attrs, status="UNSET",
          message="", events=(), links=()):
    return {"service": service, "trace_id": trace_id, "span_id": span_id,
            "parent_span_id": parent, "name": name, "kind": kind.upper(), "start_ns": start,
            "end_ns": end, "attributes": dict(attrs),
            "status": {"code": status.upper(), "message": message},
            "events": [json.loads(json.dumps(e)) for e in events],
            "links": [json.loads(json.dumps(l)) for l in links],
            "scope": "spantrack-rust-demo-svc", "resource": {"service.name": service}}


def golden_case_spans(case, ids=None):
    """Flat spans (the receiver's form) of one golden case as the currency service exports
    it: the slow span with the expected attributes, events and links, its system-call child
    spans, and its parent (a frontend span, "GET /checkout"). ids maps the case's trace and
    span ids (also where events and links name them) to others."""
    ids = ids or {}
    m = lambda v: ids.get(v, v)  # noqa: E731
    sp, exp = case["span"], case["expected"]
    trace_id, span_id, parent = m(sp["trace_id"]), m(sp["span_id"]), m(sp["parent_span_id"])
    events = []
    for e in exp.get("events", []):
        a = dict(e["attributes"])
        for k in ("spantrack.waker.trace_id", "spantrack.waker.span_id"):
            if k in a:
                a[k] = m(a[k])
        events.append({"name": e["name"], "time_ns": e["time_ns"], "attributes": a})
    links = [dict(l, trace_id=m(l["trace_id"]), span_id=m(l["span_id"])) for l in exp.get("links", [])]
    out = [_flat("frontend", trace_id, parent, "", "GET /checkout", "server",
                 sp["start_ns"] - 2_000_000, sp["end_ns"] + 1_000_000, {"http.route": "/checkout"}),
           _flat("currency", trace_id, span_id, parent, sp["name"], sp["kind"], sp["start_ns"],
                 sp["end_ns"], exp["attributes"], events=events, links=links)]
    for i, c in enumerate(exp.get("children", [])):
        st = c.get("status", {})
        out.append(_flat("currency", trace_id, _id(case["name"], "child", str(i), n=16), span_id,
                         c["name"], "internal", c["start_ns"], c["end_ns"], c["attributes"],
                         st.get("code", "unset"), st.get("description", "")))
    return out


def golden_sched_spans():
    """Flat spans of the golden cases with the scheduler part, one trace each, and the spans
    sched_wakers's waits were woken from (a currency span of its trace, "refresh rates", and
    a root span of another trace and service, "reporter: write report")."""
    cases = golden_cases()
    out = []
    for name in SCHED_CASES:
        c = cases[name]
        ids = {}
        if name != WAKERS_CASE:
            sp = c["span"]
            ids = {sp["trace_id"]: _id(name, "trace", n=32), sp["span_id"]: _id(name, "span", n=16),
                   sp["parent_span_id"]: _id(name, "parent", n=16)}
        out += golden_case_spans(c, ids)
        if name == WAKERS_CASE:
            sp = c["span"]
            out.append(_flat("currency", *WAKER_SPAN, sp["parent_span_id"], "refresh rates",
                             "internal", sp["start_ns"] - 1_000_000, sp["start_ns"] + 60_000_000,
                             {"thread.id": 4260}))
            out.append(_flat("reporter", *REMOTE_WAKER_SPAN, "", "write report", "server",
                             sp["start_ns"] + 80_000_000, sp["start_ns"] + 95_000_000,
                             {"thread.id": 4401}))
    return out


def embedded_data(html):
    """The JSON object the page embeds."""
    m = re.search(r'<script type="application/json" id="spantrack-data">(.*?)</script>', html, re.S)
    assert m, "no embedded spantrack-data"
    return json.loads(m.group(1))


def ns(us):
    """A trace-event time (µs) as Perfetto reads it: llround(us * 1000)."""
    return int(round(us * 1000))


def check_chrome(doc):
    """Raises AssertionError unless doc follows the trace-event rules that Perfetto and
    speedscope rely on: complete events have name/ts/dur >= 0/pid/tid; on each (pid, tid)
    they nest (sorted by start, each one ends no later than every event still open around
    it); every track has a thread_name and every process a process_name; each flow start has
    a finish with the same id. Returns the X events per (pid, tid) in time order."""
    events = doc["traceEvents"]
    tracks = defaultdict(list)
    names, procs, flows = set(), set(), defaultdict(list)
    for e in events:
        ph = e["ph"]
        if ph == "M":
            if e["name"] == "thread_name":
                names.add((e["pid"], e["tid"]))
            elif e["name"] == "process_name":
                procs.add(e["pid"])
            assert isinstance(e["args"], dict)
        elif ph == "X":
            for k in ("name", "ts", "dur", "pid", "tid"):
                assert k in e, f"X event without {k}: {e}"
            assert e["dur"] >= 0 and e["ts"] >= 0, e
            tracks[(e["pid"], e["tid"])].append(e)
        elif ph in "sf":
            flows[e["id"]].append(e)
        else:
            raise AssertionError(f"unexpected phase {ph}")
    for key, evs in tracks.items():
        assert key in names, f"track {key} has no thread_name"
        assert key[0] in procs, f"process {key[0]} has no process_name"
        # in the file in time order, the longer of two events that start together first
        starts = [(ns(e["ts"]), -ns(e["dur"])) for e in evs]
        assert starts == sorted(starts), f"{key}: events not in time order"
        order = range(len(evs))
        stack = []
        for i in order:
            a = ns(evs[i]["ts"])
            b = a + ns(evs[i]["dur"])
            while stack and stack[-1][1] <= a:
                stack.pop()
            if stack:
                assert b <= stack[-1][1], (f"{key}: {evs[i]['name']} [{a}, {b}) overlaps "
                                           f"{stack[-1][2]} [{stack[-1][0]}, {stack[-1][1]}) partly")
            stack.append((a, b, evs[i]["name"]))
        tracks[key] = [evs[i] for i in order]
    for fid, fl in flows.items():
        assert sorted(f["ph"] for f in fl) == ["f", "s"], f"flow {fid}: {fl}"
        for f in fl:
            t = ns(f["ts"])
            assert any(ns(x["ts"]) <= t <= ns(x["ts"]) + ns(x["dur"]) for x in tracks[(f["pid"], f["tid"])]), \
                f"flow {fid} {f['ph']} binds to no slice"
    return tracks


def read_png(path):
    """(width, height, rows of (r, g, b) tuples) of an 8-bit RGB or RGBA PNG."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        n, typ = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if typ == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif typ == b"IDAT":
            idat.append(body)
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, f"unsupported PNG {ihdr}"
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ft = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ft == 1:
                line[x] = (line[x] + a) & 255
            elif ft == 2:
                line[x] = (line[x] + b) & 255
            elif ft == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif ft == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[i:i + 3]) for i in range(0, stride, bpp)])
        prev = line
    return w, h, rows
