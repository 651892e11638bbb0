"""AUD-2, AUD-3: verify the stored log, and replay it into fresh read models up to a time."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from psvis.checkpoints import CheckpointStore
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
        page = await read(-1, PAGE)
        while page:
            # the next page is read (on the database thread) while this one is checked
            upcoming = asyncio.ensure_future(read(page[-1][0], PAGE))
            try:
                verifier.check_page(page)
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
    """Fold the log into empty read models; equal logs give equal digests (invariant 4).

    A batch job: while it runs, the process's cyclic garbage collector is paused (see below).
    """
    db = SqliteDatabase(into)
    # the read models are rebuilt from the log at will: a power cut costs a rerun, so commits
    # need not wait for the disk (with a file, synchronous=NORMAL fsyncs at every checkpoint)
    db.run_sync(lambda c: c.execute("PRAGMA synchronous=OFF"))
    reads = SqliteReadStore(db)
    await reads.drop_all()
    with _cycle_collection_paused():
        position = await _fold_log(source, reads, projections, until, progress)
    return Replay(reads, await canonical_digest(reads, collections), position, db)


async def _fold_log(
    source: EventStore,
    reads: ReadStore,
    projections: Sequence[StreamProjection],
    until: datetime | None,
    progress: Callable[[int], None] | None,
) -> int:
    """The runner, and the documents it keeps, are gone when this returns."""
    runner = ProjectionRunner(
        "replay", source, reads, projections, batch=PAGE, until=until, flush_each_page=False
    )
    return await runner.catch_up(progress)


@contextlib.contextmanager
def _cycle_collection_paused() -> Iterator[None]:
    """Replay keeps thousands of documents (trees of dicts and lists, no cycles) in memory.

    CPython's cyclic collector walks every one of them at each full collection, which comes
    round every few thousand documents promoted: a fifth of a replay's time. Reference counting
    still frees them; cycles made meanwhile are collected when the collector is back.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
