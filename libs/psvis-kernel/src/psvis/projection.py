"""Read models folded from the log: one document per stream, idempotent and deterministic."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from google.protobuf.message import Message

from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import RecordedEvent, timestamp
from psvis.payloads import decode_payload
from psvis.projection_cache import DocumentCache, Entry
from psvis.readstore.port import Document, ReadStore
from psvis.telemetry import consumer_span

log = logging.getLogger(__name__)

Fold = Callable[[Document | None, Message, pb.EventEnvelope], Document]


class PagedLog(Protocol):
    """What a runner reads: the log's pages (an EventStore, or a share of one)."""

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]: ...

    async def wait_for_append(self, timeout: float) -> None: ...


@dataclass(frozen=True)
class StreamProjection:
    """Streams whose id starts with `prefix` fold into `collection`, keyed by the rest of the id.

    `fold` takes time only from the event (invariant 4: replay gives the same documents). It may
    change the document it is given in place and return it: the runner gives it only documents
    it owns (read from the store for it, or returned by the fold before), and keeps them between
    batches, so a fold must return a document no one else holds.

    `version` names the fold: change it whenever the fold would make other documents of the
    same events. Read models written by other folds (another version, or another set of
    projections) are dropped at start and rebuilt from the log (read_models_fit).
    """

    prefix: str
    collection: str
    fold: Fold
    version: int = 1

    @property
    def signature(self) -> str:
        return f"{self.prefix}* -> {self.collection} v{self.version}"

    def key(self, stream_id: str) -> str | None:
        return stream_id[len(self.prefix) :] if stream_id.startswith(self.prefix) else None


FOLDS = "psvis.folds"  # per runner name: the signatures of the folds its read models are of


async def read_models_fit(
    reads: ReadStore, name: str, projections: Sequence[StreamProjection]
) -> bool:
    """Whether runner `name`'s read models were written by these folds. If not, they are
    dropped (their position with them), to be rebuilt from the log; either way the folds are
    recorded. Only the collections of the runner's folds, the ones recorded and these, are
    dropped: other runners' read models in the store (other services') stay. Read models
    written before folds were recorded are taken to be of other folds, unless they hold nothing
    yet; whose they are is unknown, so all are dropped.
    """
    wanted = {"folds": sorted(p.signature for p in projections)}
    found = await reads.get(FOLDS, name)
    if found is not None and found[0] == wanted:
        return True
    fits = found is None and await reads.get_position(name) < 0
    if not fits:
        was = "unrecorded folds" if found is None else ", ".join(found[0].get("folds", []))
        log.warning(
            "the read models of %s were written by %s, not by %s: rebuilding them from the log",
            name,
            was,
            ", ".join(wanted["folds"]),
        )
    if found is None:
        if not fits:
            await reads.drop_all()
        await reads.put(FOLDS, name, wanted, 1, 0)
    else:
        recorded = {_collection_of(f) for f in found[0].get("folds", [])}
        await reads.drop(sorted(recorded | {p.collection for p in projections}), name)
        await reads.put(FOLDS, name, wanted, found[1] + 1, found[1])
    return fits


def _collection_of(signature: str) -> str:
    """The collection a recorded fold signature (StreamProjection.signature) writes."""
    return signature.partition(" -> ")[2].rpartition(" v")[0]


class ProjectionRunner:
    """Applies the log to read models in batches; a duplicate delivery is applied once.

    The last `keep` documents folded stay in memory, so a stream seen again soon is not read
    back: a document is written when it leaves them, or when the runner commits, which writes
    every changed document and then moves the stored position. A live runner commits after each
    page, so readers see progress while writers keep the log growing; a replay
    (`flush_each_page=False`) commits once, when the log is applied, and so encodes and writes a
    busy stream's document once, not once per page. A crash in between loses nothing: the log is
    applied again from the stored position and what was written is passed over.
    `until` applies only events recorded at or before it (AUD-3: the read models as they were);
    later ones are passed over, and the position still moves past them.
    Documents that leave memory are written while folding goes on; the runner waits for that
    write before it reads a document back, writes again or moves its position. A runner told
    its store starts `empty` (a replay) reads back only documents it has written.
    A live runner tells `on_commit` the newest event of each page it commits (its delay).
    """

    def __init__(
        self,
        name: str,
        log_source: PagedLog,
        store: ReadStore,
        projections: Sequence[StreamProjection],
        *,
        batch: int = 2000,
        traced: bool = False,
        keep: int | None = None,
        until: datetime | None = None,
        flush_each_page: bool = True,
        empty: bool = False,
        on_commit: Callable[[RecordedEvent], None] | None = None,
    ) -> None:
        self.name = name
        self._log = log_source
        self._store = store
        self._projections = projections
        self._batch = batch
        self._traced = traced  # live consumers continue the command's trace; replays do not
        self._keep = batch if keep is None else keep
        self._flush_each_page = flush_each_page
        self._caches = [DocumentCache() for _ in projections]
        # keys of the documents written so far, per projection, when the store started empty
        self._written: list[set[str]] | None = [set() for _ in projections] if empty else None
        self._writing: asyncio.Task[None] | None = None  # documents that left the cache
        self._until = None if until is None else _moment(until)
        self._cut: list[set[str]] = [set() for _ in projections]  # streams cut off at `until`
        self._lock = asyncio.Lock()
        self.position = -2  # unknown until loaded
        self._advanced = asyncio.Condition()
        self._on_commit = on_commit  # told each committed page's newest event (metrics)

    async def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Apply everything the log holds now; returns the last applied position.

        `progress` is told the size of each page once it is folded.
        """
        async with self._lock:
            try:
                return await self._catch_up(progress)
            except BaseException:
                self._abandon_writing()
                raise

    async def _catch_up(self, progress: Callable[[int], None] | None) -> int:
        if self.position == -2:
            self.position = await self._store.get_position(self.name)
        folded = self.position
        events = await self._log.read_page(folded, self._batch)
        while events:
            # the next page is read (on the database thread) while this one is folded
            upcoming = asyncio.ensure_future(self._log.read_page(events[-1].position, self._batch))
            try:
                await self._fold_batch(events)
                folded = events[-1].position
                if self._flush_each_page:
                    await self._commit(folded)
                    if self._on_commit is not None:
                        self._on_commit(events[-1])
            except BaseException:
                upcoming.cancel()
                raise
            if progress is not None:
                progress(len(events))
            events = await upcoming
        await self._commit(folded)
        return self.position

    async def _commit(self, folded: int) -> None:
        """Write the changed documents, then move the stored position to `folded`."""
        if folded != self.position:
            await self._flush()
            self.position = folded
            await self._store.set_position(self.name, folded)
        async with self._advanced:
            self._advanced.notify_all()

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
        """Apply events in log order and write the documents they changed.

        Each stream's events must follow its stored version; events already applied are passed
        over (at-least-once delivery is applied once).
        """
        async with self._lock:  # not while catch_up folds the same documents
            try:
                await self._fold_batch(events)
                await self._flush()
            except BaseException:
                self._abandon_writing()
                raise

    async def _fold_batch(self, events: Sequence[RecordedEvent]) -> None:
        """Fold events into the kept documents; start writing those that leave the cache."""
        routed = self._route(events)
        for i, chosen in enumerate(routed):
            if chosen:
                cache = self._caches[i]
                try:
                    await self._fold(i, chosen)
                except BaseException:
                    cache.clear()  # a fold may have half-changed a kept document
                    raise
                leaving = cache.evict(self._keep)
                if leaving:
                    await self._settle()  # one write at a time, in order
                    self._writing = asyncio.ensure_future(self._write(i, leaving))

    async def _settle(self) -> None:
        """Wait for the documents that left the cache to be written."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            await writing

    def _abandon_writing(self) -> None:
        """After a failure: whatever became of that write, the position has not moved past it."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            if writing.done() and not writing.cancelled():
                writing.exception()  # retrieved, so asyncio does not report it as lost
            else:
                writing.cancel()

    def _route(self, events: Sequence[RecordedEvent]) -> list[list[tuple[str, RecordedEvent]]]:
        """Each projection's (key, event) pairs, in log order; keys are found once per stream."""
        streams = {e.stream_id for e in events}
        routed = []
        for projection in self._projections:
            keys = {s: k for s in streams if (k := projection.key(s)) is not None}
            routed.append([(keys[e.stream_id], e) for e in events if e.stream_id in keys])
        return routed

    async def _fold(self, i: int, events: list[tuple[str, RecordedEvent]]) -> None:
        projection, cache = self._projections[i], self._caches[i]
        missing = cache.touch({k for k, _ in events})
        if missing and self._written is not None:  # the store has only what was written here
            written = self._written[i]
            cache.load({}, [k for k in missing if k not in written])
            missing = [k for k in missing if k in written]
        if missing:
            await self._settle()  # a document on its way to the store is read back from it
            cache.load(await self._store.get_many(projection.collection, missing), missing)
        fold, until, traced = projection.fold, self._until, self._traced
        entries, cut = cache.entries, self._cut[i]
        for key, event in events:
            entry = entries[key]
            if event.version <= entry.version:
                continue  # delivered before: effect exactly once
            env = event.envelope  # decoded once, by the store that read the event
            if until is not None and (key in cut or _recorded_after(env, until)):
                # AUD-3: not yet in the log at `until`; nor then is any later event of its
                # stream, even one recorded earlier by a clock set back in between
                cut.add(key)
                continue
            if event.version != entry.version + 1:
                raise RuntimeError(
                    f"{event.stream_id}: version {event.version} after {entry.version}"
                )
            if traced and env.trace.traceparent:
                with consumer_span(f"project {env.type}", env.trace, event):
                    entry.doc = fold(entry.doc, decode_payload(env), env)
            else:
                entry.doc = fold(entry.doc, decode_payload(env), env)
            entry.version = event.version

    async def _flush(self) -> None:
        """Write every kept document that changed since it was last written."""
        await self._settle()
        for i, cache in enumerate(self._caches):
            await self._write(i, cache.dirty())

    def _write(self, i: int, entries: list[tuple[str, Entry]]) -> Awaitable[None]:
        """Write documents; they count as in the store (for `empty`) from this call on."""
        if self._written is not None:
            self._written[i].update(key for key, _ in entries)
        return self._put(i, entries)

    async def _put(self, i: int, entries: list[tuple[str, Entry]]) -> None:
        if not entries:
            return
        projection, cache = self._projections[i], self._caches[i]
        writes = [entry.write(key) for key, entry in entries]
        applied = await self._store.put_many(projection.collection, writes)
        for _, entry in entries:
            entry.stored = entry.version
        if applied != len(writes):
            log.warning(
                "%s: %d of %d writes raced another consumer",
                self.name,
                len(writes) - applied,
                len(writes),
            )
            for key, _ in entries:  # which ones lost is unknown: read them back next time
                cache.entries.pop(key, None)


def _moment(until: datetime) -> tuple[int, int]:
    """(seconds, microseconds) since the epoch; a naive datetime is UTC, as in Timestamp."""
    stamp = timestamp(until)
    return stamp.seconds, stamp.nanos // 1000


def _recorded_after(env: pb.EventEnvelope, until: tuple[int, int]) -> bool:
    at = env.recorded_at
    return (at.seconds, at.nanos // 1000) > until
