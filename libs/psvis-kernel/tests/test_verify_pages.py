"""AUD-1, AUD-2: LogVerifier's page-at-a-time checks name the same first failure as a plain
event-by-event check, whatever the page size and however the log was tampered with."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from psvis.checkpoints import CheckpointRecord
from psvis.clock import FixedClock
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import event_hash
from psvis.merkle import MerkleTree
from psvis.notary import sign_checkpoint
from psvis.signing import Signer
from psvis.verify import LogVerifier
from psvis.verify_report import Stop
from psvis.verify_spans import SpanChecker

LOG = "psvis.events/0"
SIGNER = Signer(Ed25519PrivateKey.generate())
Events = list[tuple[int, bytes, bytes | None]]  # StoredRow


def envelope(i: int, stream: str, version: int, prev: bytes) -> bytes:
    return pb.EventEnvelope(
        event_id=f"ev-{i}",
        stream_id=stream,
        stream_version=version,
        type="psvis.test.Note",
        payload=bytes([i % 256]) * (i % 40),
        prev_hash=prev,
    ).SerializeToString()


def honest_log(n: int, streams: int) -> Events:
    heads: dict[str, tuple[int, bytes]] = {}
    events = []
    for i in range(n):
        stream = f"s-{i * 7 % streams}"
        version, prev = heads.get(stream, (0, b""))
        data = envelope(i, stream, version + 1, prev)
        heads[stream] = (version + 1, event_hash(data))
        events.append((i, data, stream.encode()))
    return events


def notarise(events: Events, size: int, every: int) -> list[CheckpointRecord]:
    """Signed checkpoints with their ledgers over the first `size` events, as the notary makes."""
    tree, records = MerkleTree(), []
    clock = FixedClock(datetime(2024, 3, 1, tzinfo=UTC))
    for start in range(0, size, every):
        leaves = [event_hash(data) for _, data, _ in events[start : min(size, start + every)]]
        tree.extend(leaves)
        signed = sign_checkpoint(SIGNER, LOG, tree, clock)
        records.append(CheckpointRecord(LOG, tree.size, signed, b"".join(leaves), b""))
    return records


def reference(events: Events, ledger: bytes, notarised: int) -> tuple[int, str] | None:
    """The checks of AUD-1/AUD-2 one event at a time, written the plain way."""
    heads: dict[str, tuple[int, bytes]] = {}
    for expected, (offset, data, filed_under) in enumerate(events):
        if offset != expected:
            return expected, "offset"
        leaf = event_hash(data)
        if expected < notarised and leaf != ledger[32 * expected : 32 * expected + 32]:
            return expected, "notarised-leaf"
        try:
            env = pb.EventEnvelope.FromString(data)
        except DecodeError:
            return expected, "decode"
        version, prev = heads.get(env.stream_id, (0, b""))
        if env.stream_version != version + 1:
            return expected, "stream-version"
        if env.prev_hash != prev:
            return expected, "prev-hash"
        if filed_under is not None and filed_under != env.stream_id.encode():
            return expected, "stream-column"
        heads[env.stream_id] = (env.stream_version, leaf)
    if len(events) < notarised:
        return len(events), "truncated"
    return None


def verify(events: Events, records: list[CheckpointRecord], page: int) -> LogVerifier:
    verifier = LogVerifier(LOG, records, {SIGNER.key_id: SIGNER.public})
    try:
        verifier.check_checkpoints()
        for start in range(0, len(events), page):
            verifier.check_page(events[start : start + page])
        verifier.finish()
    except Stop:
        pass
    return verifier


def outcome(verifier: LogVerifier) -> tuple[int, str] | None:
    failure = verifier.report.failure
    return None if failure is None else (failure.offset, failure.check)


def tampered(events: Events, how: str, rng: random.Random) -> Events:
    out = list(events)
    i, j = rng.randrange(len(out)), rng.randrange(len(out))
    position, data, filed_under = out[i]
    if how == "flip":
        at = rng.randrange(len(data))
        flipped = data[:at] + bytes([data[at] ^ 1 << rng.randrange(8)]) + data[at + 1 :]
        out[i] = (position, flipped, filed_under)
    elif how == "garbage":
        out[i] = (position, rng.randbytes(rng.randrange(1, 40)), filed_under)
    elif how == "cut":
        out[i] = (position, data[: rng.randrange(len(data))], filed_under)
    elif how == "delete":
        del out[i]
    elif how == "swap-bytes":  # the envelopes trade places, each row keeping its stream column
        out[i], out[j] = (position, out[j][1], filed_under), (out[j][0], data, out[j][2])
    elif how == "swap-filed":  # each row moves whole, with its stream column
        out[i], out[j] = (position, out[j][1], out[j][2]), (out[j][0], data, filed_under)
    elif how == "refile":
        out[i] = (position, data, rng.choice([b"s-other", b"\xff", filed_under + b" "]))
    elif how == "swap-rows":
        out[i], out[j] = out[j], out[i]
    elif how == "duplicate":
        out.insert(i, out[i])
    elif how == "truncate":
        del out[i:]
    elif how == "reversion":
        env = pb.EventEnvelope.FromString(data)
        env.stream_version += rng.choice([-1, 1, 2])
        out[i] = (position, env.SerializeToString(), filed_under)
    return out


HOW = [
    "flip",
    "garbage",
    "cut",
    "delete",
    "swap-bytes",
    "swap-filed",
    "swap-rows",
    "duplicate",
    "truncate",
    "refile",
]


# a log of n events in some streams, its first `notarised` part signed every `every` events,
# tampered with `how` (seeded), read `page` events at a time
TAMPERED_LOGS = {
    "n": st.integers(1, 60),
    "streams": st.integers(1, 6),
    "every": st.integers(1, 16),
    "notarised": st.floats(0, 1),
    "page": st.integers(1, 25),
    "how": st.sampled_from([*HOW, "reversion", "none"]),
    "seed": st.integers(0, 2**32),
}


@given(**TAMPERED_LOGS)
@settings(max_examples=300, deadline=None)
def test_pages_name_the_same_first_failure_as_one_by_one(
    n: int, streams: int, every: int, notarised: float, page: int, how: str, seed: int
) -> None:
    events = honest_log(n, streams)
    size = int(n * notarised)
    records = notarise(events, size, every)
    stored = events if how == "none" else tampered(events, how, random.Random(seed))
    ledger = b"".join(r.leaves for r in records)
    verifier = verify(stored, records, page)
    assert outcome(verifier) == reference(stored, ledger, size)
    assert verifier.report.ok == (outcome(verifier) is None)
    if how == "none":
        assert verifier.report.ok and verifier.report.events_checked == n


def as_stored(events: Events) -> Events:
    """The rows as the embedded log's table gives them: one per position, in position order."""
    return sorted({row[0]: row for row in reversed(events)}.values())


def verify_in_spans(
    events: Events, records: list[CheckpointRecord], cuts: list[int], page: int
) -> LogVerifier:
    """As `audit verify` checks a long embedded log: each span of positions on its own (as
    check_span_file reads it), then the spans joined in order."""
    rows = as_stored(events)
    size = rows[-1][0] + 1 if rows else 0
    bounds = [0, *sorted({c for c in cuts if 0 < c < size}), size]
    verifier = LogVerifier(LOG, records, {SIGNER.key_id: SIGNER.public})
    try:
        verifier.check_checkpoints()
        for start, end in itertools.pairwise(bounds):
            checker = SpanChecker(start, end, verifier.span_leaves(start, end))
            mine = [row for row in rows if start <= row[0] < end]
            try:
                for at in range(0, len(mine), page):
                    checker.check_page(mine[at : at + page])
                if not checker.complete:
                    checker.rows_end(next((row[0] for row in rows if row[0] >= end), None))
            except Stop:
                pass
            if not verifier.join_span(checker.report()):
                break
        verifier.finish()
    except Stop:
        pass
    return verifier


@given(**TAMPERED_LOGS, cuts=st.lists(st.integers(1, 60), max_size=6))
@settings(max_examples=400, deadline=None)
def test_spans_checked_apart_and_joined_name_the_same_first_failure(
    n: int,
    streams: int,
    every: int,
    notarised: float,
    page: int,
    cuts: list[int],
    how: str,
    seed: int,
) -> None:
    """Wherever the log is cut into spans, joining them gives the one-by-one check's report."""
    events = honest_log(n, streams)
    size = int(n * notarised)
    records = notarise(events, size, every)
    stored = as_stored(events if how == "none" else tampered(events, how, random.Random(seed)))
    ledger = b"".join(r.leaves for r in records)
    in_spans = verify_in_spans(stored, records, cuts, page)
    assert outcome(in_spans) == reference(stored, ledger, size)
    assert in_spans.report == verify(stored, records, page).report
    if how == "none":
        assert in_spans.report.ok and in_spans.report.events_checked == n


def test_a_span_that_ends_early_is_a_missing_event_at_the_first_absent_offset() -> None:
    events = honest_log(30, 3)
    records = notarise(events, 20, 10)
    gapped = [row for row in events if not 8 <= row[0] < 12]  # the span [5, 10) ends at 8
    report = verify_in_spans(gapped, records, [5, 10], page=4).report
    assert report.failure is not None
    assert (report.failure.offset, report.failure.check) == (8, "offset")
    assert report.failure.detail == "expected offset 8, found 12 (missing event)"
    assert report == verify(gapped, records, page=4).report


def test_a_malformed_envelope_in_the_tail_fails_decode_at_its_offset() -> None:
    events = honest_log(20, 3)
    records = notarise(events, 10, 5)
    events[14] = (14, events[14][1][:-5], b"s-2")  # a length that runs past the end
    report = verify(events, records, page=6).report
    assert not report.ok and report.failure is not None
    assert (report.failure.offset, report.failure.check) == (14, "decode")
    assert report.events_checked == 14


def test_fields_in_unusual_order_and_unknown_fields_verify_as_the_decoder_reads_them() -> None:
    """Verify reads envelopes with protobuf's own decoder, so any valid encoding is accepted."""
    first = pb.EventEnvelope(stream_id="s", stream_version=1, event_id="a").SerializeToString()
    # prev_hash (12), then stream_version (3), stream_id (2), and an unknown field 99
    second = (
        b"\x62\x20"
        + event_hash(first)
        + b"\x18\x02"
        + b"\x12\x01s"
        + b"\x9a\x06\x03xyz"  # field 99, length-delimited
    )
    assert pb.EventEnvelope.FromString(second).stream_version == 2
    events: Events = [(0, first, b"s"), (1, second, None)]
    assert verify(events, [], page=2).report.ok
    relinked: Events = [(0, first, b"s"), (1, second.replace(event_hash(first), bytes(32)), b"s")]
    assert outcome(verify(relinked, [], page=2)) == (1, "prev-hash")


def test_page_size_does_not_change_the_report() -> None:
    events = honest_log(50, 4)
    records = notarise(events, 40, 7)
    reports = [verify(events, records, page).report for page in (1, 3, 7, 50, 1000)]
    assert all(r == reports[0] for r in reports) and reports[0].ok
    assert reports[0].unnotarised_tail == 10 and reports[0].checkpoints_checked == 6
