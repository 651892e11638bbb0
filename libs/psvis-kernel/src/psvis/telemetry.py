"""OpenTelemetry: traces from the gRPC call into event envelopes and Kafka headers."""

from __future__ import annotations

import os

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

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


def context_from(carrier: dict[str, str]) -> object:
    return propagate.extract(carrier)
