#!/usr/bin/env python3
"""The demo's `frontend` service: an ordinary OpenTelemetry-instrumented Python HTTP service
(no spantrack code). Some of its endpoints are slow, each for its own reason:

  /fast                     nothing to wait for
  /receipt?lines=48         saves a receipt, fsyncing every line (its own disk I/O)
  /report?sleep_ms=60       renders a report after a sleep (think: a retry back-off)
  /inventory?refresh=1      reads the inventory; a refresh on another thread holds its lock
  /checkout?fsync=N|sleep_ms=N|lock=1
                            converts the price through the currency service (downstream
                            call with W3C traceparent), which is slow for that reason
  /catalog?fsync=N&stat=N   two searches at once in the catalog service (async: FastAPI on
                            one asyncio event loop), one fsyncing, one stat-ing

Usage: frontend.py PORT   (env: CURRENCY_URL, CATALOG_URL, SPANTRACK_DEMO_DIR,
                           OTEL_EXPORTER_OTLP_ENDPOINT)
"""

import contextvars
import os
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

from opentelemetry import propagate
from opentelemetry.trace import SpanKind

from http_service import serve
from otel_setup import setup_tracing

tracer = setup_tracing("frontend")
DATA_DIR = os.environ.get("SPANTRACK_DEMO_DIR") or tempfile.gettempdir()
CURRENCY_URL = os.environ.get("CURRENCY_URL", "http://127.0.0.1:8082")
CATALOG_URL = os.environ.get("CATALOG_URL", "http://127.0.0.1:8083")


def fast(q):
    return 200, "fast\n"


def receipt(q):
    lines = int(q.get("lines", 24))
    with tracer.start_as_current_span("save receipt") as span:
        path = os.path.join(DATA_DIR, f"receipt-{threading.get_ident()}.txt")
        span.set_attribute("file.path", path)
        with open(path, "ab", buffering=0) as f:
            for i in range(lines):  # a naive journal: every line made durable at once
                f.write(f"line {i}: 1 x telescope, 499.00 EUR\n".encode())
                os.fsync(f.fileno())
        os.unlink(path)
    return 200, f"receipt of {lines} lines saved\n"


def report(q):
    ms = int(q.get("sleep_ms", 60))
    with tracer.start_as_current_span("render report"):
        time.sleep(ms / 1000)
    return 200, f"report after {ms} ms\n"


class Inventory:
    """Stock levels behind one lock; a refresh reloads them on a background thread, holding
    the lock the whole time (the classic 'sometimes slow' endpoint)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.stock = {"telescope": 3, "lens": 12}

    def refresh_in_background(self, hold_ms):
        held = threading.Event()

        def reload():
            with self.lock:
                held.set()
                time.sleep(hold_ms / 1000)  # a slow reload, lock held
                self.stock = dict(self.stock)

        threading.Thread(target=reload, name="inventory-refresh", daemon=True).start()
        held.wait()


INVENTORY = Inventory()


def inventory(q):
    if q.get("refresh") == "1":
        INVENTORY.refresh_in_background(int(q.get("hold_ms", 60)))
    with tracer.start_as_current_span("read inventory"):
        with INVENTORY.lock:
            stock = dict(INVENTORY.stock)
    return 200, f"inventory {stock}\n"


def call(name, url):
    """A downstream GET in a CLIENT span carrying its W3C traceparent; the body."""
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
        span.set_attribute("url.full", url)
        headers = {}
        propagate.inject(headers)  # W3C traceparent of this client span
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            span.set_attribute("http.response.status_code", r.status)
            return r.read().decode()


def checkout(q):
    body = call("GET currency /convert", f"{CURRENCY_URL}/convert?{urllib.parse.urlencode(q)}")
    return 200, f"checkout: {body.strip()}\n"


def catalog(q):
    searches = [{"q": "telescope", "fsync": q.get("fsync", "6")},
                {"q": "lens", "stat": q.get("stat", "300")}]
    bodies = [None] * len(searches)

    def one(i, params):
        bodies[i] = call("GET catalog /search",
                         f"{CATALOG_URL}/search?{urllib.parse.urlencode(params)}")

    # Both at once, each in the request's context: they overlap on the catalog's event loop.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(one, i, p))
               for i, p in enumerate(searches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 200, f"catalog: {' | '.join(b.strip() for b in bodies if b)}\n"


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8081, tracer,
          {"/fast": fast, "/receipt": receipt, "/report": report, "/inventory": inventory,
           "/checkout": checkout, "/catalog": catalog}, "frontend")
