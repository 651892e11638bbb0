"""Event envelopes: what a command produces, and what the log stores (bytes, never re-serialised)."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

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
    def stored(cls, position: int, data: bytes) -> RecordedEvent:
        """The event whose stored bytes are `data`, at `position` of the log.

        Its stream, version and id are read from the envelope, decoded once and kept. Built
        without the frozen dataclass's __init__ (which sets each field through
        object.__setattr__), in a third of the time: replay builds one per event.
        """
        env = _decode(data)
        event = _new(cls)
        fields = event.__dict__
        fields["position"], fields["data"], fields["envelope"] = position, data, env
        fields["stream_id"], fields["version"] = env.stream_id, env.stream_version
        fields["event_id"] = env.event_id
        return event

    @classmethod
    def sealed(
        cls, position: int, stream_id: str, version: int, event_id: str, data: bytes, hash_: bytes
    ) -> RecordedEvent:
        """An event just sealed, whose hash (event_hash(data)) the sealer has computed already.

        Built as stored() builds its events; the hash goes where cached_property keeps it.
        """
        event = _new(cls)
        event.__dict__.update(
            position=position,
            stream_id=stream_id,
            version=version,
            event_id=event_id,
            data=data,
            hash=hash_,
        )
        return event

    @property
    def type(self) -> str:
        return str(self.envelope.type)


_new = object.__new__
_decode = pb.EventEnvelope.FromString


def event_hash(data: bytes) -> bytes:
    """The hash of an event's stored bytes (AUD-1).

    It is the RFC 9162 Merkle leaf hash, SHA-256(0x00 || bytes), so one hash serves
    both as the link to the next event in the stream and as the notary's leaf. The 0x00 is
    hashed once, here; each event copies that state rather than copying its bytes after 0x00.
    """
    leaf = _LEAF_PREFIX()
    leaf.update(data)
    return leaf.digest()


_LEAF_PREFIX = hashlib.sha256(b"\x00").copy


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
    [record] = seal_stream(
        [event],
        [event_id],
        stream_id=stream_id,
        head_version=version - 1,
        head_hash=prev_hash,
        recorded_at=recorded_at,
    )
    return record.data


def _set_time(stamp: Timestamp, moment: datetime) -> None:
    """Set a Timestamp field in place to what timestamp(moment) returns."""
    since = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)) - _EPOCH
    stamp.seconds = since.days * 86_400 + since.seconds
    stamp.nanos = since.microseconds * 1000
    stamp.SetInParent()  # present even when it is the epoch


def _set_actor(env: pb.EventEnvelope, actor: Actor) -> None:
    a = env.actor
    a.agency, a.role = actor.agency, actor.role
    del a.officers[:]
    a.officers.extend(actor.officers)
    a.SetInParent()


def _set_trace(env: pb.EventEnvelope, trace: Mapping[str, str]) -> None:
    t = env.trace
    t.traceparent = trace.get("traceparent", "")
    t.tracestate = trace.get("tracestate", "")
    t.SetInParent()


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
    return Sealer().seal(
        events,
        event_ids,
        stream_id=stream_id,
        head_version=head_version,
        head_hash=head_hash,
        recorded_at=recorded_at,
        first_position=first_position,
    )


@functools.cache
def needs_deterministic(descriptor: Any) -> bool:
    """Whether a message type (its DESCRIPTOR, of whichever protobuf backend) may serialise to
    other bytes without deterministic=True: it, or a message it holds, has a map field or
    extensions (whose entries deterministic serialisation puts in order).

    For any other type both give the same bytes, and the plain one costs less (no keyword
    argument to parse): the sealer takes it for such payloads, and for the envelope. Cached:
    one answer per type, however many appends ask.
    """
    seen: set[str] = set()
    todo = [descriptor]
    while todo:
        message = todo.pop()
        if message.full_name in seen:
            continue
        seen.add(message.full_name)
        if message.GetOptions().map_entry or message.is_extendable:
            return True
        todo += [f.message_type for f in message.fields if f.message_type is not None]
    return False


_ENVELOPE_ORDERED = needs_deterministic(pb.EventEnvelope.DESCRIPTOR)  # False today


class Sealer:
    """seal_stream for a writer that seals one append after another, on one thread.

    One envelope message is kept filled in, from event to event and from call to call, and
    serialised once per event: the event's id, version, payload and prev_hash are set for each
    event; the stream, the recording time, the type, the refusal and the context fields
    (occurred_at, actor, trace, causation and correlation ids) only when they differ from what
    the message holds. Setting a field costs a fraction of building the
    message anew, and an unchanged field costs nothing. A field is marked as held only once it
    is set, so a failure half-way through a call leaves nothing stale for the next one.

    A message keeps every value ever set on it in its arena until it is freed, so the message is
    renewed every RENEW_AFTER events: memory stays bounded, at one fresh message per thousand.
    """

    RENEW_AFTER = 1000

    def __init__(self) -> None:
        self._renew()

    def _renew(self) -> None:
        self._env = pb.EventEnvelope()
        self._sealed = 0  # events sealed with this message
        self._stream_id: str | None = None
        self._recorded_at: datetime | None = None
        self._occurred_at: datetime | None = None
        self._actor: Actor | None = None
        self._trace: Mapping[str, str] | None = None
        self._descriptor: object = None  # the payload type whose name `type` holds
        self._ordered = True  # whether that type needs deterministic serialisation
        self._causation: str | None = None
        self._correlation: str | None = None
        self._refused = True  # whether `refusal` may be set

    def seal(
        self,
        events: Sequence[NewEvent],
        event_ids: Sequence[str],
        *,
        stream_id: str,
        head_version: int,
        head_hash: bytes,
        recorded_at: datetime,
        first_position: int = -1,
    ) -> list[RecordedEvent]:
        if self._sealed >= self.RENEW_AFTER:
            self._renew()
        self._sealed += len(events)
        env = self._env
        if stream_id != self._stream_id:
            env.stream_id = stream_id
            self._stream_id = stream_id
        if recorded_at != self._recorded_at:
            _set_time(env.recorded_at, recorded_at)
            self._recorded_at = recorded_at
        out: list[RecordedEvent] = []
        prev, version, position = head_hash, head_version, first_position
        for event, event_id in zip(events, event_ids, strict=True):
            if event.occurred_at != self._occurred_at:
                _set_time(env.occurred_at, event.occurred_at)
                self._occurred_at = event.occurred_at
            if event.actor is not self._actor and event.actor != self._actor:
                _set_actor(env, event.actor)
                self._actor = event.actor
            if event.trace is not self._trace and event.trace != self._trace:
                _set_trace(env, event.trace)
                self._trace = event.trace
            payload = event.payload
            if payload.DESCRIPTOR is not self._descriptor:
                env.type = event.type
                self._descriptor = payload.DESCRIPTOR
                self._ordered = needs_deterministic(payload.DESCRIPTOR)
            if event.causation_id != self._causation:
                env.causation_id = self._causation = event.causation_id
            if event.correlation_id != self._correlation:
                env.correlation_id = self._correlation = event.correlation_id
            version += 1
            env.event_id, env.stream_version = event_id, version
            if self._ordered:
                env.payload = payload.SerializeToString(deterministic=True)
            else:  # the same bytes (needs_deterministic), without a keyword argument to parse
                env.payload = payload.SerializeToString()
            env.prev_hash = prev
            if event.refusal is not None:
                r, self._refused = event.refusal, True
                env.refusal.rule, env.refusal.article = r.rule, r.article
                env.refusal.spec, env.refusal.reason = r.spec, r.reason
                env.refusal.SetInParent()
            elif self._refused:
                env.ClearField("refusal")
                self._refused = False
            data = (
                env.SerializeToString(deterministic=True)
                if _ENVELOPE_ORDERED
                else env.SerializeToString()
            )
            leaf = _LEAF_PREFIX()  # event_hash(data)
            leaf.update(data)
            prev = leaf.digest()
            out.append(RecordedEvent.sealed(position, stream_id, version, event_id, data, prev))
            if first_position >= 0:
                position += 1
        return out
