#!/usr/bin/env python3
"""A small OTLP/HTTP trace receiver for the demo and the tests: accepts protobuf (or JSON)
POST /v1/traces on 127.0.0.1, decodes it with opentelemetry-proto and appends every span as
one JSON object per line to a file. GET /healthz answers "ok"; GET /stats the number of
spans and requests received so far (JSON).

Usage: receiver.py PORT OUT.jsonl
"""

import gzip
import json
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import Parse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

KINDS = {v: k.replace("SPAN_KIND_", "") for k, v in Span.SpanKind.items()}
STATUS = {v: k.replace("STATUS_CODE_", "") for k, v in Status.StatusCode.items()}


def any_value(v):
    """An OTLP AnyValue as a plain JSON value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    if which == "int_value":
        return int(v.int_value)
    return getattr(v, which)


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def spans_of(req):
    """Every span of an ExportTraceServiceRequest as a flat dict."""
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        service = resource.get("service.name", "?")
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield {
                    "service": service,
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "start_ns": int(s.start_time_unix_nano),
                    "end_ns": int(s.end_time_unix_nano),
                    "attributes": attributes(s.attributes),
                    "status": {"code": STATUS.get(s.status.code, str(s.status.code)),
                               "message": s.status.message},
                    "events": [{"name": e.name, "time_ns": int(e.time_unix_nano),
                                "attributes": attributes(e.attributes)} for e in s.events],
                    "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex(),
                               "attributes": attributes(l.attributes)} for l in s.links],
                    "scope": ss.scope.name,
                    "resource": resource,
                }


class Receiver:
    def __init__(self, out_path):
        self.out = open(out_path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.spans = 0
        self.requests = 0

    def store(self, req):
        lines = [json.dumps(s, sort_keys=True) + "\n" for s in spans_of(req)]
        with self.lock:
            self.out.writelines(lines)
            self.out.flush()
            self.spans += len(lines)
            self.requests += 1


def make_handler(receiver):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet
            pass

        def reply(self, code, body, ctype):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/healthz":
                self.reply(200, b"ok\n", "text/plain")
            elif self.path == "/stats":
                with receiver.lock:
                    body = json.dumps({"spans": receiver.spans, "requests": receiver.requests})
                self.reply(200, body.encode() + b"\n", "application/json")
            else:
                self.reply(404, b"not found\n", "text/plain")

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != "/v1/traces":
                self.reply(404, b"not found\n", "text/plain")
                return
            try:
                enc = self.headers.get("Content-Encoding", "").lower()
                if enc == "gzip":
                    body = gzip.decompress(body)
                elif enc == "deflate":
                    body = zlib.decompress(body)
                req = ExportTraceServiceRequest()
                if "json" in self.headers.get("Content-Type", "").lower():
                    Parse(body, req)
                    receiver.store(req)
                    self.reply(200, b"{}", "application/json")
                else:
                    req.ParseFromString(body)
                    receiver.store(req)
                    self.reply(200, ExportTraceServiceResponse().SerializeToString(),
                               "application/x-protobuf")
            except Exception as e:  # a malformed export: tell the sender
                sys.stderr.write(f"receiver: bad export: {e!r}\n")
                self.reply(400, str(e).encode(), "text/plain")

    return Handler


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    port, out = int(sys.argv[1]), sys.argv[2]
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(Receiver(out)))
    server.daemon_threads = True
    print(f"receiver: listening on 127.0.0.1:{server.server_address[1]}, spans -> {out}",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
