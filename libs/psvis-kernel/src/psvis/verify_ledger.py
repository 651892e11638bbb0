"""AUD-1: the notary's ledger of leaves checked against every signed checkpoint.

A plain function of plain values, so that `audit verify` can send it to a worker process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from psvis.common.v1 import envelope_pb2 as pb
from psvis.merkle import MerkleTree
from psvis.verify_report import Failure

if TYPE_CHECKING:
    from psvis.checkpoints import CheckpointRecord


@dataclass(frozen=True)
class LedgerCheck:
    """What check_ledger found: the checkpoints that passed, the size they cover, or a failure."""

    checkpoints_checked: int
    notarised_size: int
    failure: Failure | None = None


def check_ledger(
    log_id: str, checkpoints: Sequence[CheckpointRecord], keys: Mapping[str, bytes]
) -> LedgerCheck:
    """The notarised ledger of leaves must match every signed root, signatures valid.

    `keys` maps key ids to raw Ed25519 public keys. A plain function of plain values, so that
    `audit verify` can run it in a worker process (rebuilding the Merkle tree costs a SHA-256 per
    event) while it checks the events themselves.
    """
    # imported here: a worker that checks spans of events has no use for them
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from psvis.signing import verify_signature

    publics = {kid: Ed25519PublicKey.from_public_bytes(raw) for kid, raw in keys.items()}
    tree, checked, previous = MerkleTree(), 0, 0

    def failed(check: str, detail: str) -> LedgerCheck:
        return LedgerCheck(checked, previous, Failure(previous, check, detail))

    for record in checkpoints:
        try:
            signed = pb.SignedCheckpoint.FromString(record.signed)
            cp = pb.Checkpoint.FromString(signed.checkpoint)
        except DecodeError as e:
            return failed(
                "checkpoint-decode", f"checkpoint {record.tree_size}: not a signed checkpoint: {e}"
            )
        key = publics.get(cp.key_id)
        if key is None:
            return failed(
                "checkpoint-key", f"checkpoint {cp.tree_size} signed by unknown key {cp.key_id}"
            )
        if not verify_signature(key, signed.signature, signed.checkpoint):
            return failed("checkpoint-signature", f"checkpoint {cp.tree_size}: bad signature")
        if cp.log_id != log_id:
            # the signature covers the log id: a checkpoint of another log vouches for
            # nothing here, whatever the store files it under
            return failed(
                "checkpoint-log",
                f"checkpoint {cp.tree_size} was signed for log {cp.log_id!r}, not {log_id!r}",
            )
        chunk = record.leaves
        if len(chunk) != 32 * (cp.tree_size - previous) or cp.tree_size != record.tree_size:
            return failed(
                "checkpoint-ledger",
                f"checkpoint {cp.tree_size}: ledger holds the wrong number of leaves",
            )
        tree.extend_packed(chunk)
        if tree.root() != cp.root_hash:
            return failed(
                "checkpoint-root",
                f"checkpoint {cp.tree_size}: ledger does not match the signed root",
            )
        checked, previous = checked + 1, cp.tree_size
    return LedgerCheck(checked, previous)
