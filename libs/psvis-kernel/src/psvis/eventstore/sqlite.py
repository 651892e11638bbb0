"""Embedded event store: the log is one SQLite table ordered by position."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime

from psvis.clock import Clock, IdSource
from psvis.envelope import NewEvent, RecordedEvent, event_hash, seal
from psvis.errors import ConcurrencyConflict
from psvis.eventstore.port import StreamHead
from psvis.sqlite_db import SqliteDatabase, in_transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    data BLOB NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS stream_heads (
    stream_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    hash BLOB NOT NULL
);
"""


class SqliteEventStore:
    def __init__(
        self, db: SqliteDatabase, clock: Clock, ids: IdSource, log_id: str = "psvis.events/0"
    ) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self.log_id = log_id
        self._appended = asyncio.Event()
        db.run_sync(lambda c: c.executescript(SCHEMA))

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        recorded_at = self._clock.now()
        ids = [self._ids.new_id() for _ in events]
        work = self._appender(stream_id, expected_version, events, ids, recorded_at)
        recorded = await self._db.run(lambda c: in_transaction(c, work))
        self._appended.set()
        self._appended = asyncio.Event()
        return recorded

    def _appender(
        self,
        stream_id: str,
        expected: int,
        events: Sequence[NewEvent],
        ids: list[str],
        recorded_at: datetime,
    ) -> Callable[[sqlite3.Connection], list[RecordedEvent]]:
        def work(conn: sqlite3.Connection) -> list[RecordedEvent]:
            head = _head(conn, stream_id)
            if head.version != expected:
                raise ConcurrencyConflict(stream_id, expected, head.version)
            (last,) = conn.execute("SELECT COALESCE(MAX(position), -1) FROM events").fetchone()
            out: list[RecordedEvent] = []
            prev, version, position = head.hash, head.version, last
            for event, event_id in zip(events, ids, strict=True):
                version, position = version + 1, position + 1
                data = seal(
                    event,
                    event_id=event_id,
                    stream_id=stream_id,
                    version=version,
                    prev_hash=prev,
                    recorded_at=recorded_at,
                )
                out.append(RecordedEvent(position, stream_id, version, event_id, data))
                prev = event_hash(data)
            conn.executemany(
                "INSERT INTO events (position, stream_id, version, event_id, data)"
                " VALUES (?, ?, ?, ?, ?)",
                [(r.position, r.stream_id, r.version, r.event_id, r.data) for r in out],
            )
            conn.execute(
                "INSERT INTO stream_heads (stream_id, version, hash) VALUES (?, ?, ?)"
                " ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version,"
                " hash = excluded.hash",
                (stream_id, version, prev),
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
