"""Shared by the view's tests: paths, the fixture, the page's embedded data, a checker of the
Chrome trace-event rules, and a PNG decoder (standard library only)."""

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
SPANTRACK = os.path.join(ROOT, "scripts", "spantrack")

from spantrack_view import model  # noqa: E402


def fixture_spans():
    return model.load([FIXTURE])


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
