"""The log half of the distributed event store: one Kafka partition, read by position.

MongoKafkaEventStore (psvis.eventstore.mongo_kafka) keeps streams and the outbox in MongoDB; this
module creates the log's topic and reads the log (read_page, read_log, the notary and
`audit verify`), and the outbox relay (psvis.eventstore.outbox_relay) shares its consumer.

The relay publishes the commits to partition 0 of `<namespace>.events`: key = stream id, value =
the stored bytes (never re-serialised). A record's *position* is the number of committed data
records before it in the partition (read_committed), a pure function of the log; the relay stamps
it in the record's `psvis-position` header, which read_page checks against the count, and writes
the offset of every STRIDE-th position into `log_index`, so read_page(after) seeks to the nearest
anchor and counts forward.
log_id = "<topic>/0"; log_size() = number of committed records.
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

from psvis.envelope import RecordedEvent
from psvis.errors import Unavailable
from psvis.eventstore.mongo_docs import POSITION_HEADER, STRIDE, Collections, anchor_id

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


class KafkaLog:
    """The store's reads of the log, by position; see the module docstring.

    MongoKafkaEventStore sets these attributes in its __init__; the outbox relay reconciles
    through consumer(), end_offset(), relay_state() and scan(), holding `reader_lock`.
    """

    bootstrap: str
    log_id: str
    tp: TopicPartition
    coll: Collections
    reader_lock: asyncio.Lock
    _reader: AIOKafkaConsumer | None
    _reader_started: asyncio.Lock
    _cursors: OrderedDict[int, int]
    _seen_end: int
    _progress: asyncio.Event

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


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for key, value in headers or ():
        if key == name:
            return value
    return None


def _recorded(record: Any, position: int) -> RecordedEvent:
    return RecordedEvent.stored(position, bytes(record.value))
