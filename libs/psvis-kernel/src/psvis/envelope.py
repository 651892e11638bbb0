"""Event envelopes: what a command produces, and what the log stores (bytes, never re-serialised)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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

    @property
    def type(self) -> str:
        return str(self.envelope.type)


def event_hash(data: bytes) -> bytes:
    """The hash of an event's stored bytes (AUD-1).

    It is the RFC 9162 Merkle leaf hash, SHA-256(0x00 || bytes), so one hash serves
    both as the link to the next event in the stream and as the notary's leaf.
    """
    return hashlib.sha256(b"\x00" + data).digest()


def timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


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
    env = pb.EventEnvelope(
        event_id=event_id,
        stream_id=stream_id,
        stream_version=version,
        type=event.type,
        occurred_at=timestamp(event.occurred_at),
        recorded_at=timestamp(recorded_at),
        actor=pb.Actor(
            agency=event.actor.agency, officers=list(event.actor.officers), role=event.actor.role
        ),
        causation_id=event.causation_id,
        correlation_id=event.correlation_id,
        trace=pb.TraceContext(
            traceparent=event.trace.get("traceparent", ""),
            tracestate=event.trace.get("tracestate", ""),
        ),
        payload=event.payload.SerializeToString(deterministic=True),
        prev_hash=prev_hash,
    )
    if event.refusal is not None:
        env.refusal.CopyFrom(
            pb.Citation(
                rule=event.refusal.rule,
                article=event.refusal.article,
                spec=event.refusal.spec,
                reason=event.refusal.reason,
            )
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
    for event, event_id in zip(events, event_ids, strict=True):
        version += 1
        data = seal(
            event,
            event_id=event_id,
            stream_id=stream_id,
            version=version,
            prev_hash=prev,
            recorded_at=recorded_at,
        )
        out.append(RecordedEvent(position, stream_id, version, event_id, data))
        prev = event_hash(data)
        if first_position >= 0:
            position += 1
    return out
