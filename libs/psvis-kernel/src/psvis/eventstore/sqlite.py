"""Embedded event store: the log is one SQLite table ordered by position."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime

from psvis.clock import Clock, IdSource
from psvis.envelope import NewEvent, RecordedEvent, seal_stream
from psvis.errors import ConcurrencyConflict
from psvis.eventstore.port import StreamHead
from psvis.sqlite_db import SqliteDatabase, in_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS stream_heads (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    hash BLOB NOT NULL
);
"""


Work = Callable[[sqlite3.Connection], list[RecordedEvent]]


def _all(
    works: list[Work],
) -> Callable[[sqlite3.Connection], list[list[RecordedEvent] | Exception]]:
    """One transaction's work for a group of appends: each alone in a savepoint."""

    def run(conn: sqlite3.Connection) -> list[list[RecordedEvent] | Exception]:
        if len(works) == 1:
            return [works[0](conn)]  # an error rolls back the whole (one-append) transaction
        results: list[list[RecordedEvent] | Exception] = []
        for work in works:
            conn.execute("SAVEPOINT append")
            try:
                results.append(work(conn))
            except Exception as e:
                conn.execute("ROLLBACK TO append")
                results.append(e)
            conn.execute("RELEASE append")
        return results

    return run


class SqliteEventStore:
    def __init__(
        self, db: SqliteDatabase, clock: Clock, ids: IdSource, log_id: str = "psvis.events/0"
    ) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self.log_id = log_id
        self._appended = asyncio.Event()
        self._waiting: list[tuple[Work, asyncio.Future[list[RecordedEvent]]]] = []
        self._committer: asyncio.Future[None] | None = None
        db.run_sync(lambda c: c.executescript(SCHEMA))

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Appends that arrive while a commit runs share the next transaction (group commit).

        Each runs in its own SAVEPOINT, so a conflict fails that append alone; the order of
        the log is the order in which append was called.
        """
        recorded_at = self._clock.now()
        ids = [self._ids.new_id() for _ in events]
        work = self._appender(stream_id, expected_version, events, ids, recorded_at)
        done: asyncio.Future[list[RecordedEvent]] = asyncio.get_running_loop().create_future()
        self._waiting.append((work, done))
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_waiting())
        return await done

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                works = [work for work, _ in group]
                results: list[list[RecordedEvent] | Exception]
                try:
                    results = await self._db.run(
                        functools.partial(in_transaction, work=_all(works))
                    )
                except Exception as e:  # the transaction as a whole failed
                    results = [e] * len(group)
                for (_, done), result in zip(group, results, strict=True):
                    if done.done():
                        continue
                    if isinstance(result, Exception):
                        done.set_exception(result)
                    else:
                        done.set_result(result)
                self._appended.set()
                self._appended = asyncio.Event()
        finally:
            self._committer = None

    def _appender(
        self,
        stream_id: str,
        expected: int,
        events: Sequence[NewEvent],
        ids: list[str],
        recorded_at: datetime,
    ) -> Work:
        def work(conn: sqlite3.Connection) -> list[RecordedEvent]:
            head = _head(conn, stream_id)
            if head.version != expected:
                raise ConcurrencyConflict(stream_id, expected, head.version)
            (last,) = conn.execute("SELECT COALESCE(MAX(position), -1) FROM events").fetchone()
            out = seal_stream(
                events,
                ids,
                stream_id=stream_id,
                head_version=head.version,
                head_hash=head.hash,
                recorded_at=recorded_at,
                first_position=last + 1,
            )
            if not out:
                return out
            conn.executemany(
                "INSERT INTO events (position, stream_id, version, event_id, data)"
                " VALUES (?, ?, ?, ?, ?)",
                [(r.position, r.stream_id, r.version, r.event_id, r.data) for r in out],
            )
            conn.execute(
                "INSERT INTO stream_heads (stream_id, version, hash) VALUES (?, ?, ?)"
                " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
                " hash = excluded.hash",
                (stream_id, out[-1].version, out[-1].hash),
            )
            return out

        return work

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT position, stream_id, version, event_id, data FROM events"
                " WHERE stream_id = ? ORDER BY version",
                (stream_id,),
            ).fetchall()
        )
        return [RecordedEvent(*row) for row in rows]

    async def read_page_bytes(self, after: int, limit: int) -> list[tuple[int, bytes]]:
        """(position, stored bytes) of up to `limit` events after `after`: what audit verify reads."""
        return await self._db.run(
            lambda c: c.execute(
                "SELECT position, data FROM events WHERE position > ? ORDER BY position LIMIT ?",
                (after, limit),
            ).fetchall()
        )

    async def head(self, stream_id: str) -> StreamHead:
        return await self._db.run(lambda c: _head(c, stream_id))

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        rows = await self._db.run(lambda c: _log_page(c, after, limit))
        return [RecordedEvent(*row) for row in rows]

    async def wait_for_append(self, timeout: float) -> None:
        """Woken by appends in this process; other processes' appends are seen on timeout."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._appended.wait(), timeout)

    async def log_size(self) -> int:
        (n,) = await self._db.run(
            lambda c: c.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM events").fetchone()
        )
        return int(n)

    async def close(self) -> None:
        """The database is owned by whoever opened it."""


def _head(conn: sqlite3.Connection, stream_id: str) -> StreamHead:
    row = conn.execute(
        "SELECT version, hash FROM stream_heads WHERE stream_id = ?", (stream_id,)
    ).fetchone()
    return StreamHead(0, b"") if row is None else StreamHead(int(row[0]), bytes(row[1]))


def _log_page(
    conn: sqlite3.Connection, after: int, limit: int
) -> list[tuple[int, str, int, str, bytes]]:
    return conn.execute(
        "SELECT position, stream_id, version, event_id, data FROM events"
        " WHERE position > ? ORDER BY position LIMIT ?",
        (after, limit),
    ).fetchall()
