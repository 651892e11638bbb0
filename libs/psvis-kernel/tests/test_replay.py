"""Invariant 4, AUD-3: replay gives identical read models; --until gives the past state."""

from __future__ import annotations

import asyncio
import gc
import os
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from kernel_fixtures import START, Log, build_log, note
from psvis import pids
from psvis.audit import replay
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import RecordedEvent
from psvis.eventstore.port import LogUnreadable
from psvis.projection import FOLDS, ProjectionRunner, StreamProjection, read_models_fit
from psvis.readstore.port import Document, Write, canonical_digest
from psvis.readstore.sqlite import SqliteReadStore
from psvis.replaying import ReplayWorkerError, Share, SharedLog
from psvis.sqlite_db import SqliteDatabase


def count_notes(
    doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope
) -> dict[str, Any]:
    doc = dict(doc or {"notes": 0, "last": ""})
    doc["notes"] += 1
    doc["last"] = event.reason  # type: ignore[attr-defined]
    doc["at"] = env.occurred_at.ToJsonString()
    return doc


PROJECTIONS = [StreamProjection("s-", "notes", count_notes)]


async def test_replay_equals_live_read_models(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=50)
    live = SqliteReadStore(log.db)
    runner = ProjectionRunner("live", log.store, live, PROJECTIONS, batch=7)
    await runner.catch_up()
    live_digest = await canonical_digest(live, ["notes"])
    await live.drop_all()
    assert await live.list("notes") == []
    rebuilt = await replay(log.store, PROJECTIONS, ["notes"])
    assert rebuilt.digest == live_digest
    assert rebuilt.position == 49
    fresh = ProjectionRunner("live", log.store, live, PROJECTIONS, batch=1000)
    await fresh.catch_up()  # a consumer restarted on the dropped read models agrees too
    assert await canonical_digest(live, ["notes"]) == live_digest


async def test_read_models_of_other_folds_are_dropped_to_be_rebuilt(tmp_path: Path) -> None:
    """A fold changed (its version), or a projection added: the read models written before do
    not fit and are dropped, so that the runner rebuilds them from the log; the same folds
    keep theirs."""
    log = await build_log(tmp_path, events=20)
    reads = SqliteReadStore(log.db)
    assert await read_models_fit(reads, "live", PROJECTIONS)  # nothing written yet: fits
    await ProjectionRunner("live", log.store, reads, PROJECTIONS).catch_up()
    digest = await canonical_digest(reads, ["notes"])
    assert await read_models_fit(reads, "live", PROJECTIONS)
    assert await reads.get_position("live") == 19  # kept

    changed = [StreamProjection("s-", "notes", count_notes, version=2)]
    assert not await read_models_fit(reads, "live", changed)
    assert (await reads.list("notes"), await reads.get_position("live")) == ([], -1)
    await ProjectionRunner("live", log.store, reads, changed).catch_up()
    assert await canonical_digest(reads, ["notes"]) == digest
    assert await read_models_fit(reads, "live", changed)

    added = [*changed, StreamProjection("s-", "more", count_notes)]
    assert not await read_models_fit(reads, "live", added)
    await ProjectionRunner("live", log.store, reads, added).catch_up()
    assert len(await reads.list("more")) == 3  # the older events reach the new projection too

    await reads.drop_all()  # read models from before folds were recorded: a position, no folds
    await ProjectionRunner("live", log.store, reads, added).catch_up()
    assert await reads.get(FOLDS, "live") is None
    assert not await read_models_fit(reads, "live", added)
    assert await reads.get_position("live") == -1


async def test_a_fold_that_changes_rebuilds_its_runners_read_models_only(tmp_path: Path) -> None:
    """Two runners (two services' Deployments) keep read models in one store: a fold of one
    changes, and only that runner's collections and position are dropped; the other's stay."""
    log = await build_log(tmp_path, events=20)
    reads = SqliteReadStore(log.db)
    mine = [StreamProjection("s-", "notes", count_notes)]
    theirs = [StreamProjection("s-", "theirs", count_notes)]
    for name, projections in (("mine", mine), ("theirs", theirs)):
        assert await read_models_fit(reads, name, projections)
        await ProjectionRunner(name, log.store, reads, projections).catch_up()
    kept = await canonical_digest(reads, ["theirs"])

    changed = [StreamProjection("s-", "notes", count_notes, version=2)]
    assert not await read_models_fit(reads, "mine", changed)
    assert (await reads.list("notes"), await reads.get_position("mine")) == ([], -1)
    assert await canonical_digest(reads, ["theirs"]) == kept
    assert await reads.get_position("theirs") == 19
    assert await read_models_fit(reads, "theirs", theirs)  # still fits
    assert await read_models_fit(reads, "mine", changed)  # recorded

    moved = [StreamProjection("s-", "notes2", count_notes, version=2)]  # a collection renamed
    await ProjectionRunner("mine", log.store, reads, changed).catch_up()
    assert not await read_models_fit(reads, "mine", moved)
    assert await reads.list("notes") == [] and await reads.list("notes2") == []  # old and new


def test_each_set_of_services_has_a_read_model_runner_of_its_own() -> None:
    from psvis.server import read_models_runner
    from psvis.settings import Settings

    assert read_models_runner(Settings(namespace="city")) == "city.read-models"
    assert read_models_runner(Settings(namespace="city", services=["registry"])) == (
        "city.read-models.registry"
    )
    assert read_models_runner(
        Settings(namespace="c", services=["sharing", "access", "access"])
    ) == ("c.read-models.access+sharing")


async def test_duplicate_delivery_is_applied_once(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=12)
    reads = SqliteReadStore(log.db)
    runner = ProjectionRunner("dup", log.store, reads, PROJECTIONS)
    events = await log.store.read_page(-1, 100)
    await runner.apply_batch(events)
    once = await canonical_digest(reads, ["notes"])
    await runner.apply_batch(events[3:9])  # at-least-once: the same events again
    await runner.apply_batch(events)
    assert await canonical_digest(reads, ["notes"]) == once
    doc, version = (await reads.get("notes", "0")) or ({}, 0)
    assert doc["notes"] == 4 and version == 4


async def test_aud3_replay_until_shows_state_as_it_was(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=30, streams=3)  # one event a minute from START
    halfway = START + timedelta(minutes=15)
    past = await replay(log.store, PROJECTIONS, ["notes"], until=halfway)
    counts = {key: doc["notes"] for key, doc in await past.reads.list("notes")}
    assert counts == {"0": 5, "1": 5, "2": 5}
    before = await replay(log.store, PROJECTIONS, ["notes"], until=START)
    assert await before.reads.list("notes") == []


async def test_aud3_a_clock_set_back_does_not_split_a_stream_at_until(tmp_path: Path) -> None:
    """v2 of s-x is recorded 10 minutes before v1 (the clock was set back in between): at a
    time between the two, v1 was not in the log, so neither was v2; the stream is left out
    whole rather than folded from v2 on."""
    log = await build_log(tmp_path, events=6, streams=2)
    log.clock.advance(timedelta(minutes=30))
    await log.store.append("s-x", 0, [note("first", log.clock)])
    log.clock.advance(timedelta(minutes=-10))
    await log.store.append("s-x", 1, [note("second", log.clock)])
    between = START + timedelta(minutes=30)  # after v2's time, before v1's
    past = await replay(log.store, PROJECTIONS, ["notes"], until=between)
    assert {key for key, _ in await past.reads.list("notes")} == {"0", "1"}
    now = await replay(log.store, PROJECTIONS, ["notes"])
    assert dict(await now.reads.list("notes"))["x"]["notes"] == 2


class CountingStore(SqliteReadStore):
    """Counts the documents written, and notes which were written or read back, in order."""

    def __init__(self, db: SqliteDatabase) -> None:
        super().__init__(db)
        self.written = 0
        self.calls: list[tuple[str, str]] = []

    async def put_many(self, collection: str, writes: Sequence[Write]) -> int:
        self.written += len(writes)
        self.calls += [("put", w.key) for w in writes]
        return await super().put_many(collection, writes)

    async def get_many(
        self, collection: str, keys: Sequence[str]
    ) -> dict[str, tuple[Document, int]]:
        self.calls += [("get", k) for k in keys]
        return await super().get_many(collection, keys)


async def test_catch_up_writes_each_document_once_not_once_per_page(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=30, streams=3)
    reads = CountingStore(log.db)
    runner = ProjectionRunner("wb", log.store, reads, PROJECTIONS, batch=4, flush_each_page=False)
    assert await runner.catch_up() == 29
    assert reads.written == 3  # 8 pages touch each of the 3 streams
    assert await reads.get_position("wb") == 29
    assert {k: d["notes"] for k, d in await reads.list("notes")} == {"0": 10, "1": 10, "2": 10}


async def test_documents_leaving_the_cache_are_written_and_agree(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=40, streams=5)
    expected = (await replay(log.store, PROJECTIONS, ["notes"])).digest
    reads = CountingStore(log.db)
    runner = ProjectionRunner("small", log.store, reads, PROJECTIONS, batch=3, keep=1)
    await runner.catch_up()
    assert await canonical_digest(reads, ["notes"]) == expected
    assert reads.written > 5  # evicted documents were written as they left


@pytest.mark.parametrize("flush_each_page", [True, False])
async def test_a_runner_on_an_empty_store_reads_back_only_what_it_wrote(
    tmp_path: Path, flush_each_page: bool
) -> None:
    """What a replay does: documents leave memory (keep=1) and come back, written meanwhile."""
    log = await build_log(tmp_path, events=40, streams=5)
    expected = (await replay(log.store, PROJECTIONS, ["notes"], workers=1)).digest
    runs = {}
    for empty in (False, True):
        reads = CountingStore(SqliteDatabase(tmp_path / f"reads-{empty}.db"))
        runner = ProjectionRunner(
            "r", log.store, reads, PROJECTIONS, batch=3, keep=1,
            flush_each_page=flush_each_page, empty=empty,
        )  # fmt: skip
        assert await runner.catch_up() == 39
        assert await canonical_digest(reads, ["notes"]) == expected
        runs[empty] = reads.calls
    plain = runs[False]
    asked_first = [
        k for i, (call, k) in enumerate(plain) if call == "get" and ("put", k) not in plain[:i]
    ]
    assert {"0", "1", "2", "3", "4"} <= set(asked_first)  # a runner that may not assume: asks
    told = runs[True]
    assert any(call == "get" for call, _ in told)  # documents that left memory came back
    for i, (call, key) in enumerate(told):
        assert call == "put" or ("put", key) in told[:i], f"{key} read before it was written"


async def test_a_failed_catch_up_moves_no_position_and_a_rerun_agrees(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=30, streams=3)
    expected = (await replay(log.store, PROJECTIONS, ["notes"])).digest
    calls = 0

    def flaky(doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope) -> Document:
        nonlocal calls
        calls += 1
        if calls == 20:
            raise RuntimeError("fold crashed")
        return count_notes(doc, event, env)

    reads = CountingStore(log.db)
    broken = [StreamProjection("s-", "notes", flaky)]
    runner = ProjectionRunner(
        "crash", log.store, reads, broken, batch=4, keep=1, flush_each_page=False
    )
    with pytest.raises(RuntimeError):
        await runner.catch_up()
    assert reads.written > 0  # documents that left the cache were written...
    assert await reads.get_position("crash") == -1  # ...but the position did not move
    assert await runner.catch_up() == 29  # the same runner goes on from the stored state
    assert await canonical_digest(reads, ["notes"]) == expected


class GrowingLog:
    """The log while writers keep appending: every page read brings one more event."""

    def __init__(self, log: Log, more: int) -> None:
        self._log, self._more = log, more
        self.log_id = log.store.log_id

    async def read_page(self, after: int, limit: int) -> list[RecordedEvent]:
        if self._more > 0:
            self._more -= 1
            head = await self._log.store.head("s-0")
            await self._log.store.append("s-0", head.version, [note("more", self._log.clock)])
        return await self._log.store.read_page(after, limit)

    async def wait_for_append(self, timeout: float) -> None:
        return None


async def test_a_live_runner_shows_progress_while_the_log_keeps_growing(tmp_path: Path) -> None:
    """Readers waiting for their write must not wait for the log to stop growing."""
    log = await build_log(tmp_path, events=30, streams=3)
    reads = CountingStore(log.db)
    runner = ProjectionRunner("live", GrowingLog(log, more=40), reads, PROJECTIONS, batch=4)  # type: ignore[arg-type]
    seen: list[int] = []

    async def watch() -> None:
        while not seen or seen[-1] < 60:
            seen.append(await reads.get_position("live"))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    assert await runner.catch_up() == 69  # 30 events, then 40 appended while it ran
    await asyncio.wait_for(watcher, 5)
    moved = sorted({p for p in seen if p >= 0})
    assert len(moved) > 5 and moved[0] < 40  # the position moved page by page, early on
    assert await runner.wait_for_stream("s-1", 10, timeout=0.1)
    assert {k: d["notes"] for k, d in await reads.list("notes")} == {"0": 50, "1": 10, "2": 10}


def fails_on_stream_4(
    doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope
) -> dict[str, Any]:
    if env.stream_id == "s-4":
        raise ValueError("no fold for s-4")
    return count_notes(doc, event, env)


def dies_on_stream_4(
    doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope
) -> dict[str, Any]:
    if env.stream_id == "s-4":
        os._exit(3)
    return count_notes(doc, event, env)


@pytest.mark.parametrize("workers", [2, 3])
async def test_aud3_a_replay_in_worker_processes_equals_one_in_this_process(
    tmp_path: Path, workers: int
) -> None:
    log = await build_log(tmp_path, events=60, streams=12)
    for until in (None, START + timedelta(minutes=25)):
        alone = await replay(log.store, PROJECTIONS, ["notes"], until=until, workers=1)
        told: list[int] = []
        into = tmp_path / f"parts-{workers}-{until is None}.db"
        parts = await replay(
            log.store, PROJECTIONS, ["notes"], until=until, workers=workers, into=into,
            progress=told.append,
        )  # fmt: skip
        assert await parts.reads.list("notes") == await alone.reads.list("notes")
        assert parts.digest == alone.digest and parts.position == alone.position == 59
        assert await parts.reads.get_position("replay") == 59
        assert sum(told) == 60  # the whole log, told as the slowest worker gets through it
        assert not list(tmp_path.glob("psvis-replay-*"))  # the workers' files are gone
        await parts.db.close()
        await alone.db.close()


async def test_aud3_a_replay_removes_scratch_folders_of_dead_replays_never_a_live_ones(
    tmp_path: Path,
) -> None:
    """AUD-3: the workers' files are in a folder named with the replay's pid. A replay killed
    outright (SIGKILL) cannot remove it; the next replay beside it does, once that pid has
    ended. A running replay's folder, and one whose owner cannot be told, are kept."""
    log = await build_log(tmp_path, events=40, streams=8)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: its pid runs nothing now
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = [
            tmp_path / f"psvis-replay-{ended.pid}@{pids.HOST}-k3j_9x2a",
            tmp_path / f"psvis-replay-{ended.pid}-k3j_9x2b",  # named before machines were
        ]
        kept = [
            tmp_path / f"psvis-replay-{running.pid}@{pids.HOST}-a1b2c3d4",
            # the same pid on another machine sharing the folder may be running there
            tmp_path / f"psvis-replay-{ended.pid}@other-host.example-a1b2c3d4",
            tmp_path / "psvis-replay-a1b2c3d4",  # no pid in its name: whose it is cannot be told
        ]
        for folder in (*dead, *kept):
            folder.mkdir()
            (folder / "part-0.db").write_bytes(b"half a share")
        own: list[str] = []

        def told(_: int) -> None:  # while the workers run
            own.extend(p.name for p in tmp_path.glob(f"psvis-replay-{pids.owner()}-*"))

        into = tmp_path / "replayed.db"
        replayed = await replay(log.store, PROJECTIONS, ["notes"], workers=2, into=into,
                                progress=told)  # fmt: skip
        await replayed.db.close()
        assert own, "the replay's own scratch folder is named with its pid and machine"
        assert sorted(tmp_path.glob("psvis-replay-*")) == sorted(kept)
    finally:
        running.kill()
        running.wait()


async def test_a_share_is_its_streams_events_up_to_the_fixed_end(tmp_path: Path) -> None:
    log = await build_log(tmp_path, events=30, streams=7)
    through = [0, 0]
    got = []
    for part in (0, 1):
        share = Share(str(log.store.path), 19, part, 2, None, "unused")
        source = SharedLog(log.db, share, through)
        page = await source.read_page(-1, 4)
        while page:
            assert all(share.holds(e.stream_id) for e in page)
            got += page
            page = await source.read_page(page[-1].position, 4)
    assert through == [20, 20]
    assert sorted(e.position for e in got) == list(range(20))  # each event in one share only
    assert {e.stream_id for e in got if Share("", 0, 0, 2, None, "").holds(e.stream_id)}
    assert {e.stream_id for e in got if Share("", 0, 1, 2, None, "").holds(e.stream_id)}


@pytest.mark.parametrize(
    ("fold", "says"),
    [(fails_on_stream_4, "ValueError: no fold for s-4"), (dies_on_stream_4, "exit code 3")],
)
async def test_a_worker_that_fails_fails_the_replay_and_leaves_no_documents(
    tmp_path: Path, fold: Any, says: str
) -> None:
    log = await build_log(tmp_path, events=40, streams=8)
    into = tmp_path / "replayed.db"
    failing = [StreamProjection("s-", "notes", fold)]
    with pytest.raises(ReplayWorkerError, match=says):
        await replay(log.store, failing, ["notes"], workers=2, into=into)
    reads = SqliteReadStore(SqliteDatabase(into))
    assert await reads.list("notes") == []
    assert not list(tmp_path.glob("psvis-replay-*"))


async def test_an_event_filed_under_another_share_s_stream_stops_the_replay(tmp_path: Path) -> None:
    """Workers pick their events by the table's stream column; the envelope must agree."""
    log = await build_log(tmp_path, events=40, streams=8)
    share_of = {f"s-{k}": Share("", 0, 0, 2, None, "").holds(f"s-{k}") for k in range(8)}
    other = next(s for s, held in share_of.items() if held != share_of["s-3"])
    conn = sqlite3.connect(tmp_path / "psvis.db")
    # s-3's last event (an earlier one would also leave a gap that its own worker finds)
    conn.execute("UPDATE events SET stream_id = ? WHERE position = 35", (other,))
    conn.commit()
    conn.close()
    into = tmp_path / "replayed.db"
    with pytest.raises(LogUnreadable, match=r"offset 35 is filed under another stream .*\(s-3\)"):
        await replay(log.store, PROJECTIONS, ["notes"], workers=2, into=into)
    assert await SqliteReadStore(SqliteDatabase(into)).list("notes") == []
    alone = await replay(log.store, PROJECTIONS, ["notes"], workers=1)  # goes by the envelopes
    found = await alone.reads.get("notes", "3")  # s-3's document
    assert found is not None and found[0]["notes"] == 5
    await alone.db.close()


@pytest.mark.parametrize("workers", [0, 9])
async def test_a_replay_asked_for_too_few_or_too_many_workers_refuses_before_it_starts(
    tmp_path: Path, workers: int
) -> None:
    log = await build_log(tmp_path, events=5)
    with pytest.raises(ValueError, match="1 to 8 workers"):
        await replay(log.store, PROJECTIONS, ["notes"], workers=workers, into=tmp_path / "r.db")
    assert await SqliteReadStore(SqliteDatabase(tmp_path / "r.db")).list("notes") == []


async def test_a_failed_batch_leaves_no_write_behind_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A document write still under way when a later fold fails is settled, not left to fail
    unseen (or to surface in some later batch)."""
    log = await build_log(tmp_path, events=12, streams=3)

    class Unwritable(SqliteReadStore):
        async def put_many(self, collection: str, writes: Sequence[Write]) -> int:
            await asyncio.sleep(0.01)
            raise OSError("disk full")

    def fails(doc: dict[str, Any] | None, event: Message, env: pb.EventEnvelope) -> Document:
        raise RuntimeError("fold crashed")

    projections = [*PROJECTIONS, StreamProjection("s-", "crashing", fails)]
    # empty: the crashing projection reads nothing back, so its fold fails while the first
    # projection's documents are still being written
    runner = ProjectionRunner("p", log.store, Unwritable(log.db), projections, keep=0, empty=True)
    events = await log.store.read_page(-1, 100)
    gc.collect()  # what earlier tests left behind says what it has to say now
    caplog.clear()
    with pytest.raises(RuntimeError, match="fold crashed"):
        await runner.apply_batch(events)
    await asyncio.sleep(0.05)  # the write has failed by now
    del runner
    gc.collect()  # a task whose failure no one saw says so ("never retrieved") as it goes
    assert "disk full" not in caplog.text
