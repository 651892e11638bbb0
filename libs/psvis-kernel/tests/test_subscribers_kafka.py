"""The read models follow the log through the FastStream subscriber, on the real Kafka broker.

An event appended through the distributed store is relayed to Kafka, delivered by the
subscriber and folded into MongoDB; redelivering it (the consumer seeks back, or a consumer that
lost its position gets it again) changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf.message import Message
from psvis.common.v1 import envelope_pb2 as pb
from psvis.distributed import open_live_feed
from psvis.eventstore.mongo_kafka import MongoKafkaEventStore
from psvis.projection import ProjectionRunner, StreamProjection
from psvis.stores import Stores
from psvis.subscribers import DeliveredLog, EventsFeed
from store_harness import TRACEPARENT, distributed_settings, event, open_distributed

pytestmark = pytest.mark.distributed

QUIET = 3600.0  # no safety-net reads of the store: whatever arrives came through the subscriber


def count(doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope) -> dict[str, Any]:
    return {"n": (doc or {"n": 0})["n"] + 1, "trace": env.trace.traceparent}


@dataclass
class Live:
    stores: Stores
    feed: EventsFeed
    runner: ProjectionRunner

    @property
    def store(self) -> MongoKafkaEventStore:
        assert isinstance(self.stores.events, MongoKafkaEventStore)
        return self.stores.events


async def follow(stores: Stores, name: str) -> tuple[EventsFeed, ProjectionRunner]:
    store = stores.events
    namespace = store.namespace  # type: ignore[attr-defined]
    bootstrap = store.bootstrap  # type: ignore[attr-defined]
    feed = EventsFeed(bootstrap, namespace, DeliveredLog(store, recheck=QUIET))
    await feed.start()
    runner = ProjectionRunner(
        name, feed.delivered, stores.reads, [StreamProjection("s-", "c", count)], traced=True
    )
    return feed, runner


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    stores = await open_distributed()
    feed, runner = await follow(stores, "read-models")
    await runner.catch_up()
    tasks = [asyncio.create_task(w()) for w in (runner.run, *stores.background)]
    try:
        yield Live(stores, feed, runner)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await feed.stop()
        await stores.close()


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_an_appended_event_reaches_the_read_model_through_the_subscriber(live: Live) -> None:
    await live.store.append("s-1", 0, [event("filed")])
    assert await live.runner.wait_for_stream("s-1", 1, timeout=30)
    assert await live.stores.reads.get("c", "1") == ({"n": 1, "trace": TRACEPARENT}, 1)
    counts = live.feed.delivered.counts
    assert counts["delivered"] == counts["served"] == 1
    assert counts["read"] == 0  # not read back from the event store

    # at-least-once: the consumer reads the partition again from the start
    live.feed.subscriber.consumer.seek(live.feed.partition, 0)
    await until(lambda: counts["passed_over"] >= 1)
    await live.store.append("s-1", 1, [event("amended")])  # and the log goes on
    assert await live.runner.wait_for_stream("s-1", 2, timeout=30)
    assert await live.stores.reads.get("c", "1") == ({"n": 2, "trace": TRACEPARENT}, 2)
    assert counts["read"] == 0


async def test_a_redelivery_to_a_consumer_that_lost_its_position_is_applied_once(
    live: Live,
) -> None:
    await live.store.append("s-7", 0, [event("filed")])
    assert await live.runner.wait_for_stream("s-7", 1, timeout=30)
    # another process over the same read models that never saved a position (crashed first)
    feed, other = await follow(live.stores, "restarted")
    try:
        feed.subscriber.consumer.seek(feed.partition, 0)
        await until(lambda: feed.delivered.counts["delivered"] >= 1)
        await other.catch_up()
        assert other.position == 0
        assert feed.delivered.counts["served"] == 1
    finally:
        await feed.stop()
    assert await live.stores.reads.get("c", "7") == ({"n": 1, "trace": TRACEPARENT}, 1)


async def test_open_live_feed_names_the_topic_when_kafka_is_unreachable() -> None:
    from psvis.errors import Unavailable

    settings = distributed_settings()
    settings.kafka_bootstrap = "127.0.0.1:1"
    stores = await open_distributed(settings.namespace)
    try:
        with pytest.raises(Unavailable, match=f"{settings.namespace}.events"):
            await open_live_feed(settings, stores.events)
    finally:
        await stores.close()
