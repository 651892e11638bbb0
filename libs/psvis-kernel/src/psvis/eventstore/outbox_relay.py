"""The outbox relay: publishes the event store's commits to Kafka exactly once.

The store (psvis.eventstore.mongo_kafka) inserts each append as a commit in MongoDB, after a
`pending` pointer to it. The relay publishes commits, in stream-version order and each commit in
one piece, to partition 0 of `<namespace>.events` with a TRANSACTIONAL producer (idempotent,
acks=all, transactional.id = `<namespace>.relay`): key = stream id, value = the stored bytes
(never re-serialised), headers = the envelope's W3C `traceparent`/`tracestate` and
`psvis-position`.

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

Other MongoDB documents: `published` {_id: stream, version} is the relay's hint of how far each
stream is on Kafka (the walk from it skips commits already marked, so a stale hint is harmless);
`relay` {_id: "state"} as above. The relay queries only `_id` look-ups and the small `pending`
collection (FerretDB 1.24 scans the whole collection for any other filter), and updates one
document per command, a few at once (see BULK_CHUNK in psvis.eventstore.mongo_docs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from psvis.common.v1 import envelope_pb2 as pb
from psvis.errors import Unavailable
from psvis.eventstore.mongo_docs import (
    POSITION_HEADER,
    STRIDE,
    Doc,
    anchor_id,
    few_at_a_time,
    upsert,
)
from psvis.telemetry import context_from, tracer
from psvis.workers import take_error

if TYPE_CHECKING:
    from psvis.eventstore.mongo_kafka import MongoKafkaEventStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Published:
    """One record of the log as the relay knows it."""

    stream_id: str
    version: int
    offset: int
    position: int


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
        await few_at_a_time(writes)
        await few_at_a_time(
            [upsert(coll.published, s, {"$max": {"version": v}}) for s, v in upto.items()]
            + [
                upsert(coll.log_index, anchor_id(r.position), {"$set": {"offset": r.offset}})
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
