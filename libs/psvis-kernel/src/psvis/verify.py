"""AUD-1, AUD-2: check a log from its stored bytes alone and name the first offset that fails."""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, NoReturn

from google.protobuf.message import DecodeError

from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import event_hash
from psvis.eventstore.port import StoredRow
from psvis.merkle import MerkleTree
from psvis.validate import shown

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from psvis.checkpoints import CheckpointRecord


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
    # the events not covered by a checkpoint: those the log held when the verify began (what
    # --max-unsigned counts), and those appended since (for the notary's next checkpoint)
    unnotarised_tail: int = 0
    unnotarised_appended: int = 0
    failure: Failure | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Stop(Exception):
    pass


_NO_HEAD = (0, b"")


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


def serve_jobs(conn: Connection) -> None:
    """A worker process's whole life: run each job it is sent and send back what it returns.

    A job is a picklable callable (check_ledger or check_span_file with their arguments); None
    or the parent going away ends the worker. It lives here, in a module that imports little,
    so the worker starts quickly.
    """
    try:
        while (job := conn.recv()) is not None:
            conn.send(job())
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the parent went away
        pass
    finally:
        conn.close()


def serve_fd(fd: int) -> None:
    """serve_jobs on the connection at file descriptor fd: how workers.spawn_worker starts one."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's, which stops its workers
    serve_jobs(Connection(fd))


class _EventChecks(abc.ABC):
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
        """Record that the event at `offset` fails `check`, and stop (raise _Stop)."""

    def _first_seen(self, offset: int, stream: str, version: int, prev: bytes) -> tuple[int, bytes]:
        """The head a stream met for the first time at `offset` follows."""
        return _NO_HEAD

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


@dataclass
class SpanReport:
    """What SpanChecker found in the events [start, start + checked) of its span.

    `firsts` holds each stream's first event in the span (offset, version, prev_hash), whose
    link to the spans before is for LogVerifier.join_span to check; `heads` each stream's last
    (version, leaf). `failure` is the first check failed within the span, if any; a span that
    ends early without one is where the log ends.
    """

    start: int
    end: int
    checked: int
    firsts: dict[str, tuple[int, int, bytes]]
    heads: dict[str, tuple[int, bytes]]
    failure: Failure | None = None


class SpanChecker(_EventChecks):
    """The events [start, end) of a log, checked on their own (in a worker process)."""

    def __init__(self, start: int, end: int, leaves: bytes) -> None:
        super().__init__(start, leaves)
        self._end = end
        self._firsts: dict[str, tuple[int, int, bytes]] = {}
        self._failure: Failure | None = None

    def _first_seen(self, offset: int, stream: str, version: int, prev: bytes) -> tuple[int, bytes]:
        self._firsts[stream] = (offset, version, prev)
        return version - 1, prev  # for join_span to check

    def _fail(self, offset: int, check: str, detail: str) -> NoReturn:
        self._failure = Failure(offset, check, detail)
        self._next = offset
        raise _Stop

    @property
    def complete(self) -> bool:
        return self._next == self._end

    def rows_end(self, next_offset: int | None) -> None:
        """The span's rows ran out before its end (its caller has seen it not complete); the
        log's next row is at next_offset, if any (None: the log ends here)."""
        if next_offset is not None:
            self._missing(self._next, next_offset)

    def report(self) -> SpanReport:
        return SpanReport(
            self._start,
            self._end,
            self._next - self._start,
            self._firsts,
            self._heads,
            self._failure,
        )

    def unreadable(self, detail: str) -> None:
        self._failure = Failure(self._next, "storage", detail)


class LogVerifier(_EventChecks):
    """Streams the log once: O(1) work per event, memory O(streams).

    The signed checkpoints and their ledger are checked by check_checkpoints, or by
    check_ledger elsewhere and handed to apply_ledger; until then the events are compared with
    the ledger as stored. A failure of the ledger is reported before any failure of the events,
    as if it had been checked first. Spans of the log checked elsewhere (SpanChecker) are
    joined in order by join_span.
    """

    def __init__(
        self,
        log_id: str,
        checkpoints: Sequence[CheckpointRecord],
        keys: dict[str, Ed25519PublicKey],
        max_unsigned: int | None = None,
        size_before: int | None = None,
    ) -> None:
        super().__init__(0, b"".join(record.leaves for record in checkpoints))
        self.report = VerifyReport(log_id=log_id)
        self._checkpoints = checkpoints
        self._keys = keys
        self._max_unsigned = max_unsigned  # more unsigned newest events than this fail
        # the log's size before the checkpoints were read: events appended since (a verify
        # of a running platform) are for a later checkpoint, not unsigned ones
        self._size_before = size_before

    def _fail(self, offset: int, check: str, detail: str) -> NoReturn:
        self.report.ok = False
        self.report.failure = Failure(offset, check, detail)
        self.report.events_checked = self._next
        raise _Stop

    def ledger_job(self) -> Callable[[], LedgerCheck]:
        """check_ledger with its arguments as plain values, which another process can be sent."""
        raw = {kid: key.public_bytes_raw() for kid, key in self._keys.items()}
        return functools.partial(check_ledger, self.report.log_id, list(self._checkpoints), raw)

    def ledger_check(self) -> LedgerCheck:
        return self.ledger_job()()

    def check_checkpoints(self) -> None:
        self.apply_ledger(self.ledger_check())

    def apply_ledger(self, found: LedgerCheck) -> None:
        self.report.checkpoints_checked = found.checkpoints_checked
        if found.failure is not None:
            self._next = 0  # nothing the ledger was to vouch for counts as checked
            self._fail(found.failure.offset, found.failure.check, found.failure.detail)
        self.report.notarised_size = found.notarised_size

    def unreadable(self, detail: str) -> NoReturn:
        """The store failed to give the events from self._next on (or the checkpoints)."""
        self._fail(self._next, "storage", detail)

    def span_leaves(self, start: int, end: int) -> bytes:
        """The notarised leaves, as stored, that a SpanChecker of [start, end) compares with."""
        return self._leaves[32 * start : 32 * min(end, self._notarised)]

    def join_span(self, span: SpanReport) -> bool:
        """Take in a span that follows the events checked so far; False if the log ends in it.

        The span's first event of each stream must follow that stream's head so far; the
        first such link that fails, or the span's own failure, whichever comes first (a link
        before a stream column at the same offset, as _explain checks them), is the failure.
        """
        if span.start != self._next:
            raise ValueError(f"span at {span.start} joined after {self._next} events")
        heads = self._heads
        broken = [
            (offset, stream)
            for stream, (offset, version, prev) in span.firsts.items()
            if heads.get(stream, _NO_HEAD) != (version - 1, prev)
        ]
        if broken:
            offset, stream = min(broken)
            if span.failure is None or offset <= span.failure.offset:
                _, version, prev = span.firsts[stream]
                self._next = offset
                self._check_link(offset, stream, version, prev, heads.get(stream, _NO_HEAD))
        if span.failure is not None:
            self._next = span.failure.offset
            self._fail(span.failure.offset, span.failure.check, span.failure.detail)
        heads.update(span.heads)
        self._next = span.start + span.checked
        return self._next == span.end

    def finish(self, first_position: int | None = None) -> None:
        """The log checked to its end: what remains to say of it as a whole. `first_position`
        is the least position of a stored row, where the store can tell it (an embedded log's
        table): pages are read from offset 0, so a row put before it is found only there."""
        if first_position is not None and first_position < 0:
            self._fail(
                first_position,
                "offset",
                f"an event is stored at offset {first_position}, before the log's first offset"
                " 0 (inserted event)",
            )
        size = self.report.events_checked = self._next
        if size < self.report.notarised_size:
            self._fail(
                size,
                "truncated",
                f"the notary signed {self.report.notarised_size} events; the log holds {size}",
            )
        self.report.streams = len(self._heads)
        before = size if self._size_before is None else min(size, self._size_before)
        tail = self.report.unnotarised_tail = max(0, before - self.report.notarised_size)
        appended = self.report.unnotarised_appended = size - self.report.notarised_size - tail
        if tail:
            self.report.warnings.append(f"{tail} newest events are not yet covered by a checkpoint")
        if appended:
            self.report.warnings.append(
                f"{appended} events appended while the verify ran are not yet covered by a checkpoint"
                " (they are for the notary's next one)"
            )
        # the notary signs every so many events and soon after any event: a longer unsigned
        # tail lost its newest checkpoints (deleted), or its notary stopped
        if self._max_unsigned is not None and tail > self._max_unsigned:
            self._fail(
                self.report.notarised_size,
                "unsigned",
                f"the {tail} newest events are not covered by a signed checkpoint, more than"
                f" the {self._max_unsigned} a running notary leaves unsigned: checkpoints were"
                " deleted, or the notary has not run",
            )


def verify_log(
    log_id: str,
    events: Iterable[tuple[int, bytes]],  # (offset, stored bytes)
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
