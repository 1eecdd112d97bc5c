"""An independent OpenTelemetry client (the Python SDK from PyPI) exporting to mesh-collector.

Usage: otel_sdk_export.py <collector-otlp-host:port>

Exports, over OTLP/gRPC with the SDK's own exporters: one trace of two spans (a SERVER span and
its CLIENT child) from service "py-shop", a counter "py.orders" incremented by 7 with attribute
route=/checkout, and a histogram "py.latency" in ms with three values. Prints one JSON object with
the trace id and span ids. Exits non-zero if an export failed.
"""

import json
import sys

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def main():
    endpoint = "http://" + sys.argv[1]
    resource = Resource.create({"service.name": "py-shop", "service.instance.id": "py-1"})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = tracer_provider.get_tracer("interop")
    with tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER) as server:
        server.set_attribute("http.route", "/checkout")
        with tracer.start_as_current_span("charge card", kind=SpanKind.CLIENT) as client:
            client.set_attribute("peer.service", "payments")
            client.set_status(Status(StatusCode.ERROR, "card declined"))
    ctx = server.get_span_context()
    trace_id = format(ctx.trace_id, "032x")
    ids = {"server": format(ctx.span_id, "016x"), "client": format(client.get_span_context().span_id, "016x")}
    if not tracer_provider.force_flush(10_000):
        raise SystemExit("span flush failed")
    tracer_provider.shutdown()

    reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=endpoint, insecure=True), 60_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("interop")
    meter.create_counter("py.orders").add(7, {"route": "/checkout"})
    latency = meter.create_histogram("py.latency", unit="ms")
    for v in (3, 30, 300):
        latency.record(v, {"route": "/checkout"})
    if not meter_provider.force_flush(10_000):
        raise SystemExit("metric flush failed")
    meter_provider.shutdown()

    print(json.dumps({"trace_id": trace_id, "spans": ids}))


if __name__ == "__main__":
    main()
