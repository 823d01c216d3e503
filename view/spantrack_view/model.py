"""Exported spans in, traces out.

Reads the demo receiver's flat spans (`demo/receiver.py`: one JSON object per span, one per
line) and OTLP JSON (an `ExportTraceServiceRequest` as `{"resourceSpans": [...]}`, one per
file or one per line, as the OpenTelemetry Collector's file exporter writes them), and
`show_traces.py --json-out` files. Every span becomes the receiver's flat form:

    {"service", "trace_id", "span_id", "parent_span_id", "name", "kind", "start_ns",
     "end_ns", "attributes", "status": {"code", "message"}, "events", "links", "scope",
     "resource"}

with `events` as [{"name", "time_ns", "attributes"}] and `links` as [{"trace_id", "span_id",
"attributes"}, plus "remote" and "sampled" (bools) when the input says]: a slow span's
`spantrack.wait` events and its waker links (README "Where the wall time went").

A system-call span (the children spantrack adds to a slow span) is one with the attribute
`spantrack.syscall.nr`; its thread is the attribute `thread.id`.
"""

import base64
import binascii
import json
import sys
from collections import defaultdict

SYSCALL_NR = "spantrack.syscall.nr"
SYSCALL_RET = "spantrack.syscall.ret"
CALLS_COUNT = "spantrack.syscalls.count"
CALLS_NS = "spantrack.syscalls.duration_ns"
THREAD_ID = "thread.id"
THREAD_NAME = "thread.name"
ERROR_TYPE = "error.type"

OTLP_KINDS = ["UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]
OTLP_STATUS = ["UNSET", "OK", "ERROR"]

# What a system call waits for, by name. Anything not listed is "other".
KINDS = ["disk", "lock", "network", "sleep", "other"]
_KIND_OF = {}
for _kind, _names in {
    "disk": "fsync fdatasync sync syncfs sync_file_range msync read write pread64 pwrite64 "
            "readv writev preadv pwritev preadv2 pwritev2 open openat openat2 creat close "
            "fallocate ftruncate truncate rename renameat renameat2 unlink unlinkat mkdir "
            "mkdirat rmdir stat fstat lstat newfstatat statx getdents64 sendfile "
            "copy_file_range splice io_submit io_getevents io_uring_enter",
    "lock": "futex futex_waitv futex_wait futex_wake flock",
    "network": "socket connect accept accept4 bind listen shutdown recvfrom recvmsg recvmmsg "
               "sendto sendmsg sendmmsg poll ppoll select pselect6 epoll_wait epoll_pwait "
               "epoll_pwait2 getsockopt setsockopt getpeername getsockname",
    "sleep": "nanosleep clock_nanosleep pause",
}.items():
    for _name in _names.split():
        _KIND_OF[_name] = _kind


def call_kind(name):
    """disk, lock, network, sleep or other: what a system call of that name waits for."""
    return _KIND_OF.get(name, "other")


class InputError(Exception):
    """A file that is neither the receiver's spans nor OTLP JSON."""


def _hex_id(v, nbytes):
    """An OTLP JSON trace/span id (hex as the spec says, or base64 as protobuf's JSON mapping
    writes bytes) as lowercase hex; "" for none."""
    if not v:
        return ""
    v = str(v)
    if len(v) == 2 * nbytes:
        try:
            int(v, 16)
            return v.lower()
        except ValueError:
            pass
    try:
        return base64.b64decode(v, validate=True).hex()
    except (binascii.Error, ValueError):
        raise InputError(f"bad id {v!r}") from None


def any_value(v):
    """An OTLP JSON AnyValue as a plain JSON value."""
    if not isinstance(v, dict) or not v:
        return None
    (which, x), = v.items()
    if which == "intValue":
        return int(x)
    if which == "doubleValue":
        return float(x)
    if which == "arrayValue":
        return [any_value(y) for y in (x or {}).get("values", [])]
    if which == "kvlistValue":
        return otlp_attributes((x or {}).get("values", []))
    if which == "bytesValue":
        return base64.b64decode(x).hex()
    return x


def otlp_attributes(kvs):
    return {kv["key"]: any_value(kv.get("value")) for kv in kvs or []}


def _enum(v, names, prefix):
    if isinstance(v, int) or (isinstance(v, str) and v.isdigit()):
        i = int(v)
        return names[i] if 0 <= i < len(names) else str(i)
    v = str(v or "")
    return v[len(prefix):] if v.startswith(prefix) else (v or names[0])


def _otlp_link(l):
    """An OTLP JSON span link as the flat form's link. Its `flags`: bit 0 sampled, bit 8 "is
    the remote bit known", bit 9 remote (the trace flags in the low byte)."""
    out = {"trace_id": _hex_id(l.get("traceId"), 16), "span_id": _hex_id(l.get("spanId"), 8),
           "attributes": otlp_attributes(l.get("attributes"))}
    if l.get("flags") is not None:
        flags = int(l["flags"])
        out["sampled"] = bool(flags & 0x1)
        if flags & 0x100:
            out["remote"] = bool(flags & 0x200)
    return out


def spans_of_otlp(doc):
    """Flat spans of one `{"resourceSpans": [...]}` document."""
    for rs in doc.get("resourceSpans", []):
        resource = otlp_attributes((rs.get("resource") or {}).get("attributes"))
        service = resource.get("service.name", "?")
        for ss in rs.get("scopeSpans", rs.get("instrumentationLibrarySpans", [])):
            scope = (ss.get("scope") or ss.get("instrumentationLibrary") or {}).get("name", "")
            for s in ss.get("spans", []):
                status = s.get("status") or {}
                yield {
                    "service": service,
                    "trace_id": _hex_id(s.get("traceId"), 16),
                    "span_id": _hex_id(s.get("spanId"), 8),
                    "parent_span_id": _hex_id(s.get("parentSpanId"), 8),
                    "name": s.get("name", ""),
                    "kind": _enum(s.get("kind", 0), OTLP_KINDS, "SPAN_KIND_"),
                    "start_ns": int(s.get("startTimeUnixNano", 0)),
                    "end_ns": int(s.get("endTimeUnixNano", 0)),
                    "attributes": otlp_attributes(s.get("attributes")),
                    "status": {"code": _enum(status.get("code", 0), OTLP_STATUS, "STATUS_CODE_"),
                               "message": status.get("message", "")},
                    "events": [{"name": e.get("name", ""), "time_ns": int(e.get("timeUnixNano", 0)),
                                "attributes": otlp_attributes(e.get("attributes"))}
                               for e in s.get("events") or []],
                    "links": [_otlp_link(l) for l in s.get("links") or []],
                    "scope": scope,
                    "resource": resource,
                }


def _flat(s):
    """A receiver-style span with every field present."""
    out = dict(s)
    out.setdefault("service", (s.get("resource") or {}).get("service.name", "?"))
    out.setdefault("parent_span_id", "")
    out.setdefault("kind", "INTERNAL")
    out.setdefault("attributes", {})
    out.setdefault("status", {"code": "UNSET", "message": ""})
    out["events"] = [{"name": e.get("name", ""), "time_ns": int(e.get("time_ns", 0)),
                      "attributes": dict(e.get("attributes") or {})}
                     for e in s.get("events") or []]
    out["links"] = [dict(l, trace_id=str(l.get("trace_id", "")).lower(),
                         span_id=str(l.get("span_id", "")).lower(),
                         attributes=dict(l.get("attributes") or {}))
                    for l in s.get("links") or []]
    out.setdefault("scope", "")
    out.setdefault("resource", {"service.name": out["service"]})
    out["start_ns"], out["end_ns"] = int(s["start_ns"]), int(s["end_ns"])
    return out


def spans_of_doc(doc):
    """Flat spans of one parsed JSON value of any supported shape."""
    if isinstance(doc, list):
        for d in doc:
            yield from spans_of_doc(d)
    elif not isinstance(doc, dict):
        raise InputError("expected a JSON object or array")
    elif "resourceSpans" in doc:
        yield from spans_of_otlp(doc)
    elif "traces" in doc:  # show_traces.py --json-out
        for t in doc["traces"]:
            yield from spans_of_doc(t.get("spans", []))
    elif "span_id" in doc and "trace_id" in doc:
        yield _flat(doc)
    else:
        raise InputError("neither a span (trace_id, span_id) nor OTLP JSON (resourceSpans)")


def load(paths):
    """Every span in the files (`-` is standard input), each (trace, span) once, the last
    copy winning."""
    spans = {}
    for path in paths:
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
        except OSError as e:
            raise InputError(f"{path}: {e.strerror}") from None
        try:
            docs = [json.loads(text)] if text.strip() else []
        except json.JSONDecodeError:  # JSON lines
            docs = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        docs.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise InputError(f"{path}:{n}: {e.msg}") from None
        try:
            for d in docs:
                for s in spans_of_doc(d):
                    spans[(s["trace_id"], s["span_id"])] = s
        except (InputError, KeyError, TypeError, ValueError) as e:
            raise InputError(f"{path}: {e}") from None
    return list(spans.values())


def is_call(span):
    return SYSCALL_NR in span["attributes"]


class Trace:
    """The spans of one trace: the ordinary spans as a tree (`children`), each slow span's
    system-call spans in `calls` (by the annotated span's id, in time order)."""

    def __init__(self, trace_id, spans):
        self.trace_id = trace_id
        ids = {s["span_id"] for s in spans}
        # A call whose parent was not exported is shown as an ordinary span.
        self.spans = sorted((s for s in spans if not (is_call(s) and s["parent_span_id"] in ids)),
                            key=lambda s: (s["start_ns"], -s["end_ns"], s["span_id"]))
        self.calls = defaultdict(list)
        for s in spans:
            if is_call(s) and s["parent_span_id"] in ids:
                self.calls[s["parent_span_id"]].append(s)
        for cs in self.calls.values():
            cs.sort(key=lambda s: (s["start_ns"], s["end_ns"], s["span_id"]))
        own = {s["span_id"] for s in self.spans}
        self.children = defaultdict(list)
        self.roots = []
        for s in self.spans:
            p = s["parent_span_id"]
            (self.children[p] if p and p in own and p != s["span_id"] else self.roots).append(s)
        self.start_ns = min(s["start_ns"] for s in spans)
        self.end_ns = max(s["end_ns"] for s in spans)
        self.duration_ns = self.end_ns - self.start_ns
        self.n_calls = sum(len(c) for c in self.calls.values())

    def tree_order(self):
        """(span, depth) in depth-first order, children by start time."""
        out = []
        todo = [(r, 0) for r in reversed(self.roots)]
        seen = set()
        while todo:
            s, d = todo.pop()
            if s["span_id"] in seen:  # a cycle in bad input
                continue
            seen.add(s["span_id"])
            out.append((s, d))
            todo.extend((c, d + 1) for c in reversed(self.children[s["span_id"]]))
        return out

    @property
    def annotated(self):
        return [s for s in self.spans if CALLS_COUNT in s["attributes"] or self.calls.get(s["span_id"])]

    @property
    def root(self):
        return self.roots[0] if self.roots else self.spans[0]


def traces_of(spans):
    """Traces, longest first."""
    by_id = defaultdict(list)
    for s in spans:
        by_id[s["trace_id"]].append(s)
    traces = [Trace(tid, ss) for tid, ss in by_id.items()]
    traces.sort(key=lambda t: (-t.duration_ns, t.start_ns, t.trace_id))
    return traces
