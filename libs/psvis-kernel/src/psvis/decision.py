"""Load, decide, append: the one application loop every aggregate command goes through."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from google.protobuf.message import Message

from psvis import metrics
from psvis.envelope import Actor, NewEvent, RecordedEvent
from psvis.errors import Citation, ConcurrencyConflict, RuleRefusal, Unavailable
from psvis.eventstore.port import EventStore
from psvis.payloads import decode_payload

S = TypeVar("S")


@dataclass(frozen=True)
class Accepted:
    event: Message


@dataclass(frozen=True)
class Refused:
    """A refusal by rule; it is recorded as an event (invariant 5) and reported to the caller."""

    command: str
    citation: Citation


Decision = Accepted | Refused


@dataclass(frozen=True)
class Aggregate(Generic[S]):
    """How to build one kind of aggregate's state from its stream."""

    new: Callable[[str], S]
    evolve: Callable[[S, Message], None]
    refusal_event: Callable[[Refused], Message]


async def load(store: EventStore, kind: Aggregate[S], stream_id: str) -> tuple[S, int]:
    state = kind.new(stream_id)
    events = await store.read_stream(stream_id)
    for event in events:
        kind.evolve(state, decode_payload(event.envelope))
    return state, len(events)


async def execute(
    store: EventStore,
    kind: Aggregate[S],
    stream_id: str,
    decide: Callable[[S], Decision],
    *,
    actor: Actor,
    occurred_at: datetime,
    expected_version: int = 0,
    trace: dict[str, str] | None = None,
    attempts: int = 100,
) -> RecordedEvent:
    """Decide against the current state and append; retry the whole decision on a race.

    expected_version > 0 pins the version the caller read: if the stream moved on, the
    command fails with ConcurrencyConflict instead of being re-decided.
    """
    for attempt in range(attempts):
        state, version = await load(store, kind, stream_id)
        if expected_version and expected_version != version:
            # the caller decided on a version the stream is not at: a conflict to read again
            # and retry, but for a stream that does not exist, which its own error names
            if version == 0:
                decide(state)
            raise ConcurrencyConflict(stream_id, expected_version, version)
        decision = decide(state)
        refusal = decision.citation if isinstance(decision, Refused) else None
        payload = kind.refusal_event(decision) if isinstance(decision, Refused) else decision.event
        event = NewEvent(payload, occurred_at, actor, refusal=refusal, trace=trace or {})
        try:
            (recorded,) = await store.append(stream_id, version, [event])
        except ConcurrencyConflict:
            metrics.append_conflicts.add(1)
            if expected_version:
                raise
            await asyncio.sleep(random.random() * 0.002 * attempt)  # jitter: let the winner settle
            continue
        metrics.appended(event.type)
        if refusal is not None:
            metrics.refused(refusal)
            raise RuleRefusal(refusal, stream_id=stream_id, version=recorded.version)
        return recorded
    raise Unavailable(f"stream {stream_id} is too busy: gave up after {attempts} attempts; retry")
