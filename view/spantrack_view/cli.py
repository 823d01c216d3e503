"""`spantrack view`: the command line."""

import argparse
import json
import os
import sys

from . import chrome, model, otlp, page

DESCRIPTION = """Turns exported spans into something to look at: a self-contained HTML page
(trace list by duration; a waterfall per trace; each slow span's system calls on its
thread's row, coloured by kind; where its time went by the scheduler, its longest waits and
the spans that woke it), Chrome trace-event JSON for Perfetto or speedscope, and
OTLP JSON for Jaeger or any OTLP receiver.

Input: the demo receiver's spans.jsonl (one span a line), OTLP JSON ({"resourceSpans":...},
one document a file or a line), or show_traces.py's traces.json; '-' reads standard input.
Without -o/--chrome/--otlp it writes spantrack-view.html."""


def register(subparsers):
    p = subparsers.add_parser("view", help="HTML trace view, Chrome trace JSON, OTLP JSON",
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              description=DESCRIPTION)
    p.add_argument("inputs", nargs="+", metavar="SPANS", help="spans.jsonl or OTLP JSON files")
    p.add_argument("-o", "--html", metavar="FILE", help="write the HTML view here")
    p.add_argument("--chrome", metavar="FILE", help="write Chrome trace-event JSON here ('-': stdout)")
    p.add_argument("--otlp", metavar="FILE", help="write OTLP JSON here ('-': stdout)")
    p.add_argument("--trace", action="append", metavar="ID",
                   help="only this trace (a prefix of its id is enough); may be repeated")
    p.add_argument("--slow", action="store_true",
                   help="only traces with spans annotated by spantrack")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(func=run)


def _write(path, text):
    if path == "-":
        sys.stdout.write(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def select(traces, ids=None, slow=False):
    if ids:
        ids = [i.lower() for i in ids]
        traces = [t for t in traces if any(t.trace_id.startswith(i) for i in ids)]
    if slow:
        traces = [t for t in traces if t.annotated]
    return traces


def run(args):
    try:
        spans = model.load(args.inputs)
    except model.InputError as e:
        print(f"spantrack view: {e}", file=sys.stderr)
        return 2
    traces = select(model.traces_of(spans), args.trace, args.slow)
    if (args.trace or args.slow) and not traces:
        print("spantrack view: no trace matches", file=sys.stderr)
        return 1
    chosen = {(s["trace_id"], s["span_id"]) for t in traces for s in t.spans} | {
        (c["trace_id"], c["span_id"]) for t in traces for cs in t.calls.values() for c in cs}
    html = args.html or (None if args.chrome or args.otlp else "spantrack-view.html")
    say = (lambda *a: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    n_calls = sum(t.n_calls for t in traces)
    if html:
        _write(html, page.render(traces, [os.path.basename(i) for i in args.inputs]))
        say(f"spantrack view: {len(traces)} traces ({sum(1 for t in traces if t.annotated)} with "
            f"system-call spans, {n_calls} calls) -> {html}")
    if args.chrome:
        _write(args.chrome, json.dumps(chrome.chrome_trace(traces), separators=(",", ":")))
        if args.chrome != "-":
            say(f"spantrack view: Chrome trace-event JSON -> {args.chrome} "
                "(open it in Perfetto or speedscope)")
    if args.otlp:
        doc = otlp.otlp_document([s for s in spans if (s["trace_id"], s["span_id"]) in chosen])
        _write(args.otlp, json.dumps(doc, separators=(",", ":")))
        if args.otlp != "-":
            say(f"spantrack view: OTLP JSON -> {args.otlp} (Jaeger: Search -> JSON File; or POST "
                "it to an OTLP/HTTP receiver's /v1/traces)")
    return 0
