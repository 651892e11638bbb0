"""The live read models follow the log through a FastStream subscriber (distributed backend).

The outbox relay writes each event to partition 0 of `<namespace>.events`, with its log position
in the `psvis-position` header (psvis.eventstore.outbox_relay). `subscribe_read_models` registers
a typed batch subscriber that turns those records into RecordedEvents and hands them to a
`DeliveredLog`: the log that the platform's ProjectionRunner follows.

- Ordered: one partition, read in offset order (read_committed: never an aborted record); the
  runner is served a page only when it continues the runner's position exactly.
- Idempotent: a record delivered twice, or one the runner has already applied, is passed over
  by position, and the runner itself applies each stream version once (invariant 2).
- Nothing lost: what the subscriber has not delivered (the log before it started, which it does
  at the end of the partition; a gap; a page that failed to apply) is read from the event store
  with read_page, as without a subscriber.
- Traced: the runner opens each projection span as a child of the event's W3C trace context,
  which the relay copies from the envelope into the Kafka headers.

So the runner no longer polls Kafka for new events: it waits for a delivery, and asks the event
store only at start, after a gap, or after `recheck` quiet seconds (a safety net).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import TopicPartition
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.message import StreamMessage
from google.protobuf.message import DecodeError

from psvis.asyncapi import EventEnvelopeBytes, events_topic
from psvis.envelope import NewEvent, RecordedEvent
from psvis.eventstore.mongo_docs import POSITION_HEADER
from psvis.eventstore.port import EventStore, StreamHead

log = logging.getLogger(__name__)


class DeliveredLog:
    """An EventStore for one ProjectionRunner whose pages come from the subscriber's deliveries.

    Writes and stream reads go to `store`; so do pages the subscriber has not delivered.
    `live` is set once the subscriber is positioned: before that, and whenever deliveries
    were dropped (more than `capacity` waiting), an empty buffer means "ask the store".
    """

    def __init__(self, store: EventStore, *, capacity: int = 20_000, recheck: float = 5.0) -> None:
        self.store = store
        self.log_id = store.log_id
        self.live = False
        self.counts: Counter[str] = Counter()  # delivered, passed_over, dropped, served, read
        self._capacity = capacity
        self._recheck = recheck
        self._delivered: dict[int, RecordedEvent] = {}  # position -> event, not yet served
        self._after = -1  # the runner has been served everything up to here
        self._served_after = -2  # `after` of the last page served from deliveries
        self._stale = True  # the store may hold events that were not delivered
        self._asked_at = float("-inf")
        self._arrived = asyncio.Event()

    def deliver(self, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.position <= self._after or event.position in self._delivered:
                self.counts["passed_over"] += 1  # delivered before: effect exactly once
            elif len(self._delivered) >= self._capacity:
                self.counts["dropped"] += 1  # the runner is behind; it reads these from the store
                self._stale = True
            else:
                self._delivered[event.position] = event
                self.counts["delivered"] += 1
        self._arrived.set()

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        if after <= self._served_after:
            self._forget("a page served from deliveries is asked for again")
        for position in [p for p in self._delivered if p <= after]:
            del self._delivered[position]
        self._after = max(self._after, after)
        if after + 1 in self._delivered:
            page: list[RecordedEvent] = []
            while (
                len(page) < limit
                and (event := self._delivered.get(after + 1 + len(page))) is not None
            ):
                page.append(event)
            self._served_after = after
            self.counts["served"] += len(page)
            return page
        loop = asyncio.get_running_loop()
        if self._delivered or self._stale or not self.live or self._quiet_for(loop.time()):
            return await self._read_store(after, limit, loop.time())
        return []

    def _quiet_for(self, now: float) -> bool:
        return now - self._asked_at >= self._recheck

    async def _read_store(self, after: int, limit: int, now: float) -> list[RecordedEvent]:
        self._asked_at = now
        page = await self.store.read_page(after, limit)
        self.counts["read"] += len(page)
        if len(page) < limit:
            self._stale = False  # the store had nothing more when asked
            if self._delivered and not page:
                self._forget("delivered events the log does not reach")
        return page

    def _forget(self, why: str) -> None:
        if self._delivered:
            log.warning("%s: %s; reading the event store instead", self.log_id, why)
        self._delivered.clear()
        self._stale = True

    async def wait_for_append(self, timeout: float) -> None:
        if self._delivered or self._stale:
            return
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)

    # -- the rest of the EventStore port is the store's ---------------------------------------

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        return await self.store.append(stream_id, expected_version, events)

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        return await self.store.read_stream(stream_id)

    async def head(self, stream_id: str) -> StreamHead:
        return await self.store.head(stream_id)

    async def log_size(self) -> int:
        return await self.store.log_size()

    async def close(self) -> None:
        """Nothing: the store belongs to whoever opened it."""


def recorded_events(
    bodies: Sequence[bytes], headers: Sequence[Mapping[str, str]]
) -> list[RecordedEvent]:
    """Log records (envelope bytes, headers) as events at the position the relay stamped."""
    out = []
    for data, found in zip(bodies, headers, strict=True):
        stamped = found.get(POSITION_HEADER)
        if stamped is None:
            log.warning("a record without %s on the log topic; passed over", POSITION_HEADER)
            continue
        try:
            out.append(RecordedEvent.stored(int(stamped), data))
        except DecodeError:
            log.warning("position %s of the log topic is no EventEnvelope; passed over", stamped)
    return out


async def _as_stored(message: StreamMessage[Any]) -> Any:
    """The record values as they are: envelope bytes are never parsed as JSON or text."""
    return message.body


def subscribe_read_models(broker: KafkaBroker, topic: str, delivered: DeliveredLog) -> Any:
    """The batch subscriber that feeds `delivered`; it starts at the end of the partition."""
    subscriber = broker.subscriber(
        partitions=[TopicPartition(topic, 0)],
        batch=True,
        max_records=2000,
        batch_timeout_ms=100,
        auto_offset_reset="latest",
        isolation_level="read_committed",
        decoder=_as_stored,
        title=f"{topic}:read-models",
        include_in_schema=False,  # the contract is what the platform sends (psvis.asyncapi)
    )

    @subscriber
    async def project_events(envelopes: list[EventEnvelopeBytes], message: KafkaMessage) -> None:
        delivered.deliver(recorded_events(envelopes, message.batch_headers))

    return subscriber


class EventsFeed:
    """A KafkaBroker whose subscriber feeds `delivered`; start() returns once it is positioned."""

    def __init__(self, bootstrap: str, namespace: str, delivered: DeliveredLog) -> None:
        self.delivered = delivered
        self.partition = TopicPartition(events_topic(namespace), 0)
        self.broker = KafkaBroker(
            bootstrap, client_id=f"{namespace}.read-models", logger=log, log_level=logging.DEBUG
        )
        self.subscriber = subscribe_read_models(self.broker, self.partition.topic, delivered)

    async def start(self) -> None:
        await self.broker.start()
        # resolve "latest" now: every record after this offset will be delivered, so a catch-up
        # from the store that ends later leaves no gap
        await self.subscriber.consumer.position(self.partition)
        self.delivered.live = True

    async def stop(self) -> None:
        self.delivered.live = False
        await self.broker.stop()
