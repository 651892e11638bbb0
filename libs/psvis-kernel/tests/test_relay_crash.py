"""Invariant 2 for the outbox relay: a crash between any two steps loses nothing and publishes
nothing twice. Runs on the real Kafka broker and MongoDB-wire server only."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from psvis.clock import FixedClock
from psvis.distributed import open_distributed_stores
from psvis.envelope import RecordedEvent
from psvis.errors import ConcurrencyConflict, Unavailable
from psvis.eventstore.mongo_kafka import MongoKafkaEventStore
from psvis.eventstore.outbox_relay import OutboxRelay
from psvis.stores import Stores
from store_harness import T0, TRACEPARENT, distributed_settings, event, open_distributed

pytestmark = pytest.mark.distributed


class SimulatedCrash(Exception):
    pass


@pytest.fixture
async def stores() -> AsyncIterator[Stores]:
    opened = await open_distributed()
    try:
        yield opened
    finally:
        await opened.close()


def store_of(stores: Stores) -> MongoKafkaEventStore:
    assert isinstance(stores.events, MongoKafkaEventStore)
    return stores.events


async def append_some(store: MongoKafkaEventStore, tag: str, n: int = 12) -> list[RecordedEvent]:
    out: list[RecordedEvent] = []
    for i in range(n):
        stream = f"{tag}-{i % 4}"
        head = await store.head(stream)
        out += await store.append(stream, head.version, [event(f"{tag} {i}")] * (1 + i % 2))
    return out


@dataclass(frozen=True)
class OnKafka:
    stream_id: str
    version: int
    event_id: str
    data: bytes
    headers: dict[str, bytes]


async def kafka_records(
    store: MongoKafkaEventStore, isolation: str = "read_committed"
) -> list[OnKafka]:
    """The topic, read straight from Kafka (not through the store)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=store.bootstrap, isolation_level=isolation, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(store.topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, 0)
        out: list[OnKafka] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while await consumer.position(tp) < end and loop.time() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200)
            for record in batch.get(tp, []):
                env = RecordedEvent(0, "", 0, "", record.value).envelope
                assert record.key == env.stream_id.encode()
                out.append(
                    OnKafka(
                        env.stream_id,
                        env.stream_version,
                        env.event_id,
                        record.value,
                        dict(record.headers),
                    )
                )
        assert await consumer.position(tp) >= end
        return out
    finally:
        await consumer.stop()


async def assert_exactly_once(store: MongoKafkaEventStore, appended: list[RecordedEvent]) -> None:
    on_kafka = await kafka_records(store)
    counts = Counter((r.stream_id, r.version) for r in on_kafka)
    assert [k for k, n in counts.items() if n > 1] == []  # no duplicates
    assert set(counts) == {(e.stream_id, e.version) for e in appended}  # nothing lost
    sent = {e.event_id: e.data for e in appended}
    assert all(sent[r.event_id] == r.data for r in on_kafka)  # the stored bytes, unchanged
    assert all(r.headers["traceparent"] == TRACEPARENT.encode() for r in on_kafka)
    seen: dict[str, int] = {}
    for r in on_kafka:  # stream-version order on the log
        assert r.version == seen.get(r.stream_id, 0) + 1
        seen[r.stream_id] = r.version
    # the outbox is empty and every commit is marked
    assert await store.coll.pending.count_documents({}) == 0
    assert await store.coll.commits.count_documents({"published": False}) == 0
    # the store's view of the log: contiguous positions over exactly those records
    log = await store.read_page(-1, 100000)
    assert [e.position for e in log] == list(range(len(on_kafka)))
    assert [e.event_id for e in log] == [r.event_id for r in on_kafka]
    assert [int(r.headers["psvis-position"]) for r in on_kafka] == list(range(len(on_kafka)))
    assert await store.log_size() == len(on_kafka)
    positions = {e.event_id: e.position for e in log}
    for stream in seen:
        for e in await store.read_stream(stream):
            assert e.position == positions[e.event_id]


def crash_at(point: str) -> object:
    async def fault(reached: str) -> None:
        if reached == point:
            raise SimulatedCrash(point)

    return fault


@pytest.mark.parametrize("point", ["sent", "committed", "marked"])
async def test_a_relay_that_crashes_anywhere_loses_and_duplicates_nothing(
    stores: Stores, point: str
) -> None:
    store = store_of(stores)
    appended = await append_some(store, "first")
    crashed = OutboxRelay(store, owner="crashed", lease_ttl=1.0)
    crashed.fault = crash_at(point)  # type: ignore[assignment]
    with pytest.raises(SimulatedCrash):
        await crashed.relay_once()
    if point == "sent":  # the records reached the broker, in a transaction still open
        assert len(await kafka_records(store, "read_uncommitted")) == len(appended)
    else:
        assert len(await kafka_records(store)) == len(appended)
    appended += await append_some(store, "meanwhile")  # appends go on while it is down

    restarted = OutboxRelay(store, owner="restarted", lease_ttl=1.0)
    try:
        await restarted.relay_once()
        await assert_exactly_once(store, appended)
        appended += await append_some(store, "after")
        await restarted.relay_once()
        await assert_exactly_once(store, appended)
    finally:
        await restarted.close()
        await crashed.close()


CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from datetime import UTC, datetime
    from psvis.clock import FixedClock
    from psvis.distributed import open_distributed_stores
    from psvis.eventstore.outbox_relay import OutboxRelay
    from psvis.settings import Settings

    async def main(namespace, point):
        settings = Settings(
            backend="distributed",
            kafka_bootstrap=os.environ["PSVIS_KAFKA_BOOTSTRAP"],
            mongo_url=os.environ["PSVIS_MONGO_URL"],
            namespace=namespace,
        )
        stores = await open_distributed_stores(settings, FixedClock(datetime.now(UTC)))
        relay = OutboxRelay(stores.events, owner="child", lease_ttl=1.0)

        async def fault(reached):
            if reached == point:
                os.kill(os.getpid(), signal.SIGKILL)

        relay.fault = fault
        await relay.relay_once()
        print("the relay finished without reaching", point)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


@pytest.mark.parametrize("point", ["sent", "committed", "marked"])
async def test_kill_9_of_the_relay_process_loses_and_duplicates_nothing(
    stores: Stores, point: str
) -> None:
    store = store_of(stores)
    appended = await append_some(store, "before-kill", n=20)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        store.namespace,
        point,
        env={**os.environ},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == -9, output.decode()
    if point == "sent":  # the transaction is open: read_committed readers wait for it
        assert len(await kafka_records(store, "read_uncommitted")) == len(appended)
    else:
        assert len(await kafka_records(store)) == len(appended)
    appended += await append_some(store, "after-kill")

    restarted = OutboxRelay(store, owner="restarted", lease_ttl=1.0)
    try:
        await restarted.relay_once()  # waits for the dead relay's lease to expire
    finally:
        await restarted.close()
    await assert_exactly_once(store, appended)


async def test_two_relays_that_both_think_they_lead_publish_nothing_twice(stores: Stores) -> None:
    """The lease is not atomic on FerretDB; Kafka's producer fencing keeps this safe anyway."""
    store = store_of(stores)
    relays = [OutboxRelay(store, owner="same-owner", lease_ttl=5.0) for _ in range(2)]
    stop = asyncio.Event()
    failures = Counter[str]()

    async def keep_relaying(relay: OutboxRelay) -> None:
        while not stop.is_set():
            try:
                await relay.relay_once()
            except Exception as e:  # fenced by the other one: start a new session
                failures[type(e).__name__] += 1
            await asyncio.sleep(0.005)

    workers = [asyncio.create_task(keep_relaying(r)) for r in relays]
    appended: list[RecordedEvent] = []
    try:
        for round_ in range(15):
            appended += await append_some(store, f"r{round_}", n=4)
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*workers)
    final = OutboxRelay(store, owner="same-owner", lease_ttl=5.0)
    try:
        await final.relay_once()
    finally:
        for relay in [*relays, final]:
            await relay.close()
    await assert_exactly_once(store, appended)


async def test_an_appender_that_dies_before_its_commit_blocks_nothing(stores: Stores) -> None:
    store = store_of(stores)
    appended = await store.append("s", 0, [event("one")])
    # an appender wrote its pointer for slot 1, then died before inserting the commit
    await store.coll.pending.insert_one({"_id": "s:000000000001", "stream": "s", "after": 1})
    appended += await store.append("t", 0, [event("other stream")])
    assert await store.relay.relay_once() == 2
    assert await store.coll.pending.count_documents({}) == 1  # kept, looked at again later
    # the slot is still free: the next append takes it and the relay publishes it
    appended += await store.append("s", 1, [event("two")])
    await asyncio.sleep(2.1)  # the relay looks at a pointer without a commit every 2 s
    assert await store.relay.relay_once() == 1
    await assert_exactly_once(store, appended)


async def test_a_stale_stream_hint_costs_a_walk_not_correctness(stores: Stores) -> None:
    store = store_of(stores)
    await store.append("s", 0, [event("1"), event("2")])
    await store.append("s", 2, [event("3")])
    await store.coll.streams.delete_many({})  # as if every hint update had been lost
    assert (await store.head("s")).version == 3
    with pytest.raises(ConcurrencyConflict):
        await store.append("s", 2, [event("late")])
    await store.coll.streams.update_one({"_id": "s"}, {"$set": {"version": 2}})  # an old hint
    await store.append("s", 3, [event("4")])
    assert [e.version for e in await store.read_stream("s")] == [1, 2, 3, 4]


async def test_the_background_relay_publishes_while_appends_go_on(stores: Stores) -> None:
    store = store_of(stores)
    (background,) = stores.background
    task = asyncio.create_task(background())
    try:
        appended = await append_some(store, "live", n=10)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while len(await store.read_page(-1, 1000)) < len(appended):
            assert loop.time() < deadline, "the background relay did not publish"
            await store.wait_for_append(0.5)
        while await store.coll.pending.count_documents({}):  # its next round tidies up
            assert loop.time() < deadline, "the background relay left its outbox pointers"
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await assert_exactly_once(store, appended)


async def test_namespaces_do_not_see_each_other(stores: Stores) -> None:
    other = await open_distributed()
    try:
        await store_of(stores).append("s", 0, [event("mine")])
        await stores.reads.put("m", "k", {"v": 1}, 1, 0)
        assert await other.events.read_stream("s") == []
        assert await other.reads.get("m", "k") is None
        assert other.events.log_id != stores.events.log_id
    finally:
        await other.close()


async def test_missing_or_unreachable_services_fail_fast() -> None:
    good = distributed_settings()
    for kafka, mongo, named in [
        ("", good.mongo_url, "PSVIS_KAFKA_BOOTSTRAP"),
        (good.kafka_bootstrap, "", "PSVIS_MONGO_URL"),
        (
            good.kafka_bootstrap,
            "mongodb://127.0.0.1:9/psvis?serverSelectionTimeoutMS=300",
            "MongoDB",
        ),
        ("127.0.0.1:9", good.mongo_url, "Kafka"),
    ]:
        settings = distributed_settings()
        settings.kafka_bootstrap, settings.mongo_url = kafka, mongo
        with pytest.raises(Unavailable, match=named):
            await asyncio.wait_for(open_distributed_stores(settings, FixedClock(T0)), 30)
