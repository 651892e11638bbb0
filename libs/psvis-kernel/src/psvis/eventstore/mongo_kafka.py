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
The outbox relay (psvis.eventstore.outbox_relay) publishes the commits to partition 0 of
`<namespace>.events`: key = stream id, value = the stored bytes (never re-serialised). A record's
*position* is the number of committed data records before it in the partition (read_committed),
a pure function of the log; the relay stamps it in the record's `psvis-position` header, which
read_page checks against the count, and writes the offset of every STRIDE-th position into
`log_index`, so read_page(after) seeks to the nearest anchor and counts forward.
log_id = "<topic>/0"; log_size() = number of committed records.

Only `_id` look-ups and small collections (pending) are queried, because FerretDB 1.24 serves
every other filter by scanning the whole collection. It also deadlocks on large update commands
(see BULK_CHUNK in psvis.eventstore.mongo_docs), hence the small client pool in
psvis.distributed. Reading a stream costs one look-up per append it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from psvis.clock import Clock, IdSource
from psvis.envelope import NewEvent, RecordedEvent, Sealer
from psvis.errors import ConcurrencyConflict, Unavailable
from psvis.eventstore.mongo_docs import POSITION_HEADER, STRIDE, Collections, Doc, anchor_id, slot
from psvis.eventstore.outbox_relay import OutboxRelay
from psvis.eventstore.port import StreamHead

TOPIC_EXISTS = 36


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
        self._sealer = Sealer()  # appends seal on the loop's thread, one after another

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
        out = self._sealer.seal(
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
        doc = await self.coll.log_index.find_one({"_id": anchor_id(block)})
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
