"""Async services with ground truth for tests/vm/t_async.sh (run in the VM under
LD_PRELOAD=libspanhook.so; the hook arrives through sitecustomize, no code here knows about
spantrack).

Every request does a known set of "marker" system calls between awaits, while other
requests run on the same event loop:

  kind    what the request does                          markers (tests/vm/async_check.py)
  disk    await; pwrite; await; fsync; await; fsync       pwrite64 x1, fsync x2
  stat    await; os.stat x20 across awaits                newfstatat x20
  sleep   await; time.sleep(2 ms)                         clock_nanosleep x1
  thread  await; asyncio.to_thread(os.uname x5)           uname x5, on a pool thread
  nested  await; a child span doing getppid x7; await     getppid x7 on the child span
  sync    (FastAPI only) a `def` endpoint: getppid x7     getppid x7, on anyio's pool thread

An application span processor makes a getpgid call in on_start and on_end: those run
inside spantrack's processor and must never appear under any span.

Modes:
  raw OUT.json             a plain-asyncio service: 5 rounds of all kinds, 5 at once
  serve PORT OUT.json      the same requests as a FastAPI app on uvicorn (asyncio loop);
                           SIGTERM stops it and writes the spans
  client PORT ROUNDS [K,..] sends the requests (default: all kinds and sync), all at once
                           in each round
"""

import asyncio
import json
import os
import sys
import tempfile
import threading
import time

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

KINDS = ["disk", "stat", "sleep", "thread", "nested"]


class MarkerProcessor(SpanProcessor):
    """The application's processor: its work runs inside spantrack's processor."""

    def on_start(self, span, parent_context=None):
        os.getpgid(0)

    def on_end(self, span):
        os.getpgid(0)


def setup():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(MarkerProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider, exporter


def dump(provider, exporter, path):
    provider.force_flush()
    out = []
    for s in exporter.get_finished_spans():
        out.append({
            "name": s.name,
            "span_id": f"{s.context.span_id:016x}",
            "parent": f"{s.parent.span_id:016x}" if s.parent else None,
            "kind": s.kind.name,
            "attributes": {k: v for k, v in (s.attributes or {}).items()},
        })
    hooked = type(getattr(provider, "_active_span_processor", None)).__name__
    with open(path, "w") as f:
        json.dump({"spans": out, "head_processor": hooked, "loop_tid": threading.get_native_id()}, f)


class Work:
    """The marker calls of each kind (file and path prepared outside any request)."""

    def __init__(self):
        fd, self.path = tempfile.mkstemp(prefix="vm_async.")
        self.fd = fd

    async def pause(self, i):
        await asyncio.sleep(0.001 * (1 + i % 3))

    async def run(self, kind, i, tracer):
        await asyncio.sleep(0.005)
        if kind == "disk":
            os.pwrite(self.fd, b"x" * 64, 0)
            await self.pause(i)
            os.fsync(self.fd)
            await self.pause(i + 1)
            os.fsync(self.fd)
        elif kind == "stat":
            for j in range(20):
                os.stat(self.path)
                if j % 5 == 4:
                    await self.pause(i + j)
        elif kind == "sleep":
            time.sleep(0.002)
        elif kind == "thread":
            await asyncio.to_thread(self.unames)
        elif kind == "nested":
            await self.pause(i)
            with tracer.start_as_current_span("nested-child"):
                for _ in range(7):
                    os.getppid()
                await self.pause(i + 1)
            await self.pause(i + 2)
        await self.pause(i)

    @staticmethod
    def unames():
        for _ in range(5):
            os.uname()

    @staticmethod
    def ppids():
        for _ in range(7):
            os.getppid()


async def raw_main(out):
    provider, exporter = setup()
    tracer = trace.get_tracer("vm_async")
    work = Work()
    # Warm-up outside any span: the pool thread exists, lazy imports are done.
    await asyncio.to_thread(work.unames)
    for k in KINDS:
        await work.run(k, 0, tracer)

    async def request(kind, i):
        with tracer.start_as_current_span(f"req {kind}") as span:
            span.set_attribute("req.kind", kind)
            await work.run(kind, i, tracer)

    for r in range(5):
        await asyncio.gather(*(request(k, r + n) for n, k in enumerate(KINDS)))
    dump(provider, exporter, out)


def serve(port, out):
    import contextlib
    import signal
    import uvicorn
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    provider, exporter = setup()
    tracer = trace.get_tracer("vm_async")
    work = Work()
    app = FastAPI()

    def mark(kind, i):
        # Warm-up requests (i < 0) load what the first request of a kind loads lazily
        # (imports: openat, read, stat...): real calls of theirs, but not ground truth.
        trace.get_current_span().set_attribute("req.kind", kind if i >= 0 else "warmup")

    def endpoint(kind):
        async def handler(i: int = 0):
            mark(kind, i)
            await work.run(kind, abs(i), tracer)
            return {"kind": kind}
        app.get(f"/{kind}")(handler)

    for k in KINDS:
        endpoint(k)

    @app.get("/sync")
    def sync(i: int = 0):
        mark("sync", i)
        time.sleep(0.005)
        work.ppids()
        return {"kind": "sync"}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       exclude_spans=["receive", "send"])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", http="h11",
                            access_log=False, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    # SIGTERM ends the server and then this function (uvicorn's own handler would re-raise
    # the signal after its shutdown, before the spans are written).
    server.capture_signals = contextlib.nullcontext
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    server.run()
    dump(provider, exporter, out)


def client(port, rounds, paths):
    import http.client
    failures = []

    def get(path, i):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", f"/{path}?i={i}")
            r = c.getresponse()
            r.read()
            if r.status != 200:
                failures.append(f"{path}: {r.status}")
            c.close()
        except OSError as e:
            failures.append(f"{path}: {e}")

    # Warm-up: one of each, alone.
    for p in paths:
        get(p, -1)
    for r in range(rounds):
        ts = [threading.Thread(target=get, args=(p, r + n)) for n, p in enumerate(paths)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    if failures:
        print("client failures:", failures, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "raw":
        asyncio.run(raw_main(sys.argv[2]))
    elif mode == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif mode == "client":
        paths = sys.argv[4].split(",") if len(sys.argv) > 4 else KINDS + ["sync"]
        client(int(sys.argv[2]), int(sys.argv[3]), paths)
    else:
        sys.exit(f"unknown mode {mode}")
