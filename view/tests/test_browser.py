"""spantrack view in a real browser: Debian's chromium, headless (scripts/setup.sh installs
it), opens pages made from the fixture and from the golden cases of the scheduler part
(where the time went, the longest waits, waker links); the tests read the DOM the page's script built
(--dump-dom) and a screenshot (--screenshot), which they keep in demo-output/view-test/
($SPANTRACK_VIEW_TEST_OUT overrides it). Without chromium every test here fails."""

import functools
import html as htmllib
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import unittest
from collections import Counter

from helpers import (REMOTE_WAKER_SPAN, ROOT, WAKER_SPAN, embedded_data, fixture_spans,
                     golden_cases, golden_sched_spans, read_png)
from make_fixture import big_trace
from spantrack_view import chrome, model, page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUT = os.environ.get("SPANTRACK_VIEW_TEST_OUT") or os.path.join(ROOT, "demo-output", "view-test")
KIND_RGB = {"disk": (0xE8, 0x94, 0x3A), "network": (0x3F, 0x88, 0xD6)}
# view.html's colours of the scheduler bar's parts
SCHED_RGB = {"on CPU": (0x2D, 0xA4, 0x4E), "waiting for a CPU after a wake-up": (0xE3, 0xB3, 0x41),
             "blocked: lock": (0xD6, 0x45, 0x45), "inactive": (0xC9, 0xD6, 0xE3)}
SLOW_SPAN = "b7ad6b7169203331"  # sched_wakers's span


def chromium(args, url, tries=2, stderr=False):
    """Runs headless chromium on url; returns its standard output (and error)."""
    last = None
    for _ in range(tries):  # a busy machine can make one start time out
        with tempfile.TemporaryDirectory() as profile:
            cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
                   f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args, url]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
            except subprocess.TimeoutExpired as e:
                last = f"timed out: {e}"
                continue
            if r.returncode == 0 and (r.stdout.strip() or "--dump-dom" not in args):
                return (r.stdout, r.stderr) if stderr else r.stdout
            last = f"exit {r.returncode}: {r.stderr[-2000:]}"
    raise AssertionError(f"chromium failed ({' '.join(args)} {url}): {last}")


def body_attrs(dom):
    m = re.search(r"<body([^>]*)>", dom)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', m.group(1))) if m else {}


def built(dom):
    """The part of a dumped DOM the page's script built (before its scripts)."""
    return dom[:dom.index("<script")]


class PageCase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not CHROMIUM:
            raise AssertionError("chromium is not installed: run scripts/setup.sh (it installs "
                                 "Debian's chromium), or apt-get install chromium")
        os.makedirs(OUT, exist_ok=True)

    def dom(self, path, trace_id=None):
        url = "file://" + path + (f"#trace={trace_id}" if trace_id else "")
        dom = chromium(["--dump-dom", "--window-size=1280,800"], url)
        attrs = body_attrs(dom)
        self.assertNotIn("data-errors", attrs, f"the page's script failed: {attrs.get('data-errors')}")
        self.assertEqual(attrs.get("data-rendered"), "yes", "the page's script did not finish")
        return dom, attrs


class TestBrowser(PageCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.traces = model.traces_of(fixture_spans())
        cls.index = os.path.join(OUT, "index.html")
        html = page.render(cls.traces, ["spans.jsonl"])
        with open(cls.index, "w", encoding="utf-8") as f:
            f.write(html)
        cls.data = embedded_data(html)
        cls.big = os.path.join(OUT, "big.html")
        html = page.render(model.traces_of(big_trace(5000)), ["big"])
        with open(cls.big, "w", encoding="utf-8") as f:
            f.write(html)
        cls.big_data = embedded_data(html)["traces"][0]
        # the slow checkout whose time went to the currency service's fsyncs
        cls.checkout = next(t for t in cls.data["traces"]
                            if t["root"]["name"] == "GET /checkout" and "fsync" in t["summary"])

    def test_lists_the_traces_and_opens_the_slowest(self):
        dom, attrs = self.dom(self.index)
        rows = re.findall(r'<tr class="trace( slow)?[^"]*" data-trace="([0-9a-f]+)"', dom)
        self.assertEqual(len(rows), len(self.traces))
        slow = [tid for s, tid in rows if s]
        self.assertEqual(slow, [t.trace_id for t in self.traces if t.annotated])
        self.assertEqual(len(slow), 11)
        # sorted by duration: the first row is the slowest trace, and it is open
        self.assertEqual(rows[0][1], self.traces[0].trace_id)
        self.assertEqual(attrs["data-trace"], self.traces[0].trace_id)
        self.assertIn('class="trace slow open"', dom)
        t = self.data["traces"][0]
        self.assertEqual(len(re.findall(r'class="row span', dom)), t["nspans"])
        self.assertEqual(len(re.findall(r'class="row calls', dom)),
                         sum(len(s["threads"]) for s in t["spans"]))
        self.assertIn('class="call k-disk', dom)
        self.assertIn("where the time went", dom)

    def test_opens_a_trace_across_two_services(self):
        t = self.checkout
        dom, attrs = self.dom(self.index, t["id"])
        self.assertEqual(attrs["data-trace"], t["id"])
        self.assertEqual(len(re.findall(r'class="row span', dom)), 3)
        self.assertEqual(len(re.findall(r'class="row calls', dom)), 3)
        for svc in ("frontend", "currency"):
            self.assertIn(f"<b>{svc}</b>", dom)
        kinds = Counter(re.findall(r'class="(?:call|agg) k-(\w+)', dom))
        self.assertGreater(kinds["disk"], 0)
        self.assertGreater(kinds["network"], 0)
        # the details show the span the time went to: the currency service's fsyncs
        self.assertRegex(dom, r"<h3>currency: GET /convert")
        self.assertRegex(dom, r"<td>fsync</td>")

    def test_aggregates_5000_calls(self):
        dom, attrs = self.dom(self.big)
        calls = len(re.findall(r'class="call k-\w+[^"]*" data-call="\d+"', dom))
        groups = [int(n) for n in re.findall(r'class="agg k-\w+" data-agg="\d+" data-n="(\d+)"', dom)]
        self.assertGreater(len(groups), 0)
        self.assertLess(calls + len(groups), 1500, "too many bars to read")
        self.assertEqual(calls + sum(groups), 5000, "every call drawn once, alone or in a group")
        self.assertEqual(int(attrs["data-drawn-groups"]), len(groups))

    def test_zoomed_in_the_calls_are_drawn_one_by_one(self):
        big = self.big_data
        batch = next(s for s in big["spans"] if s["name"] == "import batch")
        a = batch["threads"][0]["calls"]["s"][100]
        _, whole = self.dom(self.big)
        _, zoomed = self.dom(self.big, f"{big['id']}&view={a}-{a + 2_000_000}")
        self.assertGreater(int(zoomed["data-drawn-calls"]), int(whole["data-drawn-calls"]))
        self.assertLess(int(zoomed["data-drawn-groups"]), int(whole["data-drawn-groups"]))

    def test_hover_click_zoom(self):
        for path, trace_id in ((self.index, self.checkout["id"]), (self.big, self.big_data["id"])):
            dom, attrs = self.dom(path, trace_id + "&selftest=1")
            report = attrs.get("data-selftest", "")
            self.assertIn("mousemove .call: ", report)
            self.assertRegex(report, r"mousemove \.call: \w+ \((disk|lock|network|sleep|other)\) [0-9.]+ [µm]?s")
            self.assertIn("wheel .row.calls .lane: ok", report)
            self.assertIn("dblclick .row.calls .lane: ok", report)
        self.assertRegex(report, r"mousemove \.agg: \d+ system calls")

    def test_screenshot_is_not_blank(self):
        shot = os.path.join(OUT, "screenshot.png")
        if os.path.exists(shot):
            os.unlink(shot)
        chromium([f"--screenshot={shot}", "--window-size=1280,800"],
                 "file://" + self.index + "#trace=" + self.checkout["id"])
        w, h, rows = read_png(shot)
        self.assertEqual((w, h), (1280, 800))
        colours = Counter(px for row in rows for px in row)
        background = colours.most_common(1)[0][1]
        self.assertGreater(len(colours), 50, "hardly any colours: blank page?")
        self.assertLess(background, 0.9 * w * h, "one colour covers 90% of the page")
        for kind, rgb in KIND_RGB.items():
            self.assertGreater(colours[rgb], 200, f"no {kind} bars in the screenshot")
        print(f"\n  screenshot: {shot} ({len(colours)} colours)", end=" ")


class TestSchedulerPart(PageCase):
    """A page of the golden cases with the scheduler part (tests/golden/spans.json, made into
    traces by helpers.golden_sched_spans): the span's "where the time went" bar by the
    scheduler, its longest waits, its waker links, and a jump to a waker's span."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.golden = os.path.join(OUT, "sched.html")
        with open(cls.golden, "w", encoding="utf-8") as f:
            f.write(page.render(model.traces_of(golden_sched_spans()), ["golden"]))

    def test_bar_waits_and_links_render(self):
        dom, attrs = self.dom(self.golden, WAKER_SPAN[0])
        dom = built(dom)
        self.assertEqual(attrs["data-selected"], SLOW_SPAN)  # the span the time went to
        text = htmllib.unescape(dom)
        # one scheduler bar, its parts adding up to the whole bar, runqueue_ns not a part
        bars = re.findall(r'<div class="stack sched" data-total="(\d+)">(.*?)</div><div class="stack-legend">', dom)
        self.assertEqual(len(bars), 1)
        total, inner = bars[0]
        parts = re.findall(r'data-part="([^"]+)" data-ns="(\d+)" style="width:([0-9.]+)%"', inner)
        self.assertEqual([p[0] for p in parts], [
            "on CPU", "waiting for a CPU after a wake-up", "blocked: I/O", "blocked: lock",
            "blocked: other", "inactive (child spans, awaiting)", "not accounted by the scheduler"])
        self.assertEqual(sum(int(p[1]) for p in parts), int(total))
        self.assertAlmostEqual(sum(float(p[2]) for p in parts), 100, delta=0.01)
        self.assertEqual(int(total), 100_100_000)
        self.assertIn("where the time went: scheduler", dom)
        self.assertIn("where the time went: system calls", dom)
        self.assertRegex(dom, r'<span class="dom"><i class="k-lock"></i>blocked: lock 46\.0 ms')
        self.assertIn("mostly blocked: lock (46.0 ms)", text)
        self.assertIn("only part of the span", text)
        # the longest waits: their sentences, causes and durations, in the record's order
        events = golden_cases()["sched_wakers"]["expected"]["events"]
        rows = re.findall(r'<tr class="wait".*?</tr>', text, re.S)
        self.assertEqual(len(rows), 4)
        for row, e in zip(rows, events):
            a = e["attributes"]
            self.assertIn(f'<td class="summary">{a["spantrack.wait.summary"]}</td>', row)
            self.assertIn(f'</i> {a["spantrack.wait.cause"]}</td>', row)
        self.assertIn("<td class=\"n\">30.0 ms</td><td class=\"n\">100 µs</td>", rows[0])
        # a wait whose waker span is on the page links to it, in this trace or another one
        jumps = re.findall(r'<a class="jump" href="#trace=(\w+)&amp;span=(\w+)"', dom)
        self.assertIn(WAKER_SPAN, jumps)
        self.assertIn(REMOTE_WAKER_SPAN, jumps)
        self.assertIn("currency: refresh rates</a>", rows[0])
        self.assertIn("reporter: write report</a>", rows[3])
        self.assertNotIn("<a", rows[2])  # a kernel thread: no span
        # the waker links
        links = re.findall(r'<li class="link" data-kind="waker">(.*?)</li>', text)
        self.assertEqual(len(links), 2)
        self.assertIn("held this span up 30.0 ms", links[0])
        self.assertIn("another process", links[1])
        # the waits under the span's bar in the waterfall
        self.assertEqual(len(re.findall(r'class="waitmark ', dom)), 4)

    def test_a_link_opens_the_wakers_span(self):
        dom, attrs = self.dom(self.golden, f"{REMOTE_WAKER_SPAN[0]}&span={REMOTE_WAKER_SPAN[1]}")
        dom = built(dom)
        self.assertEqual((attrs["data-trace"], attrs["data-selected"]), REMOTE_WAKER_SPAN)
        self.assertRegex(dom, r"<h3>reporter: write report")
        self.assertIn("spans this one woke", dom)
        self.assertIn(f'href="#trace={WAKER_SPAN[0]}&amp;span={SLOW_SPAN}"', dom)
        # clicked in the details: the waker's span of this trace is selected
        dom, attrs = self.dom(self.golden, f"{WAKER_SPAN[0]}&selftest=1")
        self.assertIn(f"jump {WAKER_SPAN[1]}: selected {WAKER_SPAN[1]}", attrs.get("data-selftest", ""))
        self.assertIn("mousemove .waitmark: wait: lock", attrs.get("data-selftest", ""))
        self.assertEqual(attrs["data-selected"], WAKER_SPAN[1])

    def test_sched_screenshot(self):
        shot = os.path.join(OUT, "sched.png")
        if os.path.exists(shot):
            os.unlink(shot)
        chromium([f"--screenshot={shot}", "--window-size=1280,800"],
                 "file://" + self.golden + "#trace=" + WAKER_SPAN[0])
        w, h, rows = read_png(shot)
        colours = Counter(px for row in rows for px in row)
        for part, rgb in SCHED_RGB.items():
            self.assertGreater(colours[rgb], 100, f"no '{part}' in the screenshot")
        print(f"\n  screenshot: {shot}", end=" ")


def speedscope_dir():
    """speedscope's web app (npm package speedscope: dist/release), if installed."""
    cands = [os.environ.get("SPANTRACK_SPEEDSCOPE", ""), os.path.join(ROOT, "node_modules", "speedscope")]
    try:
        npm_root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, timeout=30).stdout.strip()
        cands.append(os.path.join(npm_root, "speedscope"))
    except (OSError, subprocess.TimeoutExpired):
        pass
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "dist", "release", "index.html")):
            return os.path.join(c, "dist", "release")
    return None


class TestSpeedscope(unittest.TestCase):
    """speedscope (npm, optional: `npm install -g speedscope`, or SPANTRACK_SPEEDSCOPE=its
    directory) imports the Chrome JSON of the fixture and the 5,000-call trace."""

    def test_speedscope_imports_the_chrome_json(self):
        if not CHROMIUM:
            self.fail("chromium is not installed: run scripts/setup.sh")
        os.makedirs(OUT, exist_ok=True)
        app = speedscope_dir()
        if not app:
            self.skipTest("speedscope is not installed (npm install -g speedscope)")
        docs = {"/fixture.json": chrome.chrome_trace(model.traces_of(fixture_spans())),
                "/big.json": chrome.chrome_trace(model.traces_of(big_trace(5000)))}

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path in docs:
                    body = json.dumps(docs[self.path]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    super().do_GET()

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=app))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            for path in docs:
                shot = os.path.join(OUT, "speedscope-" + path.strip("/").replace(".json", ".png"))
                _, err = chromium(["--enable-logging=stderr", "--v=0", f"--screenshot={shot}"],
                                  f"{base}/index.html#profileURL={base}{path}", stderr=True)
                self.assertIn("Importing as Trace Event Format profile", err, path)
                self.assertRegex(err, r'"import: [0-9.]+ ms"', f"speedscope did not import {path}")
                self.assertNotRegex(err, r"CONSOLE.*(Error|went wrong|Unrecognized)", path)
        finally:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    unittest.main()
