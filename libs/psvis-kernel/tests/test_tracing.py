"""Traces run from the command that appended an event to the consumer that projects it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from kernel_fixtures import START, note
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psvis.clock import FixedClock, SequentialIds
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import NewEvent
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.projection import ProjectionRunner, StreamProjection
from psvis.readstore.sqlite import SqliteReadStore
from psvis.sqlite_db import SqliteDatabase
from psvis.telemetry import trace_headers

EXPORTER = InMemorySpanExporter()


def provider() -> None:
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(EXPORTER))


def count(doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope) -> dict[str, Any]:
    return {"n": (doc or {"n": 0})["n"] + 1}


async def test_consumer_span_continues_the_trace_of_the_append(tmp_path: Path) -> None:
    provider()
    clock = FixedClock(START)
    db = SqliteDatabase(tmp_path / "psvis.db")
    store = SqliteEventStore(db, clock, SequentialIds("ev"))
    with trace.get_tracer("test").start_as_current_span("RegisterSystem") as command:
        base = note("traced", clock)
        event = NewEvent(base.payload, base.occurred_at, base.actor, trace=trace_headers())
        await store.append("s-1", 0, [event])
    runner = ProjectionRunner(
        "live", store, SqliteReadStore(db), [StreamProjection("s-", "c", count)], traced=True
    )
    await runner.catch_up()
    spans = [s for s in EXPORTER.get_finished_spans() if s.name.startswith("project ")]
    assert len(spans) == 1
    consumed = spans[0]
    assert consumed.context.trace_id == command.get_span_context().trace_id
    assert consumed.parent is not None
    assert consumed.parent.span_id == command.get_span_context().span_id
    assert consumed.attributes["psvis.stream_id"] == "s-1"
    await db.close()
