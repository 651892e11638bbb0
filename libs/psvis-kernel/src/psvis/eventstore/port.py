"""The event store port: streams with optimistic concurrency over one ordered log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from google.protobuf.message import DecodeError

from psvis.envelope import NewEvent, RecordedEvent


class LogUnreadable(Exception):
    """The stored log, or its checkpoints, cannot be read (a damaged file): audit reports it."""


# an event as audit verify reads it: (position, stored bytes, the stream id the store files the
# event under apart from its envelope, or None where the store keeps none)
StoredRow = tuple[int, bytes, bytes | None]


@dataclass(frozen=True)
class StoredExtent:
    """What an embedded log's table holds, which audit verify checks the offsets against: its
    rows (the log's size, unless rows are missing or misplaced) and the least position among
    them (0, unless a row was put before the log's start; None for an empty table)."""

    rows: int
    first_position: int | None


class LogSource(Protocol):
    """What an audit reads: the log in order, as stored."""

    log_id: str

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]: ...

    async def log_size(self) -> int: ...

    async def wait_for_append(self, timeout: float) -> None: ...


class StreamHead(NamedTuple):
    """A stream's last version and the hash of that event (b"" and 0 for a stream not begun).

    A named tuple, not a dataclass: the embedded store makes one or two per append.
    """

    version: int
    hash: bytes


class EventStore(Protocol):
    """Every adapter keeps these promises; tests/contract proves it for each one.

    - append is atomic: all events land, or none, and only if the stream is at
      expected_version (ConcurrencyConflict otherwise). Versions start at 1, with no gaps.
    - each event carries the hash of its predecessor in the stream (prev_hash).
    - read_log yields every appended event exactly once, in log order, by position.
    """

    log_id: str

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Append after expected_version, or raise ConcurrencyConflict. It may finish without
        suspending (the embedded store writes an append that no other task can join at once)."""
        ...

    async def read_stream(self, stream_id: str) -> list[RecordedEvent]: ...

    async def head(self, stream_id: str) -> StreamHead: ...

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        """Up to `limit` events after position `after` (-1: from the start), in log order."""
        ...

    async def wait_for_append(self, timeout: float) -> None:
        """Return when something may have been appended, or after `timeout` seconds."""
        ...

    async def log_size(self) -> int: ...

    async def close(self) -> None: ...


def stored_events(rows: Iterable[tuple[int, bytes]]) -> list[RecordedEvent]:
    """The events of (position, stored bytes) rows, each read from its envelope.

    Bytes that are not an envelope raise LogUnreadable naming their offset.
    """
    stored, events = RecordedEvent.stored, []
    for position, data in rows:
        try:
            events.append(stored(position, data))
        except DecodeError:
            raise LogUnreadable(
                f"the stored event at offset {position} is not an envelope"
            ) from None
    return events


async def read_log(
    store: EventStore, after: int = -1, *, follow: bool = False, page: int = 2000
) -> AsyncIterator[RecordedEvent]:
    """Every event after `after`, in order; with follow=True, waits for more for ever."""
    while True:
        events = await store.read_page(after, page)
        for event in events:
            yield event
        if events:
            after = events[-1].position
        elif follow:
            await store.wait_for_append(0.5)
        else:
            return
