"""Embedded read-model store: JSON documents in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from psvis.readstore.port import Document, Write, canonical_text
from psvis.sqlite_conn import in_transaction
from psvis.sqlite_db import SqliteDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS read_models (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    version INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (collection, key)
);
CREATE TABLE IF NOT EXISTS projection_positions (
    projection TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
"""


class SqliteReadStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        db.run_sync(lambda c: c.executescript(SCHEMA))

    async def get(self, collection: str, key: str) -> tuple[Document, int] | None:
        row = await self._db.run(
            lambda c: c.execute(
                "SELECT doc, version FROM read_models WHERE collection = ? AND key = ?",
                (collection, key),
            ).fetchone()
        )
        return None if row is None else (json.loads(row[0]), int(row[1]))

    async def put(
        self, collection: str, key: str, doc: Document, version: int, expected: int
    ) -> bool:
        return await self.put_many(collection, [Write(key, doc, version, expected)]) == 1

    async def get_many(
        self, collection: str, keys: Sequence[str]
    ) -> dict[str, tuple[Document, int]]:
        def work(conn: sqlite3.Connection) -> dict[str, tuple[Document, int]]:
            found: dict[str, tuple[Document, int]] = {}
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                marks = ",".join("?" * len(chunk))
                for key, doc, version in conn.execute(
                    "SELECT key, doc, version FROM read_models"
                    f" WHERE collection = ? AND key IN ({marks})",
                    [collection, *chunk],
                ):
                    found[key] = (json.loads(doc), int(version))
            return found

        return await self._db.run(work)

    async def put_many(self, collection: str, writes: Sequence[Write]) -> int:
        inserts = [
            (collection, w.key, w.version, canonical_text(w.doc)) for w in writes if w.expected == 0
        ]
        updates = [
            (w.version, canonical_text(w.doc), collection, w.key, w.expected)
            for w in writes
            if w.expected != 0
        ]

        def work(conn: sqlite3.Connection) -> int:
            # executemany's rowcount is the sum over its rows: how many writes took effect
            done = 0
            if inserts:
                done += conn.executemany(
                    "INSERT OR IGNORE INTO read_models VALUES (?, ?, ?, ?)", inserts
                ).rowcount
            if updates:
                done += conn.executemany(
                    "UPDATE read_models SET version = ?, doc = ?"
                    " WHERE collection = ? AND key = ? AND version = ?",
                    updates,
                ).rowcount
            return done

        return await self._db.run(lambda c: in_transaction(c, work))

    async def list(self, collection: str) -> list[tuple[str, Document]]:
        return [(k, json.loads(d)) for k, d in await self._stored(collection)]

    async def list_json(self, collection: str) -> Sequence[tuple[str, bytes]]:
        """The stored text is canonical_text(doc) already."""
        return [(k, d.encode()) for k, d in await self._stored(collection)]

    async def _stored(self, collection: str) -> Sequence[tuple[str, str]]:
        rows = await self._db.run(
            lambda c: c.execute(
                "SELECT key, doc FROM read_models WHERE collection = ? ORDER BY key",
                (collection,),
            ).fetchall()
        )
        return [(str(k), str(d)) for k, d in rows]

    async def get_position(self, projection: str) -> int:
        row = await self._db.run(
            lambda c: c.execute(
                "SELECT position FROM projection_positions WHERE projection = ?", (projection,)
            ).fetchone()
        )
        return -1 if row is None else int(row[0])

    async def set_position(self, projection: str, position: int) -> None:
        await self._db.run(
            lambda c: c.execute(
                "INSERT INTO projection_positions VALUES (?, ?) ON CONFLICT (projection)"
                " DO UPDATE SET position = MAX(position, excluded.position)",
                (projection, position),
            )
        )

    async def drop_all(self) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM read_models")
            conn.execute("DELETE FROM projection_positions")

        await self._db.run(work)

    async def drop(self, collections: Sequence[str], projection: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "DELETE FROM read_models WHERE collection = ?", [(c,) for c in collections]
            )
            conn.execute("DELETE FROM projection_positions WHERE projection = ?", (projection,))

        await self._db.run(lambda conn: in_transaction(conn, work))

    async def close(self) -> None:
        """The database is owned by whoever opened it."""
