"""A minimal traced HTTP service for the demo (http.server, one thread per request): each
request gets a SERVER span continuing the caller's W3C `traceparent`, like any
instrumented service. Nothing here knows about spantrack."""

import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode


def serve(port, tracer, routes, name):
    """routes: {path: fn(query dict) -> (status, text)}. Serves until SIGTERM/Ctrl-C."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            route = routes.get(url.path)
            parent = propagate.extract(self.headers)  # case-insensitive lookups
            with tracer.start_as_current_span(f"GET {url.path}", context=parent,
                                              kind=SpanKind.SERVER) as span:
                span.set_attribute("http.request.method", "GET")
                span.set_attribute("url.path", url.path)
                if url.query:
                    span.set_attribute("url.query", url.query)
                if route is None:
                    status, text = 404, "not found\n"
                else:
                    try:
                        status, text = route(query)
                    except Exception as e:  # a failed request, not a dead server
                        span.record_exception(e)
                        status, text = 500, f"error: {e}\n"
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"{name}: listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
        trace.get_tracer_provider().shutdown()
        print(f"{name}: stopped, spans flushed", file=sys.stderr, flush=True)
