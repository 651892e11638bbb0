"""Read models folded from the log: one document per stream, idempotent and deterministic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import RecordedEvent
from psvis.eventstore.port import EventStore
from psvis.payloads import decode_payload
from psvis.readstore.port import Document, ReadStore, Write
from psvis.telemetry import consumer_span

log = logging.getLogger(__name__)

Fold = Callable[[Document | None, Message, pb.EventEnvelope], Document]


@dataclass(frozen=True)
class StreamProjection:
    """Streams whose id starts with `prefix` fold into `collection`, keyed by the rest of the id.

    `fold` takes time only from the event (invariant 4: replay gives the same documents).
    """

    prefix: str
    collection: str
    fold: Fold

    def key(self, stream_id: str) -> str | None:
        return stream_id[len(self.prefix) :] if stream_id.startswith(self.prefix) else None


class ProjectionRunner:
    """Applies the log to read models in batches; a duplicate delivery is applied once."""

    def __init__(
        self,
        name: str,
        log_source: EventStore,
        store: ReadStore,
        projections: Sequence[StreamProjection],
        *,
        batch: int = 2000,
        traced: bool = False,
    ) -> None:
        self.name = name
        self._log = log_source
        self._store = store
        self._projections = projections
        self._batch = batch
        self._traced = traced  # live consumers continue the command's trace; replays do not
        self._lock = asyncio.Lock()
        self.position = -2  # unknown until loaded
        self._advanced = asyncio.Condition()

    async def catch_up(self) -> int:
        """Apply everything the log holds now; returns the last applied position."""
        async with self._lock:
            if self.position == -2:
                self.position = await self._store.get_position(self.name)
            events = await self._log.read_page(self.position, self._batch)
            while events:
                # the next page is read (on the database thread) while this one is folded
                upcoming = asyncio.ensure_future(
                    self._log.read_page(events[-1].position, self._batch)
                )
                try:
                    await self.apply_batch(events)
                    self.position = events[-1].position
                    await self._store.set_position(self.name, self.position)
                except BaseException:
                    upcoming.cancel()
                    raise
                events = await upcoming
            async with self._advanced:
                self._advanced.notify_all()
            return self.position

    async def run(self) -> None:
        """Follow the log for ever."""
        while True:
            await self.catch_up()
            await self._log.wait_for_append(0.5)

    async def wait_for(self, position: int, timeout: float = 15.0) -> bool:
        """True once events up to `position` are in the read models."""

        async def reached() -> None:
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.position >= position)

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_for_stream(self, stream_id: str, version: int, timeout: float = 15.0) -> bool:
        """True once the read model of `stream_id` reflects `version` (read your writes)."""
        target = next(
            ((p, k) for p in self._projections if (k := p.key(stream_id)) is not None), None
        )
        if target is None:
            return True
        projection, key = target
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await self._store.get(projection.collection, key)
            if found is not None and found[1] >= version:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            async with self._advanced:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._advanced.wait(), min(remaining, 0.2))

    async def apply_batch(self, events: Sequence[RecordedEvent]) -> None:
        for projection in self._projections:
            chosen = [(k, e) for e in events if (k := projection.key(e.stream_id)) is not None]
            if chosen:
                await self._apply(projection, chosen)

    async def _apply(
        self, projection: StreamProjection, events: list[tuple[str, RecordedEvent]]
    ) -> None:
        stored = await self._store.get_many(projection.collection, sorted({k for k, _ in events}))
        current = {k: (doc, version) for k, (doc, version) in stored.items()}
        writes: dict[str, Write] = {}
        for key, event in events:
            doc, version = current.get(key, (None, 0))
            if event.version <= version:
                continue  # delivered before: effect exactly once
            if event.version != version + 1:
                raise RuntimeError(f"{event.stream_id}: version {event.version} after {version}")
            env = event.envelope
            if self._traced and env.trace.traceparent:
                with consumer_span(f"project {env.type}", env.trace, event):
                    doc = projection.fold(doc, decode_payload(env), env)
            else:
                doc = projection.fold(doc, decode_payload(env), env)
            current[key] = (doc, event.version)
            first = writes.get(key)
            expected = first.expected if first else version
            writes[key] = Write(key, doc, event.version, expected)
        applied = await self._store.put_many(projection.collection, list(writes.values()))
        if applied != len(writes):
            log.warning(
                "%s: %d of %d writes raced another consumer",
                self.name,
                len(writes) - applied,
                len(writes),
            )
