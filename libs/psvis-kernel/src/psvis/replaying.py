"""AUD-3: fold a log into fresh read models, in this process or in worker processes.

A StreamProjection's document depends on its own stream's events only, so streams can be
folded apart. With n workers, worker k folds the streams whose crc32(stream id) % n == k. All
of them read the same prefix of the log, positions 0..`last`, fixed before any starts, so a log
that grows meanwhile cannot give them different logs. Each worker writes its documents into a
file of its own; they are copied into the replay's read store once every worker has finished,
so a failed replay leaves none of its documents behind. Their files are in a scratch folder
named with the replay's pid and host (pids.owner()): one killed outright (SIGKILL, a power cut)
cannot remove it, and the next replay there on that host removes it once that pid has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import multiprocessing
import os
import re
import shutil
import sqlite3
import tempfile
import traceback
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from psvis import pids
from psvis.envelope import RecordedEvent
from psvis.eventstore.port import LogUnreadable, stored_events
from psvis.projection import PagedLog, ProjectionRunner, StreamProjection
from psvis.readstore.port import ReadStore
from psvis.readstore.sqlite import SqliteReadStore
from psvis.sqlite_conn import in_transaction
from psvis.sqlite_db import SqliteDatabase

PAGE = 5000
REPLAY = "replay"  # the name a replay's position is kept under in its read store
# below this many events a replay is over before worker processes have started
WORKERS_FROM = 200_000
MAX_WORKERS = 8
# a replay's scratch folder: psvis-replay-<its pids.owner()>-<tempfile's random name>
SCRATCH = re.compile(rf"psvis-replay-{pids.OWNER}-[a-z0-9_]+")


def usable_cores() -> int:
    """The cores this process may run on, up to MAX_WORKERS."""
    return min(len(os.sched_getaffinity(0)), MAX_WORKERS)


def default_workers(events: int) -> int:
    """One per core this process may run on, from WORKERS_FROM events on."""
    return 1 if events < WORKERS_FROM else usable_cores()


async def fold_log(
    source: PagedLog,
    reads: ReadStore,
    projections: Sequence[StreamProjection],
    until: datetime | None,
    progress: Callable[[int], None] | None,
) -> int:
    """Fold the whole log into `reads`, which is empty, in this process; the last position applied.

    The runner, and the documents it keeps, are gone when this returns.
    """
    runner = ProjectionRunner(
        REPLAY,
        source,
        reads,
        projections,
        batch=PAGE,
        until=until,
        flush_each_page=False,
        empty=True,
    )
    with cycle_collection_paused():
        return await runner.catch_up(progress)


@contextlib.contextmanager
def cycle_collection_paused() -> Iterator[None]:
    """Replay keeps thousands of documents (trees of dicts and lists, no cycles) in memory.

    CPython's cyclic collector walks every one of them at each full collection, which comes
    round every few thousand documents promoted: a fifth of a replay's time. Reference counting
    still frees them; cycles made meanwhile are collected when the collector is back. The pause
    is process-wide, which suits the batch jobs that replay.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class ReplayWorkerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Share:
    """What one worker folds: its streams of log positions 0..last, and where it writes."""

    log_path: str
    last: int
    part: int
    parts: int
    until: datetime | None
    into: str

    def holds(self, stream_id: str) -> bool:
        return zlib.crc32(stream_id.encode()) % self.parts == self.part


async def fold_log_in_parts(
    log_path: str,
    last: int,
    projections: Sequence[StreamProjection],
    into: SqliteDatabase,
    *,
    workers: int,
    until: datetime | None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Fold log positions 0..last into `into` with `workers` processes; the last position applied.

    `into` holds an empty read store. `progress` hears how far the slowest worker has got.
    """
    ctx = multiprocessing.get_context("spawn")  # this process has threads; fork copies them
    through = ctx.Array("q", workers, lock=False)  # log events each worker has got through
    with _scratch_folder(into) as scratch:
        shares = [
            Share(log_path, last, k, workers, until, str(Path(scratch) / f"part-{k}.db"))
            for k in range(workers)
        ]
        running: list[tuple[BaseProcess, Connection]] = []
        try:
            for share in shares:
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=_work,
                    args=(share, projections, through, send),
                    name=f"psvis-replay-{share.part}",
                    daemon=True,
                )
                process.start()
                send.close()
                running.append((process, receive))
            positions = await _answers(running, through, last, progress)
        finally:
            for worker, pipe in running:
                if worker.is_alive():
                    worker.terminate()
                worker.join()
                pipe.close()
        await into.run(lambda c: _merge(c, [s.into for s in shares]))
    return max(positions)


async def _answers(
    running: Sequence[tuple[BaseProcess, Connection]],
    through: Any,
    last: int,
    progress: Callable[[int], None] | None,
) -> list[int]:
    """Each worker's last applied position; the first failure raises ReplayWorkerError."""
    answers: dict[int, int] = {}
    told = 0
    while len(answers) < len(running):
        await asyncio.sleep(0.05)
        for k, (process, receive) in enumerate(running):
            if k in answers:
                continue
            try:
                answer = receive.recv() if receive.poll() else None
            except EOFError:  # it ended without a word
                answer = None
                process.join()
            if answer is not None:
                outcome, value = answer
                if outcome == "unreadable":
                    raise LogUnreadable(value)
                if outcome != "done":
                    raise ReplayWorkerError(f"replay worker {k} failed:\n{value}")
                answers[k] = int(value)
            elif not process.is_alive():
                raise ReplayWorkerError(
                    f"replay worker {k} ended with exit code {process.exitcode} and no result"
                )
        done = min(min(through[:]), last + 1)
        if progress is not None and done > told:
            progress(done - told)
            told = done
    return [answers[k] for k in range(len(running))]


def _work(
    share: Share, projections: Sequence[StreamProjection], through: Any, send: Connection
) -> None:
    """A worker process: fold its share into share.into, then send ("done", last position)."""
    try:
        position = asyncio.run(_fold_share(share, projections, through))
        send.send(("done", position))
    except LogUnreadable as e:  # the log, not the worker, is at fault: no traceback
        send.send(("unreadable", str(e)))
    except BaseException:
        send.send(("failed", traceback.format_exc()))
    finally:
        send.close()


async def _fold_share(share: Share, projections: Sequence[StreamProjection], through: Any) -> int:
    # the log as an audit opens it: read-only, its file left as it was (no WAL mode set)
    log_db = SqliteDatabase(share.log_path, read_only=True)
    reads_db = SqliteDatabase(share.into)
    try:
        # the workers' files are scratch: a power cut costs a rerun, not lost data, and a failed
        # worker's file is thrown away, so it needs no journal to roll back with either
        reads_db.run_sync(lambda c: c.execute("PRAGMA synchronous=OFF"))
        reads_db.run_sync(lambda c: c.execute("PRAGMA journal_mode=OFF"))
        source = SharedLog(log_db, share, through)
        return await fold_log(source, SqliteReadStore(reads_db), projections, share.until, None)
    finally:
        await reads_db.close()
        await log_db.close()


class SharedLog:
    """One share's events: those of its streams at log positions 0..share.last.

    The share is picked in SQLite (share.holds as an SQL function, remembered per stream), so
    other shares' rows are never built in Python. It goes by the table's stream_id column; each
    event's envelope must agree, or the replay stops (LogUnreadable): an event filed under
    another share's stream would be folded by the wrong worker.
    """

    def __init__(self, db: SqliteDatabase, share: Share, through: Any) -> None:
        self._db = db
        self._share = share
        self._through = through
        holds: dict[str, bool] = {}

        def held(stream_id: str) -> bool:
            answer = holds.get(stream_id)
            if answer is None:
                answer = holds[stream_id] = share.holds(stream_id)
            return answer

        db.run_sync(lambda c: c.create_function("psvis_share_holds", 1, held, deterministic=True))
        self._holds = holds  # every stream id the page query has seen, and whether it is held

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        rows = await self._db.run(functools.partial(self._page, after=after, limit=limit))
        # how far through the log this share has read (all of it, once the page is empty)
        self._through[self._share.part] = rows[-1][0] + 1 if rows else self._share.last + 1
        held = self._holds.get
        events = stored_events(rows)
        if not all([held(e.stream_id) for e in events]):
            stray = next(e for e in events if not held(e.stream_id))
            raise LogUnreadable(
                f"the event at offset {stray.position} is filed under another stream than its"
                f" envelope's ({stray.stream_id})"
            )
        return events

    async def wait_for_append(self, timeout: float) -> None:
        """A share is a fixed prefix of the log: nothing is appended to it."""

    def _page(self, conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, bytes]]:
        return conn.execute(
            "SELECT position, data FROM events"
            " WHERE position > ? AND position <= ? AND psvis_share_holds(stream_id)"
            " ORDER BY position LIMIT ?",
            (after, self._share.last, limit),
        ).fetchall()


def _merge(conn: sqlite3.Connection, parts: Sequence[str]) -> None:
    """Copy every worker's documents into `conn`'s read store, in one transaction.

    SQLite attaches at most 10 databases to a connection: MAX_WORKERS stays below that.
    """
    attached = []
    try:
        for k, path in enumerate(parts):
            conn.execute(f"ATTACH DATABASE ? AS part{k}", (path,))
            attached.append(k)

        def copy(c: sqlite3.Connection) -> None:
            for k in attached:
                c.execute(f"INSERT INTO read_models SELECT * FROM part{k}.read_models")

        in_transaction(conn, copy)
    finally:
        for k in attached:
            conn.execute(f"DETACH DATABASE part{k}")


def _scratch_folder(into: SqliteDatabase) -> tempfile.TemporaryDirectory[str]:
    """A new folder for the workers' files, named with this process (pids.owner()); the scratch
    folders there of replays whose process has ended are removed first."""
    where = _scratch_dir(into)
    remove_dead_scratch(Path(where if where is not None else tempfile.gettempdir()))
    return tempfile.TemporaryDirectory(prefix=f"psvis-replay-{pids.owner()}-", dir=where)


def remove_dead_scratch(folder: Path) -> None:
    """Remove the scratch folders in `folder` of replays whose process has ended; those of a
    running process, of another machine's, or of one that cannot be told (no pid), stay."""
    for path in folder.iterdir():
        found = SCRATCH.fullmatch(path.name)
        if found is None or path.is_symlink() or not path.is_dir():
            continue
        if pids.ended(*found.groups()):
            shutil.rmtree(path, ignore_errors=True)  # another replay may be removing it too


def _scratch_dir(into: SqliteDatabase) -> str | None:
    """Workers' files go next to the replay's file, or to the system's temp folder."""
    return None if into.path == ":memory:" else str(Path(into.path).parent)
