"""AUD-2, AUD-3: verify the stored log, and replay it into fresh read models up to a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from psvis.checkpoints import CheckpointStore
from psvis.envelope import RecordedEvent
from psvis.eventstore.port import EventStore
from psvis.projection import ProjectionRunner, StreamProjection
from psvis.readstore.port import ReadStore, canonical_digest
from psvis.readstore.sqlite import SqliteReadStore
from psvis.signing import key_id
from psvis.sqlite_db import SqliteDatabase
from psvis.verify import LogVerifier, VerifyReport, _Stop

PAGE = 5000


async def verify_store(
    events: EventStore,
    checkpoints: CheckpointStore,
    keys: Sequence[Ed25519PublicKey],
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    """Check every stored event and every signed checkpoint of the log (AUD-2)."""
    verifier = LogVerifier(
        events.log_id, await checkpoints.all(events.log_id), {key_id(k): k for k in keys}
    )
    read = getattr(events, "read_page_bytes", None) or _page_bytes(events)
    try:
        verifier.check_checkpoints()
        check = verifier.check_event
        page = await read(-1, PAGE)
        while page:
            # the next page is read (on the database thread) while this one is checked
            upcoming = asyncio.ensure_future(read(page[-1][0], PAGE))
            try:
                for position, data in page:
                    check(position, data)
            except BaseException:
                upcoming.cancel()
                raise
            if progress is not None:
                progress(len(page))
            page = await upcoming
        verifier.finish()
    except _Stop:
        pass
    return verifier.report


def _page_bytes(
    events: EventStore,
) -> Callable[[int, int], Awaitable[list[tuple[int, bytes]]]]:
    """(position, stored bytes) pages from a store that only offers read_page."""

    async def read(after: int, limit: int) -> list[tuple[int, bytes]]:
        return [(e.position, e.data) for e in await events.read_page(after, limit)]

    return read


class LogUntil:
    """The log as it stood at a moment: events recorded at or before `until` (AUD-3)."""

    def __init__(self, source: EventStore, until: datetime | None) -> None:
        self._source = source
        self._until = until
        self.log_id = source.log_id
        self.progress: Callable[[int], None] | None = None

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        page = await self._source.read_page(after, limit)
        if self.progress is not None and page:
            self.progress(len(page))
        if self._until is None:
            return page
        kept = [
            e
            for e in page
            if e.envelope.recorded_at.ToDatetime(tzinfo=self._until.tzinfo) <= self._until
        ]
        if page and not kept:  # keep paging past a stretch of later events
            return [_skip(page[-1])]
        return kept

    async def wait_for_append(self, timeout: float) -> None:
        return None


def _skip(event: RecordedEvent) -> RecordedEvent:
    """A marker that moves the runner's position on without touching any read model."""
    return RecordedEvent(event.position, "\x00skip", 0, "", b"")


@dataclass
class Replay:
    reads: ReadStore
    digest: str
    position: int
    db: SqliteDatabase


async def replay(
    source: EventStore,
    projections: Sequence[StreamProjection],
    collections: Sequence[str],
    *,
    until: datetime | None = None,
    into: Path | str = ":memory:",
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """Fold the log into empty read models; equal logs give equal digests (invariant 4)."""
    db = SqliteDatabase(into)
    reads = SqliteReadStore(db)
    await reads.drop_all()
    log = LogUntil(source, until)
    log.progress = progress
    runner = ProjectionRunner("replay", log, reads, projections, batch=PAGE)  # type: ignore[arg-type]
    position = await runner.catch_up()
    return Replay(reads, await canonical_digest(reads, collections), position, db)
