"""The ReadStore contract (invariants 2 and 4), run on the SQLite and the MongoDB adapters."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psvis.readstore.port import Write, canonical_digest, canonical_json
from psvis.readstore.sqlite import SqliteReadStore
from psvis.sqlite_db import SqliteDatabase
from store_harness import BACKENDS, Harness, open_harness


@pytest.fixture(params=BACKENDS)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(request.param, tmp_path) as h:
        yield h


DOCS: dict[str, dict[str, Any]] = {
    "plain": {"name": "Camera 7", "count": 3, "ratio": 0.25, "ok": True, "none": None},
    "int-vs-float": {"one": 1, "one-point-oh": 1.0, "list": [1, 1.0, 2, 2.5, -0.5, 0]},
    "nested": {"a": {"b": {"c": [{"d": []}, {}, [[], [1]]]}}, "empty": {}},
    "unicode": {"名称": "武汉 😀", "é": "ü", "quote": 'a "b" \\ c', "nul": "x\u0000y"},
    "awkward-keys": {"a.b": 1, "$set": 2, "": 3, "nested": {"x.y": {"$z": [1]}}},
    "big-numbers": {"big": 2**70, "neg": -(2**63) - 1, "max64": 2**63 - 1, "tiny": 5e-324},
    "negative-zero": {"z": -0.0, "list": [-0.0, 0.0]},
    "tuple": {"pair": (1, "two"), "key order": {"b": 1, "a": 2}},
    "small-floats": {"a": 1e-7, "b": [1e-05, 1.23e-18, 0.0001]},
}


def exact(value: Any) -> bytes:
    """Compares types too: canonical JSON tells 1 from 1.0 and -0.0 from 0.0."""
    return canonical_json(value)


@pytest.mark.parametrize("key", sorted(DOCS))
async def test_documents_come_back_exactly(harness: Harness, key: str) -> None:
    reads = harness.reads
    doc = DOCS[key]
    assert await reads.put("models", key, doc, 1, 0)
    found = await reads.get("models", key)
    assert found is not None
    got, version = found
    assert version == 1
    assert exact(got) == exact(doc)
    assert got == json.loads(canonical_json(doc))
    assert (await reads.get_many("models", [key]))[key] == (got, 1)
    assert await reads.list("models") == [(key, got)]
    changed = {**json.loads(canonical_json(doc)), "extra": 1.5}
    assert await reads.put("models", key, changed, 2, 1)
    found = await reads.get("models", key)
    assert found is not None
    assert exact(found[0]) == exact(changed)
    assert found[1] == 2


async def test_put_writes_only_at_the_expected_version(harness: Harness) -> None:
    reads = harness.reads
    assert await reads.get("c", "k") is None
    assert await reads.put("c", "k", {"v": 1}, 1, 0)
    assert not await reads.put("c", "k", {"v": "again"}, 1, 0)  # a redelivery: no effect
    assert not await reads.put("c", "k", {"v": "stale"}, 2, 0)
    assert not await reads.put("c", "k", {"v": "skips"}, 3, 2)
    assert await reads.get("c", "k") == ({"v": 1}, 1)
    assert await reads.put("c", "k", {"v": 2}, 2, 1)
    assert not await reads.put("c", "k", {"v": "dup"}, 2, 1)
    assert await reads.get("c", "k") == ({"v": 2}, 2)
    assert not await reads.put("c", "absent", {"v": 1}, 2, 1)
    assert await reads.get("c", "absent") is None


WRITES = [
    Write("b", {"n": 1, "tags": ["x"]}, 1, 0),
    Write("a", {"n": 1.0}, 3, 0),
    Write("c", {"n": {"deep": [1, 2]}}, 1, 0),
]
NEXT = [
    Write("b", {"n": 2, "tags": ["x", "y"]}, 2, 1),
    Write("a", {"n": 2.5}, 4, 3),
    Write("d", {"n": 0}, 1, 0),
]


async def reference_digest(folder: Path) -> str:
    db = SqliteDatabase(folder / "reference.db")
    reads = SqliteReadStore(db)
    await reads.put_many("one", WRITES)
    await reads.put_many("one", NEXT)
    await reads.put_many("two", WRITES[:1])
    digest = await canonical_digest(reads, ["one", "two", "never-written"])
    await db.close()
    return digest


async def test_put_many_is_idempotent_and_digests_agree(harness: Harness, tmp_path: Path) -> None:
    reads = harness.reads
    assert await reads.put_many("one", WRITES) == 3
    assert await reads.put_many("one", WRITES) == 0  # the same batch delivered again
    assert await reads.put_many("one", []) == 0
    assert await reads.put_many("one", [*NEXT, WRITES[0]]) == 3  # WRITES[0] is stale now
    assert await reads.put_many("one", NEXT) == 0
    assert await reads.put_many("two", WRITES[:1]) == 1
    assert await reads.list("one") == [
        ("a", {"n": 2.5}),
        ("b", {"n": 2, "tags": ["x", "y"]}),
        ("c", {"n": {"deep": [1, 2]}}),
        ("d", {"n": 0}),
    ]
    got = await reads.get_many("one", ["d", "zzz", "a", "a"])
    assert got == {"d": ({"n": 0}, 1), "a": ({"n": 2.5}, 4)}
    digest = await canonical_digest(reads, ["one", "two", "never-written"])
    assert digest == await reference_digest(tmp_path)


async def test_many_writes_in_one_batch(harness: Harness) -> None:
    reads = harness.reads
    first = [Write(f"k{i:04d}", {"i": i}, 1, 0) for i in range(120)]
    assert await reads.put_many("bulk", first) == 120
    second = [Write(f"k{i:04d}", {"i": i, "again": True}, 2, 1) for i in range(120)]
    assert await reads.put_many("bulk", second) == 120
    assert await reads.put_many("bulk", second) == 0
    listed = await reads.list("bulk")
    assert [k for k, _ in listed] == [f"k{i:04d}" for i in range(120)]
    assert len(await reads.get_many("bulk", [k for k, _ in listed])) == 120


async def test_list_is_in_key_order(harness: Harness) -> None:
    reads = harness.reads
    keys = ["b", "a", "B", "10", "9", "é", "z", "", "a-1", "a.1", "中"]
    for key in keys:
        assert await reads.put("ordered", key, {"key": key}, 1, 0)
    assert [k for k, _ in await reads.list("ordered")] == sorted(keys)
    assert await reads.list("empty") == []


async def test_concurrent_puts_have_one_winner(harness: Harness) -> None:
    reads = harness.reads
    created = await asyncio.gather(*(reads.put("race", "k", {"by": i}, 1, 0) for i in range(20)))
    assert sum(created) == 1
    moved = await asyncio.gather(*(reads.put("race", "k", {"by": i}, 2, 1) for i in range(20)))
    assert sum(moved) == 1
    found = await reads.get("race", "k")
    assert found == ({"by": moved.index(True)}, 2)


async def test_projection_positions(harness: Harness) -> None:
    reads = harness.reads
    assert await reads.get_position("p") == -1
    await reads.set_position("p", 5)
    await reads.set_position("p", 3)  # never goes back
    await reads.set_position("q", 0)
    assert await reads.get_position("p") == 5
    assert await reads.get_position("q") == 0
    await reads.set_position("p", 9)
    assert await reads.get_position("p") == 9


async def test_drop_all_forgets_models_and_positions(harness: Harness) -> None:
    reads = harness.reads
    await reads.put("x", "k", {"v": 1}, 1, 0)
    await reads.put("y", "k", {"v": 1}, 1, 0)
    await reads.set_position("p", 7)
    await reads.drop_all()
    assert await reads.list("x") == []
    assert await reads.get("y", "k") is None
    assert await reads.get_position("p") == -1
    assert await reads.put("x", "k", {"v": 2}, 1, 0)  # usable afterwards


async def test_drop_forgets_only_the_collections_and_the_position_named(harness: Harness) -> None:
    reads = harness.reads
    for collection in ("x", "y", "z"):
        await reads.put(collection, "k", {"v": 1}, 1, 0)
    await reads.set_position("p", 7)
    await reads.set_position("q", 4)
    await reads.drop(["x", "y", "never-written"], "p")
    assert await reads.get("x", "k") is None and await reads.list("y") == []
    assert await reads.get("z", "k") == ({"v": 1}, 1)  # another runner's
    assert (await reads.get_position("p"), await reads.get_position("q")) == (-1, 4)
    assert await reads.put("x", "k", {"v": 2}, 1, 0)  # usable afterwards


async def test_list_json_is_the_canonical_json_of_list(harness: Harness) -> None:
    reads = harness.reads
    for key, doc in DOCS.items():
        assert await reads.put("models", key, doc, 1, 0)
    listed = await reads.list("models")
    assert [(k, bytes(j)) for k, j in await reads.list_json("models")] == [
        (k, canonical_json(d)) for k, d in listed
    ]


@pytest.mark.parametrize("key", sorted(DOCS))
def test_canonical_json_is_sorted_compact_utf8_json(key: str) -> None:
    doc = DOCS[key]
    expected = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if key == "small-floats":  # the same numbers, spelt as orjson spells them
        expected = '{"a":1e-7,"b":[0.00001,1.23e-18,0.0001]}'
    assert canonical_json(doc) == expected.encode()


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _keys_sorted(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys)
    return dict(pairs)


@given(JSON_VALUES)
def test_canonical_json_decodes_to_the_same_value_and_is_stable(value: Any) -> None:
    encoded = canonical_json(value)
    decoded = json.loads(encoded, object_pairs_hook=_keys_sorted)
    assert decoded == value
    assert canonical_json(decoded) == encoded  # types kept: 1 stays 1, 1.0 stays 1.0
    if not _has_small_float(value):  # which orjson spells its own way (1e-7 for 1e-07)
        assert (
            encoded
            == json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        )


def test_canonical_json_of_what_orjson_and_json_disagree_on_is_json_s() -> None:
    awkward = {"nan": math.nan, "inf": [math.inf, -math.inf], "none": None, "big": 2**64}
    assert (
        canonical_json(awkward)
        == json.dumps(awkward, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    )
    with pytest.raises(TypeError, match="datetime"):
        canonical_json({"at": datetime(2024, 1, 1, tzinfo=UTC)})


def _has_small_float(value: Any) -> bool:
    if isinstance(value, float):
        return 0 < abs(value) < 1e-4
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list) and any(map(_has_small_float, value))
