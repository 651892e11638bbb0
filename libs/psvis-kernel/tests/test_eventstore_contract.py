"""The EventStore contract (invariants 1 and 3), run on the SQLite and the Kafka+MongoDB adapters."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.wrappers_pb2 import StringValue
from psvis.audit import verify_store
from psvis.checkpoints import CheckpointRecord
from psvis.clock import FixedClock
from psvis.envelope import RecordedEvent
from psvis.errors import ConcurrencyConflict
from psvis.eventstore.port import EventStore, StreamHead, read_log
from psvis.notary import Notary
from psvis.verify import verify_log
from store_harness import BACKENDS, T0, TRACEPARENT, Harness, event, open_harness


@pytest.fixture(params=BACKENDS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(request.param, tmp_path) as h:
        yield h


def text(e: RecordedEvent) -> str:
    return StringValue.FromString(e.envelope.payload).value


def assert_chain(events: Sequence[RecordedEvent]) -> None:
    """Versions 1..n without gaps or repeats, each event linked to its predecessor's hash."""
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    prev = b""
    for e in events:
        env = e.envelope
        assert (env.stream_id, env.stream_version, env.event_id) == (
            e.stream_id,
            e.version,
            e.event_id,
        )
        assert env.prev_hash == prev
        prev = e.hash


async def test_append_then_read_stream(harness: Harness) -> None:
    store = harness.events
    recorded = await store.append("reg-1", 0, [event("a"), event("b"), event("c")])
    assert [(e.stream_id, e.version) for e in recorded] == [
        ("reg-1", 1),
        ("reg-1", 2),
        ("reg-1", 3),
    ]
    assert len({e.event_id for e in recorded}) == 3
    stored = await store.read_stream("reg-1")
    assert [(e.event_id, e.version, e.data) for e in stored] == [
        (e.event_id, e.version, e.data) for e in recorded
    ]
    assert [text(e) for e in stored] == ["a", "b", "c"]
    assert_chain(stored)
    env = stored[0].envelope
    assert env.recorded_at.ToDatetime(tzinfo=T0.tzinfo) == T0
    assert env.trace.traceparent == TRACEPARENT
    assert await store.head("reg-1") == StreamHead(3, stored[-1].hash)
    assert await store.head("reg-unknown") == StreamHead(0, b"")
    assert await store.read_stream("reg-unknown") == []


async def test_appends_extend_the_chain(harness: Harness) -> None:
    store = harness.events
    await store.append("s", 0, [event("1"), event("2")])
    await store.append("s", 2, [event("3")])
    await store.append("s", 3, [event("4"), event("5"), event("6")])
    await store.append("other", 0, [event("x")])
    stored = await store.read_stream("s")
    assert [text(e) for e in stored] == ["1", "2", "3", "4", "5", "6"]
    assert_chain(stored)
    assert (await store.head("s")).version == 6


@pytest.mark.parametrize("expected", [-1, 0, 1, 2, 3, 5, 99])
async def test_a_wrong_expected_version_conflicts_and_changes_nothing(
    harness: Harness, expected: int
) -> None:
    store = harness.events
    await store.append("s", 0, [event("1"), event("2"), event("3")])
    await store.append("s", 3, [event("4")])
    before = await store.read_stream("s")
    with pytest.raises(ConcurrencyConflict) as caught:
        await store.append("s", expected, [event("late")])
    assert caught.value.actual == 4
    assert await store.read_stream("s") == before
    assert (await store.head("s")).version == 4


async def test_expected_version_on_an_empty_stream(harness: Harness) -> None:
    with pytest.raises(ConcurrencyConflict):
        await harness.events.append("new", 1, [event("x")])
    assert await harness.events.read_stream("new") == []
    assert await harness.events.append("new", 0, []) == []
    with pytest.raises(ConcurrencyConflict):
        await harness.events.append("new", 2, [])


async def test_concurrent_appends_at_one_version_have_one_winner(harness: Harness) -> None:
    """Invariant 1: 50 writers, two store instances (two 'processes'), one expected version."""
    stores = [harness.events, await harness.another()]

    async def attempt(i: int) -> bool:
        try:
            await stores[i % 2].append("contended", 0, [event(f"writer {i}")])
        except ConcurrencyConflict:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt(i) for i in range(50)))
    assert sum(outcomes) == 1
    stored = await harness.events.read_stream("contended")
    assert len(stored) == 1
    assert text(stored[0]) == f"writer {outcomes.index(True)}"


async def test_concurrent_writers_that_retry_get_one_version_each(harness: Harness) -> None:
    """Invariant 1: every writer wins once, at its own version; no gaps, no repeats."""
    stores = [harness.events, await harness.another()]
    conflicts = 0

    async def writer(i: int) -> int:
        nonlocal conflicts
        store = stores[i % 2]
        while True:
            head = await store.head("hot")
            try:
                (recorded,) = await store.append("hot", head.version, [event(f"writer {i}")])
            except ConcurrencyConflict:
                conflicts += 1
                continue
            return recorded.version

    versions = await asyncio.gather(*(writer(i) for i in range(50)))
    assert sorted(versions) == list(range(1, 51))
    stored = await harness.events.read_stream("hot")
    assert_chain(stored)
    assert Counter(text(e) for e in stored) == Counter(f"writer {i}" for i in range(50))
    for i, version in enumerate(versions):
        assert text(stored[version - 1]) == f"writer {i}"
    assert conflicts > 0  # the writers really raced


async def append_many(store: EventStore, streams: int, rounds: int) -> list[RecordedEvent]:
    out: list[RecordedEvent] = []
    for r in range(rounds):
        for s in range(streams):
            stream = f"s-{s}"
            head = await store.head(stream)
            batch = [event(f"{stream} {r}.{k}") for k in range(1 + (r + s) % 3)]
            out += await store.append(stream, head.version, batch)
    return out


async def test_read_page_gives_every_event_once_in_log_order(harness: Harness) -> None:
    store = harness.events
    appended = await append_many(store, streams=4, rounds=10)
    await harness.publish()
    appended += await append_many(store, streams=3, rounds=12)
    await harness.publish()
    n = len(appended)
    assert n > 2 * 64  # crosses the distributed log index's anchors

    log = await store.read_page(-1, 10 * n)
    assert [e.position for e in log] == list(range(n))
    assert Counter((e.stream_id, e.version) for e in log) == Counter(
        (e.stream_id, e.version) for e in appended
    )
    by_id = {e.event_id: e.data for e in appended}
    assert all(by_id[e.event_id] == e.data for e in log)
    seen: dict[str, int] = {}
    for e in log:  # each stream in version order within the log
        assert e.version == seen.get(e.stream_id, 0) + 1
        seen[e.stream_id] = e.version

    paged: list[RecordedEvent] = []
    after = -1
    while page := await store.read_page(after, 7):
        assert len(page) <= 7
        paged += page
        after = page[-1].position
    assert paged == log
    assert [e.position for e in await store.read_page(63, 3)] == [64, 65, 66]
    assert [e.position for e in await store.read_page(n - 2, 10)] == [n - 1]
    assert await store.read_page(n - 1, 10) == []
    assert await store.read_page(n + 50, 10) == []
    assert [e async for e in read_log(store, after=100)] == log[101:]
    assert await store.log_size() == n
    assert store.log_id

    positions = {(e.stream_id, e.version): e.position for e in log}
    for stream in {e.stream_id for e in log}:
        for e in await store.read_stream(stream):
            assert e.position == positions[(e.stream_id, e.version)]

    report = verify_log(store.log_id, [(e.position, e.data) for e in log], [], {})
    assert report.ok, report.failure
    assert report.events_checked == n


async def test_wait_for_append_wakes_on_a_new_event(harness: Harness) -> None:
    store = harness.events
    await store.append("w", 0, [event("first")])
    await harness.publish()
    assert len(await store.read_page(-1, 100)) == 1
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.create_task(store.wait_for_append(20))
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await store.append("w", 1, [event("second")])
    await harness.publish()
    await asyncio.wait_for(waiter, 10)
    assert loop.time() - started < 10
    assert [text(e) for e in await store.read_page(0, 100)] == ["second"]


async def test_wait_for_append_times_out(harness: Harness) -> None:
    store = harness.events
    await store.read_page(-1, 100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await store.wait_for_append(0.4)
    assert 0.3 <= loop.time() - started < 5


async def test_notary_checkpoints_verify(harness: Harness) -> None:
    """The checkpoint store keeps what the notary signs; `audit verify` accepts the log."""
    from psvis.signing import Signer

    signer = Signer(Ed25519PrivateKey.generate())
    store = harness.events
    await append_many(store, streams=3, rounds=5)
    await harness.publish()
    size = await store.log_size()
    notary = Notary(store, harness.checkpoints, signer, FixedClock(T0), every=7)
    assert await notary.catch_up() == size
    records = await harness.checkpoints.all(store.log_id)
    assert [r.tree_size for r in records] == [*range(7, size, 7), size][: len(records)]
    assert records[-1].tree_size == size
    latest = await harness.checkpoints.latest(store.log_id)
    assert latest == records[-1]
    await harness.checkpoints.add(records[-1])  # idempotent
    assert await harness.checkpoints.all(store.log_id) == records
    assert await harness.checkpoints.latest("another/0") is None

    await append_many(store, streams=2, rounds=2)
    await harness.publish()
    resumed = Notary(store, harness.checkpoints, signer, FixedClock(T0), every=7)
    assert await resumed.catch_up() == await store.log_size()
    report = await verify_store(store, harness.checkpoints, [signer.public])
    assert report.ok, report.failure
    assert report.unnotarised_tail == 0


async def test_notaries_side_by_side_keep_one_chain_of_checkpoints(harness: Harness) -> None:
    """Two notaries of one log (two replicas, or a restart overlapping the old process) race
    for every checkpoint: the store takes one checkpoint from each tree size, the one that lost
    goes on from it, and the checkpoints stay one chain that `audit verify` accepts."""
    from psvis.signing import Signer

    signer = Signer(Ed25519PrivateKey.generate())
    store = harness.events
    notaries = [
        Notary(store, harness.checkpoints, signer, FixedClock(T0), every=every) for every in (3, 4)
    ]
    for _ in range(3):
        await append_many(store, streams=3, rounds=3)
        await harness.publish()
        sizes = await asyncio.gather(*(n.catch_up() for n in notaries))
        assert sizes == [await store.log_size()] * 2
    records = await harness.checkpoints.all(store.log_id)
    assert [r.previous_size for r in records] == [0, *(r.tree_size for r in records[:-1])]
    assert records[-1].tree_size == await store.log_size()
    assert await harness.checkpoints.latest(store.log_id) == records[-1]
    report = await verify_store(store, harness.checkpoints, [signer.public])
    assert report.ok, report.failure
    assert report.unnotarised_tail == 0
    # a checkpoint that does not extend the latest is refused: one from a taken tree size, or
    # from a free one that is not the latest's end; the latest, added again, is not
    stale = records[0]
    for start in (0, stale.tree_size + 1):
        leaves = bytes(32) * (stale.tree_size + 2 - start)
        assert not await harness.checkpoints.add(
            CheckpointRecord(stale.log_id, stale.tree_size + 2, stale.signed, leaves,
                             stale.frontier)
        ), start  # fmt: skip
    assert await harness.checkpoints.add(records[-1])
    assert await harness.checkpoints.all(store.log_id) == records
    # nor is a checkpoint that signs no events taken: none could extend its tree size after it
    tip = records[-1]
    with pytest.raises(ValueError, match="adds no events"):
        await harness.checkpoints.add(
            CheckpointRecord(tip.log_id, tip.tree_size, tip.signed, b"", tip.frontier)
        )
    assert await harness.checkpoints.all(store.log_id) == records


async def test_notaries_following_the_log_side_by_side_keep_one_chain(harness: Harness) -> None:
    """The same for two notaries that follow the log (Notary.run), as two replicas do."""
    from psvis.signing import Signer

    signer = Signer(Ed25519PrivateKey.generate())
    store = harness.events
    notaries = [
        Notary(store, harness.checkpoints, signer, FixedClock(T0), every=every, interval=0.05)
        for every in (3, 4)
    ]
    running = [asyncio.create_task(n.run()) for n in notaries]
    try:
        for _ in range(4):
            await append_many(store, streams=3, rounds=2)
            await harness.publish()
            await asyncio.sleep(0.2)
        size = await store.log_size()
        for _ in range(100):
            latest = await harness.checkpoints.latest(store.log_id)
            if latest is not None and latest.tree_size == size:
                break
            await asyncio.sleep(0.1)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    records = await harness.checkpoints.all(store.log_id)
    assert [r.previous_size for r in records] == [0, *(r.tree_size for r in records[:-1])]
    assert records[-1].tree_size == size
    report = await verify_store(store, harness.checkpoints, [signer.public])
    assert report.ok, report.failure


async def test_a_notary_that_follows_the_log_and_catches_up_at_once_signs_each_event_once(
    harness: Harness,
) -> None:
    """`stop()` notarises the tail while the follower may still be winding down: the two never
    change the tree at once, and an event one of them signed is not signed again."""
    from psvis.signing import Signer

    signer = Signer(Ed25519PrivateKey.generate())
    store = harness.events
    notary = Notary(store, harness.checkpoints, signer, FixedClock(T0), every=3, interval=0.05)
    following = asyncio.create_task(notary.run())
    try:
        for _ in range(4):
            await append_many(store, streams=3, rounds=2)
            await harness.publish()
            assert await asyncio.wait_for(notary.catch_up(), 30) == await store.log_size()
            await asyncio.sleep(0.05)
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
    records = await harness.checkpoints.all(store.log_id)
    assert all(r.tree_size > r.previous_size for r in records)  # each signs events
    assert [r.previous_size for r in records] == [0, *(r.tree_size for r in records[:-1])]
    assert records[-1].tree_size == await store.log_size()
    report = await verify_store(store, harness.checkpoints, [signer.public])
    assert report.ok, report.failure


class RefusingCheckpoints:
    """A checkpoint store that refuses every checkpoint (one that keeps answering False)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.refused = 0

    async def add(self, record: CheckpointRecord) -> bool:
        self.refused += 1
        return False

    async def latest(self, log_id: str) -> CheckpointRecord | None:
        return await self.inner.latest(log_id)

    async def all(self, log_id: str) -> list[CheckpointRecord]:
        return await self.inner.all(log_id)


async def test_a_notary_whose_checkpoints_keep_being_refused_waits_longer_each_time(
    harness: Harness,
) -> None:
    from psvis.signing import Signer

    await append_many(harness.events, streams=2, rounds=2)
    await harness.publish()
    refusing = RefusingCheckpoints(harness.checkpoints)
    notary = Notary(harness.events, refusing, Signer(Ed25519PrivateKey.generate()),
                    FixedClock(T0), every=2)  # fmt: skip
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(notary.catch_up(), 0.6)
    # waits of 5 ms doubling: about seven tries in 0.6 s, where a loop without them makes
    # hundreds; and the store holds nothing it refused
    assert 3 <= refusing.refused <= 12, refusing.refused
    assert await harness.checkpoints.all(harness.events.log_id) == []
