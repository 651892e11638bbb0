"""What the distributed event store and its outbox relay agree on, and FerretDB-safe writes.

The store (psvis.eventstore.mongo_kafka) and the relay (psvis.eventstore.outbox_relay) share a
namespace's MongoDB collections and the `_id`s in them: a commit's slot, a log_index anchor every
STRIDE positions. The relay stamps each Kafka record's log position in the POSITION_HEADER, which
the store's reader and the live subscriber (psvis.subscribers) check. `upsert`, `few_at_a_time` and
BULK_CHUNK work around FerretDB 1.24, for the read-model store (psvis.readstore.mongo) as well.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Sequence
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

Doc = dict[str, Any]
STRIDE = 64  # log_index keeps the offset of every STRIDE-th position
POSITION_HEADER = "psvis-position"
# FerretDB 1.24 keeps one SQLite connection open per update statement until the whole update
# command ends (a `defer` in a loop), from a pool of 100: an update command with ~100 statements,
# or enough of them at once, deadlocks the server for good. So updates go in small commands, and
# upserts one by one (FerretDB also drops nModified from an update reply holding an E11000).
BULK_CHUNK = 16


def slot(stream_id: str, version: int) -> str:
    """The `_id` of the commit that follows `version` of a stream (fixed width: unambiguous)."""
    return f"{stream_id}:{version:012d}"


def anchor_id(position: int) -> str:
    """The `_id` of the log_index document of a position (fixed width: sorts as it counts)."""
    return f"{position:016d}"


class Collections:
    """The MongoDB collections of one namespace."""

    def __init__(self, db: AsyncDatabase[Doc], namespace: str) -> None:
        self.commits: AsyncCollection[Doc] = db[f"{namespace}.commits"]
        self.streams: AsyncCollection[Doc] = db[f"{namespace}.streams"]
        self.pending: AsyncCollection[Doc] = db[f"{namespace}.pending"]
        self.published: AsyncCollection[Doc] = db[f"{namespace}.published"]
        self.log_index: AsyncCollection[Doc] = db[f"{namespace}.log_index"]
        self.relay: AsyncCollection[Doc] = db[f"{namespace}.relay"]


async def upsert(coll: AsyncCollection[Doc], key: str, update: Doc) -> None:
    """An upsert; FerretDB answers E11000 when two race to create the document: then update it."""
    try:
        await coll.update_one({"_id": key}, update, upsert=True)
    except DuplicateKeyError:
        await coll.update_one({"_id": key}, update)


async def few_at_a_time(work: Sequence[Awaitable[Any]], parallel: int = 8) -> None:
    """Run single-document writes a few at a time (see BULK_CHUNK)."""
    gate = asyncio.Semaphore(parallel)

    async def one(item: Awaitable[Any]) -> None:
        started = False
        try:
            async with gate:
                started = True
                await item
        finally:
            if not started and inspect.iscoroutine(item):
                item.close()  # cancelled while waiting for the gate: it never ran

    await asyncio.gather(*(one(w) for w in work))
