"""AUD-1, AUD-2: check a log from its stored bytes alone and name the first offset that fails."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from psvis.checkpoints import CheckpointRecord
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import event_hash
from psvis.merkle import MerkleTree
from psvis.signing import verify_signature


@dataclass(frozen=True)
class Failure:
    offset: int
    check: str
    detail: str


@dataclass
class VerifyReport:
    log_id: str
    ok: bool = True
    events_checked: int = 0
    streams: int = 0
    checkpoints_checked: int = 0
    notarised_size: int = 0
    unnotarised_tail: int = 0
    failure: Failure | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    pass


_NO_HEAD = (0, b"")


class LogVerifier:
    """Streams the log once: O(1) work per event, memory O(streams)."""

    def __init__(
        self,
        log_id: str,
        checkpoints: Sequence[CheckpointRecord],
        keys: dict[str, Ed25519PublicKey],
    ) -> None:
        self.report = VerifyReport(log_id=log_id)
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._leaves = b""
        self._checkpoints = checkpoints
        self._keys = keys
        self._next = 0
        self._notarised = 0

    def _fail(self, offset: int, check: str, detail: str) -> None:
        self.report.ok = False
        self.report.failure = Failure(offset, check, detail)
        self.report.events_checked = self._next
        raise _Stop

    def check_checkpoints(self) -> None:
        """The notarised ledger of leaves must match every signed root, signatures valid."""
        tree, leaves, previous = MerkleTree(), [], 0
        for record in self._checkpoints:
            signed = pb.SignedCheckpoint.FromString(record.signed)
            cp = pb.Checkpoint.FromString(signed.checkpoint)
            key = self._keys.get(cp.key_id)
            if key is None:
                self._fail(
                    previous,
                    "checkpoint-key",
                    f"checkpoint {cp.tree_size} signed by unknown key {cp.key_id}",
                )
            elif not verify_signature(key, signed.signature, signed.checkpoint):
                self._fail(
                    previous, "checkpoint-signature", f"checkpoint {cp.tree_size}: bad signature"
                )
            chunk = record.leaves
            if len(chunk) != 32 * (cp.tree_size - previous) or cp.tree_size != record.tree_size:
                self._fail(
                    previous,
                    "checkpoint-ledger",
                    f"checkpoint {cp.tree_size}: ledger holds the wrong number of leaves",
                )
            tree.extend(chunk[i : i + 32] for i in range(0, len(chunk), 32))
            if tree.root() != cp.root_hash:
                self._fail(
                    previous,
                    "checkpoint-root",
                    f"checkpoint {cp.tree_size}: ledger does not match the signed root",
                )
            leaves.append(chunk)
            previous = cp.tree_size
            self.report.checkpoints_checked += 1
        self._leaves = b"".join(leaves)
        self.report.notarised_size = self._notarised = previous

    def check_event(self, offset: int, data: bytes) -> None:
        if offset != self._next:
            kind = "missing" if offset > self._next else "out-of-order"
            self._fail(
                self._next, "offset", f"expected offset {self._next}, found {offset} ({kind} event)"
            )
        leaf = event_hash(data)
        if offset < self._notarised and leaf != self._leaves[32 * offset : 32 * offset + 32]:
            self._fail(
                offset,
                "notarised-leaf",
                "stored bytes differ from what the notary signed (changed, inserted, removed or reordered)",
            )
        try:
            env = pb.EventEnvelope.FromString(data)
        except DecodeError as e:
            self._fail(offset, "decode", f"not an event envelope: {e}")
        stream, stream_version = env.stream_id, env.stream_version
        version, prev = self._heads.get(stream, _NO_HEAD)
        if stream_version != version + 1:
            self._fail(
                offset, "stream-version", f"{stream}: version {stream_version} follows {version}"
            )
        if env.prev_hash != prev:
            self._fail(
                offset,
                "prev-hash",
                f"{stream} v{stream_version}: link to the previous event is broken",
            )
        self._heads[stream] = (stream_version, leaf)
        self._next = offset + 1

    def finish(self) -> None:
        size = self.report.events_checked = self._next
        if size < self.report.notarised_size:
            self._fail(
                size,
                "truncated",
                f"the notary signed {self.report.notarised_size} events; the log holds {size}",
            )
        self.report.unnotarised_tail = size - self.report.notarised_size
        self.report.streams = len(self._heads)
        if self.report.unnotarised_tail:
            self.report.warnings.append(
                f"{self.report.unnotarised_tail} newest events are not yet covered by a checkpoint"
            )


def verify_log(
    log_id: str,
    events: Iterable[tuple[int, bytes]],
    checkpoints: Sequence[CheckpointRecord],
    keys: dict[str, Ed25519PublicKey],
    progress: Callable[[int], None] | None = None,
) -> VerifyReport:
    verifier = LogVerifier(log_id, checkpoints, keys)
    try:
        verifier.check_checkpoints()
        for n, (offset, data) in enumerate(events, 1):
            verifier.check_event(offset, data)
            if progress is not None and n % 10000 == 0:
                progress(n)
        verifier.finish()
    except _Stop:
        pass
    return verifier.report
