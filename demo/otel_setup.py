"""The demo services' ordinary OpenTelemetry set-up, as any instrumented Python service has
it: a TracerProvider with the service's resource, a BatchSpanProcessor and the OTLP/HTTP
exporter (endpoint from OTEL_EXPORTER_OTLP_ENDPOINT, service name from OTEL_SERVICE_NAME).
Nothing here knows about spantrack."""

import os
import signal
import sys

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def setup_tracing(default_service_name):
    name = os.environ.get("OTEL_SERVICE_NAME", default_service_name)
    resource = Resource.create({"service.name": name})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    # SIGTERM ends the service like Ctrl-C: atexit then flushes the provider.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    return trace.get_tracer(name)
