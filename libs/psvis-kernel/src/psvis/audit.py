"""AUD-2, AUD-3: verify the stored log, and replay it into fresh read models up to a time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from psvis.checkpoints import CheckpointStore
from psvis.eventstore.port import LogSource, LogUnreadable, StoredExtent, StoredRow
from psvis.eventstore.sqlite_spans import check_span_file
from psvis.projection import StreamProjection
from psvis.readstore.port import ReadStore, canonical_digest
from psvis.readstore.sqlite import SqliteReadStore
from psvis.replaying import (
    MAX_WORKERS,
    REPLAY,
    default_workers,
    fold_log,
    fold_log_in_parts,
    usable_cores,
)
from psvis.signing import key_id
from psvis.sqlite_db import SqliteDatabase
from psvis.verify import LogVerifier
from psvis.verify_ledger import LedgerCheck
from psvis.verify_report import Stop, VerifyReport
from psvis.verify_spans import SpanReport
from psvis.workers import Job, JobPool, WorkerGone, spawn_worker

PAGE = 5000
log = logging.getLogger(__name__)

# below this many notarised events, starting a process costs more than the ledger check saves
LEDGER_WORKER_FROM = 100_000
# an embedded log this long is checked in spans of SPAN events, here and by a worker per core
SPANS_FROM = 100_000
SPAN = 20_000
# seconds this process waits on a worker's answer, when it has nothing else to do, before it
# does that worker's job itself
WORKER_PATIENCE = 1.0
_SILENT = "a verify worker gave no answer in %s s: its job is done again"
_GONE = "a verify worker gave no answer (%s): its job is done again"
_LEDGER = "ledger"  # the key of the ledger check among the spans' offsets
_start_worker = spawn_worker


async def verify_store(
    events: LogSource,
    checkpoints: CheckpointStore,
    keys: Sequence[Ed25519PublicKey],
    progress: Callable[[int], None] | None = None,
    *,
    total: Callable[[int], None] | None = None,
    ledger_worker: bool | None = None,
    span_workers: int | None = None,
    max_unsigned: int | None = None,
) -> VerifyReport:
    """Check every stored event and every signed checkpoint of the log (AUD-2).

    An embedded log of SPANS_FROM events or more is checked in spans of SPAN events, by this
    process and `span_workers` worker processes (by default one per other core), the ledger
    (signatures, and the Merkle tree rebuilt from every leaf) being one more job for them.
    Any other log is read page by page here, its ledger checked meanwhile in a worker process
    when `ledger_worker` says so, by default from LEDGER_WORKER_FROM notarised events on.
    The report is the same every way. With `max_unsigned`, more unsigned newest events than
    that (checkpoints deleted, or no notary running) is a failure, not only a warning.
    `total` hears, once and before `progress` hears anything, how many events are to be checked:
    the log's size, but no more than the rows an embedded log's table holds.
    """
    size_before: int | None = None  # the log's size before its checkpoints are read
    with contextlib.suppress(LogUnreadable):  # the pages' reading reports it
        size_before = await events.log_size()
    try:
        records = await checkpoints.all(events.log_id)
    except LogUnreadable as e:
        verifier = LogVerifier(events.log_id, [], {})
        with contextlib.suppress(Stop):
            verifier.unreadable(str(e))
        return verifier.report
    verifier = LogVerifier(
        events.log_id, records, {key_id(k): k for k in keys}, max_unsigned, size_before
    )
    path, size, first = getattr(events, "path", None), 0, None
    if path is not None:
        with contextlib.suppress(LogUnreadable):  # the pages' reading reports it
            size, first = await _offsets_and_first(events)
    if total is not None:
        total(size if path is not None else size_before or 0)
    if span_workers is None:
        span_workers = usable_cores() - 1 if size >= SPANS_FROM else 0
    if path is not None and span_workers > 0 and size > 0:
        with contextlib.suppress(Stop):
            await _check_in_spans(verifier, path, size, span_workers, progress)
            verifier.finish(first)
        return verifier.report
    if ledger_worker is None:
        ledger_worker = bool(records) and records[-1].tree_size >= LEDGER_WORKER_FROM
    async with _ledger_checked(verifier, ledger_worker) as ledger:
        with contextlib.suppress(Stop):  # a failure of the events stands unless the ledger fails
            try:
                await _check_events(verifier, events, ledger, progress)
            except LogUnreadable as e:
                verifier.unreadable(str(e))
        try:
            if not ledger.applied:
                verifier.apply_ledger(await _settled(ledger, verifier))
            if verifier.report.ok:
                verifier.finish(first)
        except Stop:
            pass
    return verifier.report


async def _offsets_and_first(events: LogSource) -> tuple[int, int | None]:
    """The offsets [0, n) a verify of the log checks, and the least position an embedded log's
    table holds (None where the store cannot say; pages are read from offset 0, so a row put
    before it is found only so). n is the log's size (last position + 1), but no more than the
    rows an embedded log's table holds.

    A row moved to a huge position (the table edited) must not make a plan of spans that
    size, which could not be held in memory, nor a progress bar that long: with fewer rows than
    offsets, the rows fall short of the offsets in some span within the first n, which names
    the first missing one.
    """
    size = await events.log_size()
    stored_extent = getattr(events, "stored_extent", None)
    if stored_extent is None:
        return size, None
    extent: StoredExtent = await stored_extent()
    return min(size, extent.rows), extent.first_position


async def _check_in_spans(
    verifier: LogVerifier,
    path: str,
    size: int,
    workers: int,
    progress: Callable[[int], None] | None,
) -> None:
    """Check the events [0, size) of the embedded log at `path`, and its ledger.

    The jobs (the ledger check, then a SpanChecker per span) go to the worker processes from
    the front, while this process takes its share from the back, so that workers still
    starting hold nothing up. A worker holds its next job while it runs one, so that it
    need not wait for this process to finish a job of its own before it is given another;
    once nothing is left here, a job a worker holds but has not started is done here rather
    than waited for. Spans are joined in order as they come in (join_span). Raises
    Stop once the report is made, as LogVerifier does; a failure of the ledger is reported
    before any failure of the events.
    """
    # the ledger at the back: this process starts with it while the workers start
    todo: deque[Hashable] = deque([*range(0, size, SPAN), _LEDGER])

    def job(key: Hashable) -> Job:
        if key == _LEDGER:
            return verifier.ledger_job()
        assert isinstance(key, int)
        end = min(key + SPAN, size)
        return functools.partial(check_span_file, path, key, end, verifier.span_leaves(key, end))

    spans: dict[int, SpanReport] = {}
    answered: set[Hashable] = set()
    ledger: LedgerCheck | None = None
    events_done = False  # joined to the end, or stopped at a failure

    def needed(key: Hashable) -> bool:
        """Not answered yet, and still of use: once the events are done, only the ledger is."""
        return key not in answered and (key == _LEDGER or not events_done)

    pool = JobPool(workers, "psvis-verify", _start_worker, depth=2)
    try:
        while ledger is None or not events_done:
            while todo:  # a worker's job, and its next while more than one is left here
                ready = pool.ready(1) or (pool.ready() if len(todo) > 1 else [])
                if not ready:
                    break
                key = todo.popleft()
                pool.give(ready[0], key, job(key))
            if not (done := pool.finished()):
                if not todo and (waiting := [k for k in pool.queued() if needed(k)]):
                    todo.append(waiting[-1])  # not started by its worker: done here at once
                if not todo:  # all is with the workers: wait, then do a late one's job here too
                    done = await pool.answers(timeout=WORKER_PATIENCE)
                    late = [key for key in pool.held() if needed(key)]
                    if not done and late:
                        log.warning(_SILENT, WORKER_PATIENCE)
                        todo.append(late[0])
                if todo:  # this process's share
                    key = todo.pop()
                    done = [(key, job(key)())]
            for key, answer in done:
                if isinstance(answer, WorkerGone):
                    log.warning(_GONE, answer)
                    if needed(key):
                        todo.appendleft(key)
                    continue
                if key in answered:  # done here as well
                    continue
                if key == _LEDGER:
                    ledger = answer
                else:
                    assert isinstance(key, int)
                    spans[key] = answer
                    if progress is not None:
                        progress(answer.checked)
                answered.add(key)
            try:
                while not events_done and verifier.next_offset in spans:
                    events_done = not verifier.join_span(spans.pop(verifier.next_offset))
                events_done = events_done or verifier.next_offset >= size
            except Stop:
                events_done = True
            if events_done:
                todo = deque(k for k in todo if k == _LEDGER)
    finally:
        await pool.close()
    verifier.apply_ledger(ledger)
    if not verifier.report.ok:
        raise Stop


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
    pool = JobPool(1, "psvis-verify-ledger", _start_worker)
    pool.give(pool.ready()[0], _LEDGER, verifier.ledger_job())
    found = asyncio.ensure_future(_ledger_answer(pool, verifier))
    try:
        yield _Ledger(found)
    finally:
        found.cancel()
        await pool.close()


async def _ledger_answer(pool: JobPool, verifier: LogVerifier) -> LedgerCheck:
    """The worker's answer; if the worker could not give one, the check done here."""
    while not (done := await pool.answers(timeout=60)):
        pass
    [(_, answer)] = done
    if isinstance(answer, WorkerGone):
        log.warning(_GONE, answer)
        return verifier.ledger_check()
    assert isinstance(answer, LedgerCheck)
    return answer


async def _settled(ledger: _Ledger, verifier: LogVerifier) -> LedgerCheck:
    """The ledger check, once the events are checked: the worker's, or, if it has not
    answered within WORKER_PATIENCE seconds more, done here."""
    try:
        return await asyncio.wait_for(asyncio.shield(ledger.found), WORKER_PATIENCE)
    except TimeoutError:
        log.warning(_SILENT, WORKER_PATIENCE)
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
        # need not wait for the disk (with a file, synchronous=NORMAL fsyncs at every checkpoint);
        # and a replay writes its documents once, in a few large transactions, to a file nobody
        # reads meanwhile: a rollback journal writes them once, where WAL writes them twice
        # (into the WAL, then into the file), a tenth of a 1M-event replay's time
        db.run_sync(lambda c: c.execute("PRAGMA synchronous=OFF"))
        db.run_sync(lambda c: c.execute("PRAGMA journal_mode=DELETE"))
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
