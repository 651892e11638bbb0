"""RFC 9162 Merkle tree hashes, kept as a compact range so appends are O(log n)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

EMPTY_ROOT = hashlib.sha256(b"").digest()


_NODE_PREFIX = hashlib.sha256(b"\x01").copy


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
        self._push(1, leaf)

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Same tree as appending one by one (leaves are 32-byte hashes)."""
        todo = list(leaves)
        if any(len(leaf) != 32 for leaf in todo):
            raise ValueError("Merkle leaves are 32-byte hashes")
        self.extend_packed(b"".join(todo))

    def extend_packed(self, packed: bytes) -> None:
        """Append 32-byte leaves stored back to back, as a checkpoint's ledger holds them.

        Whole aligned subtrees are hashed level by level on packed bytes: a pair of
        children is one 64-byte slice, so a node costs one slice and one SHA-256, from a copy
        of a hash that has taken the 0x01 already (no concatenation, no new digest object).
        `audit verify` rebuilds the whole tree from the ledgers this way, one node per event.
        """
        if len(packed) % 32:
            raise ValueError("Merkle leaves are 32-byte hashes")
        count, i = len(packed) // 32, 0
        while i < count:
            # the largest perfect subtree that starts at self.size and fits in what is left
            k = self.size & -self.size or 1 << (count - i).bit_length()
            while k > count - i:
                k >>= 1
            level = packed[32 * i : 32 * (i + k)]
            while len(level) > 32:
                nodes = []
                for j in range(0, len(level), 64):
                    node = _NODE_PREFIX()
                    node.update(level[j : j + 64])
                    nodes.append(node.digest())
                level = b"".join(nodes)
            self._push(k, level)
            i += k

    def _push(self, size: int, subtree: bytes) -> None:
        sizes, hashes = self._sizes, self._hashes
        sizes.append(size)
        hashes.append(subtree)
        self.size += size
        while len(sizes) > 1 and sizes[-1] == sizes[-2]:
            right = hashes.pop()
            sizes.pop()
            hashes[-1] = node_hash(hashes[-1], right)
            sizes[-1] *= 2

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
