"""OpenTelemetry: traces from the gRPC call into event envelopes and Kafka headers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

if TYPE_CHECKING:
    from psvis.common.v1 import envelope_pb2 as pb
    from psvis.envelope import RecordedEvent

tracer = trace.get_tracer("psvis")


def setup_tracing(service: str) -> TracerProvider:
    """A tracer provider; PSVIS_TRACE_CONSOLE=1 prints spans (an OTLP exporter plugs in here)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("PSVIS_TRACE_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def trace_headers() -> dict[str, str]:
    """W3C trace context of the current span, for an envelope or a Kafka record."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def consumer_span(name: str, trace_context: pb.TraceContext, event: RecordedEvent) -> Any:
    """A span for consuming an event, child of the span that appended it (W3C trace context)."""
    carrier = {"traceparent": trace_context.traceparent, "tracestate": trace_context.tracestate}
    return tracer.start_as_current_span(
        name,
        context=propagate.extract(carrier),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            "psvis.stream_id": event.stream_id,
            "psvis.stream_version": event.version,
            "psvis.event_id": event.event_id,
        },
    )


def context_from(carrier: dict[str, str]) -> Context:
    """The trace context carried in an envelope or in Kafka headers."""
    return propagate.extract(carrier)
