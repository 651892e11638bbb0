"""AUD-1, AUD-2: check a log from its stored bytes alone and name the first offset that fails.

LogVerifier streams the whole log (or joins the spans that SpanChecker checked elsewhere);
verify_log runs it over a sequence of events.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn

from psvis.verify_events import NO_HEAD, EventChecks
from psvis.verify_ledger import LedgerCheck, check_ledger
from psvis.verify_report import Failure, Stop, VerifyReport
from psvis.verify_spans import SpanReport

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from psvis.checkpoints import CheckpointRecord


class LogVerifier(EventChecks):
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
        raise Stop

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
            if heads.get(stream, NO_HEAD) != (version - 1, prev)
        ]
        if broken:
            offset, stream = min(broken)
            if span.failure is None or offset <= span.failure.offset:
                _, version, prev = span.firsts[stream]
                self._next = offset
                self._check_link(offset, stream, version, prev, heads.get(stream, NO_HEAD))
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
    except Stop:
        pass
    return verifier.report
