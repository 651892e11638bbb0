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

A session then publishes in rounds (psvis.eventstore.outbox_rounds), which also says how log
positions and the relay's other MongoDB documents work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from pymongo import ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from psvis.common.v1 import envelope_pb2 as pb
from psvis.errors import Unavailable
from psvis.eventstore.mongo_docs import Doc
from psvis.eventstore.outbox_rounds import Fault, Published, RelayRounds

if TYPE_CHECKING:
    from psvis.eventstore.mongo_kafka import MongoKafkaEventStore

log = logging.getLogger(__name__)


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


class OutboxRelay(RelayRounds):
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
            records.append(Published(env.stream_id, env.stream_version, record.offset, pos))
        if records:
            log.info("relay: %d events were on Kafka but not marked; marking them", len(records))
            await self._mark(records, None)
        self._offset, self._position = next_offset, next_position
