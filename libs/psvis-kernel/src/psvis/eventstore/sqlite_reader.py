"""The embedded log opened read-only (SqliteLogReader), and the reads it shares with the store.

PAGE_BYTES and STORED_EXTENT are how `audit verify` reads the events table, through this reader
or through SqliteEventStore.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from psvis.envelope import RecordedEvent
from psvis.eventstore.port import LogUnreadable, StoredExtent, StoredRow, stored_events
from psvis.eventstore.sqlite_spans import STORED_ROWS
from psvis.sqlite_db import SqliteDatabase

# the stored rows (sqlite_spans.STORED_ROWS) of a page after a position
PAGE_BYTES = STORED_ROWS + " WHERE position > ? ORDER BY position LIMIT ?"
# the rows and the least position (StoredExtent) in one statement: one scan to count, and a
# seek for the least (COUNT(*) and MIN(position) side by side would read every row for both)
STORED_EXTENT = "SELECT (SELECT COUNT(*) FROM events), (SELECT MIN(position) FROM events)"


def extent(row: tuple[int, int | None]) -> StoredExtent:
    rows, first = row
    return StoredExtent(int(rows), None if first is None else int(first))


class SqliteLogReader:
    """The embedded log opened read-only, for `audit verify` and `audit replay`.

    It creates and writes nothing: no schema, no stream index, no WAL mode. A damaged file
    raises LogUnreadable, which the audit reports; pages are read as PAGE_BYTES reads them.
    """

    def __init__(self, db: SqliteDatabase, log_id: str = "psvis.events/0") -> None:
        self._db = db  # opened read_only by the caller, whose it stays
        self.path = db.path
        self.log_id = log_id

    async def read_page_bytes(self, after: int, limit: int) -> list[StoredRow]:
        return await self._read(PAGE_BYTES, (after, limit))

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        return stored_events(
            (position, data) for position, data, _ in await self.read_page_bytes(after, limit)
        )

    async def log_size(self) -> int:
        [(n,)] = await self._read("SELECT COALESCE(MAX(position), -1) + 1 FROM events", ())
        return int(n)

    async def stored_extent(self) -> StoredExtent:
        """The rows the events table holds and their least position (STORED_EXTENT)."""
        [row] = await self._read(STORED_EXTENT, ())
        return extent(row)

    async def wait_for_append(self, timeout: float) -> None:
        """An audit reads what is stored; what is appended meanwhile, it reads next time."""
        await asyncio.sleep(timeout)

    async def _read(self, sql: str, args: tuple[int, ...]) -> list[Any]:
        try:
            return await self._db.run(lambda c: c.execute(sql, args).fetchall())
        except sqlite3.Error as e:
            raise LogUnreadable(f"the log at {self.path} cannot be read: {e}") from e
