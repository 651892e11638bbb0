"""AUD-1, AUD-2: a span of a log checked on its own, as the worker processes of `audit verify` do.

LogVerifier.join_span joins the spans' reports in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from psvis.verify_events import EventChecks
from psvis.verify_report import Failure, Stop


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


class SpanChecker(EventChecks):
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
        raise Stop

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
