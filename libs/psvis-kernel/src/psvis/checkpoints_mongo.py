"""Signed checkpoints in MongoDB (the distributed CheckpointStore).

Collection `<namespace>.checkpoints`. A checkpoint's `_id` is "<log_id>:<previous tree size>", the
tree size it extends, so the checkpoints of a log form a chain from 0 and latest() walks it by
`_id` look-ups (the only filter FerretDB 1.24 serves from an index) from a hint kept in
"<log_id>:latest" (the `_id` is also what makes add() idempotent, as the embedded store's
primary key does). The hint may lag after a crash; the walk still finds the true latest, which
the notary needs exactly: resuming from an older checkpoint would sign overlapping ledgers.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from psvis.checkpoints import CheckpointRecord, require_events

Doc = dict[str, Any]


def _id(log_id: str, previous: int) -> str:
    return f"{log_id}:{previous:016d}"


def _record(doc: Doc) -> CheckpointRecord:
    return CheckpointRecord(
        doc["log_id"],
        int(doc["tree_size"]),
        bytes(doc["signed"]),
        bytes(doc["leaves"]),
        bytes(doc["frontier"]),
    )


class MongoCheckpointStore:
    def __init__(self, db: AsyncDatabase[Doc], namespace: str) -> None:
        self._coll: AsyncCollection[Doc] = db[f"{namespace}.checkpoints"]

    async def add(self, record: CheckpointRecord) -> bool:
        """Keyed by the tree size it extends: a checkpoint that does not extend the latest one,
        or a second one extending the same size, is refused (False), unless it is this very
        checkpoint again (True, as its first add was). The `_id` settles a race between two
        that both found the same latest one."""
        require_events(record)
        previous = record.previous_size
        latest = await self.latest(record.log_id)
        if (0 if latest is None else latest.tree_size) != previous:
            return await self._holds(record)
        try:
            await self._coll.insert_one(
                {
                    "_id": _id(record.log_id, previous),
                    "kind": "checkpoint",
                    "log_id": record.log_id,
                    "previous": previous,
                    "tree_size": record.tree_size,
                    "signed": record.signed,
                    "leaves": record.leaves,
                    "frontier": record.frontier,
                }
            )
        except DuplicateKeyError:
            return await self._holds(record)
        await self._hint(record.log_id, previous, record.tree_size)
        return True

    async def _holds(self, record: CheckpointRecord) -> bool:
        """Whether this very checkpoint is stored already."""
        there = await self._coll.find_one({"_id": _id(record.log_id, record.previous_size)})
        return (
            there is not None
            and int(there["tree_size"]) == record.tree_size
            and bytes(there["leaves"]) == record.leaves
        )

    async def _hint(self, log_id: str, previous: int, tree_size: int) -> None:
        with contextlib.suppress(DuplicateKeyError):
            await self._coll.update_one(
                {"_id": f"{log_id}:latest", "tree_size": {"$lt": tree_size}},
                {"$set": {"kind": "hint", "previous": previous, "tree_size": tree_size}},
                upsert=True,
            )

    async def latest(self, log_id: str) -> CheckpointRecord | None:
        hint = await self._coll.find_one({"_id": f"{log_id}:latest"})
        start = 0 if hint is None else int(hint["previous"])
        found: Doc | None = None
        while (doc := await self._coll.find_one({"_id": _id(log_id, start)})) is not None:
            found = doc
            if int(doc["tree_size"]) <= start:
                break  # an empty checkpoint: nothing extends it
            start = int(doc["tree_size"])
        if found is None:
            return None
        if hint is None or int(found["tree_size"]) > int(hint["tree_size"]):
            await self._hint(log_id, int(found["previous"]), int(found["tree_size"]))
        return _record(found)

    async def all(self, log_id: str) -> list[CheckpointRecord]:
        docs = [d async for d in self._coll.find({"kind": "checkpoint", "log_id": log_id})]
        docs.sort(key=lambda d: int(d["tree_size"]))
        return [_record(d) for d in docs]
