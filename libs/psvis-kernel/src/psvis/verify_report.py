"""AUD-1, AUD-2: what a verify reports: the first failure found, and what was checked."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


class Stop(Exception):
    pass
