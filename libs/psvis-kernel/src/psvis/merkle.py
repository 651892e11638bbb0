"""RFC 9162 Merkle tree hashes, kept as a compact range so appends are O(log n)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

EMPTY_ROOT = hashlib.sha256(b"").digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """The root of a growing log without keeping its leaves.

    The stack holds the roots of the perfect subtrees that make up the log, largest
    first; merging equal neighbours on append gives RFC 9162's tree shape.
    """

    def __init__(self) -> None:
        self._sizes: list[int] = []
        self._hashes: list[bytes] = []
        self.size = 0

    def append(self, leaf: bytes) -> None:
        sizes, hashes = self._sizes, self._hashes
        sizes.append(1)
        hashes.append(leaf)
        while len(sizes) > 1 and sizes[-1] == sizes[-2]:
            right = hashes.pop()
            sizes.pop()
            hashes[-1] = node_hash(hashes[-1], right)
            sizes[-1] *= 2
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Same tree as appending one by one; whole aligned subtrees are hashed level by level."""
        todo = list(leaves)
        i = 0
        while i < len(todo):
            # the largest perfect subtree that starts at self.size and fits in what is left
            k = self.size & -self.size or 1 << (len(todo) - i).bit_length()
            while k > len(todo) - i:
                k >>= 1
            level = todo[i : i + k]
            while len(level) > 1:
                level = [node_hash(level[j], level[j + 1]) for j in range(0, len(level), 2)]
            self._sizes.append(k)
            self._hashes.append(level[0])
            self.size += k
            while len(self._sizes) > 1 and self._sizes[-1] == self._sizes[-2]:
                right = self._hashes.pop()
                self._sizes.pop()
                self._hashes[-1] = node_hash(self._hashes[-1], right)
                self._sizes[-1] *= 2
            i += k

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            acc = node_hash(left, acc)
        return acc


def root_of(leaves: Iterable[bytes]) -> bytes:
    tree = MerkleTree()
    tree.extend(leaves)
    return tree.root()


def encode_frontier(tree: MerkleTree) -> bytes:
    return b"".join(
        s.to_bytes(8, "big") + h for s, h in zip(tree._sizes, tree._hashes, strict=True)
    )


def decode_frontier(data: bytes) -> MerkleTree:
    tree = MerkleTree()
    for i in range(0, len(data), 40):
        size = int.from_bytes(data[i : i + 8], "big")
        tree._sizes.append(size)
        tree._hashes.append(data[i + 8 : i + 40])
        tree.size += size
    return tree
