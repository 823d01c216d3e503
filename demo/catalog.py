#!/usr/bin/env python3
"""The demo's `catalog` service: an async service, FastAPI on uvicorn's standard asyncio
event loop with OpenTelemetry's FastAPI instrumentation (no spantrack code). Every request
shares the one event-loop thread with the others in flight; each `await` hands the thread to
another request. spantrack charges each system call to the request whose code made it.

  /search?fsync=N     scans the catalogue journal: N appends, each made durable (fsync)
  /search?stat=N      checks N image files (stat), a few awaits in between
  /search?sleep_ms=N  resizes a thumbnail on a pool thread (asyncio.to_thread)

Usage: catalog.py PORT   (env: SPANTRACK_DEMO_DIR, OTEL_EXPORTER_OTLP_ENDPOINT)
"""

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time

import uvicorn
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

DATA_DIR = os.environ.get("SPANTRACK_DEMO_DIR") or tempfile.gettempdir()

provider = TracerProvider(resource=Resource.create(
    {"service.name": os.environ.get("OTEL_SERVICE_NAME", "catalog")}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
app = FastAPI()


@app.get("/search")
async def search(q: str = "", fsync: int = 0, stat: int = 0, sleep_ms: int = 0):
    span = trace.get_current_span()
    span.set_attribute("catalog.work", "fsync" if fsync else "stat" if stat else "thumbnail")
    await asyncio.sleep(0.005)  # the index lookup: another request runs meanwhile
    if fsync:
        path = os.path.join(DATA_DIR, f"catalog-journal-{os.getpid()}.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for i in range(fsync):
                os.write(fd, f"{q}: hit {i}\n".encode())
                os.fsync(fd)
                await asyncio.sleep(0.001)
        finally:
            os.close(fd)
    for i in range(stat):
        os.stat(DATA_DIR)
        if i % 20 == 19:
            await asyncio.sleep(0.001)
    if sleep_ms:
        await asyncio.to_thread(time.sleep, sleep_ms / 1000)
    return {"q": q, "fsync": fsync, "stat": stat}


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8083
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       exclude_spans=["receive", "send"])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio",
                                           http="h11", access_log=False, log_level="warning",
                                           lifespan="off"))
    # SIGTERM: stop serving, then flush the spans (uvicorn's own handler would re-raise it).
    server.capture_signals = contextlib.nullcontext
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    print(f"catalog: listening on 127.0.0.1:{port}", flush=True)
    server.run()
    provider.shutdown()
    print("catalog: stopped, spans flushed", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
