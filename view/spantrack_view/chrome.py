"""Chrome trace-event JSON (Perfetto, chrome://tracing, speedscope) of annotated spans.

One process per service; a span and its system calls are complete ("X") events on the
track of the span's thread (`thread.id`); spans without a thread id go to a per-service
track "spans (thread unknown)". Complete events on one track must nest, so an event that
would overlap another one partly goes to an extra track of the same thread ("thread 1234
(2)"). A parent link between two tracks is a flow arrow ("s" on the parent's track, "f" on
the child's). Times are microseconds since the first span (`otherData.base_unix_ns`), with
three decimals, so that a reader rounding them back to nanoseconds gets the exact values.
"""

import datetime

from .model import ERROR_TYPE, SYSCALL_RET, THREAD_ID, THREAD_NAME, call_kind

# chrome://tracing's reserved colour names for the kinds (Perfetto colours by name).
CNAME = {"disk": "thread_state_iowait", "lock": "terrible", "network": "rail_response",
         "sleep": "thread_state_sleeping", "other": "generic_work"}
UNKNOWN_THREAD = "spans (thread unknown)"
EXTRA_TID = 1 << 30  # synthetic thread ids start here


def _us(ns):
    return ns / 1000


def _args(span, skip=()):
    a = {"span_id": span["span_id"], "trace_id": span["trace_id"]}
    if span["parent_span_id"]:
        a["parent_span_id"] = span["parent_span_id"]
    if span["kind"] not in ("INTERNAL", "UNSPECIFIED"):
        a["kind"] = span["kind"]
    if span["status"]["code"] == "ERROR":
        a["status"] = "ERROR" + (f": {span['status']['message']}" if span["status"]["message"] else "")
    for k, v in span["attributes"].items():
        if k not in skip:
            a[k] = v
    return a


class _Tracks:
    """Assigns (pid, thread key) groups of intervals to tracks on which they nest."""

    def __init__(self):
        self.lanes = {}  # (pid, key) -> [stack of open ends per lane]
        self.tids = {}  # (pid, key, lane) -> tid
        self.names = {}  # (pid, tid) -> thread name
        self.next_tid = EXTRA_TID

    def place(self, pid, key, start, end, label):
        lanes = self.lanes.setdefault((pid, key), [])
        for i, stack in enumerate(lanes):
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or end <= stack[-1]:
                stack.append(end)
                return self._tid(pid, key, i, label)
        lanes.append([end])
        return self._tid(pid, key, len(lanes) - 1, label)

    def _tid(self, pid, key, lane, label):
        k = (pid, key, lane)
        if k not in self.tids:
            if isinstance(key, int) and lane == 0:
                tid = key
            else:
                tid = self.next_tid
                self.next_tid += 1
            self.tids[k] = tid
            self.names[(pid, tid)] = label if lane == 0 else f"{label} ({lane + 1})"
        return self.tids[k]


def chrome_trace(traces):
    """The trace-event JSON object of `traces` (model.Trace)."""
    all_spans = [s for t in traces for s in t.spans]
    if not all_spans:
        return {"traceEvents": [], "otherData": {"spans": 0}}
    base = min(t.start_ns for t in traces)
    services = sorted({s["service"] for s in all_spans})
    pids = {}
    for i, svc in enumerate(services, 1):
        pids[svc] = i

    # Every event as (start, end, depth, pid, thread key, label, event); placed in time order.
    items = []
    for t in traces:
        for span, depth in t.tree_order():
            a = span["attributes"]
            tid = a.get(THREAD_ID)
            key = tid if isinstance(tid, int) else UNKNOWN_THREAD
            label = UNKNOWN_THREAD if key == UNKNOWN_THREAD else (
                f"thread {tid}" + (f" {a[THREAD_NAME]}" if a.get(THREAD_NAME) else ""))
            pid = pids[span["service"]]
            ev = {"name": span["name"], "cat": "span", "ph": "X", "args": _args(span)}
            items.append((span["start_ns"], span["end_ns"], 2 * depth, pid, key, label, ev, span))
            for c in t.calls.get(span["span_id"], []):
                ca = c["attributes"]
                ckey = ca.get(THREAD_ID, key)
                clabel = label if ckey == key else f"thread {ckey}"
                kind = call_kind(c["name"])
                # few args: speedscope names a frame after its name and args together
                cargs = {"kind": kind, "ret": ca.get(SYSCALL_RET)}
                if ca.get(ERROR_TYPE):
                    cargs["errno"] = ca[ERROR_TYPE]
                cev = {"name": c["name"], "cat": f"syscall,{kind}", "ph": "X",
                       "cname": CNAME[kind], "args": cargs}
                items.append((c["start_ns"], c["end_ns"], 2 * depth + 1, pid, ckey, clabel, cev, c))
    items.sort(key=lambda x: (x[0], -x[1], x[2]))

    tracks = _Tracks()
    events, where = [], {}
    for start, end, _, pid, key, label, ev, span in items:
        tid = tracks.place(pid, key, start, end, label)
        ev.update(pid=pid, tid=tid, ts=_us(start - base), dur=_us(end - start))
        events.append(ev)
        if "span_id" in ev["args"]:
            where[(span["trace_id"], span["span_id"])] = (pid, tid, start, end)

    flows = []
    for t in traces:
        for span in t.spans:
            p = where.get((span["trace_id"], span["parent_span_id"]))
            c = where[(span["trace_id"], span["span_id"])]
            if p is None or p[:2] == c[:2]:
                continue
            fid = len(flows) // 2 + 1
            at = max(p[2], min(c[2], p[3]))  # a point inside the parent
            common = {"name": "parent", "cat": "link", "id": fid}
            flows.append(dict(common, ph="s", pid=p[0], tid=p[1], ts=_us(at - base)))
            flows.append(dict(common, ph="f", bp="e", pid=c[0], tid=c[1], ts=_us(c[2] - base)))

    meta = []
    for svc, pid in pids.items():
        meta.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": svc}})
        meta.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0,
                     "args": {"sort_index": pid}})
    for (pid, tid), name in sorted(tracks.names.items()):
        meta.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": name}})
        meta.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                     "args": {"sort_index": tid if tid < EXTRA_TID else tid - EXTRA_TID + (1 << 20)}})
    when = datetime.datetime.fromtimestamp(base / 1e9, datetime.timezone.utc)
    return {
        "traceEvents": meta + events + flows,
        "otherData": {"generator": "spantrack view", "base_unix_ns": str(base),
                      "base_time": when.isoformat(), "traces": len(traces),
                      "spans": len(all_spans), "syscall_spans": sum(t.n_calls for t in traces)},
    }
