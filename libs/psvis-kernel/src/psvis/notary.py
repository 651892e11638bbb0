"""The notary: follows one log partition and signs its Merkle root at a bounded interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from psvis.checkpoints import CheckpointRecord, CheckpointStore
from psvis.clock import Clock
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import timestamp
from psvis.eventstore.port import EventStore, read_log
from psvis.merkle import MerkleTree, decode_frontier, encode_frontier
from psvis.signing import Signer

log = logging.getLogger(__name__)


def sign_checkpoint(signer: Signer, log_id: str, tree: MerkleTree, clock: Clock) -> bytes:
    checkpoint = pb.Checkpoint(
        log_id=log_id,
        tree_size=tree.size,
        root_hash=tree.root(),
        signed_at=timestamp(clock.now()),
        key_id=signer.key_id,
    ).SerializeToString(deterministic=True)
    signed = pb.SignedCheckpoint(checkpoint=checkpoint, signature=signer.sign(checkpoint))
    return signed.SerializeToString(deterministic=True)


class _Overtaken(Exception):
    """Another notary signed a checkpoint from the same tree size first; or the tree moved on
    past what the log's feed delivers. Either way: go on from the latest checkpoint."""


class Notary:
    """AUD-1: a checkpoint every `every` events, and at most `interval` seconds after an event.

    Notaries of one log may run side by side (replicas, or a restart that overlaps the old
    process): each checkpoint extends the latest one, and the store takes only one checkpoint
    from any tree size. A notary whose checkpoint was refused for that reason was overtaken: it
    drops what it had not signed and goes on from the latest checkpoint, so the checkpoints stay
    one chain and each event is signed once.
    """

    def __init__(
        self,
        store: EventStore,
        checkpoints: CheckpointStore,
        signer: Signer,
        clock: Clock,
        *,
        every: int = 1000,
        interval: float = 2.0,
    ) -> None:
        self._store = store
        self._checkpoints = checkpoints
        self._signer = signer
        self._clock = clock
        self._every = every
        self._interval = interval
        self._tree = MerkleTree()
        self._pending: list[bytes] = []
        self._loaded = False
        self._lock = asyncio.Lock()  # run() and catch_up() never change the tree at once
        self._refused = 0  # checkpoints refused in a row

    @property
    def tree_size(self) -> int:
        return self._tree.size

    async def _load(self) -> None:
        """The tree as the latest checkpoint left it, once (again after a refusal)."""
        if self._loaded:
            return
        latest = await self._checkpoints.latest(self._store.log_id)
        self._tree, self._pending = MerkleTree(), []
        if latest is not None:
            self._tree = decode_frontier(latest.frontier)
            if self._tree.root() != latest.checkpoint().root_hash:
                raise RuntimeError("stored notary frontier does not match its signed root")
        self._loaded = True

    async def catch_up(self) -> int:
        """Notarise everything in the log now; returns the signed tree size."""
        while True:
            try:
                async with self._lock:
                    await self._load()
                    async for event in read_log(self._store, after=self._tree.size - 1):
                        self._add(event.hash)
                        if len(self._pending) >= self._every:
                            await self._checkpoint()
                    if self._pending:
                        await self._checkpoint()
                    return self._tree.size
            except _Overtaken:
                await self._pause()

    async def run(self) -> None:
        """Follow the log for ever."""
        while True:
            try:
                async with self._lock:
                    await self._load()
                    start = self._tree.size
                await self._follow(start)
            except _Overtaken:
                await self._pause()
            finally:
                async with self._lock:
                    with contextlib.suppress(_Overtaken):
                        await self._checkpoint()  # what is pending, if anything

    async def _pause(self) -> None:
        """After a refused checkpoint: a moment, longer each time in a row (the store may keep
        refusing for another reason than a faster notary: then this says so)."""
        if self._refused and self._refused % 20 == 0:
            log.warning("%s: %d checkpoints refused in a row", self._store.log_id, self._refused)
        await asyncio.sleep(min(0.005 * 2**self._refused, 2.0))

    async def _follow(self, start: int) -> None:
        """Sign the log's events from position `start` on as they come."""
        queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()

        async def feed() -> None:
            async for event in read_log(self._store, after=start - 1, follow=True):
                await queue.put((event.position, event.hash))

        feeder = asyncio.create_task(feed())
        loop = asyncio.get_running_loop()
        due = float("inf")  # when the oldest unsigned event must be signed by
        try:
            while True:
                try:
                    timeout = max(0.0, due - loop.time()) if self._pending else None
                    position, leaf = await asyncio.wait_for(queue.get(), timeout=timeout)
                except TimeoutError:
                    async with self._lock:
                        await self._checkpoint()  # unless catch_up() signed it meanwhile
                    continue
                async with self._lock:
                    if not self._loaded:
                        raise _Overtaken  # catch_up() was refused: the tree is to be reloaded
                    if position < self._tree.size:
                        continue  # catch_up() signed it meanwhile
                    if position > self._tree.size:
                        raise _Overtaken  # the tree moved past the feed: start it again
                    if not self._pending:
                        due = loop.time() + self._interval
                    self._add(leaf)
                    if len(self._pending) >= self._every or loop.time() >= due:
                        await self._checkpoint()
        finally:
            feeder.cancel()

    def _add(self, leaf: bytes) -> None:
        self._tree.append(leaf)
        self._pending.append(leaf)

    async def _checkpoint(self) -> None:
        """Sign what is pending, if anything (a checkpoint always adds events)."""
        if not self._pending or not self._loaded:
            return
        signed = sign_checkpoint(self._signer, self._store.log_id, self._tree, self._clock)
        record = CheckpointRecord(
            log_id=self._store.log_id,
            tree_size=self._tree.size,
            signed=signed,
            leaves=b"".join(self._pending),
            frontier=encode_frontier(self._tree),
        )
        if not await self._checkpoints.add(record):
            log.info(
                "%s: another notary signed from %d first; going on from the latest checkpoint",
                record.log_id,
                record.previous_size,
            )
            self._tree, self._pending, self._loaded = MerkleTree(), [], False
            self._refused += 1
            raise _Overtaken
        self._pending, self._refused = [], 0
        log.debug("checkpoint %s at %d", record.log_id, record.tree_size)
