"""The read-model subscriber, checked with FastStream's TestKafkaBroker (no real broker).

Records are the bytes a real SQLite store sealed, published with the relay's headers; the
distributed test (test_subscribers_kafka.py) runs the same path on the real Kafka broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import TestKafkaBroker
from google.protobuf.message import Message
from kernel_fixtures import START, note
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from psvis.clock import FixedClock, SequentialIds
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import NewEvent, RecordedEvent
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.projection import ProjectionRunner, StreamProjection
from psvis.readstore.sqlite import SqliteReadStore
from psvis.sqlite_db import SqliteDatabase
from psvis.subscribers import DeliveredLog, EventsFeed
from psvis.telemetry import trace_headers

TOPIC = "psvis.events"


def count(doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope) -> dict[str, Any]:
    """A fold that counts how often it ran: applied once means n == version."""
    return {"n": (doc or {"n": 0})["n"] + 1}


@dataclass
class Rig:
    store: SqliteEventStore
    reads: SqliteReadStore
    delivered: DeliveredLog
    runner: ProjectionRunner
    broker: Any  # the TestKafkaBroker-patched KafkaBroker
    clock: FixedClock

    async def append(self, stream: str, n: int = 1) -> list[RecordedEvent]:
        head = await self.store.head(stream)
        return await self.store.append(stream, head.version, [note(stream, self.clock)] * n)

    async def publish(self, *events: RecordedEvent) -> None:
        """What the outbox relay writes: the stored bytes, position and trace headers."""
        for e in events:
            headers = {"psvis-position": str(e.position)}
            if e.envelope.trace.traceparent:
                headers["traceparent"] = e.envelope.trace.traceparent
            await self.broker.publish(e.data, TOPIC, key=e.stream_id.encode(), headers=headers)

    async def read_model(self, key: str) -> tuple[dict[str, Any], int] | None:
        return await self.reads.get("c", key)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = SqliteDatabase(tmp_path / "psvis.db")
    clock = FixedClock(START)
    store = SqliteEventStore(db, clock, SequentialIds("ev"))
    reads = SqliteReadStore(db)
    delivered = DeliveredLog(store)
    runner = ProjectionRunner(
        "live", delivered, reads, [StreamProjection("s-", "c", count)], traced=True
    )
    feed = EventsFeed("localhost:9092", "psvis", delivered)
    async with TestKafkaBroker(feed.broker) as broker:
        await runner.catch_up()  # the log is empty: the store said so
        delivered.live = True
        yield Rig(store, reads, delivered, runner, broker, clock)
    await db.close()


async def test_a_published_event_reaches_the_read_model_through_the_subscriber(rig: Rig) -> None:
    recorded = await rig.append("s-1", 2)
    await rig.publish(*recorded)
    assert rig.delivered.counts["delivered"] == 2
    await rig.runner.catch_up()
    assert await rig.read_model("1") == ({"n": 2}, 2)
    assert rig.delivered.counts["served"] == 2
    assert rig.delivered.counts["read"] == 0  # nothing came from the event store


async def test_a_duplicate_delivery_is_applied_once(rig: Rig) -> None:
    recorded = await rig.append("s-1")
    await rig.publish(*recorded, *recorded)  # delivered twice before it is applied
    await rig.runner.catch_up()
    await rig.publish(*recorded)  # and again after
    await rig.runner.catch_up()
    assert await rig.read_model("1") == ({"n": 1}, 1)
    assert rig.delivered.counts["passed_over"] == 2


async def test_a_consumer_that_lost_its_position_applies_a_redelivery_once(rig: Rig) -> None:
    recorded = await rig.append("s-1")
    await rig.publish(*recorded)
    await rig.runner.catch_up()
    # a second runner over the same read models, as after a crash before set_position
    again = DeliveredLog(rig.store)
    again.live = True
    other = ProjectionRunner("other", again, rig.reads, [StreamProjection("s-", "c", count)])
    again.deliver(recorded)  # Kafka delivers the event once more
    await other.catch_up()
    assert other.position == recorded[-1].position
    assert again.counts["served"] == 1  # it went through the runner, which passed it over
    assert await rig.read_model("1") == ({"n": 1}, 1)


async def test_events_the_subscriber_missed_are_read_from_the_store(rig: Rig) -> None:
    first = await rig.append("s-1")  # published before the subscriber was positioned
    later = await rig.append("s-1")
    await rig.publish(*later)
    await rig.runner.catch_up()
    assert await rig.read_model("1") == ({"n": 2}, 2)
    assert rig.delivered.counts["read"] >= len(first)  # the gap before `later`


async def test_delivery_wakes_the_runner(rig: Rig) -> None:
    follower = asyncio.create_task(rig.runner.run())
    try:
        recorded = await rig.append("s-2")
        await rig.publish(*recorded)
        assert await rig.runner.wait_for_stream("s-2", 1, timeout=5)
    finally:
        follower.cancel()
    assert rig.delivered.counts["served"] == 1


async def test_the_projection_span_continues_the_trace_in_the_kafka_headers(rig: Rig) -> None:
    exporter = InMemorySpanExporter()
    current = trace.get_tracer_provider()
    if not isinstance(current, TracerProvider):
        current = TracerProvider()
        trace.set_tracer_provider(current)
    current.add_span_processor(SimpleSpanProcessor(exporter))
    with trace.get_tracer("test").start_as_current_span("RegisterSystem") as command:
        base = note("traced", rig.clock)
        event = NewEvent(base.payload, base.occurred_at, base.actor, trace=trace_headers())
        recorded = await rig.store.append("s-3", 0, [event])
    await rig.publish(*recorded)
    await rig.runner.catch_up()
    spans = [s for s in exporter.get_finished_spans() if s.name.startswith("project ")]
    assert [s.attributes["psvis.stream_id"] for s in spans] == ["s-3"]  # type: ignore[index]
    assert spans[0].parent is not None
    assert spans[0].parent.span_id == command.get_span_context().span_id
    assert rig.delivered.counts["served"] == 1


async def test_a_record_that_is_no_envelope_is_passed_over(rig: Rig) -> None:
    await rig.broker.publish(b"not protobuf", TOPIC, headers={"psvis-position": "0"})
    await rig.broker.publish(b"", TOPIC)  # no position header
    assert rig.delivered.counts["delivered"] == 0
