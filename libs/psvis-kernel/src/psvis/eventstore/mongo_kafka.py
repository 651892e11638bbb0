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

The log (read_page, read_log, the notary and `audit verify`) is one Kafka partition, read by
psvis.eventstore.kafka_log (the KafkaLog half of this store) and written by the outbox relay
(psvis.eventstore.outbox_relay).

Only `_id` look-ups and small collections (pending) are queried, because FerretDB 1.24 serves
every other filter by scanning the whole collection. It also deadlocks on large update commands
(see BULK_CHUNK in psvis.eventstore.mongo_docs), hence the small client pool in
psvis.distributed. Reading a stream costs one look-up per append it took.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from psvis.clock import Clock, IdSource
from psvis.envelope import NewEvent, RecordedEvent, Sealer
from psvis.errors import ConcurrencyConflict
from psvis.eventstore.kafka_log import KafkaLog, ensure_topic
from psvis.eventstore.mongo_docs import Collections, Doc, slot
from psvis.eventstore.outbox_relay import OutboxRelay
from psvis.eventstore.port import StreamHead


class MongoKafkaEventStore(KafkaLog):
    """EventStore over MongoDB (streams, outbox) and Kafka (the log); see the module docstring.

    This module holds the streams (append, read_stream, head); KafkaLog reads the log.
    """

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

    async def close(self) -> None:
        await self.relay.close()
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.stop()
