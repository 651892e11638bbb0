"""Signed checkpoints of the log: the port, its record and the embedded adapter."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

from psvis.common.v1 import envelope_pb2 as pb
from psvis.eventstore.port import LogUnreadable
from psvis.sqlite_conn import in_transaction
from psvis.sqlite_db import SqliteDatabase


@dataclass(frozen=True)
class CheckpointRecord:
    """A signed checkpoint and the leaf hashes it adds since the previous one.

    The leaves let `audit verify` name the exact offset where the stored log and the
    notarised log part ways; they are themselves authenticated by the signed root.
    """

    log_id: str
    tree_size: int
    signed: bytes  # serialised SignedCheckpoint
    leaves: bytes  # 32-byte leaf hashes of positions [previous tree_size, tree_size)
    frontier: bytes  # the compact Merkle range at tree_size, to resume without re-reading

    @property
    def previous_size(self) -> int:
        """The tree size this checkpoint extends."""
        return self.tree_size - len(self.leaves) // 32

    def checkpoint(self) -> pb.Checkpoint:
        return pb.Checkpoint.FromString(pb.SignedCheckpoint.FromString(self.signed).checkpoint)


class CheckpointStore(Protocol):
    async def add(self, record: CheckpointRecord) -> bool:
        """Add a checkpoint extending the latest one; False, adding nothing, if another
        checkpoint already extends the tree size this one starts from (another notary signed
        first: the caller goes on from the latest). Adding the same checkpoint again is True."""
        ...

    async def latest(self, log_id: str) -> CheckpointRecord | None: ...

    async def all(self, log_id: str) -> list[CheckpointRecord]: ...


SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    log_id TEXT NOT NULL,
    tree_size INTEGER NOT NULL,
    signed BLOB NOT NULL,
    leaves BLOB NOT NULL,
    frontier BLOB NOT NULL,
    PRIMARY KEY (log_id, tree_size)
);
"""


class SqliteCheckpointStore:
    """read_only: an audit's view, on a read-only database; a file without the table has no
    checkpoints, and a damaged one raises LogUnreadable."""

    def __init__(self, db: SqliteDatabase, *, read_only: bool = False) -> None:
        self._db = db
        self._read_only = read_only
        if not read_only:
            db.run_sync(lambda c: c.executescript(SCHEMA))

    async def add(self, record: CheckpointRecord) -> bool:
        require_events(record)

        def work(c: sqlite3.Connection) -> bool:
            (tip,) = c.execute(
                "SELECT COALESCE(MAX(tree_size), 0) FROM checkpoints WHERE log_id = ?",
                (record.log_id,),
            ).fetchone()
            if tip == record.previous_size:
                c.execute(  # the tip is the largest tree size: this one is not taken
                    "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?)",
                    (
                        record.log_id,
                        record.tree_size,
                        record.signed,
                        record.leaves,
                        record.frontier,
                    ),
                )
                return True
            same = c.execute(
                "SELECT 1 FROM checkpoints WHERE log_id = ? AND tree_size = ? AND leaves = ?",
                (record.log_id, record.tree_size, record.leaves),
            ).fetchone()
            return same is not None  # this very checkpoint, added before

        return await self._db.run(lambda conn: in_transaction(conn, work))

    async def latest(self, log_id: str) -> CheckpointRecord | None:
        rows = await self._select(log_id, "ORDER BY tree_size DESC LIMIT 1")
        return rows[0] if rows else None

    async def all(self, log_id: str) -> list[CheckpointRecord]:
        return await self._select(log_id, "ORDER BY tree_size")

    async def _select(self, log_id: str, tail: str) -> list[CheckpointRecord]:
        def work(c: sqlite3.Connection) -> list[Any]:
            if (
                self._read_only
                and not c.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'"
                ).fetchone()
            ):
                return []
            return c.execute(
                "SELECT tree_size, signed, leaves, frontier FROM checkpoints"
                f" WHERE log_id = ? {tail}",
                (log_id,),
            ).fetchall()

        try:
            rows = await self._db.run(work)
        except sqlite3.Error as e:
            raise LogUnreadable(f"the checkpoints cannot be read: {e}") from e
        try:
            return [
                CheckpointRecord(log_id, int(r[0]), _blob(r[1]), _blob(r[2]), _blob(r[3]))
                for r in rows
            ]
        except (TypeError, ValueError) as e:
            raise LogUnreadable(f"a stored checkpoint is not one: {e}") from e


def require_events(record: CheckpointRecord) -> None:
    """A checkpoint signs at least one event: an empty one would take its tree size's place,
    and no checkpoint could extend that size after it."""
    if not record.leaves or len(record.leaves) % 32:
        raise ValueError(f"a checkpoint of {record.log_id} at {record.tree_size} adds no events")


def _blob(value: object) -> bytes:
    """A stored blob; a damaged row's text as its bytes, its NULL as none."""
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    return str(value).encode()  # a number
