"""Read models: JSON documents per collection, each stamped with the stream version it reflects."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

Document = dict[str, Any]


@dataclass(frozen=True)
class Write:
    key: str
    doc: Document
    version: int
    expected: int


class ReadStore(Protocol):
    """Every adapter keeps these promises; tests/contract proves it for each one.

    - put(coll, key, doc, version, expected) and put_many writes only if the stored document is at
      `expected` (0: absent), so a consumer that sees an event twice applies it once.
    - documents come back exactly as written (JSON types), listed in key order.
    - a document is a JSON object with string keys, so canonical_json(doc) read back and encoded
      again gives the same bytes (list_json and the digest rely on it).
    """

    async def get(self, collection: str, key: str) -> tuple[Document, int] | None: ...

    async def put(
        self, collection: str, key: str, doc: Document, version: int, expected: int
    ) -> bool: ...

    async def get_many(
        self, collection: str, keys: Sequence[str]
    ) -> dict[str, tuple[Document, int]]: ...

    async def put_many(self, collection: str, writes: Sequence[Write]) -> int:
        """Each write as put(); returns how many took effect."""
        ...

    async def list(self, collection: str) -> list[tuple[str, Document]]: ...

    async def list_json(self, collection: str) -> Sequence[tuple[str, bytes]]:
        """(key, canonical_json(document)) in key order, as `list` would give them."""
        ...

    async def get_position(self, projection: str) -> int: ...

    async def set_position(self, projection: str, position: int) -> None: ...

    async def drop_all(self) -> None: ...

    async def drop(self, collections: Sequence[str], projection: str) -> None:
        """Forget these collections' documents and this projection runner's position, and
        nothing else (another runner's read models in the same store stay as they are)."""
        ...

    async def close(self) -> None: ...


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8: what the digest hashes.

    Written by orjson, ten times faster than the json module on read-model documents; its
    numbers differ from json.dumps only in the spelling of some small floats (1e-7, not 1e-07),
    the same value either way. What orjson would write differently from json, or refuses, goes
    through json as before: integers beyond 64 bits, NaN and infinities (json's NaN, where
    orjson writes null), and values that are not JSON (datetimes, dataclasses: json refuses
    them; subclasses of str, int, dict and list). UUIDs and enums, which json refuses too, orjson
    writes as their value.
    """
    try:
        encoded = orjson.dumps(value, default=_not_plain_json, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _CANONICAL.encode(value).encode()
    if b"null" in encoded and _has_non_finite(value):
        return _CANONICAL.encode(value).encode()
    return encoded


_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _not_plain_json(value: Any) -> Any:
    raise TypeError  # orjson then raises JSONEncodeError, and json has its say


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list | tuple):
        return False
    return any(_has_non_finite(v) for v in value)


def canonical_text(value: Any) -> str:
    """canonical_json as text, for stores that keep text."""
    return canonical_json(value).decode()


# = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False), which would
# build a new encoder on every call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


async def canonical_digest(store: ReadStore, collections: Iterable[str]) -> str:
    """A stable digest of read models: equal digests mean equal documents (invariant 4)."""
    h = hashlib.sha256()
    for coll in sorted(collections):
        prefix = b"[" + canonical_json(coll) + b","
        for key, doc in await store.list_json(coll):
            # = canonical_json([coll, key, doc]) without decoding and encoding the document
            h.update(b"".join((prefix, canonical_json(key), b",", doc, b"]")))
    return h.hexdigest()
