"""Event envelopes: what a command produces, and what the log stores (bytes, never re-serialised)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from psvis.common.v1 import envelope_pb2 as pb
from psvis.errors import Citation


@dataclass(frozen=True)
class Actor:
    agency: str
    officers: tuple[str, ...] = ()
    role: str = ""


@dataclass(frozen=True)
class NewEvent:
    """An event decided by the domain, not yet given its place in a stream."""

    payload: Message
    occurred_at: datetime
    actor: Actor
    refusal: Citation | None = None
    causation_id: str = ""
    correlation_id: str = ""
    trace: Mapping[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.payload.DESCRIPTOR.full_name)


@dataclass(frozen=True)
class RecordedEvent:
    """An event as stored: its log position, its stream place and its exact bytes."""

    position: int
    stream_id: str
    version: int
    event_id: str
    data: bytes

    @cached_property
    def envelope(self) -> pb.EventEnvelope:
        return pb.EventEnvelope.FromString(self.data)

    @cached_property
    def hash(self) -> bytes:
        return event_hash(self.data)

    @classmethod
    def from_row(cls, row: tuple[int, str, int, str, bytes]) -> RecordedEvent:
        """RecordedEvent(*row), in a third of the time: replay builds one per event.

        A frozen dataclass's __init__ sets each field through object.__setattr__; this fills
        the instance's __dict__ (where those land) directly.
        """
        event = _new(cls)
        fields = event.__dict__
        (
            fields["position"],
            fields["stream_id"],
            fields["version"],
            fields["event_id"],
            fields["data"],
        ) = row
        return event

    @classmethod
    def stored(cls, position: int, data: bytes) -> RecordedEvent:
        """The event whose stored bytes are `data`, at `position` of the log (decoded once)."""
        env = pb.EventEnvelope.FromString(data)
        event = cls(position, env.stream_id, int(env.stream_version), env.event_id, data)
        event.__dict__["envelope"] = env  # where cached_property keeps it
        return event

    @classmethod
    def sealed(
        cls, position: int, stream_id: str, version: int, event_id: str, data: bytes, hash_: bytes
    ) -> RecordedEvent:
        """An event just sealed, whose hash (event_hash(data)) the sealer has computed already."""
        event = cls(position, stream_id, version, event_id, data)
        event.__dict__["hash"] = hash_  # where cached_property keeps it
        return event

    @property
    def type(self) -> str:
        return str(self.envelope.type)


_new = object.__new__


def event_hash(data: bytes) -> bytes:
    """The hash of an event's stored bytes (AUD-1).

    It is the RFC 9162 Merkle leaf hash, SHA-256(0x00 || bytes), so one hash serves
    both as the link to the next event in the stream and as the notary's leaf.
    """
    return hashlib.sha256(b"\x00" + data).digest()


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(moment: datetime) -> Timestamp:
    """Timestamp.FromDatetime's result (a naive datetime is UTC), in a third of its time."""
    since = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def seal(
    event: NewEvent,
    *,
    event_id: str,
    stream_id: str,
    version: int,
    prev_hash: bytes,
    recorded_at: datetime,
) -> bytes:
    """Serialise an event into the bytes the log keeps; deterministic for one input."""
    return _seal(
        event, event_id, stream_id, version, prev_hash, timestamp(recorded_at), _context(event)
    )


# occurred_at, actor and trace of an event as envelope fields: built once for the events of
# one command, which share them
_Context = tuple[Timestamp, pb.Actor, pb.TraceContext]


def _context(event: NewEvent) -> _Context:
    actor, trace = event.actor, event.trace
    return (
        timestamp(event.occurred_at),
        pb.Actor(agency=actor.agency, officers=actor.officers, role=actor.role),
        pb.TraceContext(
            traceparent=trace.get("traceparent", ""), tracestate=trace.get("tracestate", "")
        ),
    )


def _same_context(a: NewEvent, b: NewEvent) -> bool:
    return a.occurred_at == b.occurred_at and a.actor == b.actor and a.trace == b.trace


def _seal(
    event: NewEvent,
    event_id: str,
    stream_id: str,
    version: int,
    prev_hash: bytes,
    recorded_at: Timestamp,
    context: _Context,
) -> bytes:
    occurred_at, actor, trace = context
    env = pb.EventEnvelope(
        event_id=event_id,
        stream_id=stream_id,
        stream_version=version,
        type=event.type,
        occurred_at=occurred_at,
        recorded_at=recorded_at,
        actor=actor,
        causation_id=event.causation_id,
        correlation_id=event.correlation_id,
        trace=trace,
        payload=event.payload.SerializeToString(deterministic=True),
        prev_hash=prev_hash,
    )
    if event.refusal is not None:
        r = event.refusal
        env.refusal.CopyFrom(
            pb.Citation(rule=r.rule, article=r.article, spec=r.spec, reason=r.reason)
        )
    return env.SerializeToString(deterministic=True)


def citation_of(env: pb.EventEnvelope) -> Citation | None:
    if not env.HasField("refusal"):
        return None
    r = env.refusal
    return Citation(rule=r.rule, article=r.article, spec=r.spec, reason=r.reason)


def seal_stream(
    events: Sequence[NewEvent],
    event_ids: Sequence[str],
    *,
    stream_id: str,
    head_version: int,
    head_hash: bytes,
    recorded_at: datetime,
    first_position: int = -1,
) -> list[RecordedEvent]:
    """Seal events that follow a stream head, each linked to the one before it.

    Positions count up from first_position; -1 leaves them to the log (Kafka assigns them).
    """
    out: list[RecordedEvent] = []
    prev, version, position = head_hash, head_version, first_position
    recorded = timestamp(recorded_at)
    shared: tuple[NewEvent, _Context] | None = None  # the context, and the event it came from
    for event, event_id in zip(events, event_ids, strict=True):
        if shared is None or not _same_context(event, shared[0]):
            shared = (event, _context(event))
        version += 1
        data = _seal(event, event_id, stream_id, version, prev, recorded, shared[1])
        prev = event_hash(data)
        out.append(RecordedEvent.sealed(position, stream_id, version, event_id, data, prev))
        if first_position >= 0:
            position += 1
    return out
