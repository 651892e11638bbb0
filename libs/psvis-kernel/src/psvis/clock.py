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
    """Random (version 4) UUIDs, as str(uuid.uuid4()) gives them, at a third of its cost.

    Ids are made POOLED at a time from one read of the OS's random bytes (one system call
    instead of POOLED) and handed out by list.pop, which is atomic: threads sharing a source
    never get the same id. A process forked from this one makes its own, never the parent's.
    """

    POOLED = 64

    def __init__(self) -> None:
        self._pool: list[str] = []
        self._forks = _forks

    def new_id(self) -> str:
        if self._forks == _forks:
            try:
                return self._pool.pop()
            except IndexError:
                pass
        pool, self._forks = _random_ids(self.POOLED), _forks
        self._pool = pool
        return pool.pop()


def _random_ids(n: int) -> list[str]:
    hexes = os.urandom(16 * n).hex()
    out = []
    for at in range(0, 32 * n, 32):
        h = hexes[at : at + 32]
        variant = "89ab"[int(h[16], 16) & 3]
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}")
    return out


_forks = 0  # forks this process is down from: a RandomIds pool made before a fork is dropped


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


class SequentialIds:
    """Predictable ids for tests: prefix-000001, prefix-000002, ..."""

    def __init__(self, prefix: str = "id") -> None:
        self._counter = itertools.count(1)
        self._prefix = prefix

    def new_id(self) -> str:
        return f"{self._prefix}-{next(self._counter):06d}"
