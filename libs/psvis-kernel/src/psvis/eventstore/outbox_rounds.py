"""A round of the outbox relay: pending commits -> one Kafka transaction -> MongoDB.

The relay (psvis.eventstore.outbox_relay) holds the lease and opens a session (a fencing producer,
the log reconciled); this module holds what it does in a session, round after round: find the
commits that `pending` points at, publish them in one Kafka transaction, mark them in MongoDB.

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
`relay` {_id: "state"} (see psvis.eventstore.outbox_relay). The relay queries only `_id` look-ups
and the small `pending` collection (FerretDB 1.24 scans the whole collection for any other
filter), and updates one document per command, a few at once (see BULK_CHUNK in
psvis.eventstore.mongo_docs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer
from pymongo.errors import DuplicateKeyError

from psvis.common.v1 import envelope_pb2 as pb
from psvis.eventstore.mongo_docs import (
    POSITION_HEADER,
    STRIDE,
    Collections,
    Doc,
    anchor_id,
    few_at_a_time,
    upsert,
)
from psvis.telemetry import context_from, tracer
from psvis.workers import take_error

if TYPE_CHECKING:
    from psvis.eventstore.mongo_kafka import MongoKafkaEventStore


@dataclass(frozen=True)
class Published:
    """One record of the log as the relay knows it."""

    stream_id: str
    version: int
    offset: int
    position: int


Fault = Callable[[str], Awaitable[None]]


class RelayRounds:
    """The rounds of an OutboxRelay, which sets these attributes in its __init__ and session."""

    _store: MongoKafkaEventStore
    _coll: Collections
    _producer: AIOKafkaProducer | None
    _offset: int
    _position: int
    _snoozed: dict[str, float]
    _max_events: int
    fault: Fault | None

    async def _fault(self, point: str) -> None:
        if self.fault is not None:
            await self.fault(point)

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

    async def _publish(self, claims: list[Doc]) -> list[Published]:
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
    ) -> list[Published]:
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
            records.append(Published(stream_id, version, metadata.offset, pos))
        await self._fault("committed")
        return records

    async def _mark(self, records: list[Published], claims: list[Doc] | None) -> None:
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
