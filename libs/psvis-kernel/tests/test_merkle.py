"""AUD-1: the notary's tree is RFC 9162's, checked against the recursive definition."""

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psvis.merkle import EMPTY_ROOT, MerkleTree, decode_frontier, encode_frontier, root_of


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.1 MTH, written the slow way."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(
        b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])
    ).digest()


def leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"\x00" + bytes([i % 256, i // 256])).digest() for i in range(n)]


def test_empty_tree_has_the_rfc_empty_root() -> None:
    assert MerkleTree().root() == EMPTY_ROOT


@given(st.integers(min_value=1, max_value=300))
@settings(max_examples=60, deadline=None)
def test_root_matches_rfc9162_for_every_size(n: int) -> None:
    assert root_of(leaves(n)) == reference_root(leaves(n))


def test_frontier_round_trip_resumes_the_same_tree() -> None:
    tree = MerkleTree()
    tree.extend(leaves(37))
    resumed = decode_frontier(encode_frontier(tree))
    assert resumed.size == 37 and resumed.root() == tree.root()
    resumed.extend(leaves(50)[37:])
    assert resumed.root() == reference_root(leaves(50))


def test_changing_one_leaf_changes_the_root() -> None:
    changed = leaves(20)
    changed[7] = hashlib.sha256(b"other").digest()
    assert root_of(changed) != root_of(leaves(20))


@given(st.lists(st.integers(min_value=0, max_value=70), max_size=8))
@settings(max_examples=80, deadline=None)
def test_packed_chunks_give_the_same_roots_as_appending_one_by_one(chunks: list[int]) -> None:
    """What audit verify does with checkpoint ledgers: any chunking, checked at every boundary."""
    all_leaves = leaves(sum(chunks))
    packed, one_by_one, done = MerkleTree(), MerkleTree(), 0
    for size in chunks:
        packed.extend_packed(b"".join(all_leaves[done : done + size]))
        for leaf in all_leaves[done : done + size]:
            one_by_one.append(leaf)
        done += size
        assert packed.size == one_by_one.size == done
        assert packed.root() == one_by_one.root() == reference_root(all_leaves[:done])
    assert encode_frontier(packed) == encode_frontier(one_by_one)


def test_leaves_must_be_32_byte_hashes() -> None:
    with pytest.raises(ValueError):
        MerkleTree().extend_packed(b"x" * 33)
    with pytest.raises(ValueError):
        MerkleTree().extend([b"x" * 31, b"y" * 33])
