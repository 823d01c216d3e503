"""The golden records and spans of tests/golden/ (README: "What a slow span carries"): the
Python integration decodes the same bytes as the Rust one (otel/tests/golden.rs) and must
export exactly the same attributes, events, links, child spans, statuses and times. Also: the record layout
constants of record.py are uapi's (through records.json's "layout", which the Rust test
checks against uapi), and errnos.py is generated from the one errno table, otel/src/errno.rs.
Run: $(scripts/python-env.sh)/bin/python -m unittest discover -s preload/python/tests"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_DIR = os.path.dirname(HERE)
ROOT = os.path.abspath(os.path.join(PKG_DIR, "..", ".."))
GOLDEN = os.path.join(ROOT, "tests", "golden")
sys.path.insert(0, PKG_DIR)

from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags  # noqa: E402

from spantrack_hook import annotate, errnos, record, stacks  # noqa: E402


def load_text(name):
    with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
        return f.read()


def load(name):
    return json.loads(load_text(name))


def symbols(case):
    """The case's symbol sources (`symbols`: kallsyms and maps files of tests/golden, null
    or absent: none), never the host's."""
    src = case.get("symbols") or {}
    return stacks.Symbols(*(load_text(src[k]) if src.get(k) else None
                            for k in ("kallsyms", "maps")))


def spelled(stack):
    """A stack as records.json spells it: hex strings, trailing zero entries left out."""
    n = len(stack)
    while n and not stack[n - 1]:
        n -= 1
    return [f"{a:#x}" for a in stack[:n]]


def decode(hex_bytes):
    try:
        return record.decode(bytes.fromhex(hex_bytes))
    except record.RecordError as e:
        raise AssertionError(f"{e}: after an ABI version bump, rerun "
                             "python3 tests/golden/make_records.py and review the diff") from e


def typed(v):
    """A JSON value with its type made explicit (True and 1 are different exports); an
    array is one, whatever its Python sequence type."""
    if isinstance(v, (list, tuple)):
        return ("array", [typed(x) for x in v])
    return (type(v).__name__, v)


def typed_attrs(attrs):
    return {k: typed(v) for k, v in dict(attrs or {}).items()}


def make_span(s):
    tid, sid = int(s["trace_id"], 16), int(s["span_id"], 16)
    return ReadableSpan(
        name=s["name"], context=SpanContext(tid, sid, False, TraceFlags(TraceFlags.SAMPLED)),
        parent=SpanContext(tid, int(s["parent_span_id"], 16), True, TraceFlags(TraceFlags.SAMPLED)),
        attributes=s["attributes"], kind=SpanKind.SERVER,
        start_time=s["start_ns"], end_time=s["end_ns"])


def status_json(st):
    if st.status_code == StatusCode.ERROR:
        return {"code": "error", "description": st.description}
    return {"code": "unset" if st.status_code == StatusCode.UNSET else "ok"}


class GoldenRecords(unittest.TestCase):
    def setUp(self):
        self.doc = load("records.json")

    def test_layout_constants_are_uapis(self):
        lay = self.doc["layout"]
        self.assertEqual(record.ABI_VERSION, lay["abi_version"],
                         "records.json is of another ABI version: after a bump, rerun "
                         "python3 tests/golden/make_records.py and review the diff")
        self.assertEqual(record.RECORD_MAGIC, lay["record_magic"])
        self.assertEqual(record.HEADER_SIZE, lay["record_header_size"])
        self.assertEqual(record.ENTRY_SIZE, lay["syscall_entry_size"])
        self.assertEqual(record.RECORD_MAX_SIZE, lay["record_max_size"])
        self.assertEqual(record.MAX_SPAN_THREADS, lay["max_span_threads"])
        f = lay["flags"]
        self.assertEqual((record.REC_CALLS_TRUNCATED, record.REC_POOL_EXHAUSTED,
                          record.REC_ENDED_ELSEWHERE, record.REC_MANY_THREADS,
                          record.REC_ACTIVATION),
                         (f["calls_truncated"], f["pool_exhausted"], f["ended_elsewhere"],
                          f["many_threads"], f["activation"]))
        self.assertEqual((record.REC_SCHED, record.REC_SCHED_PARTIAL, record.REC_SCHED_LOST),
                         (f["sched"], f["sched_partial"], f["sched_lost"]))
        self.assertEqual((record.SCHED_PART_SIZE, record.WAIT_ENTRY_SIZE, record.MAX_WAITS),
                         (lay["sched_part_size"], lay["wait_entry_size"], lay["max_waits"]))
        self.assertEqual((record.KSTACK_DEPTH, record.USTACK_DEPTH),
                         (lay["kstack_depth"], lay["ustack_depth"]))
        self.assertEqual((record.SOFTIRQ_NONE, record.NO_CALL),
                         (lay["softirq_none"], lay["no_call"]))
        self.assertEqual({k: getattr(record, "CAUSE_" + k.upper()) for k in lay["causes"]},
                         lay["causes"])
        self.assertEqual(annotate.CAUSE_NAMES, tuple(sorted(lay["causes"], key=lay["causes"].get)))
        self.assertEqual(annotate.SOFTIRQ_NAMES, tuple(lay["softirqs"]))
        self.assertEqual({k: getattr(record, "CTX_" + k.upper()) for k in lay["contexts"]},
                         lay["contexts"])
        self.assertEqual({v: k for k, v in annotate.CONTEXT_NAMES.items()}, lay["contexts"])
        self.assertEqual((record.WAIT_WAKER_IN_SPAN, record.WAIT_WAKER_KTHREAD),
                         (lay["wait_flags"]["waker_in_span"], lay["wait_flags"]["waker_kthread"]))

    def test_records_decode_to_their_fields(self):
        for name, g in self.doc["records"].items():
            with self.subTest(name):
                raw = bytes.fromhex(g["hex"])
                rec = decode(g["hex"])
                h = g["header"]
                self.assertEqual(len(raw), h["total_size"])
                got = dict(trace_id=rec.trace_id.hex(), span_id=rec.span_id.hex(), tid=rec.tid,
                           tgid=rec.tgid, begin_mono_ns=rec.begin_mono_ns,
                           end_mono_ns=rec.end_mono_ns, begin_real_ns=rec.begin_real_ns,
                           end_real_ns=rec.end_real_ns, depth=rec.depth, n_threads=rec.n_threads,
                           flags=rec.flags, total_calls=rec.total_calls,
                           total_call_ns=rec.total_call_ns, unitemised_calls=rec.unitemised_calls,
                           unitemised_ns=rec.unitemised_ns,
                           records_dropped_before=rec.records_dropped_before,
                           n_entries=len(rec.entries))
                self.assertEqual(got, {k: h[k] for k in got})
                self.assertEqual([list(e) for e in rec.entries], g["entries"])
                # The scheduler part, spelled out beside the header (absent: all zero).
                p = rec.sched
                waits = [dict(w._asdict(), waker_trace_id=w.waker_trace_id.hex(),
                              waker_span_id=w.waker_span_id.hex(), waker_comm=w.waker_comm.hex(),
                              kstack=spelled(w.kstack), ustack=spelled(w.ustack))
                         for w in p.waits]
                got = dict(p._asdict(), blocked_ns=list(p.blocked_ns), waits=waits)
                if "sched" in g:
                    self.assertEqual(got, g["sched"])
                else:
                    self.assertEqual(raw[128:record.HEADER_SIZE], bytes(record.SCHED_PART_SIZE))
                    self.assertEqual(p, record.decode(record.encode(rec)).sched)
                    self.assertEqual((p.on_cpu_ns, p.n_waits, p.waits[0].nr), (0, 0, 0))

    def test_bad_records_are_refused(self):
        for name, g in self.doc["bad_records"].items():
            with self.subTest(name), self.assertRaises(record.RecordError):
                record.decode(bytes.fromhex(g["hex"]))


class GoldenSpans(unittest.TestCase):
    def test_every_case(self):
        records = load("records.json")["records"]
        cases = load("spans.json")["cases"]
        seen_missing = set()
        for c in cases:
            with self.subTest(c["name"]):
                span = make_span(c["span"])
                rec = decode(records[c["record"]]["hex"]) if c["record"] else None
                exp = c["expected"]
                mode, _, why = c["mode"].partition(":")
                sym = symbols(c)
                if "refused" in exp:
                    with self.assertRaises(record.RecordError):
                        annotate.build(span, rec, None, c["min_child_ns"], sym)
                    with self.assertRaises(record.RecordError):
                        annotate.summarise(span, rec, None, c["min_child_ns"], "over_budget")
                    continue
                if mode == "mark":
                    out = [annotate.mark(span, why)]
                elif mode == "summarise":
                    out = [annotate.summarise(span, rec, "MainThread", c["min_child_ns"], why)]
                else:
                    self.assertEqual(mode, "annotate")
                    out = annotate.build(span, rec, "MainThread", c["min_child_ns"], sym)
                if why:
                    seen_missing.add(why)
                parent, kids = out[0], out[1:]
                # The parent: the same span, plus the attributes.
                self.assertEqual((parent.name, parent.context, parent.start_time, parent.end_time),
                                 (span.name, span.context, span.start_time, span.end_time))
                self.assertEqual(typed_attrs(parent.attributes), typed_attrs(exp["attributes"]))
                # Events and links (the golden spans have none of their own): absent, none.
                self.assertEqual([{"name": e.name, "time_ns": e.timestamp,
                                   "attributes": typed_attrs(e.attributes)}
                                  for e in parent.events],
                                 [dict(e, attributes=typed_attrs(e["attributes"]))
                                  for e in exp.get("events", [])])
                self.assertEqual([{"trace_id": f"{l.context.trace_id:032x}",
                                   "span_id": f"{l.context.span_id:016x}",
                                   "remote": l.context.is_remote,
                                   "sampled": l.context.trace_flags.sampled,
                                   "attributes": typed_attrs(l.attributes)}
                                  for l in parent.links],
                                 [dict(l, attributes=typed_attrs(l["attributes"]))
                                  for l in exp.get("links", [])])
                got = [{"name": k.name, "start_ns": k.start_time, "end_ns": k.end_time,
                        "attributes": typed_attrs(k.attributes), "status": status_json(k.status)}
                       for k in kids]
                want = [dict(k, attributes=typed_attrs(k["attributes"])) for k in exp["children"]]
                self.assertEqual(got, want)
                ids = set()
                for k in kids:
                    self.assertEqual(k.context.trace_id, span.context.trace_id)
                    self.assertEqual(k.context.trace_flags, span.context.trace_flags)
                    self.assertFalse(k.context.is_remote)
                    self.assertEqual(k.parent.span_id, span.context.span_id)
                    self.assertEqual(k.kind, SpanKind.INTERNAL)
                    self.assertNotIn(k.context.span_id, ids | {0, span.context.span_id})
                    ids.add(k.context.span_id)
        self.assertEqual(seen_missing, set(annotate.MISSING_VALUES))


class ErrnoTable(unittest.TestCase):
    def test_generated_from_the_rust_table(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "errnos.py")
            subprocess.run([sys.executable, os.path.join(PKG_DIR, "tools", "gen_errno.py"), out],
                           check=True)
            with open(out) as a, open(os.path.join(PKG_DIR, "spantrack_hook", "errnos.py")) as b:
                self.assertEqual(a.read(), b.read(), "regenerate: python3 preload/python/tools/gen_errno.py")

    def test_names(self):
        self.assertEqual(errnos.error_type(11), "EAGAIN")
        self.assertEqual(errnos.error_type(35), "EDEADLK")  # Python's errno says EDEADLOCK
        self.assertEqual(errnos.error_type(95), "EOPNOTSUPP")  # ... and ENOTSUP
        self.assertEqual(errnos.error_type(512), "ERESTARTSYS")
        self.assertEqual(errnos.error_type(41), "errno_41")
        self.assertEqual(annotate.errno_name(-4000), "errno_4000")


if __name__ == "__main__":
    unittest.main()
