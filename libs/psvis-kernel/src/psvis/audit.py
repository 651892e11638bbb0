"""AUD-2, AUD-3: verify the stored log, and replay it into fresh read models up to a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from psvis.checkpoints import CheckpointStore
from psvis.eventstore.port import LogSource, LogUnreadable, StoredRow
from psvis.projection import StreamProjection
from psvis.readstore.port import ReadStore, canonical_digest
from psvis.readstore.sqlite import SqliteReadStore
from psvis.replaying import MAX_WORKERS, REPLAY, default_workers, fold_log, fold_log_in_parts
from psvis.signing import key_id
from psvis.sqlite_db import SqliteDatabase
from psvis.verify import LedgerCheck, LogVerifier, VerifyReport, _Stop, serve_ledger_check

PAGE = 5000
log = logging.getLogger(__name__)


# below this many notarised events, starting a process costs more than the ledger check saves
LEDGER_WORKER_FROM = 100_000


async def verify_store(
    events: LogSource,
    checkpoints: CheckpointStore,
    keys: Sequence[Ed25519PublicKey],
    progress: Callable[[int], None] | None = None,
    *,
    ledger_worker: bool | None = None,
) -> VerifyReport:
    """Check every stored event and every signed checkpoint of the log (AUD-2).

    The checkpoints' ledger (signatures, and the Merkle tree rebuilt from every leaf) is checked
    in a worker process while this one checks the events, when `ledger_worker` says so; by
    default when the notarised log holds LEDGER_WORKER_FROM events or more. The report is the
    same either way.
    """
    try:
        records = await checkpoints.all(events.log_id)
    except LogUnreadable as e:
        verifier = LogVerifier(events.log_id, [], {})
        with contextlib.suppress(_Stop):
            verifier.unreadable(str(e))
        return verifier.report
    verifier = LogVerifier(events.log_id, records, {key_id(k): k for k in keys})
    if ledger_worker is None:
        ledger_worker = bool(records) and records[-1].tree_size >= LEDGER_WORKER_FROM
    async with _ledger_checked(verifier, ledger_worker) as ledger:
        with contextlib.suppress(_Stop):  # a failure of the events stands unless the ledger fails
            try:
                await _check_events(verifier, events, ledger, progress)
            except LogUnreadable as e:
                verifier.unreadable(str(e))
        try:
            if not ledger.applied:
                verifier.apply_ledger(await ledger.found)
            if verifier.report.ok:
                verifier.finish()
        except _Stop:
            pass
    return verifier.report


@dataclass
class _Ledger:
    found: asyncio.Future[LedgerCheck]
    applied: bool = False


@contextlib.asynccontextmanager
async def _ledger_checked(verifier: LogVerifier, in_worker: bool) -> AsyncIterator[_Ledger]:
    """check_ledger, running in a worker process or done already.

    The worker is stopped when the context is left early (a failed read, Ctrl-C): it would
    otherwise go on hashing the whole ledger, and the process could not exit until it had.
    """
    loop = asyncio.get_running_loop()
    if not in_worker:
        done = loop.create_future()
        done.set_result(verifier.ledger_check())
        yield _Ledger(done)
        return
    process, conn = _start_ledger_worker()
    # the ledger (32 bytes an event) goes over from a thread while this one checks events
    sending = loop.run_in_executor(None, conn.send, verifier.ledger_job())
    sending.add_done_callback(_seen)  # a worker stopped early makes it fail: nothing to report
    answer: asyncio.Future[LedgerCheck] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(conn.fileno())
        try:
            answer.set_result(conn.recv())
        except (EOFError, OSError):  # it ended without a word
            process.join()
            answer.set_exception(_LedgerWorkerGone(f"exit code {process.exitcode}"))

    loop.add_reader(conn.fileno(), readable)
    found = asyncio.ensure_future(_or_here(answer, verifier))
    try:
        yield _Ledger(found)
    finally:
        found.cancel()
        loop.remove_reader(conn.fileno())
        if process.is_alive():
            process.terminate()
        process.join()
        with contextlib.suppress(OSError, TimeoutError):  # its fd must outlive the write
            await asyncio.wait_for(asyncio.shield(sending), 5)
        conn.close()


class _LedgerWorkerGone(Exception):
    pass


def _start_ledger_worker() -> tuple[BaseProcess, Connection]:
    """A process that checks the ledger it is sent (verify.serve_ledger_check)."""
    # spawn: this process has threads (the database's), which fork would copy half-way
    ctx = multiprocessing.get_context("spawn")
    conn, child_end = ctx.Pipe()
    process = ctx.Process(
        target=serve_ledger_check, args=(child_end,), name="psvis-verify-ledger", daemon=True
    )
    process.start()
    child_end.close()
    return process, conn


def _seen(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


async def _or_here(found: Awaitable[LedgerCheck], verifier: LogVerifier) -> LedgerCheck:
    """The worker's answer; if the worker could not give one, the check done here."""
    try:
        return await found
    except _LedgerWorkerGone as e:
        log.warning("the ledger worker gave no answer (%s): checking the ledger here", e)
        return verifier.ledger_check()


async def _check_events(
    verifier: LogVerifier,
    events: LogSource,
    ledger: _Ledger,
    progress: Callable[[int], None] | None,
) -> None:
    read = getattr(events, "read_page_bytes", None) or _page_bytes(events)
    page = await read(-1, PAGE)
    while page:
        # the next page is read (on the database thread) while this one is checked
        upcoming = asyncio.ensure_future(read(page[-1][0], PAGE))
        try:
            if not ledger.applied and ledger.found.done():
                ledger.applied = True
                verifier.apply_ledger(ledger.found.result())  # stops here if it failed
            verifier.check_page(page)
        except BaseException:
            upcoming.cancel()
            raise
        if progress is not None:
            progress(len(page))
        page = await upcoming


def _page_bytes(events: LogSource) -> Callable[[int, int], Awaitable[list[StoredRow]]]:
    """Pages of a store that only offers read_page, and keeps nothing beside the envelope."""

    async def read(after: int, limit: int) -> list[StoredRow]:
        return [(e.position, e.data, None) for e in await events.read_page(after, limit)]

    return read


@dataclass
class Replay:
    reads: ReadStore
    digest: str
    position: int
    db: SqliteDatabase


async def replay(
    source: LogSource,
    projections: Sequence[StreamProjection],
    collections: Sequence[str],
    *,
    until: datetime | None = None,
    into: Path | str = ":memory:",
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Replay:
    """Fold the log into empty read models; equal logs give equal digests (invariant 4).

    An embedded log is folded by `workers` processes, each with a share of the streams; by
    default one per core once the log holds WORKERS_FROM events, else this process alone. The
    documents, and so the digest, are the same either way. While this process folds, its cyclic
    garbage collector is paused (replaying.cycle_collection_paused).
    """
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"a replay runs on 1 to {MAX_WORKERS} workers, not {workers}")
    db = SqliteDatabase(into)
    try:
        # the read models are rebuilt from the log at will: a power cut costs a rerun, so commits
        # need not wait for the disk (with a file, synchronous=NORMAL fsyncs at every checkpoint)
        db.run_sync(lambda c: c.execute("PRAGMA synchronous=OFF"))
        reads = SqliteReadStore(db)
        await reads.drop_all()
        log_path = getattr(source, "path", None)
        last = await source.log_size() - 1
        if workers is None:
            workers = default_workers(last + 1)
        if log_path is not None and workers > 1 and last >= 0:
            position = await fold_log_in_parts(
                log_path, last, projections, db, workers=workers, until=until, progress=progress
            )
            await reads.set_position(REPLAY, position)
        else:
            position = await fold_log(source, reads, projections, until, progress)
        digest = await canonical_digest(reads, collections)
    except BaseException:
        await db.close()
        raise
    return Replay(reads, digest, position, db)
