"""Sealing: the stored bytes are exactly the envelope protobuf, built field by field."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from psvis.clock import RandomIds
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import Actor, NewEvent, event_hash, seal, seal_stream, timestamp
from psvis.errors import Citation


def from_datetime(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 3, 1, 8, 0, 0, 123456, tzinfo=UTC),
        datetime(2024, 3, 1, 8, 0, 0, 999999, tzinfo=timezone(timedelta(hours=8))),
        datetime(2024, 3, 1, 8, 0, 0, 1),  # naive: UTC
        datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),  # before the epoch
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=5))),
    ],
)
def test_timestamp_equals_protobufs_own_conversion(moment: datetime) -> None:
    assert timestamp(moment) == from_datetime(moment)


def note(text: str, at: datetime, actor: Actor, **extra: object) -> NewEvent:
    return NewEvent(pb.Citation(reason=text), at, actor, **extra)  # type: ignore[arg-type]


AT = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
CLERK = Actor("unit-a", ("officer-1", "officer-2"), "clerk")


def reference_envelope(event: NewEvent, version: int, prev: bytes, event_id: str) -> bytes:
    """The envelope as the protobuf API builds it, field by field."""
    env = pb.EventEnvelope()
    env.event_id, env.stream_id, env.stream_version = event_id, "s-1", version
    env.type = event.payload.DESCRIPTOR.full_name
    env.occurred_at.FromDatetime(event.occurred_at)
    env.recorded_at.FromDatetime(AT + timedelta(seconds=1))
    env.actor.agency, env.actor.role = event.actor.agency, event.actor.role
    env.actor.officers.extend(event.actor.officers)
    env.causation_id, env.correlation_id = event.causation_id, event.correlation_id
    env.trace.traceparent = event.trace.get("traceparent", "")
    env.trace.tracestate = event.trace.get("tracestate", "")
    env.payload = event.payload.SerializeToString(deterministic=True)
    env.prev_hash = prev
    if event.refusal is not None:
        r = event.refusal
        env.refusal.rule, env.refusal.article = r.rule, r.article
        env.refusal.spec, env.refusal.reason = r.spec, r.reason
    return env.SerializeToString(deterministic=True)


def test_a_stream_of_events_with_different_contexts_seals_each_one_exactly() -> None:
    """Events of one append share their context fields only when they are equal; no field of
    one event is left over in the next one's bytes."""
    inspector = Actor("unit-b", (), "inspector")
    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    events = [
        note("first", AT, CLERK),
        note("same context", AT, CLERK, causation_id="c-1"),
        note("other actor", AT, inspector),
        note("later", AT + timedelta(minutes=1), inspector, correlation_id="k-9"),
        note("traced", AT + timedelta(minutes=1), inspector, trace=traced),
        note("refused", AT, CLERK, refusal=Citation("REG-7", "Wuhan 16(5)", "REG-7", "no")),
        note("after a refusal", AT, CLERK),
        note("empty context", datetime(1970, 1, 1, tzinfo=UTC), Actor("")),
        note("empty refusal", AT, CLERK, refusal=Citation("", "", "", "")),
        note("back again", AT, CLERK, causation_id="c-2"),
    ]
    ids = [f"ev-{i}" for i in range(len(events))]
    sealed = seal_stream(
        events,
        ids,
        stream_id="s-1",
        head_version=4,
        head_hash=b"h" * 32,
        recorded_at=AT + timedelta(seconds=1),
        first_position=100,
    )
    prev = b"h" * 32
    for n, (event, record) in enumerate(zip(events, sealed, strict=True)):
        assert record.data == reference_envelope(event, 5 + n, prev, ids[n])
        assert (record.position, record.version, record.event_id) == (100 + n, 5 + n, ids[n])
        assert record.hash == event_hash(record.data)
        prev = record.hash


def test_seal_of_one_event_matches_seal_stream() -> None:
    event = note("one", AT, CLERK)
    [record] = seal_stream(
        [event], ["ev-1"], stream_id="s-1", head_version=0, head_hash=b"", recorded_at=AT
    )
    alone = seal(event, event_id="ev-1", stream_id="s-1", version=1, prev_hash=b"", recorded_at=AT)
    assert record.data == alone


def test_random_ids_are_distinct_version_4_uuids() -> None:
    ids = RandomIds()
    seen = {ids.new_id() for _ in range(5000)}
    assert len(seen) == 5000
    for text in list(seen)[:500]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
