#!/usr/bin/env python3
"""Runs oteltest's `otelsink --http` (an independent OTLP receiver from PyPI, printing every
request it decodes) bound to 127.0.0.1 instead of all interfaces. Port 4318."""
import sys
from http.server import HTTPServer

import oteltest.sink as sink
from oteltest.sink.main import main


class LoopbackHTTPServer(HTTPServer):
    def __init__(self, address, handler):
        super().__init__(("127.0.0.1", address[1]), handler)


sink.HTTPServer = LoopbackHTTPServer
sys.argv = ["otelsink", "--http"]
main()
