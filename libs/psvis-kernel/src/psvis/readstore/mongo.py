"""Distributed read-model store: JSON documents in MongoDB, one collection per read model.

Documents are stored as {_id: key, version, doc}: `doc` is the document normalised exactly as the
embedded store keeps it (canonical JSON, so keys sorted and tuples as lists), in BSON, which keeps
ints and floats apart. A document BSON (or FerretDB) cannot hold exactly -- a key with "." or a
leading "$" or a NUL, an int beyond 64 bits, -0.0, NaN or infinity, an array directly inside an
array (FerretDB) -- is stored as its canonical JSON text in `json` instead. Either way it comes back exactly as the embedded store returns it.

Collections are `<namespace>.rm.<read model>`, positions `<namespace>.projection_positions`.

Conditional writes (put with `expected`) are `{_id, version: expected}` updates, atomic on
MongoDB. FerretDB 1.24 does not make a filtered update atomic (see psvis.eventstore.mongo_kafka),
so this adapter also serialises its writes to a collection within the process, and sends them
in small commands (BULK_CHUNK: a large update command deadlocks FerretDB 1.24); two processes
writing one read model at once on FerretDB could still both win. Projection runners fold
deterministically, so such a race writes equal documents, but run one writer per read model there.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Any

from pymongo import InsertOne, UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from psvis.eventstore.mongo_docs import BULK_CHUNK, Doc, upsert
from psvis.readstore.port import Document, Write, canonical_json

DUPLICATE_KEY = 11000
INT64 = 1 << 63


def _normalised(doc: Document) -> Document:
    """The document as the embedded store gives it back (json.loads of canonical JSON)."""
    value: Document = json.loads(canonical_json(doc))
    return value


def _bson_exact(value: Any) -> bool:
    if isinstance(value, dict):
        return all(
            isinstance(k, str)
            and "." not in k
            and not k.startswith("$")
            and "\x00" not in k
            and _bson_exact(v)
            for k, v in value.items()
        )
    if isinstance(value, list):  # FerretDB 1.24 refuses arrays directly inside arrays
        return all(not isinstance(v, list) and _bson_exact(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -INT64 <= value < INT64
    if isinstance(value, float):
        return math.isfinite(value) and not (value == 0.0 and math.copysign(1.0, value) < 0)
    return False


def encode(key: str, doc: Document, version: int) -> Doc:
    normal = _normalised(doc)
    if _bson_exact(normal):
        return {"_id": key, "version": version, "doc": normal}
    return {"_id": key, "version": version, "json": canonical_json(doc).decode()}


def decode(stored: Doc) -> Document:
    if "json" in stored:
        value: Document = json.loads(stored["json"])
        return value
    return dict(stored["doc"])


class MongoReadStore:
    def __init__(self, db: AsyncDatabase[Doc], namespace: str) -> None:
        self._db = db
        self._prefix = f"{namespace}.rm."
        self._positions: AsyncCollection[Doc] = db[f"{namespace}.projection_positions"]
        self._locks: dict[str, asyncio.Lock] = {}

    def _coll(self, collection: str) -> AsyncCollection[Doc]:
        return self._db[self._prefix + collection]

    def _lock(self, collection: str) -> asyncio.Lock:
        return self._locks.setdefault(collection, asyncio.Lock())

    async def get(self, collection: str, key: str) -> tuple[Document, int] | None:
        stored = await self._coll(collection).find_one({"_id": key})
        return None if stored is None else (decode(stored), int(stored["version"]))

    async def put(
        self, collection: str, key: str, doc: Document, version: int, expected: int
    ) -> bool:
        return await self.put_many(collection, [Write(key, doc, version, expected)]) == 1

    async def get_many(
        self, collection: str, keys: Sequence[str]
    ) -> dict[str, tuple[Document, int]]:
        coll = self._coll(collection)
        found: dict[str, tuple[Document, int]] = {}
        unique = list(dict.fromkeys(keys))
        for i in range(0, len(unique), 500):
            chunk = unique[i : i + 500]
            async for stored in coll.find({"_id": {"$in": chunk}}):
                found[stored["_id"]] = (decode(stored), int(stored["version"]))
        return found

    async def put_many(self, collection: str, writes: Sequence[Write]) -> int:
        if not writes:
            return 0
        ops: list[InsertOne[Doc] | UpdateOne] = []
        for w in writes:
            stored = encode(w.key, w.doc, w.version)
            if w.expected == 0:
                ops.append(InsertOne(stored))
            else:
                body = {k: v for k, v in stored.items() if k != "_id"}
                unset = {"json": ""} if "doc" in body else {"doc": ""}
                ops.append(
                    UpdateOne(
                        {"_id": w.key, "version": w.expected}, {"$set": body, "$unset": unset}
                    )
                )
        coll = self._coll(collection)
        done = 0
        async with self._lock(collection):
            for i in range(0, len(ops), BULK_CHUNK):
                try:
                    result = await coll.bulk_write(ops[i : i + BULK_CHUNK], ordered=False)
                    done += result.inserted_count + result.matched_count
                except BulkWriteError as e:
                    details = e.details
                    errors = details.get("writeErrors", [])
                    if any(err.get("code") != DUPLICATE_KEY for err in errors):
                        raise
                    done += int(details.get("nInserted", 0)) + int(details.get("nMatched", 0))
        return done

    async def list(self, collection: str) -> list[tuple[str, Document]]:
        rows = [(str(d["_id"]), decode(d)) async for d in self._coll(collection).find({})]
        rows.sort(key=lambda row: row[0])
        return rows

    async def list_json(self, collection: str) -> Sequence[tuple[str, bytes]]:
        return [(key, canonical_json(doc)) for key, doc in await self.list(collection)]

    async def get_position(self, projection: str) -> int:
        stored = await self._positions.find_one({"_id": projection})
        return -1 if stored is None else int(stored["position"])

    async def set_position(self, projection: str, position: int) -> None:
        async with self._lock("\x00positions"):
            await upsert(self._positions, projection, {"$max": {"position": position}})

    async def drop_all(self) -> None:
        for name in await self._db.list_collection_names():
            if name.startswith(self._prefix):
                await self._db.drop_collection(name)
        await self._positions.delete_many({})

    async def drop(self, collections: Sequence[str], projection: str) -> None:
        for collection in collections:
            await self._db.drop_collection(self._prefix + collection)
        await self._positions.delete_one({"_id": projection})

    async def close(self) -> None:
        """The client is owned by whoever opened it."""
