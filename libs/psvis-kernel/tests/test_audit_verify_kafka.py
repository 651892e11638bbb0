"""AUD-1, AUD-2 on the distributed log: verify names the first bad offset of a tampered Kafka log.

Kafka offers no way to edit a record in place, so these tests play the attacker who controls the
broker's storage. An honest log is written through the real distributed store (appends, the
outbox relay, the Notary's signed checkpoints in MongoDB). Then the topic is replaced by one that
holds the same records with exactly one change, and MongoDB's bookkeeping is made to agree with
it, as a careful attacker would: `psvis-position` headers renumbered, the `relay` state and the
`log_index` anchors moved to the new offsets. So the reader hands every record to the verifier,
which alone must notice. The topic keeps its name, so the log id, and with it the original signed
checkpoints, stay those of the honest log. Each test uses its own namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from psvis.audit import verify_store
from psvis.checkpoints import CheckpointRecord
from psvis.checkpoints_mongo import MongoCheckpointStore
from psvis.clock import FixedClock
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import seal
from psvis.eventstore.kafka_log import ensure_topic
from psvis.eventstore.mongo_docs import POSITION_HEADER, STRIDE, anchor_id
from psvis.eventstore.mongo_kafka import MongoKafkaEventStore
from psvis.notary import Notary
from psvis.signing import Signer, public_path
from psvis.stores import Stores
from store_harness import T0, distributed_settings, event, open_distributed

pytestmark = pytest.mark.distributed

COMMITS = 20  # to 3 streams, of 1 or 2 events: 30 events, notarised every 8
EVERY = 8
TAIL = 2  # events appended after the notary's last checkpoint


@dataclass(frozen=True)
class Record:
    """One record of the log topic, as the broker stores it."""

    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def envelope(self) -> pb.EventEnvelope:
        return pb.EventEnvelope.FromString(self.value)

    def at(self, position: int) -> Record:
        """The record with its `psvis-position` header set to `position`."""
        others = tuple(h for h in self.headers if h[0] != POSITION_HEADER)
        return replace(self, headers=((POSITION_HEADER, str(position).encode()), *others))


@dataclass(frozen=True)
class HonestLog:
    namespace: str
    signer: Signer
    key_file: Path  # the notary's public key (PEM), for the CLI
    records: list[Record]
    notarised: int


def store_of(stores: Stores) -> MongoKafkaEventStore:
    assert isinstance(stores.events, MongoKafkaEventStore)
    return stores.events


async def write_honest_log(folder: Path) -> HonestLog:
    """Appends through the store, the relay after each commit (streams interleave), then the
    Notary; then TAIL more events that no checkpoint covers yet."""
    key = folder / "keys" / "notary.key"
    signer = Signer.load_or_create(key)
    stores = await open_distributed()
    store = store_of(stores)
    try:
        for i in range(COMMITS):
            stream = f"s-{i % 3}"
            head = await store.head(stream)
            await store.append(stream, head.version, [event(f"event {i}")] * (1 + i % 2))
            await store.relay.relay_once()
        notary = Notary(store, stores.checkpoints, signer, FixedClock(T0), every=EVERY)
        notarised = await notary.catch_up()
        head = await store.head("s-0")
        await store.append("s-0", head.version, [event(f"late {i}") for i in range(TAIL)])
        await store.relay.relay_once()
        records = await read_partition(store.bootstrap, store.topic)
    finally:
        await stores.close()
    assert [r.headers[0] for r in records] == [
        (POSITION_HEADER, str(p).encode()) for p in range(len(records))
    ]
    return HonestLog(store.namespace, signer, public_path(key), records, notarised)


async def read_partition(bootstrap: str, topic: str) -> list[Record]:
    """The committed records of the topic's one partition, read straight from Kafka."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, 0)
        out: list[Record] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=200)
            out += [Record(r.key, r.value, tuple(r.headers)) for r in batch.get(tp, [])]
        return out
    finally:
        await consumer.stop()


# -- the attacker's edit of the broker's storage -------------------------------------------------


async def replace_partition(namespace: str, records: list[Record]) -> None:
    """The topic of `namespace` now holds exactly `records`, and MongoDB's bookkeeping agrees."""
    settings = distributed_settings(namespace)
    stores = await open_distributed(namespace)
    store = store_of(stores)
    try:
        await recreate_topic(settings.kafka_bootstrap, store.topic)
        offsets = await produce(settings.kafka_bootstrap, store.topic, records)
        await rewrite_bookkeeping(store, offsets)
    finally:
        await stores.close()


async def recreate_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        await admin.delete_topics([topic])
        while topic in await admin.list_topics():
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    await ensure_topic(bootstrap, topic)


async def produce(bootstrap: str, topic: str, records: list[Record]) -> list[int]:
    """Send `records` in order to partition 0; their offsets."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic, value=r.value, key=r.key, partition=0, headers=list(r.headers)
            )
            for r in records
        ]
        offsets = [(await f).offset for f in futures]
    finally:
        await producer.stop()
    assert offsets[:1] in ([], [0]), "the topic was not empty: it was not replaced"
    return offsets


async def rewrite_bookkeeping(store: MongoKafkaEventStore, offsets: list[int]) -> None:
    """The reader's anchors: `log_index` every STRIDE positions, and the relay's reconciled end."""
    await store.coll.log_index.delete_many({})
    for position in range(0, len(offsets), STRIDE):
        await store.coll.log_index.insert_one(
            {"_id": anchor_id(position), "offset": offsets[position]}
        )
    end = offsets[-1] + 1 if offsets else 0
    await store.coll.relay.update_one(
        {"_id": "state"}, {"$set": {"offset": end, "position": len(offsets)}}, upsert=True
    )


def renumbered(records: list[Record]) -> list[Record]:
    return [r.at(position) for position, r in enumerate(records)]


# -- verifying ----------------------------------------------------------------------------------


async def verify(log: HonestLog, namespace: str | None = None) -> dict[str, Any]:
    """`verify_store` on a freshly opened store, trusting the honest notary's key."""
    stores = await open_distributed(namespace or log.namespace)
    try:
        report = await verify_store(stores.events, stores.checkpoints, [log.signer.public])
    finally:
        await stores.close()
    return report.as_dict()


@pytest.fixture
async def honest(tmp_path: Path) -> HonestLog:
    return await write_honest_log(tmp_path)


# -- the edits: each returns the tampered records and the first position that is bad ------------

Edit = Callable[[list[Record]], tuple[list[Record], int]]


def flipped_byte(records: list[Record]) -> tuple[list[Record], int]:
    at = 13
    value = bytearray(records[at].value)
    value[len(value) // 2] ^= 0x01
    return [*records[:at], replace(records[at], value=bytes(value)), *records[at + 1 :]], at


def dropped_record(records: list[Record]) -> tuple[list[Record], int]:
    at = 9
    return renumbered([*records[:at], *records[at + 1 :]]), at


def swapped_records(records: list[Record]) -> tuple[list[Record], int]:
    # two neighbours from different streams: each stream's hash chain still holds
    at = next(p for p in range(4, len(records)) if records[p].key != records[p + 1].key)
    out = list(records)
    out[at], out[at + 1] = out[at + 1], out[at]
    return renumbered(out), at


def inserted_forgery(records: list[Record]) -> tuple[list[Record], int]:
    """A well-formed first event of a new stream, so no hash chain or version can give it away."""
    at = 6
    model = records[at - 1].envelope
    forged = seal(
        event("forged"),
        event_id="5f0e8a52-forged-not-appended",
        stream_id="s-forged",
        version=1,
        prev_hash=b"",
        recorded_at=model.recorded_at.ToDatetime(tzinfo=T0.tzinfo),
    )
    record = replace(records[at - 1], key=b"s-forged", value=forged)
    return renumbered([*records[:at], record, *records[at:]]), at


def truncated_log(records: list[Record]) -> tuple[list[Record], int]:
    at = 28  # inside the notarised part
    return records[:at], at


def changed_tail_event(records: list[Record]) -> tuple[list[Record], int]:
    """After the last checkpoint only the stream's hash chain protects an event."""
    at = len(records) - TAIL
    value = bytearray(records[at].value)
    value[-2] ^= 0x01  # inside its own prev_hash, the envelope's last field
    return [*records[:at], replace(records[at], value=bytes(value)), *records[at + 1 :]], at


@pytest.mark.parametrize(
    ("edit", "check"),
    [
        (flipped_byte, "notarised-leaf"),
        (dropped_record, "notarised-leaf"),
        (swapped_records, "notarised-leaf"),
        (inserted_forgery, "notarised-leaf"),
        (truncated_log, "truncated"),
        (changed_tail_event, "prev-hash"),
    ],
    ids=lambda p: p.__name__.replace("_", "-") if callable(p) else "",
)
async def test_aud1_tampered_kafka_log_fails_at_the_first_bad_offset(
    honest: HonestLog, edit: Edit, check: str
) -> None:
    tampered, first_bad = edit(honest.records)
    await replace_partition(honest.namespace, tampered)
    report = await verify(honest)
    assert not report["ok"], report
    assert report["failure"]["offset"] == first_bad, report
    assert report["failure"]["check"] == check, report
    assert report["events_checked"] == first_bad


async def test_aud2_untouched_kafka_log_verifies_before_and_after_a_rewrite(
    honest: HonestLog,
) -> None:
    size = COMMITS + COMMITS // 2 + TAIL
    assert len(honest.records) == size and honest.notarised == size - TAIL
    before = await verify(honest)
    assert before["ok"], before
    assert before["events_checked"] == size and before["notarised_size"] == honest.notarised
    assert before["checkpoints_checked"] == -(-honest.notarised // EVERY)
    assert before["unnotarised_tail"] == TAIL
    # the same records, re-produced at new offsets: the rewrite alone breaks nothing
    await replace_partition(honest.namespace, honest.records)
    assert await verify(honest) == before


async def test_aud1_a_record_whose_position_header_disagrees_is_refused_by_the_reader(
    honest: HonestLog,
) -> None:
    """A careless attacker drops a record without renumbering: the reader stops at it."""
    at = 9
    await replace_partition(honest.namespace, [*honest.records[:at], *honest.records[at + 1 :]])
    with pytest.raises(RuntimeError, match=f"stamped position {at + 1}, counting gives {at}"):
        await verify(honest)


async def test_aud1_checkpoints_signed_for_another_log_do_not_vouch_for_this_one(
    honest: HonestLog,
) -> None:
    """Another namespace's log replaced by this one's records, with this log's checkpoints.

    The attacker copies the signed checkpoints unchanged and relabels only the unsigned
    `log_id` MongoDB files them under. Each signed checkpoint still names the log it was
    signed for, so it must not count as evidence for a log with another id.
    """
    stores = await open_distributed(honest.namespace)
    try:
        signed = await stores.checkpoints.all(stores.events.log_id)
    finally:
        await stores.close()
    other = await open_distributed()
    other_store = store_of(other)
    try:
        assert isinstance(other.checkpoints, MongoCheckpointStore)
        for record in signed:
            await other.checkpoints.add(
                CheckpointRecord(
                    other_store.log_id,
                    record.tree_size,
                    record.signed,
                    record.leaves,
                    record.frontier,
                )
            )
    finally:
        await other.close()
    await replace_partition(other_store.namespace, honest.records)
    report = await verify(honest, other_store.namespace)
    assert not report["ok"], report
    assert report["failure"]["offset"] == 0, report
    assert report["failure"]["check"] == "checkpoint-log", report


def test_aud2_cli_on_the_distributed_backend_exits_non_zero_and_names_the_offset(
    tmp_path: Path,
) -> None:
    log = asyncio.run(write_honest_log(tmp_path))
    settings = distributed_settings(log.namespace)
    env = {
        **os.environ,
        "PSVIS_BACKEND": "distributed",
        "PSVIS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PSVIS_MONGO_URL": settings.mongo_url,
        "PSVIS_NAMESPACE": log.namespace,
    }
    psvis = [sys.executable, "-m", "psvis.cli.main", "audit", "verify", "--key", str(log.key_file)]

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*psvis, *extra], capture_output=True, text=True, env=env, check=False
        )

    ok = run("--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    tampered, first_bad = flipped_byte(log.records)
    asyncio.run(replace_partition(log.namespace, tampered))
    bad = run("--json")
    assert bad.returncode == 1, bad.stderr
    assert json.loads(bad.stdout)["failure"]["offset"] == first_bad
    human = run()
    assert human.returncode == 1 and f"offset {first_bad}" in human.stdout, human.stderr
