#!/usr/bin/env python3
"""The demo's `currency` service in Python, with the HTTP API of the Rust demo service
(spantrack-rust-demo-svc), which the demo prefers when it is built:

  /convert                 converts (fast)
  /convert?fsync=N         ... and journals it to a ledger file: N x (write, fsync)
  /convert?sleep_ms=N      ... after sleeping N ms
  /convert?lock=1          ... waiting for the rates lock, held by a refresh thread
  /fast

Usage: currency.py PORT   (env: SPANTRACK_DEMO_DIR, OTEL_EXPORTER_OTLP_ENDPOINT)
"""

import os
import sys
import tempfile
import threading
import time

from http_service import serve
from otel_setup import setup_tracing

tracer = setup_tracing("currency")
DATA_DIR = os.environ.get("SPANTRACK_DEMO_DIR") or tempfile.gettempdir()
RATES = {"EUR": 1.0, "USD": 1.08, "CHF": 0.96}
RATES_LOCK = threading.Lock()


def hold_rates_lock(ms):
    held = threading.Event()

    def refresh():
        with RATES_LOCK:
            held.set()
            time.sleep(ms / 1000)

    threading.Thread(target=refresh, name="rates-refresh", daemon=True).start()
    held.wait()


def convert(q):
    if q.get("lock") == "1":
        hold_rates_lock(int(q.get("hold_ms", 60)))
    with tracer.start_as_current_span("Convert") as span:
        amount = float(q.get("amount", 100))
        to = q.get("to", "USD")
        with RATES_LOCK:
            result = amount * RATES.get(to, 1.0)
        if "sleep_ms" in q:
            time.sleep(int(q["sleep_ms"]) / 1000)
        if int(q.get("fsync", 0)) > 0:
            path = os.path.join(DATA_DIR, f"ledger-{threading.get_ident()}.log")
            with open(path, "ab", buffering=0) as f:
                for _ in range(int(q["fsync"])):  # a journal: every entry made durable
                    f.write(f"{amount} EUR -> {result:.2f} {to}\n".encode())
                    os.fsync(f.fileno())
            os.unlink(path)
        span.set_attribute("currency.to", to)
    return 200, f"{amount} EUR = {result:.2f} {to}\n"


if __name__ == "__main__":
    serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8082, tracer,
          {"/convert": convert, "/fast": lambda q: (200, "fast\n")}, "currency")
