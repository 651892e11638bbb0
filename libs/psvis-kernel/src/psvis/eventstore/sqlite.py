"""Embedded event store: the log is one SQLite table ordered by position."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from psvis.clock import Clock, IdSource
from psvis.envelope import NewEvent, RecordedEvent, Sealer
from psvis.errors import ConcurrencyConflict
from psvis.eventstore.port import (
    LogUnreadable,
    StoredExtent,
    StoredRow,
    StreamHead,
    stored_events,
)
from psvis.eventstore.sqlite_index import IndexDisagrees, StreamIndex, check_history
from psvis.eventstore.sqlite_reader import PAGE_BYTES, STORED_EXTENT, extent
from psvis.sqlite_conn import connect, in_transaction
from psvis.sqlite_db import SqliteDatabase, WalCheckpointer

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL,
    data BLOB NOT NULL
);
"""
# The log is the envelopes' bytes. stream_id repeats the envelope's, so that replay workers can
# pick their streams in SQL; audit verify checks that it does (PAGE_BYTES reads it). Everything
# else about an event (version, id) is read from its envelope.

INSERT = "INSERT INTO events (position, stream_id, data) VALUES (?, ?, ?)"
# a log written before the events table lost its version and event_id columns
_OLD_COLUMNS = {"position", "stream_id", "version", "event_id", "data"}


def upgrade_schema(conn: sqlite3.Connection) -> None:
    """Create the events table, or rewrite one of the older shape (same rows, fewer columns)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    if columns != _OLD_COLUMNS:
        conn.executescript(SCHEMA)
        return

    def rewrite(c: sqlite3.Connection) -> None:
        c.execute(SCHEMA.replace("IF NOT EXISTS events", "events_upgraded"))
        c.execute(
            "INSERT INTO events_upgraded (position, stream_id, data)"
            " SELECT position, stream_id, data FROM events ORDER BY position"
        )
        c.execute("DROP TABLE events")
        c.execute("ALTER TABLE events_upgraded RENAME TO events")

    log.info("rewriting the events table without its version and event_id columns")
    in_transaction(conn, rewrite)


UNYIELDED_APPENDS = 64


@dataclass(slots=True)
class _Append:
    stream_id: str
    expected: int
    events: Sequence[NewEvent]
    ids: list[str]
    recorded_at: datetime


class SqliteEventStore:
    """The log is the `events` table, ordered by position; the only write of an append is its rows.

    Appends are written on the event loop's thread, on a connection of their own: one short
    transaction costs less than handing it to another thread. Appends that arrive in the same
    turn of the loop share one transaction (group commit); the log keeps the order in which
    append was called. An append that no other task can join (nothing else is ready to run)
    is written at once, without waiting for the end of the turn; every UNYIELDED_APPENDS-th
    such append is queued all the same, so a task that appends in a loop still lets the loop
    run (timers, I/O, cancellation). Optimistic concurrency is checked against the stream
    heads kept by StreamIndex; a position already taken (another process appended) makes the
    writer learn the log it missed and decide again. Reads of pages go to the database's
    thread.
    """

    def __init__(
        self, db: SqliteDatabase, clock: Clock, ids: IdSource, log_id: str = "psvis.events/0"
    ) -> None:
        self._db = db
        self._clock = clock
        self._ids = ids
        self.log_id = log_id
        self.path = db.path  # the log's file, which replay workers open for themselves
        self._appended: asyncio.Event | None = None  # set by the next append, once awaited
        self._queue: list[tuple[_Append, asyncio.Future[list[RecordedEvent]]]] = []
        self._scheduled = False
        self._unyielded = 0  # appends written at once since the last queued one
        if db.path == ":memory:":
            # the appender's own connection would open a second, separate in-memory database
            raise ValueError("the embedded event store needs a database file, not :memory:")
        self._conn = connect(db.path)
        self._cursor = self._conn.cursor()  # one cursor for every insert: no cursor per append
        self._sealer = Sealer()
        upgrade_schema(self._conn)
        self._index = StreamIndex(self._conn)
        self._checkpointer = WalCheckpointer(self._conn, db.path)

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        ids = [self._ids.new_id() for _ in events]
        recorded_at = self._clock.now()
        loop = asyncio.get_running_loop()
        if not self._queue and self._unyielded < UNYIELDED_APPENDS and _nothing_else_ready(loop):
            self._unyielded += 1
            return self._write_alone(stream_id, expected_version, events, ids, recorded_at)
        request = _Append(stream_id, expected_version, events, ids, recorded_at)
        done: asyncio.Future[list[RecordedEvent]] = loop.create_future()
        self._queue.append((request, done))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._write_queue)
        return await done

    def _write_queue(self) -> None:
        queued, self._queue, self._scheduled = self._queue, [], False
        self._unyielded = 0
        # a caller cancelled while queued has nothing written
        waiting = [(r, done) for r, done in queued if not done.cancelled()]
        results = self._write_group([request for request, _ in waiting])
        for (_, done), result in zip(waiting, results, strict=True):
            if isinstance(result, Exception):
                done.set_exception(result)
            else:
                done.set_result(result)

    def _write_alone(
        self,
        stream_id: str,
        expected: int,
        events: Sequence[NewEvent],
        ids: list[str],
        recorded_at: datetime,
    ) -> list[RecordedEvent]:
        """Write an append that no other can join: what _write_group([it]) does, in the usual
        case (its stream at the expected version, its position free), without a group's
        bookkeeping. Any other case (a conflict, perhaps with a writer this index has not
        learnt from yet; a taken position; an index that disagrees with the log; no events)
        is decided by _write_group, as for a queued append."""
        try:
            head = self._index.head(stream_id)
        except IndexDisagrees:
            head = None
        if head is None or head.version != expected or not events:
            return self._write_as_group(_Append(stream_id, expected, events, ids, recorded_at))
        records = self._sealer.seal(
            events,
            ids,
            stream_id=stream_id,
            head_version=expected,
            head_hash=head.hash,
            recorded_at=recorded_at,
            first_position=self._index.known + 1,
        )
        try:
            self._insert(records)
        except sqlite3.IntegrityError:  # another writer took the position
            return self._write_as_group(_Append(stream_id, expected, events, ids, recorded_at))
        self._index.appended(records)
        self._after_write()
        return records

    def _write_as_group(self, request: _Append) -> list[RecordedEvent]:
        [result] = self._write_group([request])
        if isinstance(result, Exception):
            raise result
        return result

    def _write_group(self, group: list[_Append]) -> list[list[RecordedEvent] | Exception]:
        """Write the appends in one transaction; each one's events, or why it was refused."""
        try:
            results = self._write(group)
        except Exception as e:  # the transaction as a whole failed: nothing was written
            results = [e] * len(group)
        self._after_write()
        return results

    def _after_write(self) -> None:
        """Wake whoever waits for appends, and write the stream index if it is due."""
        appended = self._appended
        if appended is not None:  # someone waits: the next waiters get an Event of their own,
            self._appended = None  # while a wait() made but not yet started (wait_for's task)
            appended.set()  # still sees this one set
        if self._index.due:
            self._flush_index()

    def _flush_index(self) -> None:
        """Write the index's tail; a failure only delays it (the index is derived from the log).

        It runs once the group's transaction is over: the callers' events are committed
        whatever happens here.
        """
        try:
            self._index.flush()
        except sqlite3.Error as e:
            log.warning("stream index not written yet (%s); the next append tries again", e)

    def _write(self, group: list[_Append]) -> list[list[RecordedEvent] | Exception]:
        while True:
            results, rows, conflicted = self._index_checked(lambda: self._decide(group))
            if conflicted and self._index.behind():
                self._index.learn_from_log()  # the conflict may be with a head it has missed
                continue
            try:
                self._insert(rows)
            except sqlite3.IntegrityError:
                known = self._index.known
                self._index.learn_from_log()  # another writer took the position: decide again
                if self._index.known == known:
                    raise  # not a taken position: deciding again would change nothing
                continue
            self._index.appended(rows)
            return results

    def _decide(
        self, group: list[_Append]
    ) -> tuple[list[list[RecordedEvent] | Exception], list[RecordedEvent], bool]:
        """Each append's sealed events or why it is refused; the rows to insert; and whether
        any append found its stream at another version than it expected."""
        results: list[list[RecordedEvent] | Exception] = []
        conflicted = False
        rows: list[RecordedEvent] = []
        heads: dict[str, StreamHead] = {}  # as they will be once this group is written
        position = self._index.known + 1
        for request in group:
            head = heads.get(request.stream_id) or self._index.head(request.stream_id)
            if head.version != request.expected:
                results.append(
                    ConcurrencyConflict(request.stream_id, request.expected, head.version)
                )
                conflicted = True
                continue
            try:
                out = self._sealer.seal(
                    request.events,
                    request.ids,
                    stream_id=request.stream_id,
                    head_version=head.version,
                    head_hash=head.hash,
                    recorded_at=request.recorded_at,
                    first_position=position,
                )
            except Exception as e:
                results.append(e)
                continue
            results.append(out)
            if out:
                rows.extend(out)
                position += len(out)
                heads[request.stream_id] = StreamHead(out[-1].version, out[-1].hash)
        return results, rows, conflicted

    def _insert(self, rows: list[RecordedEvent]) -> None:
        values = [(r.position, r.stream_id, r.data) for r in rows]
        if len(values) == 1:
            self._cursor.execute(INSERT, values[0])  # a transaction of its own
        elif values:
            in_transaction(self._conn, lambda c: c.executemany(INSERT, values))
        self._checkpointer.commits += 1

    def _fresh(self) -> StreamIndex:
        """The index, having learnt whatever other writers appended."""
        if self._index.behind():
            self._index.learn_from_log()
        return self._index

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]:
        return self._index_checked(lambda: self._read_stream(stream_id))

    def _index_checked(self, read: Callable[[], T]) -> T:
        """read(); if the index disagrees with the log, read() again on an index rebuilt from
        the log; if it still disagrees, the log itself is damaged (LogUnreadable)."""
        try:
            return read()
        except IndexDisagrees as e:
            self._rebuild_index(e)
        try:
            return read()
        except IndexDisagrees as e:
            raise _still_disagrees(e) from e

    def _read_stream(self, stream_id: str) -> list[RecordedEvent]:
        """The stream's events where the index says they are, checked to be its versions 1..n."""
        positions = self._fresh().positions(stream_id)
        events: list[RecordedEvent] = []
        for start in range(0, len(positions), 500):
            chunk = positions[start : start + 500]
            events += stored_events(
                self._conn.execute(
                    "SELECT position, data FROM events"
                    f" WHERE position IN ({','.join('?' * len(chunk))}) ORDER BY position",
                    chunk,
                ).fetchall()
            )
        check_history(stream_id, events)
        return events

    def _rebuild_index(self, disagreement: IndexDisagrees) -> None:
        """The index is derived from the log: one that disagrees with it is rebuilt from it."""
        log.warning("%s: rebuilding the index from the log", disagreement)
        self._index.rebuild()

    async def read_page_bytes(self, after: int, limit: int) -> list[StoredRow]:
        """Up to `limit` events after `after`, as audit verify reads them (PAGE_BYTES)."""
        return await self._db.run(lambda c: c.execute(PAGE_BYTES, (after, limit)).fetchall())

    async def head(self, stream_id: str) -> StreamHead:
        return self._index_checked(lambda: self._fresh().head(stream_id))

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        return stored_events(await self._db.run(lambda c: _log_page(c, after, limit)))

    async def wait_for_append(self, timeout: float) -> None:
        """Woken by appends in this process; other processes' appends are seen on timeout."""
        appended = self._appended
        if appended is None:
            appended = self._appended = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(appended.wait(), timeout)

    async def log_size(self) -> int:
        (n,) = await self._db.run(
            lambda c: c.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM events").fetchone()
        )
        return int(n)

    async def stored_extent(self) -> StoredExtent:
        """The rows the events table holds and their least position (STORED_EXTENT)."""
        return extent(await self._db.run(lambda c: c.execute(STORED_EXTENT).fetchone()))

    async def close(self) -> None:
        """Write the stream index and close this store's connection (the database is the opener's)."""
        try:
            self._index.flush()
        finally:
            self._checkpointer.close()
            self._conn.close()


def _nothing_else_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether no other callback is waiting to run in this turn of the loop: no other task
    can then append before the end of the turn, and a group would hold this append alone.

    asyncio's own loops keep their ready callbacks in `_ready`; a loop without it (uvloop)
    is taken to be busy, and every append there waits for the end of the turn.
    """
    ready = getattr(loop, "_ready", None)
    return ready is not None and not ready


def _still_disagrees(disagreement: IndexDisagrees) -> LogUnreadable:
    """The index, rebuilt from the log, still disagrees with it: the log itself does not hold
    the stream's versions 1..n in order (damaged or edited; `psvis audit verify` names where)."""
    return LogUnreadable(
        f"{disagreement}, even rebuilt from the log: the log's events of"
        f" {disagreement.stream_id!r} are not its versions 1..n; run `psvis audit verify`"
    )


def _log_page(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, bytes]]:
    return conn.execute(
        "SELECT position, data FROM events WHERE position > ? ORDER BY position LIMIT ?",
        (after, limit),
    ).fetchall()
