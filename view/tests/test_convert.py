"""spantrack view: the conversions (HTML's embedded data, Chrome trace-event JSON, OTLP JSON)
and the command line, on the demo-shaped fixture, on spans made of the golden cases of the
scheduler part (tests/golden/spans.json: where the time went, waits, waker links) and on
made-up edge cases."""

import base64
import json
import os
import subprocess
import sys
import tempfile
import unittest
from collections import Counter

from helpers import (FIXTURE, REMOTE_WAKER_SPAN, SPANTRACK, WAKER_SPAN, check_chrome,
                     embedded_data, fixture_spans, golden_cases, golden_sched_spans)
from make_fixture import big_trace
from spantrack_view import chrome, model, otlp, page


def span(name, start, end, span_id, parent="", trace_id="ab" * 16, service="svc", **attrs):
    return {"service": service, "trace_id": trace_id, "span_id": span_id, "parent_span_id": parent,
            "name": name, "kind": "INTERNAL", "start_ns": start, "end_ns": end,
            "attributes": attrs, "status": {"code": "UNSET", "message": ""}, "events": [],
            "scope": "t", "resource": {"service.name": service}}


def call(name, start, end, span_id, parent, tid, ret=0, trace_id="ab" * 16, service="svc"):
    attrs = {"spantrack.syscall.nr": 1, "spantrack.syscall.ret": ret, "thread.id": tid}
    s = span(name, start, end, span_id, parent, trace_id, service, **attrs)
    if ret < 0:
        s["attributes"]["error.type"] = "EAGAIN"
        s["status"] = {"code": "ERROR", "message": "EAGAIN: Resource temporarily unavailable"}
    return s


class FixtureCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.spans = fixture_spans()
        cls.calls = [s for s in cls.spans if model.is_call(s)]
        cls.traces = model.traces_of(cls.spans)
        cls.html = page.render(cls.traces, ["spans.jsonl"])
        cls.data = embedded_data(cls.html)
        cls.chrome = chrome.chrome_trace(cls.traces)


class TestFixture(FixtureCase):
    def test_fixture_is_the_demo(self):
        self.assertEqual(len(self.traces), 20)
        self.assertGreater(len(self.calls), 150)
        self.assertEqual({s["service"] for s in self.spans}, {"frontend", "currency"})
        for c in self.calls:
            self.assertIn("thread.id", c["attributes"])
            parent = next(s for s in self.spans if s["span_id"] == c["parent_span_id"])
            self.assertIn("spantrack.syscalls.count", parent["attributes"])


class TestHtmlData(FixtureCase):
    def test_every_span_and_call_once(self):
        by_trace = {t["id"]: t for t in self.data["traces"]}
        self.assertEqual(len(by_trace), len(self.traces))
        for t in self.traces:
            d = by_trace[t.trace_id]
            self.assertEqual(Counter(s["id"] for s in d["spans"]),
                             Counter(s["span_id"] for s in self.spans
                                     if s["trace_id"] == t.trace_id and not model.is_call(s)))
            for s in d["spans"]:
                got = Counter()
                for row in s["threads"]:
                    c = row["calls"]
                    for i in range(len(c["s"])):
                        got[(c["s"][i] + t.start_ns, c["d"][i], self.data["names"][c["n"][i]],
                             row["tid"])] += 1
                want = Counter((c["start_ns"], c["end_ns"] - c["start_ns"], c["name"],
                                c["attributes"]["thread.id"])
                               for c in self.calls if c["parent_span_id"] == s["id"]
                               and c["trace_id"] == t.trace_id)
                self.assertEqual(got, want, s["name"])
                self.assertEqual(s["ncalls"], sum(want.values()))
        self.assertEqual(sum(t["ncalls"] for t in self.data["traces"]), len(self.calls))

    def test_traces_sorted_by_duration_and_calls_in_time_order(self):
        durs = [t["dur"] for t in self.data["traces"]]
        self.assertEqual(durs, sorted(durs, reverse=True))
        for t in self.data["traces"]:
            for s in t["spans"]:
                self.assertLessEqual(0, s["s"])
                self.assertLessEqual(s["s"], s["e"])
                self.assertLessEqual(s["e"], t["dur"])
                for row in s["threads"]:
                    starts = row["calls"]["s"]
                    self.assertEqual(starts, sorted(starts))
                    for a, d in zip(starts, row["calls"]["d"]):
                        self.assertTrue(s["s"] <= a and a + d <= s["e"], "call outside its span")

    def test_tree_order_and_parents(self):
        for t in self.data["traces"]:
            for i, s in enumerate(t["spans"]):
                if s["parent"] >= 0:
                    self.assertLess(s["parent"], i)
                    self.assertEqual(s["depth"], t["spans"][s["parent"]]["depth"] + 1)
                else:
                    self.assertEqual(s["depth"], 0)

    def test_threads_kinds_errors(self):
        kinds = dict(zip(self.data["names"], (self.data["kinds"][k] for k in self.data["nameKind"])))
        self.assertEqual(kinds["fsync"], "disk")
        self.assertEqual(kinds["futex"], "lock")
        self.assertEqual(kinds["poll"], "network")
        self.assertEqual(kinds["clock_nanosleep"], "sleep")
        self.assertEqual(kinds["clone3"], "other")
        self.assertEqual(model.call_kind("getpid"), "other")
        errs = Counter()
        for t in self.data["traces"]:
            for s in t["spans"]:
                for row in s["threads"]:
                    self.assertEqual(row["tid"], s["tid"])
                    self.assertIsInstance(row["tid"], int)
                    for r, e in zip(row["calls"]["r"], row["calls"]["e"]):
                        if e >= 0:
                            errs[self.data["errnos"][e]] += 1
                            self.assertLess(r, 0)
                        else:
                            self.assertGreaterEqual(r, 0)
        want = Counter(c["attributes"]["error.type"] for c in self.calls if "error.type" in c["attributes"])
        self.assertEqual(errs, want)
        self.assertIn("ENOENT", want)
        self.assertIn("EAGAIN", want)

    def test_summary_names_the_cause(self):
        by_path = {}
        for t in self.data["traces"]:
            by_path.setdefault(t["root"]["name"], []).append(t)
        self.assertIn("fsync", by_path["GET /receipt"][0]["summary"])
        self.assertIn("clock_nanosleep", by_path["GET /report"][0]["summary"])
        self.assertIn("futex", by_path["GET /inventory"][0]["summary"])
        # a client span waiting for its downstream is not the cause: the downstream is
        slow_checkout = by_path["GET /checkout"][0]
        self.assertIn("in currency GET /convert", slow_checkout["summary"])
        self.assertEqual(slow_checkout["spans"][slow_checkout["focus"]]["svc"], "currency")

    def test_breakdown_of_the_calls(self):
        t = next(t for t in self.data["traces"] if t["root"]["name"] == "GET /receipt")
        s = next(s for s in t["spans"] if s["name"] == "save receipt")
        b = s["breakdowns"][0]
        self.assertEqual(b["title"], "system calls")
        parts = {p[0]: p[1] for p in b["parts"]}
        self.assertEqual(b["total"], s["e"] - s["s"])
        self.assertGreater(parts["disk"], 0.9 * b["total"])
        self.assertEqual(sum(parts.values()), b["total"])

    def test_no_scheduler_bar_without_the_scheduler_part(self):
        for t in self.data["traces"]:
            for s in t["spans"]:
                self.assertEqual([b["title"] for b in s["breakdowns"]],
                                 ["system calls"] if "spantrack.syscalls.count" in s["attrs"] else [])
                self.assertEqual((s["waits"], s["links"], s["woke"]), ([], [], []))

    def test_self_contained(self):
        low = self.html.lower()
        for bad in ("<script src", "<link", "@import", "url(http", "src=\"http", "href=\"http"):
            self.assertNotIn(bad, low)
        self.assertEqual(low.count("<script"), 2)


class TestHtmlEdgeCases(unittest.TestCase):
    def test_sched_bar_parts_are_not_counted_twice(self):
        # the run queue as its two parts, never also as runqueue_ns; attributes that are not
        # parts of the wall time (counts, latencies, other groups' *_ns) are not in the bar
        s = span("handle", 0, 10_000_000, "01" * 8, **{
            "spantrack.syscalls.count": 1, "spantrack.syscalls.duration_ns": 4_000_000,
            "spantrack.sched.on_cpu_ns": 3_000_000, "spantrack.sched.runqueue_ns": 1_500_000,
            "spantrack.sched.runqueue.wakeup_ns": 1_000_000,
            "spantrack.sched.runqueue.preempted_ns": 500_000,
            "spantrack.sched.blocked.io_ns": 3_000_000, "spantrack.sched.blocked.lock_ns": 1_000_000,
            "spantrack.sched.blocked.net_ns": 0, "spantrack.sched.blocked.timer_ns": 0,
            "spantrack.sched.blocked.other_ns": 0, "spantrack.sched.inactive_ns": 1_000_000,
            "spantrack.sched.dominant": "on_cpu", "spantrack.sched.blocks": 2,
            "spantrack.sched.wakeup_latency.total_ns": 1_000_000,
            "spantrack.sched.wakeup_latency.max_ns": 700_000,
            "spantrack.dropped.sched_events": 3, "spantrack.dropped.unitemised_ns": 0,
            "thread.id": 9})
        c = call("fsync", 1_000_000, 4_000_000, "02" * 8, "01" * 8, 9)
        d = embedded_data(page.render(model.traces_of([s, c])))
        sp = d["traces"][0]["spans"][0]
        by_title = {b["title"]: b for b in sp["breakdowns"]}
        self.assertEqual(list(by_title), ["system calls", "scheduler"])
        sched = by_title["scheduler"]
        self.assertEqual([(p[0], p[1]) for p in sched["parts"]], [
            ("on CPU", 3_000_000), ("waiting for a CPU after a wake-up", 1_000_000),
            ("waiting for a CPU after a preemption", 500_000), ("blocked: I/O", 3_000_000),
            ("blocked: lock", 1_000_000), ("inactive (child spans, awaiting)", 1_000_000),
            ("not accounted by the scheduler", 500_000)])
        self.assertEqual(sum(p[1] for p in sched["parts"]), 10_000_000)
        self.assertEqual(sched["total"], 10_000_000)
        self.assertEqual((sched["dominant"], sched["dominantLabel"], sched["dominantNs"]),
                         ("on_cpu", "on CPU", 3_000_000))
        self.assertIn("3 scheduler events not charged to the span", sched["facts"])
        self.assertEqual({p[0]: p[1] for p in by_title["system calls"]["parts"]},
                         {"disk": 3_000_000, "calls without a child span": 1_000_000,
                          "outside this span's system calls": 6_000_000})
        self.assertNotIn("wakers", sp)

    def test_runqueue_total_alone_is_one_part(self):
        s = span("handle", 0, 10_000_000, "01" * 8, **{
            "spantrack.sched.on_cpu_ns": 4_000_000, "spantrack.sched.runqueue_ns": 6_000_000})
        sched, = embedded_data(page.render(model.traces_of([s])))["traces"][0]["spans"][0]["breakdowns"]
        self.assertEqual([(p[0], p[1]) for p in sched["parts"]],
                         [("on CPU", 4_000_000), ("waiting for a CPU", 6_000_000)])

    def test_script_in_a_name_stays_data(self):
        evil = "</script><script>document.title='x'</script><!--"
        d = embedded_data(page.render(model.traces_of([span(evil, 0, 5, "03" * 8)])))
        self.assertEqual(d["traces"][0]["spans"][0]["name"], evil)

    def test_calls_on_another_thread_get_their_own_row(self):
        s = span("batch", 0, 100, "01" * 8, **{"thread.id": 1, "spantrack.syscalls.count": 2})
        cs = [call("read", 10, 20, "02" * 8, "01" * 8, 1), call("write", 15, 30, "03" * 8, "01" * 8, 2)]
        sp = embedded_data(page.render(model.traces_of([s] + cs)))["traces"][0]["spans"][0]
        self.assertEqual([r["tid"] for r in sp["threads"]], [1, 2])

    def test_orphan_call_is_a_span(self):
        c = call("futex", 0, 10, "04" * 8, "ff" * 8, 3)
        t, = model.traces_of([c])
        self.assertEqual(len(t.spans), 1)
        self.assertEqual(t.n_calls, 0)

    def test_big_trace_data(self):
        spans = big_trace(5000)
        d = embedded_data(page.render(model.traces_of(spans)))
        batch = next(s for s in d["traces"][0]["spans"] if s["name"] == "import batch")
        self.assertEqual(len(batch["threads"][0]["calls"]["s"]), 5000)


class TestChrome(FixtureCase):
    def test_follows_the_rules(self):
        check_chrome(self.chrome)

    def test_every_span_and_call_once_on_its_thread(self):
        xs = [e for e in self.chrome["traceEvents"] if e["ph"] == "X"]
        base = int(self.chrome["otherData"]["base_unix_ns"])
        ids = Counter(e["args"]["span_id"] for e in xs if "span_id" in e["args"])
        self.assertEqual(ids, Counter(s["span_id"] for s in self.spans if not model.is_call(s)))
        # calls: by name, start, duration and thread
        got = Counter((e["name"], round(e["ts"] * 1000) + base, round(e["dur"] * 1000), e["tid"])
                      for e in xs if "span_id" not in e["args"])
        self.assertEqual(got, Counter((c["name"], c["start_ns"], c["end_ns"] - c["start_ns"],
                                       c["attributes"]["thread.id"]) for c in self.calls))
        names = {(e["pid"], e["tid"]): e["args"]["name"] for e in self.chrome["traceEvents"]
                 if e["ph"] == "M" and e["name"] == "thread_name"}
        procs = {e["pid"]: e["args"]["name"] for e in self.chrome["traceEvents"]
                 if e["ph"] == "M" and e["name"] == "process_name"}
        by_id = {s["span_id"]: s for s in self.spans}
        for e in xs:
            if "span_id" not in e["args"]:
                self.assertIn(e["args"]["kind"], e["cat"])
                continue
            s = by_id[e["args"]["span_id"]]
            self.assertEqual(procs[e["pid"]], s["service"])
            self.assertEqual(round(e["ts"] * 1000) + base, s["start_ns"])
            self.assertEqual(round(e["dur"] * 1000), s["end_ns"] - s["start_ns"])
            tid = s["attributes"].get("thread.id")
            if tid is not None:
                # on the thread's own track, or an extra track named after it
                self.assertTrue(e["tid"] == tid or names[(e["pid"], e["tid"])].startswith(f"thread {tid}"))
                self.assertTrue(names[(e["pid"], e["tid"])].startswith(f"thread {tid}"))
            else:
                self.assertTrue(names[(e["pid"], e["tid"])].startswith(chrome.UNKNOWN_THREAD))

    def test_flows_link_parents_across_tracks(self):
        ev = self.chrome["traceEvents"]
        where = {e["args"]["span_id"]: (e["pid"], e["tid"]) for e in ev
                 if e["ph"] == "X" and "span_id" in e["args"]}
        crossing = sum(1 for s in self.spans if s["parent_span_id"] in where and s["span_id"] in where
                       and where[s["parent_span_id"]] != where[s["span_id"]])
        self.assertGreater(crossing, 0)
        self.assertEqual(sum(1 for e in ev if e["ph"] == "s"), crossing)

    def test_overlapping_spans_without_threads_get_more_tracks(self):
        spans = [span("a", 0, 100, "01" * 8), span("b", 50, 150, "02" * 8, trace_id="cd" * 16),
                 span("c", 60, 70, "03" * 8, trace_id="ef" * 16)]
        doc = chrome.chrome_trace(model.traces_of(spans))
        tracks = check_chrome(doc)
        self.assertEqual(len(tracks), 2)

    def test_big_trace(self):
        doc = chrome.chrome_trace(model.traces_of(big_trace(5000)))
        tracks = check_chrome(doc)
        self.assertEqual(sum(len(v) for v in tracks.values()), 5002)

    def test_empty(self):
        self.assertEqual(chrome.chrome_trace([])["traceEvents"], [])


class TestOtlp(FixtureCase):
    def test_round_trip(self):
        doc = json.loads(json.dumps(otlp.otlp_document(self.spans)))
        back = list(model.spans_of_doc(doc))
        key = lambda s: (s["trace_id"], s["span_id"])  # noqa: E731
        self.assertEqual(len(back), len(self.spans))
        orig = {key(s): s for s in self.spans}
        for s in back:
            o = orig[key(s)]
            for f in ("service", "parent_span_id", "name", "kind", "start_ns", "end_ns", "attributes",
                      "status", "events", "links"):
                self.assertEqual(s[f], o[f], f)

    def test_otlp_json_encoding(self):
        doc = otlp.otlp_document(self.spans)
        s = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
        self.assertRegex(s["traceId"], r"^[0-9a-f]{32}$")
        self.assertRegex(s["spanId"], r"^[0-9a-f]{16}$")
        self.assertIsInstance(s["startTimeUnixNano"], str)
        self.assertIn(s["kind"], range(6))
        calls = [x for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for x in ss["spans"]
                 if any(a["key"] == "error.type" for a in x["attributes"])]
        self.assertTrue(calls)
        for c in calls:
            self.assertEqual(c["status"]["code"], 2)
            nr = next(a for a in c["attributes"] if a["key"] == "spantrack.syscall.nr")
            self.assertIn("intValue", nr["value"])

    def test_reads_base64_ids_and_string_enums(self):
        doc = {"resourceSpans": [{"resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "x"}}]}, "scopeSpans": [{"spans": [{
                "traceId": base64.b64encode(bytes(range(16))).decode(),
                "spanId": base64.b64encode(bytes(range(8))).decode(),
                "name": "n", "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": "5",
                "endTimeUnixNano": 9, "status": {"code": "STATUS_CODE_ERROR"},
                "attributes": [{"key": "a", "value": {"arrayValue": {"values": [{"intValue": "3"}]}}}]}]}]}]}
        s, = model.spans_of_doc(doc)
        self.assertEqual(s["trace_id"], bytes(range(16)).hex())
        self.assertEqual(s["span_id"], bytes(range(8)).hex())
        self.assertEqual((s["kind"], s["status"]["code"], s["start_ns"], s["end_ns"]), ("SERVER", "ERROR", 5, 9))
        self.assertEqual(s["attributes"], {"a": [3]})


class TestGoldenSched(unittest.TestCase):
    """Spans made of the golden cases of the scheduler part (sched, sched_wakers, sched_odd,
    sched_over_budget): what the page shows of them, and their events and links through every
    input form."""

    @classmethod
    def setUpClass(cls):
        cls.cases = golden_cases()
        cls.spans = golden_sched_spans()
        cls.data = embedded_data(page.render(model.traces_of(cls.spans)))
        cls.slow = {}  # case -> (trace data, the slow span's data)
        for t in cls.data["traces"]:
            for s in t["spans"]:
                if "spantrack.sched.on_cpu_ns" in s["attrs"]:
                    for name in ("sched", "sched_wakers", "sched_odd", "sched_over_budget"):
                        exp = cls.cases[name]["expected"]
                        if (s["attrs"] == exp["attributes"] and len(s["waits"]) == len(exp.get("events", []))
                                and s["ncalls"] == len(exp.get("children", []))):
                            cls.slow[name] = (t, s)
        assert sorted(cls.slow) == ["sched", "sched_odd", "sched_over_budget", "sched_wakers"], sorted(cls.slow)

    def sched_bar(self, name):
        t, s = self.slow[name]
        bars = [b for b in s["breakdowns"] if b["kind"] == "sched"]
        self.assertEqual(len(bars), 1)
        self.assertEqual([b["title"] for b in s["breakdowns"]], ["system calls", "scheduler"])
        return bars[0], s

    def test_where_the_time_went(self):
        b, s = self.sched_bar("sched")
        a = self.cases["sched"]["expected"]["attributes"]
        dur = s["e"] - s["s"]
        self.assertEqual(dur, 200_100_000)
        parts = [(p[0], p[1]) for p in b["parts"]]
        self.assertEqual(parts, [
            ("on CPU", a["spantrack.sched.on_cpu_ns"]),
            ("waiting for a CPU after a wake-up", a["spantrack.sched.runqueue.wakeup_ns"]),
            ("waiting for a CPU after a preemption", a["spantrack.sched.runqueue.preempted_ns"]),
            ("blocked: lock", a["spantrack.sched.blocked.lock_ns"]),
            ("blocked: network", a["spantrack.sched.blocked.net_ns"]),
            ("blocked: timer", a["spantrack.sched.blocked.timer_ns"]),
            ("inactive (child spans, awaiting)", a["spantrack.sched.inactive_ns"]),
            # the kernel's span (end_mono - begin_mono) is 0.1 ms shorter than the SDK's
            ("not accounted by the scheduler", 100_000)])
        # the parts add up to the span's duration: runqueue_ns (their sum) is not a part
        self.assertEqual(sum(p[1] for p in parts), dur)
        self.assertEqual(b["total"], dur)
        self.assertNotIn(a["spantrack.sched.runqueue_ns"], [p[1] for p in parts])
        self.assertEqual((b["dominant"], b["dominantLabel"], b["dominantNs"]),
                         ("blocked.lock", "blocked: lock", 60_000_000))
        self.assertEqual(b["notes"], [])
        self.assertEqual(b["facts"], ["3 blocks, 1 preemption, 2 migrations, 3 wake-ups",
                                      "wake-up to running: 2.0 ms in all, 1.5 ms at most",
                                      "2 scheduler events not charged to the span"])
        # the parts' classes: the blocked causes in their system-call kinds' colours
        self.assertEqual([p[2] for p in b["parts"]],
                         ["s-cpu", "s-wakeup", "s-preempted", "k-lock", "k-network", "k-sleep",
                          "s-inactive", "s-unaccounted"])

    def test_every_bar_adds_up(self):
        for name in ("sched", "sched_wakers", "sched_over_budget"):
            b, s = self.sched_bar(name)
            self.assertEqual(sum(p[1] for p in b["parts"]), s["e"] - s["s"], name)
            self.assertEqual(b["total"], s["e"] - s["s"], name)
        b, _ = self.sched_bar("sched_wakers")
        self.assertEqual(b["dominant"], "blocked.lock")
        self.assertEqual(len(b["notes"]), 1)
        self.assertIn("only part of the span", b["notes"][0])  # spantrack.sched.partial
        self.assertNotIn("waiting for a CPU after a preemption", [p[0] for p in b["parts"]])  # 0 ns

    def test_figures_longer_than_the_span(self):
        # sched_odd: on CPU 25 ms in a 20.1 ms span: the bar is their sum, and says so
        b, s = self.sched_bar("sched_odd")
        a = self.cases["sched_odd"]["expected"]["attributes"]
        self.assertEqual(b["total"], 37_030_000)
        self.assertEqual(sum(p[1] for p in b["parts"]), b["total"])
        self.assertNotIn("not accounted by the scheduler", [p[0] for p in b["parts"]])
        self.assertEqual(b["parts"][0][:2], ["on CPU", a["spantrack.sched.on_cpu_ns"]])
        self.assertRegex(b["notes"][0], r"add up to 37\.0 ms, 16\.9 ms more than the span's 20\.1 ms")
        # no itemised call: the trace still opens on the slow span, named by where its time went
        t, _ = self.slow["sched_odd"]
        self.assertEqual(t["spans"][t["focus"]]["attrs"], a)
        self.assertEqual(t["summary"], "mostly on CPU 25.0 ms in currency GET /convert")

    def test_waits(self):
        for name in ("sched", "sched_wakers", "sched_odd"):
            t, s = self.slow[name]
            events = self.cases[name]["expected"]["events"]
            self.assertEqual(len(s["waits"]), len(events))
            for w, e in zip(s["waits"], events):
                a = e["attributes"]
                self.assertEqual(w["summary"], a["spantrack.wait.summary"])
                self.assertEqual(w["cause"], a["spantrack.wait.cause"])
                self.assertEqual(w["blocked"], a["spantrack.wait.blocked_ns"])
                self.assertEqual(w["runqueue"], a["spantrack.wait.runqueue_ns"])
                self.assertEqual(w["syscall"], a.get("spantrack.wait.syscall"))
                self.assertEqual(w["t"], e["time_ns"] - self.trace_start(t))
                self.assertTrue(s["s"] <= w["t"] <= s["e"])
                self.assertEqual(w["waker"].get("command"), a.get("spantrack.waker.command"))
                self.assertEqual(w["waker"]["context"], a["spantrack.waker.context"])
        _, s = self.slow["sched"]
        self.assertEqual([w["cls"] for w in s["waits"]], ["k-lock", "k-sleep", "k-network", "s-preempted"])
        self.assertEqual([w["wakerSpan"] for w in s["waits"]], [None] * 4)
        self.assertEqual(self.slow["sched_over_budget"][1]["waits"], [])
        self.assertEqual(self.slow["sched_over_budget"][1]["links"], [])

    def trace_start(self, t):
        return min(x["start_ns"] for x in self.spans if x["trace_id"] == t["id"])

    def test_wakers_spans_are_linked(self):
        t, s = self.slow["sched_wakers"]
        refs = [w["wakerSpan"] for w in s["waits"]]
        # two waits woken from "refresh rates" (this trace), a kernel thread (no span), and
        # "write report" of another trace and process
        self.assertEqual([(r["trace"], r["span"], r["found"], r["self"], r["label"]) if r else None for r in refs], [
            (*WAKER_SPAN, True, False, "currency: refresh rates"),
            (*WAKER_SPAN, True, False, "currency: refresh rates"),
            None,
            (*REMOTE_WAKER_SPAN, True, False, "reporter: write report")])
        self.assertIn(WAKER_SPAN[1], [x["id"] for x in t["spans"]])
        other = next(x for x in self.data["traces"] if x["id"] == REMOTE_WAKER_SPAN[0])
        self.assertEqual([x["id"] for x in other["spans"]], [REMOTE_WAKER_SPAN[1]])
        # the waker links, with the first wait's blocked time and whether remote
        self.assertEqual([(l["kind"], l["ref"]["span"], l["remote"], l["blocked"]) for l in s["links"]],
                         [("waker", WAKER_SPAN[1], False, 30_000_000),
                          ("waker", REMOTE_WAKER_SPAN[1], True, 2_000_000)])
        # and the other way: the spans they woke
        for x in t["spans"] + other["spans"]:
            if x["id"] in (WAKER_SPAN[1], REMOTE_WAKER_SPAN[1]):
                self.assertEqual([(w["ref"]["span"], w["ref"]["found"]) for w in x["woke"]], [(s["id"], True)])

    def test_waker_span_itself_or_zero_or_absent(self):
        _, s = self.slow["sched_odd"]
        refs = [w["wakerSpan"] for w in s["waits"]]
        self.assertEqual(refs[0], None)
        self.assertTrue(refs[1]["self"])  # woken from a thread in the span itself
        self.assertEqual(refs[2], None)  # all-zero ids
        self.assertEqual(s["links"], [])
        # a waker span that is not on the page: named, not found
        spans = [x for x in self.spans if x["span_id"] != REMOTE_WAKER_SPAN[1]]
        d = embedded_data(page.render(model.traces_of(spans)))
        slow = next(x for t in d["traces"] for x in t["spans"] if x["waits"] and x["links"])
        self.assertEqual((slow["waits"][3]["wakerSpan"]["found"], slow["waits"][3]["wakerSpan"]["label"]),
                         (False, None))
        self.assertFalse(slow["links"][1]["ref"]["found"])

    def test_events_and_links_through_otlp(self):
        doc = json.loads(json.dumps(otlp.otlp_document(self.spans)))
        out = {s["spanId"]: s for rs in doc["resourceSpans"] for ss in rs["scopeSpans"] for s in ss["spans"]}
        slow = out["b7ad6b7169203331"]
        self.assertEqual([l["flags"] for l in slow["links"]], [0x101, 0x301])  # sampled; remote
        self.assertEqual(len(slow["events"]), 4)
        back = {(s["trace_id"], s["span_id"]): s for s in model.spans_of_doc(doc)}
        for s in self.spans:
            b = back[(s["trace_id"], s["span_id"])]
            self.assertEqual(b["events"], s["events"])
            self.assertEqual(b["links"], s["links"])
        exp = self.cases["sched_wakers"]["expected"]
        b = back[("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")]
        self.assertEqual(b["links"], exp["links"])
        self.assertEqual(b["events"], exp["events"])

    def test_events_and_links_through_every_input_form(self):
        exp = self.cases["sched_wakers"]["expected"]
        # receiver form (spans.jsonl: links without remote/sampled), OTLP JSON lines with
        # base64 ids (protobuf's JSON mapping), show_traces.py's traces.json
        recv = [dict(s, links=[{k: v for k, v in l.items() if k not in ("remote", "sampled")}
                               for l in s["links"]]) for s in self.spans]
        b64 = lambda h: base64.b64encode(bytes.fromhex(h)).decode()  # noqa: E731
        doc = otlp.otlp_document(self.spans)
        for rs in doc["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for x in ss["spans"]:
                    for l in x.get("links", []):
                        l["traceId"], l["spanId"] = b64(l["traceId"]), b64(l["spanId"])
        with tempfile.TemporaryDirectory() as d:
            paths = {"spans.jsonl": "\n".join(json.dumps(s) for s in recv) + "\n",
                     "otlp.jsonl": json.dumps(doc) + "\n" + json.dumps({"resourceSpans": []}) + "\n",
                     "traces.json": json.dumps({"traces": [{"spans": recv}]})}
            for name, text in paths.items():
                p = os.path.join(d, name)
                with open(p, "w", encoding="utf-8") as f:
                    f.write(text)
                got = {(s["trace_id"], s["span_id"]): s for s in model.load([p])}
                slow = got[("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")]
                self.assertEqual(slow["events"], exp["events"], name)
                want = exp["links"] if name == "otlp.jsonl" else [
                    {k: v for k, v in l.items() if k not in ("remote", "sampled")} for l in exp["links"]]
                self.assertEqual(slow["links"], want, name)
                self.assertEqual(sum(len(s["links"]) for s in got.values()), 2, name)

    def test_command_keeps_events_and_links(self):
        with tempfile.TemporaryDirectory() as d:
            src = os.path.join(d, "spans.jsonl")
            with open(src, "w", encoding="utf-8") as f:
                f.write("".join(json.dumps(s) + "\n" for s in self.spans))
            r = subprocess.run([sys.executable, SPANTRACK, "view", src, "--slow", "--otlp", "-",
                                "-o", os.path.join(d, "v.html")],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            back = {(s["trace_id"], s["span_id"]): s for s in model.spans_of_doc(json.loads(r.stdout))}
            slow = back[("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")]
            self.assertEqual(len(slow["events"]), 4)
            self.assertEqual([l["span_id"] for l in slow["links"]], [WAKER_SPAN[1], REMOTE_WAKER_SPAN[1]])
            with open(os.path.join(d, "v.html"), encoding="utf-8") as f:
                data = embedded_data(f.read())
            self.assertEqual(sum(len(s["waits"]) for t in data["traces"] for s in t["spans"]), 12)


class TestCommand(unittest.TestCase):
    def run_view(self, *args, stdin=None):
        return subprocess.run([sys.executable, SPANTRACK, "view", *args], capture_output=True,
                              text=True, timeout=60, input=stdin)

    def test_all_outputs(self):
        with tempfile.TemporaryDirectory() as d:
            out = {k: os.path.join(d, k) for k in ("v.html", "c.json", "o.json")}
            r = self.run_view(FIXTURE, "-o", out["v.html"], "--chrome", out["c.json"], "--otlp", out["o.json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("20 traces", r.stderr)
            with open(out["v.html"], encoding="utf-8") as f:
                self.assertEqual(len(embedded_data(f.read())["traces"]), 20)
            with open(out["c.json"], encoding="utf-8") as f:
                check_chrome(json.load(f))
            # the OTLP output reads back as the same spans
            r = self.run_view(out["o.json"], "--slow", "--otlp", "-")
            self.assertEqual(r.returncode, 0, r.stderr)
            slow = list(model.spans_of_doc(json.loads(r.stdout)))
            self.assertEqual(len({s["trace_id"] for s in slow}), 11)

    def test_trace_prefix_and_stdin(self):
        tid = fixture_spans()[0]["trace_id"]
        with open(FIXTURE, encoding="utf-8") as f:
            r = self.run_view("-", "--trace", tid[:8], "--chrome", "-", stdin=f.read())
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual({e["args"]["trace_id"] for e in doc["traceEvents"]
                          if e["ph"] == "X" and "trace_id" in e["args"]}, {tid})

    def test_bad_input(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write('{"hello": 1}\n')
            f.flush()
            r = self.run_view(f.name, "--chrome", "-")
        self.assertEqual(r.returncode, 2)
        self.assertIn("neither a span", r.stderr)
        r = self.run_view("/nonexistent/spans.jsonl")
        self.assertEqual(r.returncode, 2)
        self.assertIn("No such file", r.stderr)


if __name__ == "__main__":
    unittest.main()
