"""AUD-1, AUD-2: the per-event checks that a whole log and a span of it share.

Each event at its offset, matching the notarised leaf, decoding as an envelope, and linked
to its stream's previous event; the first check that fails is named.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from itertools import islice
from typing import NoReturn

from google.protobuf.message import DecodeError

from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import event_hash
from psvis.eventstore.port import StoredRow
from psvis.validate import shown

NO_HEAD = (0, b"")


class EventChecks(abc.ABC):
    """The per-event checks of AUD-1/AUD-2 over consecutive events, from offset `start` on.

    `leaves` are the notarised leaves from `start` on, as the ledger stores them. A stream
    met for the first time is handed to _first_seen: a whole log requires it to begin at
    version 1; a span checked on its own leaves its link to the spans before for later.
    """

    def __init__(self, start: int, leaves: bytes) -> None:
        self._heads: dict[str, tuple[int, bytes]] = {}
        self._start = start
        self._leaves = leaves
        self._notarised = start + len(leaves) // 32
        self._next = start

    @property
    def next_offset(self) -> int:
        """The offset of the first event not yet checked."""
        return self._next

    @abc.abstractmethod
    def _fail(self, offset: int, check: str, detail: str) -> NoReturn:
        """Record that the event at `offset` fails `check`, and stop (raise Stop)."""

    def _first_seen(self, offset: int, stream: str, version: int, prev: bytes) -> tuple[int, bytes]:
        """The head a stream met for the first time at `offset` follows."""
        return NO_HEAD

    def _leaf_at(self, offset: int) -> bytes:
        at = 32 * (offset - self._start)
        return self._leaves[at : at + 32]

    def check_event(self, offset: int, data: bytes, filed_under: bytes | None = None) -> None:
        self.check_page(((offset, data, filed_under),))

    def check_page(self, page: Sequence[StoredRow]) -> None:
        """Check stored events (StoredRow) that follow the events checked so far.

        This is where `audit verify` spends its time, so the work is shaped for CPython:
        the leaf hashes of the page in one map (the leaf is also the link,
        AUD-1), the offsets and the notarised leaves compared as whole lists and byte
        strings, then one loop that decodes each envelope and follows its stream. When
        something is wrong the fast path only stops; _explain names the check that fails,
        in the order a plain event-by-event check would have found it.
        """
        decode, heads, first_seen = pb.EventEnvelope.FromString, self._heads, self._first_seen
        leaves = list(map(event_hash, [data for _, data, _ in page]))
        placed = self._placed(page, leaves)
        checked = self._next
        for (_, data, filed_under), leaf in islice(zip(page, leaves, strict=True), placed):
            try:
                env = decode(data)
            except DecodeError:
                break
            stream, version = env.stream_id, env.stream_version
            last, prev = heads.get(stream) or first_seen(checked, stream, version, env.prev_hash)
            if version != last + 1 or env.prev_hash != prev:
                break
            if filed_under is not None and filed_under != stream.encode():
                break
            heads[stream] = (version, leaf)
            checked += 1
        i = checked - self._next
        self._next = checked
        if i < len(page):
            self._explain(*page[i], leaves[i])

    def _placed(self, page: Sequence[StoredRow], leaves: list[bytes]) -> int:
        """How many events, from the page's first, are at their offset and match the ledger."""
        start = self._next
        notarised = min(start + len(page), max(start, self._notarised))
        offsets = [row[0] for row in page]
        base = 32 * (start - self._start)
        if (
            offsets == list(range(start, start + len(page)))
            and b"".join(leaves[: notarised - start])
            == self._leaves[base : base + 32 * (notarised - start)]
        ):
            return len(page)  # the usual case, compared in C
        for i, offset in enumerate(offsets):
            at = start + i
            if offset != at or (at < notarised and leaves[i] != self._leaf_at(at)):
                return i
        return len(page)

    def _explain(self, found: int, data: bytes, filed_under: bytes | None, leaf: bytes) -> NoReturn:
        """The first check that the event at self._next fails, found the slow way."""
        offset = self._next
        if found != offset:
            self._missing(offset, found)
        if offset < self._notarised and leaf != self._leaf_at(offset):
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
        head = self._heads.get(stream) or self._first_seen(
            offset, stream, stream_version, env.prev_hash
        )
        self._check_link(offset, stream, stream_version, env.prev_hash, head)
        if filed_under is not None and filed_under != stream.encode():
            # what replay and the stream index would be misled by, though the bytes are intact
            self._fail(
                offset,
                "stream-column",
                f"{stream} v{stream_version} is filed under stream"
                f" {shown(filed_under.decode(errors='replace'))} in the log's table",
            )
        raise AssertionError(f"offset {offset} passes every check the page loop stopped at")

    def _missing(self, offset: int, found: int) -> NoReturn:
        kind = "missing" if found > offset else "out-of-order"
        self._fail(offset, "offset", f"expected offset {offset}, found {found} ({kind} event)")

    def _check_link(
        self,
        offset: int,
        stream: str,
        stream_version: int,
        prev_hash: bytes,
        head: tuple[int, bytes],
    ) -> None:
        version, prev = head
        if stream_version != version + 1:
            self._fail(
                offset, "stream-version", f"{stream}: version {stream_version} follows {version}"
            )
        if prev_hash != prev:
            self._fail(
                offset,
                "prev-hash",
                f"{stream} v{stream_version}: link to the previous event is broken",
            )
