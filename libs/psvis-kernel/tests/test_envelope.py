"""Sealing: the stored bytes are exactly the envelope protobuf, built field by field."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import descriptor_pb2, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from psvis.clock import RandomIds
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import (
    Actor,
    NewEvent,
    Sealer,
    event_hash,
    needs_deterministic,
    seal,
    seal_stream,
    timestamp,
)
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


def reference_envelope(
    event: NewEvent,
    version: int,
    prev: bytes,
    event_id: str,
    stream_id: str = "s-1",
    recorded_at: datetime = AT + timedelta(seconds=1),
) -> bytes:
    """The envelope as the protobuf API builds it, field by field."""
    env = pb.EventEnvelope()
    env.event_id, env.stream_id, env.stream_version = event_id, stream_id, version
    env.type = event.payload.DESCRIPTOR.full_name
    env.occurred_at.FromDatetime(event.occurred_at)
    env.recorded_at.FromDatetime(recorded_at)
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
        NewEvent(pb.TraceContext(traceparent="another type"), AT, CLERK, causation_id="c-1"),
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


def test_a_sealer_seals_each_append_exactly_whatever_the_one_before_held() -> None:
    """A Sealer keeps its message from call to call: each append's bytes are still exactly its
    own, whether its stream, recording time or context is the last call's or not, and after a
    call that failed half-way."""
    inspector = Actor("unit-b", (), "inspector")
    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    later = AT + timedelta(minutes=5)
    appends = [  # (stream, recorded_at, events)
        ("s-1", AT, [note("a", AT, CLERK), note("b", AT, inspector, trace=traced)]),
        ("s-1", AT, [note("same all", AT, inspector, trace=dict(traced))]),
        ("s-2", AT, [note("other stream", AT, inspector)]),
        ("s-2", AT, [NewEvent(pb.TraceContext(), AT, inspector, correlation_id="k-1")]),
        ("s-2", later, [note("later", later, Actor("unit-a", ("officer-1",), "clerk"))]),
        ("s-1", later, [note("equal actor", later, Actor("unit-a", ("officer-1",), "clerk"))]),
        ("s-3", datetime(2024, 3, 1, 8, 0), [note("naive", datetime(2024, 3, 1, 8, 0), CLERK)]),
        ("s-1", AT, [note("back", AT, CLERK, refusal=Citation("REG-7", "Wuhan 16(5)", "", "no"))]),
        ("s-1", AT, [note("after a refusal", AT, CLERK)]),
    ]
    sealer = Sealer()
    with pytest.raises(ValueError):  # two events, one id: the first is sealed, then it fails
        sealer.seal(
            [note("x", later, inspector, trace=traced), note("y", later, inspector)],
            ["ev-x"],
            stream_id="s-9",
            head_version=0,
            head_hash=b"",
            recorded_at=later,
        )
    for n, (stream_id, recorded_at, events) in enumerate(appends):
        ids = [f"ev-{n}-{k}" for k in range(len(events))]
        sealed = sealer.seal(
            events,
            ids,
            stream_id=stream_id,
            head_version=n,
            head_hash=b"h" * 32,
            recorded_at=recorded_at,
            first_position=10 * n,
        )
        prev = b"h" * 32
        for k, (event, record) in enumerate(zip(events, sealed, strict=True)):
            expected = reference_envelope(event, n + 1 + k, prev, ids[k], stream_id, recorded_at)
            assert record.data == expected, (n, k)
            assert (record.position, record.stream_id) == (10 * n + k, stream_id)
            prev = record.hash


def test_seal_of_one_event_matches_seal_stream() -> None:
    event = note("one", AT, CLERK)
    [record] = seal_stream(
        [event], ["ev-1"], stream_id="s-1", head_version=0, head_hash=b"", recorded_at=AT
    )
    alone = seal(event, event_id="ev-1", stream_id="s-1", version=1, prev_hash=b"", recorded_at=AT)
    assert record.data == alone


def test_maps_and_extensions_are_found_wherever_a_message_holds_them() -> None:
    """What deterministic serialisation orders (map entries, extensions) is found in a type
    or in any message it holds; the envelope and the registry's payloads hold neither."""
    from psvis.registry.v1 import registry_pb2 as reg

    assert needs_deterministic(struct_pb2.Struct.DESCRIPTOR)  # map<string, Value>
    assert needs_deterministic(struct_pb2.ListValue.DESCRIPTOR)  # Value -> Struct, a cycle
    assert needs_deterministic(descriptor_pb2.FieldOptions.DESCRIPTOR)  # proto2, extendable
    assert needs_deterministic(descriptor_pb2.FieldDescriptorProto.DESCRIPTOR)  # holds one
    assert not needs_deterministic(pb.EventEnvelope.DESCRIPTOR)
    assert not any(
        needs_deterministic(message) for message in reg.DESCRIPTOR.message_types_by_name.values()
    )


def test_a_payload_with_maps_seals_to_the_same_bytes_whatever_order_it_was_filled_in() -> None:
    """Map entries are sealed in a fixed order (deterministic serialisation), so that one
    decision always gives one stored event."""
    keys = [f"key-{i:03d}" for i in range(200)]
    forwards, backwards = struct_pb2.Struct(), struct_pb2.Struct()
    for key in keys:
        forwards.fields[key].string_value = key
    for key in reversed(keys):
        backwards.fields[key].string_value = key
    sealer = Sealer()
    sealed = [
        sealer.seal(
            [NewEvent(body, AT, CLERK)],
            ["ev-1"],
            stream_id="s-1",
            head_version=0,
            head_hash=b"",
            recorded_at=AT,
        )[0].data
        for body in (note("plain", AT, CLERK).payload, forwards, backwards)
    ]
    assert sealed[1] == sealed[2]
    payload = pb.EventEnvelope.FromString(sealed[1]).payload
    assert payload == forwards.SerializeToString(deterministic=True)


def test_random_ids_are_distinct_version_4_uuids() -> None:
    ids = RandomIds()
    seen = {ids.new_id() for _ in range(5000)}
    assert len(seen) == 5000
    for text in list(seen)[:500]:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_random_ids_after_a_fork_are_not_the_parents() -> None:
    """A child forked while ids are pooled reads its own bytes, not the parent's next ones."""
    ids = RandomIds()
    ids.new_id()  # the pool now holds the next ones
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent; it never returns into pytest
        try:
            os.close(read)
            os.write(write, " ".join(ids.new_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as child:
        childs = child.read().split()
    os.waitpid(pid, 0)
    parents = [ids.new_id() for _ in range(3)]
    assert len(childs) == 3 and not set(childs) & set(parents)


def test_random_ids_shared_by_threads_are_distinct() -> None:
    """Threads drawing from one source at once never get the same id."""
    ids = RandomIds()
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(mine: list[str]) -> None:
        for _ in range(5000):
            mine.append(ids.new_id())

    threads = [threading.Thread(target=draw, args=(mine,)) for mine in drawn]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns as often as the interpreter allows
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switching)
    every = [i for mine in drawn for i in mine]
    assert len(every) == 20_000 and len(set(every)) == 20_000


SEAL_MANY = """
import resource
from datetime import UTC, datetime
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import Actor, NewEvent, Sealer

sealer, actor, now = Sealer(), Actor("unit-a", ("officer-1",), "clerk"), datetime.now(UTC)
body = pb.Citation(reason="x" * 200)

def seal(n):
    for i in range(n):
        event = NewEvent(body, now, actor)
        sealer.seal([event], [f"{i:036d}"], stream_id=f"s-{i}", head_version=1,
                    head_hash=b"h" * 32, recorded_at=now)

seal(20_000)  # warmed up: every allocator has what it keeps
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
seal(100_000)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_sealer_that_seals_for_ever_keeps_its_memory_bounded() -> None:
    """A protobuf message keeps every value set on it until it is freed: a Sealer that kept one
    message for ever would grow by each event's bytes (~30 MB over these 100k events)."""
    run = subprocess.run(
        [sys.executable, "-c", SEAL_MANY], capture_output=True, text=True, check=True
    )
    grown_kib = int(run.stdout)
    assert grown_kib < 8 * 1024
