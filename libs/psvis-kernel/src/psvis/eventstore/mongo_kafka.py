"""Distributed event store: streams and an outbox in MongoDB, the log on one Kafka partition.

Appends (invariant 1) -- one atomic single-document insert
----------------------------------------------------------
The textbook outbox is a `streams` document holding {version, head_hash, outbox: [...]}, updated
with the filter {_id, version: expected}. That is not safe on FerretDB 1.24 (the MongoDB-wire
server the project runs in CI): it evaluates an update's filter, then rewrites the whole document
in a second statement that no longer checks it, so concurrent updates filtered on the same
`version` can all "match" (50 concurrent updates at version 0: up to 11 winners, measured; the same
for findAndModify). The one atomic primitive it has is an insert against the unique `_id` (a
SQLite primary key). MongoDB gives the same guarantee, so this adapter relies on nothing else:

- `commits`: one document per append, `_id = "<stream>:<expected:012d>"`, the slot *after*
  version `expected`. Inserting it IS the append, and at most one commit can ever take a slot, so
  N concurrent appends at one expected version have exactly one winner; the others get
  E11000, i.e. ConcurrencyConflict. The document holds the sealed events
  ({event_id, version, data}, data = the exact bytes), `start`, `end` and `head_hash`; it is never
  rewritten, except that the relay sets `published` and `positions` once Kafka has it. A stream is
  the chain of its commits: slot 0 -> slot end1 -> slot end2 ...
- `streams`: {_id: stream, version, hash}, a hint only. It is written after each commit and is
  always *some* version a commit ended at, maybe an old one; appends and head() walk forward from
  it by `_id` look-ups (FerretDB pushes down `{_id: <string>}` filters only; any other filter is a
  full collection scan). An expected version below the hint, or one that the walk does not end at
  (for example one inside another append's batch), is a ConcurrencyConflict.
- `pending`: {_id: "<stream>:<expected:012d>"}, written *before* the commit, so that the relay
  finds every commit even when the appender dies right after inserting it. The relay deletes a
  pointer once the commit it names is on Kafka; a pointer whose commit never came (the appender
  died in between) is re-checked now and then and costs one look-up.
- append() returns the events with position -1: the log position is only known once the relay
  has published them. read_stream() returns every appended event, published or not, with its
  position once published (-1 before).

The log (read_page, read_log, the notary and `audit verify`) -- one Kafka partition
-----------------------------------------------------------------------------------
The relay publishes commits, in stream-version order and each commit in one piece, to partition 0
of `<namespace>.events` with a TRANSACTIONAL producer (idempotent, acks=all,
transactional.id = `<namespace>.relay`): key = stream id, value = the stored bytes (never
re-serialised), headers = the envelope's W3C `traceparent`/`tracestate` and `psvis-position`.

Crash safety with no duplicates on Kafka (invariant 2):
- the relay keeps in `relay` {_id: "state", offset, position}: the Kafka offset up to which the log
  has been reconciled with MongoDB, and the log position that goes with it;
- on start (and after any error) a relay session opens the producer, which fences every older
  producer with the same transactional.id and aborts its open transaction (Kafka's zombie fencing:
  a relay that was killed, or paused and replaced, can no longer commit anything); it then reads
  the topic (read_committed) from `offset` to the end and marks every commit found there as
  published (sets `published`/`positions`, so the walk skips it) before publishing anything new.
- A kill between produce and commit: the transaction is aborted by the next session, read_committed
  readers never see it, and the commit is published again. A kill between the Kafka commit and the
  MongoDB update: the next session finds the events on Kafka and only marks them.
- The leader lease (`relay` {_id: "leader"}) keeps a single relay busy; it is a plain
  findOneAndUpdate, which FerretDB does not make atomic either, so it is an optimisation: two
  relays that both think they lead fence each other on Kafka and still publish nothing twice.

Offsets and positions: with transactions, Kafka offsets have gaps (each commit writes a control
record; aborted records stay in the partition), but the verifier wants positions 0..n-1. So a
record's *position* is the number of committed data records before it in the partition: a pure
function of the log, recomputable from Kafka alone (read_committed). The relay writes it into each
record's `psvis-position` header (read_page checks it against the count), and into `log_index`
every 64 positions (`_id` = position, -> offset), so read_page(after) seeks to the nearest anchor
and counts forward. The alternative -- an idempotent producer without transactions, whose offsets
are contiguous -- has no fencing: a produce request of a relay that died or timed out can still be
appended after its successor has re-read the topic, and the event would be on Kafka twice.
log_id = "<topic>/0"; log_size() = number of committed records.

Other MongoDB documents: `published` {_id: stream, version} is the relay's hint of how far each
stream is on Kafka (the walk from it skips commits already marked, so a stale hint is harmless);
`relay` {_id: "state"} as above. Only `_id` look-ups and small collections (pending) are queried,
because FerretDB 1.24 serves every other filter by scanning the whole collection. It also
deadlocks on large update commands (see BULK_CHUNK), hence the small client pool in
psvis.distributed. Reading a stream costs one look-up per append it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from psvis.clock import Clock, IdSource
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import NewEvent, RecordedEvent, seal_stream
from psvis.errors import ConcurrencyConflict, Unavailable
from psvis.eventstore.port import StreamHead
from psvis.telemetry import context_from, tracer
from psvis.workers import take_error

log = logging.getLogger(__name__)

Doc = dict[str, Any]
STRIDE = 64  # log_index keeps the offset of every STRIDE-th position
POSITION_HEADER = "psvis-position"
TOPIC_EXISTS = 36
# FerretDB 1.24 keeps one SQLite connection open per update statement until the whole update
# command ends (a `defer` in a loop), from a pool of 100: an update command with ~100 statements,
# or enough of them at once, deadlocks the server for good. So updates go in small commands, and
# upserts one by one (FerretDB also drops nModified from an update reply holding an E11000).
BULK_CHUNK = 16


def slot(stream_id: str, version: int) -> str:
    """The `_id` of the commit that follows `version` of a stream (fixed width: unambiguous)."""
    return f"{stream_id}:{version:012d}"


def _anchor_id(position: int) -> str:
    return f"{position:016d}"


class Collections:
    """The MongoDB collections of one namespace."""

    def __init__(self, db: AsyncDatabase[Doc], namespace: str) -> None:
        self.commits: AsyncCollection[Doc] = db[f"{namespace}.commits"]
        self.streams: AsyncCollection[Doc] = db[f"{namespace}.streams"]
        self.pending: AsyncCollection[Doc] = db[f"{namespace}.pending"]
        self.published: AsyncCollection[Doc] = db[f"{namespace}.published"]
        self.log_index: AsyncCollection[Doc] = db[f"{namespace}.log_index"]
        self.relay: AsyncCollection[Doc] = db[f"{namespace}.relay"]


async def ensure_topic(bootstrap: str, topic: str, replication: int | None = None) -> None:
    """Create the one-partition log topic if missing; records are kept for ever (audit log)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        if replication is None:
            env = os.environ.get("PSVIS_KAFKA_REPLICATION", "")
            if env:
                replication = int(env)
            else:
                cluster = await admin.describe_cluster()
                replication = min(3, max(1, len(cluster.get("brokers", [])) or 1))
        configs = {
            "cleanup.policy": "delete",
            "retention.ms": "-1",
            "retention.bytes": "-1",
            "min.insync.replicas": str(min(2, replication)),
        }
        response = await admin.create_topics(
            [NewTopic(topic, 1, replication, topic_configs=configs)]
        )
        for name, code, message in response.topic_errors:
            if code not in (0, TOPIC_EXISTS):
                raise Unavailable(f"cannot create Kafka topic {name}: error {code} {message}")
    finally:
        await admin.close()


@dataclass(frozen=True)
class _Published:
    """One record of the log as the relay knows it."""

    stream_id: str
    version: int
    offset: int
    position: int


class MongoKafkaEventStore:
    """EventStore over MongoDB (streams, outbox) and Kafka (the log); see the module docstring."""

    def __init__(
        self,
        db: AsyncDatabase[Doc],
        bootstrap: str,
        namespace: str,
        clock: Clock,
        ids: IdSource,
        *,
        relay_owner: str | None = None,
        lease_ttl: float = 10.0,
    ) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self.bootstrap = bootstrap
        self.namespace = namespace
        self.topic = f"{namespace}.events"
        self.log_id = f"{self.topic}/0"
        self.tp = TopicPartition(self.topic, 0)
        self.coll = Collections(db, namespace)
        self._reader: AIOKafkaConsumer | None = None
        self._reader_started = asyncio.Lock()
        self.reader_lock = asyncio.Lock()  # one scan at a time over the shared consumer
        self._cursors: OrderedDict[int, int] = OrderedDict()  # position -> offset
        self._seen_end = -1
        self._progress = asyncio.Event()  # set when this process's relay commits
        self.appended = asyncio.Event()  # set by append(): wakes this process's relay
        self.relay = OutboxRelay(self, owner=relay_owner, lease_ttl=lease_ttl)

    async def start(self) -> None:
        await ensure_topic(self.bootstrap, self.topic)

    # -- streams -------------------------------------------------------------------------------

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Atomic: one insert into `commits`. Positions are -1: Kafka assigns them later."""
        head_hash = await self._locate(stream_id, expected_version)
        if not events:
            return []
        recorded_at = self._clock.now()
        out = seal_stream(
            events,
            [self._ids.new_id() for _ in events],
            stream_id=stream_id,
            head_version=expected_version,
            head_hash=head_hash,
            recorded_at=recorded_at,
        )
        version, prev = out[-1].version, out[-1].hash
        key = slot(stream_id, expected_version)
        with contextlib.suppress(DuplicateKeyError):
            await self.coll.pending.insert_one(
                {"_id": key, "stream": stream_id, "after": expected_version}
            )
        try:
            await self.coll.commits.insert_one(
                {
                    "_id": key,
                    "stream": stream_id,
                    "start": expected_version,
                    "end": version,
                    "head_hash": prev,
                    "events": [
                        {"event_id": r.event_id, "version": r.version, "data": r.data} for r in out
                    ],
                    "published": False,
                }
            )
        except DuplicateKeyError:
            actual = (await self.head(stream_id)).version
            raise ConcurrencyConflict(stream_id, expected_version, actual) from None
        await self._hint(stream_id, version, prev)
        self.appended.set()
        return out

    async def _locate(self, stream_id: str, expected: int) -> bytes:
        """The head hash if `expected` is (as far as we can see) the stream's head."""
        hinted = await self._hinted(stream_id)
        if expected == hinted.version:
            return hinted.hash  # the insert will tell if someone got there first
        head = await self._walk(stream_id, hinted) if expected > hinted.version else None
        if head is None or head.version != expected:
            actual = head.version if head else (await self.head(stream_id)).version
            raise ConcurrencyConflict(stream_id, expected, actual)
        return head.hash

    async def _hinted(self, stream_id: str) -> StreamHead:
        doc = await self.coll.streams.find_one({"_id": stream_id})
        return StreamHead(0, b"") if doc is None else StreamHead(doc["version"], bytes(doc["hash"]))

    async def _walk(self, stream_id: str, start: StreamHead) -> StreamHead:
        head = start
        while (doc := await self.commit_after(stream_id, head.version, events=False)) is not None:
            head = StreamHead(doc["end"], bytes(doc["head_hash"]))
        if head.version != start.version:
            await self._hint(stream_id, head.version, head.hash)
        return head

    async def commit_after(self, stream_id: str, after: int, *, events: bool = True) -> Doc | None:
        projection = None if events else {"events": 0}
        return await self.coll.commits.find_one({"_id": slot(stream_id, after)}, projection)

    async def _hint(self, stream_id: str, version: int, hash_: bytes) -> None:
        """Best effort: move the hint forward (a stale hint costs a look-up, never correctness)."""
        with contextlib.suppress(DuplicateKeyError):
            await self.coll.streams.update_one(
                {"_id": stream_id, "version": {"$lt": version}},
                {"$set": {"version": version, "hash": hash_}},
                upsert=True,
            )

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        out: list[RecordedEvent] = []
        version = 0
        while (doc := await self.commit_after(stream_id, version)) is not None:
            positions = doc.get("positions") or [-1] * len(doc["events"])
            for e, position in zip(doc["events"], positions, strict=True):
                out.append(
                    RecordedEvent(
                        position, stream_id, e["version"], e["event_id"], bytes(e["data"])
                    )
                )
            version = doc["end"]
        return out

    async def head(self, stream_id: str) -> StreamHead:
        return await self._walk(stream_id, await self._hinted(stream_id))

    # -- the log -------------------------------------------------------------------------------

    async def consumer(self) -> AIOKafkaConsumer:
        async with self._reader_started:
            if self._reader is not None:
                return self._reader
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                isolation_level="read_committed",
                enable_auto_commit=False,
                group_id=None,
                fetch_max_wait_ms=20,
                auto_offset_reset="earliest",
            )
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), 10)
                raise
            consumer.assign([self.tp])
            consumer.pause(self.tp)
            self._reader = consumer
            return consumer

    async def end_offset(self) -> int:
        """The partition's high watermark (committed, aborted and control records alike)."""
        consumer = await self.consumer()
        return int((await consumer.end_offsets([self.tp]))[self.tp])

    async def relay_state(self) -> tuple[int, int]:
        """(offset, position): the log before `offset` holds the positions below `position`."""
        doc = await self.coll.relay.find_one({"_id": "state"})
        return (0, 0) if doc is None else (int(doc["offset"]), int(doc["position"]))

    async def _anchor(self, target: int) -> tuple[int, int]:
        """(offset, position) of a committed record at or before position `target`, to read from."""
        if (offset := self._cursors.get(target)) is not None:
            return offset, target
        block = target - target % STRIDE
        doc = await self.coll.log_index.find_one({"_id": _anchor_id(block)})
        if doc is not None:
            return int(doc["offset"]), block
        offset, position = await self.relay_state()
        if target >= position:
            return offset, position
        raise RuntimeError(
            f"log index of {self.log_id} lacks position {block} below the reconciled {position}"
        )

    async def scan(
        self, offset: int, position: int, *, first: int, limit: int, end: int
    ) -> tuple[list[tuple[Any, int]], int, int]:
        """Committed records read from `offset` (where the next one has `position`).

        Returns up to `limit` (record, position) pairs with position >= `first`, and the offset
        and position to go on from. Stops at `end` (an offset), or when nothing more comes (an open
        transaction holds the last stable offset below `end`).
        """
        consumer = await self.consumer()
        consumer.seek(self.tp, offset)
        consumer.resume(self.tp)
        try:
            return await self._scan(consumer, offset, position, first=first, limit=limit, end=end)
        finally:
            consumer.pause(self.tp)  # no prefetching (and long-polling) between reads

    async def _scan(
        self,
        consumer: AIOKafkaConsumer,
        offset: int,
        position: int,
        *,
        first: int,
        limit: int,
        end: int,
    ) -> tuple[list[tuple[Any, int]], int, int]:
        out: list[tuple[Any, int]] = []
        next_offset, pos = offset, position
        loop = asyncio.get_running_loop()
        stalled_since = loop.time()
        complete = True  # every record fetched so far has been counted
        while len(out) < limit:
            at = await consumer.position(self.tp)
            if at >= end:
                break
            batch = await consumer.getmany(self.tp, timeout_ms=20, max_records=2000)
            records = batch.get(self.tp, [])
            if not records:
                # control records and aborted ones move the position without records; nothing
                # moving for a second means an open transaction holds the stable offset back
                if await consumer.position(self.tp) != at:
                    stalled_since = loop.time()
                elif loop.time() - stalled_since > 1.0:
                    break
                continue
            stalled_since = loop.time()
            for record in records:
                if len(out) >= limit:
                    complete = False  # the rest was fetched, not counted
                    break
                stamped = _header(record.headers, POSITION_HEADER)
                if stamped is not None and int(stamped) != pos:
                    raise RuntimeError(
                        f"{self.log_id} offset {record.offset}: the relay stamped position "
                        f"{int(stamped)}, counting gives {pos}"
                    )
                if pos >= first:
                    out.append((record, pos))
                next_offset, pos = record.offset + 1, pos + 1
            else:
                complete = True
        if complete:  # skip the control records after the last record too
            next_offset = max(next_offset, await consumer.position(self.tp))
        return out, next_offset, pos

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        target = after + 1
        async with self.reader_lock:
            end = await self.end_offset()
            offset, position = await self._anchor(target)
            if offset >= end:
                self._seen_end = max(self._seen_end, end)
                return []
            found, next_offset, next_position = await self.scan(
                offset, position, first=target, limit=limit, end=end
            )
            self._remember(next_position, next_offset)
            if len(found) < limit:
                self._seen_end = max(self._seen_end, end)
        return [_recorded(record, pos) for record, pos in found]

    def _remember(self, position: int, offset: int) -> None:
        self._cursors[position] = offset
        self._cursors.move_to_end(position)
        while len(self._cursors) > 256:
            self._cursors.popitem(last=False)

    async def wait_for_append(self, timeout: float) -> None:
        """Return once the log grew past what read_page last saw at its end, or on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        progress = self._progress
        while True:
            if await self.end_offset() > self._seen_end or progress.is_set():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(progress.wait(), min(0.1, remaining))

    def notify_published(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def log_size(self) -> int:
        async with self.reader_lock:
            end = await self.end_offset()
            offset, position = await self.relay_state()
            if self._cursors:
                cursor_position = max(self._cursors)
                if cursor_position > position:
                    offset, position = self._cursors[cursor_position], cursor_position
            if offset >= end:
                return position
            _, _, size = await self.scan(offset, position, first=1 << 62, limit=1, end=end)
            return size

    async def close(self) -> None:
        await self.relay.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.stop()


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def _recorded(record: Any, position: int) -> RecordedEvent:
    return RecordedEvent.stored(position, bytes(record.value))


class Lease:
    """A simple leader lease in MongoDB: {_id: "leader", owner, expires} (wall-clock seconds)."""

    def __init__(self, coll: AsyncCollection[Doc], owner: str, ttl: float) -> None:
        self._coll = coll
        self.owner = owner
        self.ttl = ttl

    async def acquire(self) -> bool:
        now = time.time()
        try:
            doc = await self._coll.find_one_and_update(
                {"_id": "leader", "$or": [{"expires": {"$lt": now}}, {"owner": self.owner}]},
                {"$set": {"owner": self.owner, "expires": now + self.ttl}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return False  # held by someone else, not expired
        return doc is not None and doc.get("owner") == self.owner

    async def release(self) -> None:
        await self._coll.delete_one({"_id": "leader", "owner": self.owner})


Fault = Callable[[str], Awaitable[None]]


class OutboxRelay:
    """Publishes commits to Kafka exactly once; see the module docstring.

    `fault` is a test hook, awaited at "sent" (records produced, transaction open), "committed"
    (Kafka has them, MongoDB does not know yet) and "marked" (commits marked, relay state not yet
    moved on): a test raises or kills the process there.
    """

    def __init__(
        self,
        store: MongoKafkaEventStore,
        *,
        owner: str | None = None,
        lease_ttl: float = 10.0,
        poll: float = 0.2,
        max_events: int = 1000,
    ) -> None:
        self._store = store
        self._coll = store.coll
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lease = Lease(store.coll.relay, self.owner, lease_ttl)
        self._poll = poll
        self._max_events = max_events
        self._producer: AIOKafkaProducer | None = None
        self._offset = 0
        self._position = 0
        self._snoozed: dict[str, float] = {}
        self.fault: Fault | None = None

    # -- running -------------------------------------------------------------------------------

    async def relay_forever(self) -> None:
        """Lead when the lease is free; publish whatever is pending; recover after any error."""
        loop = asyncio.get_running_loop()
        backoff = 0.5
        try:
            while True:
                try:
                    if not await self._lease.acquire():
                        await asyncio.sleep(self._lease.ttl / 3)
                        continue
                    await self._start_session()
                    renew_at = loop.time() + self._lease.ttl / 3
                    while True:
                        self._store.appended.clear()
                        published = await self._round()
                        if loop.time() >= renew_at:
                            if not await self._lease.acquire():
                                log.warning("relay %s lost the lease", self.owner)
                                break
                            renew_at = loop.time() + self._lease.ttl / 3
                        if not published:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._store.appended.wait(), self._poll)
                        backoff = 0.5
                    await self._stop_producer()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("outbox relay failed; starting a new session")
                    await self._stop_producer()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            await self.close()

    async def relay_once(self) -> int:
        """Publish everything pending now (tests, tools); returns how many events went out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lease.ttl + 2
        while not await self._lease.acquire():
            if loop.time() > deadline:
                raise Unavailable(f"another outbox relay holds the lease of {self._store.topic}")
            await asyncio.sleep(0.2)
        try:
            if self._producer is None:
                await self._start_session()
            total = 0
            while published := await self._round():
                total += published
            return total
        except BaseException:
            await self._stop_producer()
            raise

    async def close(self) -> None:
        await self._stop_producer()
        with contextlib.suppress(Exception):
            await self._lease.release()

    async def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)

    async def _fault(self, point: str) -> None:
        if self.fault is not None:
            await self.fault(point)

    # -- a session: fence, then reconcile what Kafka already has ------------------------------

    async def _start_session(self) -> None:
        await self._stop_producer()
        producer = AIOKafkaProducer(
            bootstrap_servers=self._store.bootstrap,
            transactional_id=f"{self._store.namespace}.relay",
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
        )
        try:
            await producer.start()  # a start that fails leaves a client to close, too
            # Getting the producer id fences older producers with this transactional.id and
            # completes (aborts) their open transaction, so the log's end is now final.
            await producer.begin_transaction()
            await producer.abort_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)
            raise
        self._producer = producer
        self._snoozed.clear()
        await self._reconcile()

    async def _reconcile(self) -> None:
        """Mark as published every commit that Kafka holds beyond the relay state."""
        store = self._store
        async with store.reader_lock:
            offset, position = await store.relay_state()
            end = await store.end_offset()
            found, next_offset, next_position = await store.scan(
                offset, position, first=position, limit=1 << 62, end=end
            )
            consumer = await store.consumer()
            if await consumer.position(store.tp) < end:
                raise Unavailable(f"{store.log_id}: could not read the log up to offset {end}")
        records = []
        for record, pos in found:
            env = pb.EventEnvelope.FromString(bytes(record.value))
            records.append(_Published(env.stream_id, env.stream_version, record.offset, pos))
        if records:
            log.info("relay: %d events were on Kafka but not marked; marking them", len(records))
            await self._mark(records, None)
        self._offset, self._position = next_offset, next_position

    # -- a round: pending commits -> one Kafka transaction -> MongoDB -------------------------

    async def _round(self) -> int:
        loop = asyncio.get_running_loop()
        now = loop.time()
        pointers = [d async for d in self._coll.pending.find({})]
        by_stream: dict[str, list[Doc]] = {}
        for pointer in pointers:
            by_stream.setdefault(pointer["stream"], []).append(pointer)
        claims: list[Doc] = []
        upto: dict[str, int] = {}
        heads: dict[str, int] = {}
        events = 0
        for stream_id, mine in by_stream.items():
            if events >= self._max_events:
                break
            if all(self._snoozed.get(p["_id"], 0.0) > now for p in mine):
                continue
            done, unpublished, head = await self._unpublished(stream_id)
            upto[stream_id] = done
            heads[stream_id] = head
            for claim in unpublished:
                if events >= self._max_events:
                    break
                claims.append(claim)
                events += len(claim["events"])
                upto[stream_id] = claim["end"]
        if claims:
            records = await self._publish(claims)
            await self._mark(records, claims)
        resolved = {p["_id"] for p in pointers if p["after"] < upto.get(p["stream"], -1)}
        if resolved:
            await self._coll.pending.delete_many({"_id": {"$in": sorted(resolved)}})
        for pointer in pointers:
            key, stream_id = pointer["_id"], pointer["stream"]
            if stream_id not in heads:
                continue  # not looked at this round
            if pointer["after"] >= heads[stream_id] and key not in resolved:
                # no commit in that slot yet: its appender is slow or died; look again later
                if self._snoozed.get(key, 0.0) <= now:
                    self._snoozed[key] = now + 2.0
            else:
                self._snoozed.pop(key, None)
        return events

    async def _unpublished(self, stream_id: str) -> tuple[int, list[Doc], int]:
        """How far the stream is published, its unpublished commits in order, and its head."""
        hint = await self._coll.published.find_one({"_id": stream_id})
        version = done = 0 if hint is None else int(hint["version"])
        found: list[Doc] = []
        while (doc := await self._store.commit_after(stream_id, version)) is not None:
            if doc.get("published"):
                done = doc["end"]
            else:
                found.append(doc)
            version = doc["end"]
        return done, found, version

    async def _publish(self, claims: list[Doc]) -> list[_Published]:
        sent: list[tuple[str, int, int, Any]] = []
        try:
            return await self._send(claims, sent)
        except BaseException:
            # the records' delivery futures fail with the transaction (a fenced producer's
            # sender fails them all): their error is this one, already raised to the caller
            for *_, future in sent:
                future.add_done_callback(take_error)
            raise

    async def _send(
        self, claims: list[Doc], sent: list[tuple[str, int, int, Any]]
    ) -> list[_Published]:
        producer = self._producer
        assert producer is not None
        topic = self._store.topic
        position = self._position
        await producer.begin_transaction()
        for claim in claims:
            stream_id = claim["stream"]
            for event in claim["events"]:
                data = bytes(event["data"])
                env = pb.EventEnvelope.FromString(data)
                headers = [(POSITION_HEADER, str(position).encode())]
                if env.trace.traceparent:
                    headers.append(("traceparent", env.trace.traceparent.encode()))
                if env.trace.tracestate:
                    headers.append(("tracestate", env.trace.tracestate.encode()))
                parent = context_from(_trace(env)) if env.trace.traceparent else None
                with tracer.start_as_current_span(
                    "psvis.outbox.publish",
                    context=parent,
                    attributes={"psvis.stream_id": stream_id, "psvis.position": position},
                ):
                    future = await producer.send(
                        topic, value=data, key=stream_id.encode(), partition=0, headers=headers
                    )
                sent.append((stream_id, int(event["version"]), position, future))
                position += 1
        await producer.flush()  # on the broker, in the open transaction
        await self._fault("sent")
        await producer.commit_transaction()
        records = []
        for stream_id, version, pos, future in sent:
            metadata = await future
            records.append(_Published(stream_id, version, metadata.offset, pos))
        await self._fault("committed")
        return records

    async def _mark(self, records: list[_Published], claims: list[Doc] | None) -> None:
        """Record in MongoDB that `records` (in log order) are on Kafka; idempotent."""
        coll = self._coll
        positions = {(r.stream_id, r.version): r.position for r in records}
        if claims is None:  # reconciling: find the commits that hold these records
            claims = []
            for stream_id in dict.fromkeys(r.stream_id for r in records):
                _, unpublished, _ = await self._unpublished(stream_id)
                claims += [
                    c
                    for c in unpublished
                    if all((stream_id, v) in positions for v in range(c["start"] + 1, c["end"] + 1))
                ]
        writes: list[Awaitable[Any]] = []
        upto: dict[str, int] = {}
        for claim in claims:
            stream_id = claim["stream"]
            versions = range(claim["start"] + 1, claim["end"] + 1)
            mark = {"published": True, "positions": [positions[(stream_id, v)] for v in versions]}
            writes.append(coll.commits.update_one({"_id": claim["_id"]}, {"$set": mark}))
            upto[stream_id] = max(upto.get(stream_id, 0), claim["end"])
        await _each(writes)
        await _each(
            [upsert(coll.published, s, {"$max": {"version": v}}) for s, v in upto.items()]
            + [
                upsert(coll.log_index, _anchor_id(r.position), {"$set": {"offset": r.offset}})
                for r in records
                if r.position % STRIDE == 0
            ]
        )
        await self._fault("marked")
        last = records[-1]
        with contextlib.suppress(DuplicateKeyError):
            await coll.relay.update_one(
                {"_id": "state", "position": {"$lte": last.position + 1}},
                {"$set": {"offset": last.offset + 1, "position": last.position + 1}},
                upsert=True,
            )
        self._offset, self._position = last.offset + 1, last.position + 1
        self._store.notify_published()


def _trace(env: pb.EventEnvelope) -> dict[str, str]:
    carrier = {"traceparent": env.trace.traceparent}
    if env.trace.tracestate:
        carrier["tracestate"] = env.trace.tracestate
    return carrier


async def upsert(coll: AsyncCollection[Doc], key: str, update: Doc) -> None:
    """An upsert; FerretDB answers E11000 when two race to create the document: then update it."""
    try:
        await coll.update_one({"_id": key}, update, upsert=True)
    except DuplicateKeyError:
        await coll.update_one({"_id": key}, update)


async def _each(work: Sequence[Awaitable[Any]], parallel: int = 8) -> None:
    """Run single-document writes a few at a time (see BULK_CHUNK)."""
    gate = asyncio.Semaphore(parallel)

    async def one(item: Awaitable[Any]) -> None:
        started = False
        try:
            async with gate:
                started = True
                await item
        finally:
            if not started and inspect.iscoroutine(item):
                item.close()  # cancelled while waiting for the gate: it never ran

    await asyncio.gather(*(one(w) for w in work))
