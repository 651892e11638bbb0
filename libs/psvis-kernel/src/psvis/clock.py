"""Time and identity sources, passed in so that tests are deterministic."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to."""

    def __init__(self, start: datetime) -> None:
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta


# The cities whose regulations the packs carry are all in China: one time zone, no DST.
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")


def city_date(moment: datetime) -> date:
    """The calendar date in the cities at `moment`: what "today" means to a deadline there."""
    return moment.astimezone(CHINA_STANDARD_TIME).date()


class IdSource(Protocol):
    def new_id(self) -> str: ...


class RandomIds:
    """Random (version 4) UUIDs, as str(uuid.uuid4()) gives them, at half its cost."""

    def new_id(self) -> str:
        h = os.urandom(16).hex()
        variant = "89ab"[int(h[16], 16) & 3]
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


class SequentialIds:
    """Predictable ids for tests: prefix-000001, prefix-000002, ..."""

    def __init__(self, prefix: str = "id") -> None:
        self._counter = itertools.count(1)
        self._prefix = prefix

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._counter):06d}"
