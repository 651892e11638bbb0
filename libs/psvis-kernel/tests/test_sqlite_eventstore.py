"""The embedded event store's own guarantees: its stream index is derived, never trusted.

An append writes only its log rows; the stream index is written in batches. So a store that
stops without flushing (a crash) or a log appended by another process must still give exact
heads, streams and concurrency checks, learnt again from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest
from psvis.audit import verify_store
from psvis.checkpoints import SqliteCheckpointStore
from psvis.clock import FixedClock, SequentialIds
from psvis.envelope import RecordedEvent
from psvis.errors import ConcurrencyConflict
from psvis.eventstore.port import LogUnreadable, StreamHead
from psvis.eventstore.sqlite import UNYIELDED_APPENDS, SqliteEventStore
from psvis.eventstore.sqlite_index import StreamIndex
from psvis.sqlite_db import SqliteDatabase, WalCheckpointer
from store_harness import T0, event

KERNEL_TESTS = Path(__file__).resolve().parent


def open_store(path: Path, prefix: str = "ev") -> tuple[SqliteDatabase, SqliteEventStore]:
    db = SqliteDatabase(path)
    return db, SqliteEventStore(db, FixedClock(T0), SequentialIds(prefix))


@contextlib.asynccontextmanager
async def store_at(
    path: Path, prefix: str = "ev"
) -> AsyncIterator[tuple[SqliteDatabase, SqliteEventStore]]:
    """A store on the file, closed (index written) with its database when the block ends."""
    db, store = open_store(path, prefix)
    try:
        yield db, store
    finally:
        await store.close()
        await db.close()


def edit_log(path: Path, *statements: tuple[str, tuple[object, ...]]) -> None:
    """Change the file behind the store's back, as someone with the file could."""
    conn = sqlite3.connect(path)
    for sql, params in statements:
        conn.execute(sql, params)
    conn.commit()
    conn.close()


async def fill(store: SqliteEventStore, streams: int, rounds: int) -> dict[str, int]:
    versions: dict[str, int] = {}
    for r in range(rounds):
        for s in range(streams):
            stream = f"s-{s}"
            batch = [event(f"{stream} {r}.{k}") for k in range(1 + (r + s) % 3)]
            out = await store.append(stream, versions.get(stream, 0), batch)
            versions[stream] = out[-1].version
    return versions


def in_one_step(append: Coroutine[Any, Any, list[RecordedEvent]]) -> list[RecordedEvent]:
    """Run an append one step: it must finish (return or raise) without suspending."""
    try:
        waits_on = append.send(None)
    except StopIteration as finished:
        return list(finished.value)
    append.close()
    pytest.fail(f"the append suspended, waiting on {waits_on!r}")


async def test_a_store_that_never_flushed_its_index_is_read_back_exactly(tmp_path: Path) -> None:
    """A crash after appends: the tail of the index lived in memory only."""
    db, store = open_store(tmp_path / "psvis.db")
    versions = await fill(store, streams=7, rounds=9)
    before = {s: await store.read_stream(s) for s in versions}
    heads = {s: await store.head(s) for s in versions}
    assert StreamIndex(store._conn).upto == -1  # nothing indexed on disk yet
    await db.close()  # the store itself is not closed: its index is never flushed

    db, reopened = open_store(tmp_path / "psvis.db", "again")
    try:
        for stream, version in versions.items():
            assert await reopened.head(stream) == heads[stream]
            assert await reopened.read_stream(stream) == before[stream]
            with pytest.raises(ConcurrencyConflict):
                await reopened.append(stream, version - 1, [event("stale")])
            (new,) = await reopened.append(stream, version, [event("next")])
            assert (new.version, new.envelope.prev_hash) == (version + 1, heads[stream].hash)
        assert await reopened.log_size() == sum(len(e) for e in before.values()) + len(versions)
    finally:
        await reopened.close()
        await db.close()


async def test_an_index_flushed_in_part_and_a_tail_in_memory_agree(tmp_path: Path) -> None:
    db, store = open_store(tmp_path / "psvis.db")
    store._index = StreamIndex(store._conn, batch=16)  # flush every 16 events
    versions = await fill(store, streams=5, rounds=12)
    index = store._index
    assert -1 < index.upto < index.known  # some of the log indexed on disk, some in memory
    expected = {s: [e.version for e in await store.read_stream(s)] for s in versions}
    assert all(v == list(range(1, versions[s] + 1)) for s, v in expected.items())
    await db.close()

    db, reopened = open_store(tmp_path / "psvis.db")
    try:
        for stream, version in versions.items():
            assert [e.version for e in await reopened.read_stream(stream)] == expected[stream]
            assert (await reopened.head(stream)).version == version
    finally:
        await reopened.close()
        await db.close()


def edit_index(path: Path, stream: str, version: int, to_stream: str, to_version: int) -> int:
    """Point the index's entry for (stream, version) at the event (to_stream, to_version)."""
    conn = sqlite3.connect(path)
    (position,) = conn.execute(
        "SELECT i.position FROM stream_index i JOIN streams s ON s.no = i.no"
        " WHERE s.stream_id = ? AND i.version = ?",
        (to_stream, to_version),
    ).fetchone()
    conn.close()
    edit_log(
        path,
        (
            "UPDATE stream_index SET position = ? WHERE version = ?"
            " AND no = (SELECT no FROM streams WHERE stream_id = ?)",
            (position, version, stream),
        ),
    )
    return int(position)


@pytest.mark.parametrize("edited", ["an older event", "the stream's head"])
async def test_an_edited_index_is_rebuilt_from_the_log_not_trusted(
    tmp_path: Path, edited: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An index row pointing a stream at another stream's event hands no command that event:
    reading the stream (or its head, to append) finds it out and rebuilds the index."""
    async with store_at(tmp_path / "psvis.db") as (_, store):  # closing it writes the index
        versions = await fill(store, streams=4, rounds=6)
        before = {s: await store.read_stream(s) for s in versions}
    last = versions["s-1"]
    edit_index(tmp_path / "psvis.db", "s-1", 2 if edited == "an older event" else last, "s-2", 2)

    async with store_at(tmp_path / "psvis.db", "again") as (db, reopened):
        if edited == "an older event":
            assert await reopened.read_stream("s-1") == before["s-1"]
        else:
            assert await reopened.head("s-1") == StreamHead(last, before["s-1"][-1].hash)
        (new,) = await reopened.append("s-1", last, [event("next")])
        assert (new.version, new.envelope.prev_hash) == (last + 1, before["s-1"][-1].hash)
        assert "the stream index disagrees with the log about stream 's-1'" in caplog.text
        for stream, events in before.items():
            read = await reopened.read_stream(stream)
            assert read[: len(events)] == events
        report = await verify_store(reopened, SqliteCheckpointStore(db), [])
        assert report.ok, report


async def test_a_lone_append_whose_head_the_index_gets_wrong_is_chained_to_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first thing after opening is an append, written at once, to a stream whose newest
    index entry points at another stream's event: the index is rebuilt, the append chained
    to the stream's real head."""
    async with store_at(tmp_path / "psvis.db") as (_, store):
        versions = await fill(store, streams=3, rounds=4)
        head = (await store.read_stream("s-1"))[-1]
    edit_index(tmp_path / "psvis.db", "s-1", versions["s-1"], "s-2", 1)
    async with store_at(tmp_path / "psvis.db", "again") as (_, reopened):
        await asyncio.sleep(0)  # let whatever the test runner scheduled run first
        (new,) = in_one_step(reopened.append("s-1", head.version, [event("next")]))
        assert (new.version, new.envelope.prev_hash) == (head.version + 1, head.hash)
        assert "the stream index disagrees with the log about stream 's-1'" in caplog.text


LOSSES = {
    "the stream's newest entry": (
        "DELETE FROM stream_index WHERE no = (SELECT no FROM streams WHERE stream_id = 's-1')"
        " AND version = (SELECT MAX(version) FROM stream_index"
        " WHERE no = (SELECT no FROM streams WHERE stream_id = 's-1'))"
    ),
    "the stream's number": "DELETE FROM streams WHERE stream_id = 's-1'",
}


@pytest.mark.parametrize("lost", LOSSES)
async def test_an_index_that_lost_entries_is_rebuilt_before_any_append_uses_it(
    tmp_path: Path, lost: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Entries gone from the index (nothing else changed) would give the stream an older head,
    and a stale append a version already taken: the store counts the index when it opens."""
    async with store_at(tmp_path / "psvis.db") as (_, store):  # closing it writes the index
        versions = await fill(store, streams=4, rounds=6)
        head = await store.head("s-1")
    edit_log(tmp_path / "psvis.db", (LOSSES[lost], ()))

    async with store_at(tmp_path / "psvis.db", "again") as (db, reopened):
        assert await reopened.head("s-1") == head
        with pytest.raises(ConcurrencyConflict):
            await reopened.append("s-1", versions["s-1"] - 1, [event("stale")])
        assert (
            "the stream index holds" in caplog.text and "rebuilding it from the log" in caplog.text
        )
        (new,) = await reopened.append("s-1", versions["s-1"], [event("next")])
        assert (new.version, new.envelope.prev_hash) == (versions["s-1"] + 1, head.hash)
        report = await verify_store(reopened, SqliteCheckpointStore(db), [])
        assert report.ok, report
    caplog.clear()
    async with store_at(tmp_path / "psvis.db") as (_, again):  # rebuilt once, whole since
        assert (await again.head("s-1")).version == versions["s-1"] + 1
    assert "stream index" not in caplog.text


async def test_a_log_holding_one_version_twice_is_named_once_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The index cannot hold two events for one stream version: rebuilt from such a log it is
    still short, which is the log's damage, said as such (not rebuilt again and again)."""
    db, store = open_store(tmp_path / "psvis.db")
    await fill(store, streams=3, rounds=4)
    s1, s2 = await store.read_stream("s-1"), await store.read_stream("s-2")
    await db.close()  # the store is not closed: the index is learnt from the log next time
    edit_log(  # s-2's third event is overwritten by a copy of s-1's second
        tmp_path / "psvis.db",
        ("UPDATE events SET data = ? WHERE position = ?", (s1[1].data, s2[2].position)),
    )
    async with store_at(tmp_path / "psvis.db"):  # learns the log, and writes the index short
        pass
    async with store_at(tmp_path / "psvis.db") as (_, reopened):
        assert "rebuilding it from the log" in caplog.text
        assert "the log holds events that share a stream and version" in caplog.text
        with pytest.raises(LogUnreadable):
            await reopened.read_stream("s-2")


async def test_a_log_holding_one_version_twice_is_rebuilt_once_and_named_at_every_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rebuilt from a log holding one stream version twice, the index is short by as many events
    for good: the store keeps which events it left out, so later opens do not rebuild it again
    (and again), yet each still names the log's damage; the log may still grow meanwhile. Once
    one of those events is no longer a copy (the log changed), the index is rebuilt."""
    async with store_at(tmp_path / "psvis.db") as (_, store):
        await fill(store, streams=3, rounds=4)
        s1, s2 = await store.read_stream("s-1"), await store.read_stream("s-2")
    edit_log(  # s-2's third event is overwritten by a copy of s-1's second
        tmp_path / "psvis.db",
        ("UPDATE events SET data = ? WHERE position = ?", (s1[1].data, s2[2].position)),
        ("DELETE FROM stream_index_state", ()),  # how far it was written is lost: rebuilt
    )
    async with store_at(tmp_path / "psvis.db"):
        assert caplog.text.count("rebuilding it from the log") == 1
    for k in range(2):
        caplog.clear()
        async with store_at(tmp_path / "psvis.db", f"again-{k}") as (_, reopened):
            await reopened.append("s-0", (await reopened.head("s-0")).version, [event("more")])
        assert "rebuilding" not in caplog.text
        assert caplog.text.count("the log holds events that share a stream and version") == 1
    caplog.clear()
    edit_log(  # put right, s-2's third event has no entry: it must not be left out
        tmp_path / "psvis.db",
        ("UPDATE events SET data = ? WHERE position = ?", (s2[2].data, s2[2].position)),
    )
    async with store_at(tmp_path / "psvis.db", "mended") as (_, mended):
        assert "rebuilding it from the log" in caplog.text
        assert "share a stream and version" not in caplog.text
        assert (await mended.head("s-2")).version == len(s2)
        assert [e.version for e in await mended.read_stream("s-2")] == list(range(1, len(s2) + 1))


async def test_a_log_missing_an_event_is_said_to_miss_it_not_to_repeat_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A row deleted from the log leaves a position with no event: the index rebuilt from it is
    short by that one, which the store names as a missing position, not as a repeated version."""
    async with store_at(tmp_path / "psvis.db") as (_, store):
        await fill(store, streams=3, rounds=4)
        s1 = await store.read_stream("s-1")
    edit_log(
        tmp_path / "psvis.db",
        ("DELETE FROM events WHERE position = ?", (s1[1].position,)),
        ("DELETE FROM stream_index_state", ()),  # how far it was written is lost: rebuilt
    )
    async with store_at(tmp_path / "psvis.db"):
        pass
    assert "1 of the positions up to" in caplog.text and "hold no event" in caplog.text
    assert "share a stream and version" not in caplog.text


async def test_a_log_whose_stream_is_out_of_order_is_unreadable_not_rebuilt_forever(
    tmp_path: Path,
) -> None:
    """Rebuilt from a log whose own rows are out of order, the index still disagrees: that is
    the log's damage, named as such (a command loads its stream first, so it stops there)."""
    async with store_at(tmp_path / "psvis.db") as (_, store):
        await fill(store, streams=2, rounds=4)
        (v1, v2) = [e for e in await store.read_stream("s-0")][:2]
    edit_log(  # the two events swap places in the log
        tmp_path / "psvis.db",
        ("UPDATE events SET data = ? WHERE position = ?", (v2.data, v1.position)),
        ("UPDATE events SET data = ? WHERE position = ?", (v1.data, v2.position)),
    )

    async with store_at(tmp_path / "psvis.db") as (_, reopened):
        for _ in range(2):  # each read rebuilds once, and says so
            with pytest.raises(LogUnreadable, match=r"'s-0' are not its versions 1\.\.n; run"):
                await reopened.read_stream("s-0")
        assert [e.version for e in await reopened.read_stream("s-1")] == [1, 2, 3, 4, 5, 6, 7, 8]


async def test_a_log_of_the_older_table_shape_is_rewritten_and_reads_the_same(
    tmp_path: Path,
) -> None:
    """Logs written when the events table also held version and event_id columns."""
    db, store = open_store(tmp_path / "psvis.db")
    versions = await fill(store, streams=4, rounds=5)
    before = await store.read_page(-1, 1000)
    await store.close()
    await db.close()
    conn = sqlite3.connect(tmp_path / "psvis.db")
    conn.executescript(
        """
        ALTER TABLE events RENAME TO events_now;
        CREATE TABLE events (position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL,
            version INTEGER NOT NULL, event_id TEXT NOT NULL, data BLOB NOT NULL);
        DROP TABLE stream_index; DROP TABLE stream_index_state; DROP TABLE streams;
        """
    )
    for e in before:
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
            (e.position, e.stream_id, e.version, e.event_id, e.data),
        )
    conn.execute("DROP TABLE events_now")
    conn.commit()
    conn.close()

    db, store = open_store(tmp_path / "psvis.db", prefix="later")
    try:
        columns = store._conn.execute("SELECT name FROM pragma_table_info('events')").fetchall()
        assert columns == [("position",), ("stream_id",), ("data",)]
        assert await store.read_page(-1, 1000) == before
        assert await store.read_stream("s-1") == [e for e in before if e.stream_id == "s-1"]
        (added,) = await store.append("s-1", versions["s-1"], [event("after the rewrite")])
        assert (added.position, added.version) == (len(before), versions["s-1"] + 1)
        report = await verify_store(store, SqliteCheckpointStore(db), [])
        assert report.ok and report.events_checked == len(before) + 1, report
    finally:
        await store.close()
        await db.close()


async def test_a_damaged_row_in_the_unindexed_tail_is_named_when_the_store_opens(
    tmp_path: Path,
) -> None:
    db, store = open_store(tmp_path / "psvis.db")
    await fill(store, streams=2, rounds=3)
    await db.close()  # the store is not closed: its tail is not in stream_index
    edit_log(tmp_path / "psvis.db", ("UPDATE events SET data = x'ff' WHERE position = 4", ()))
    with pytest.raises(LogUnreadable, match="offset 4 is not an envelope"):
        open_store(tmp_path / "psvis.db")


async def test_two_stores_on_one_file_see_each_others_appends(tmp_path: Path) -> None:
    """Another process appended: this writer learns it before deciding."""
    db_a, a = open_store(tmp_path / "psvis.db", "a")
    db_b, b = open_store(tmp_path / "psvis.db", "b")
    try:
        await a.append("shared", 0, [event("from a")])
        with pytest.raises(ConcurrencyConflict):
            await b.append("shared", 0, [event("from b, stale")])
        (second,) = await b.append("shared", 1, [event("from b")])
        (third,) = await a.append("shared", 2, [event("from a again")])
        assert [e.position for e in await a.read_stream("shared")] == [0, 1, 2]
        assert third.envelope.prev_hash == second.hash
        await b.append("only-b", 0, [event("b alone")])
        assert (await a.head("only-b")).version == 1
    finally:
        await a.close()
        await b.close()
        await db_a.close()
        await db_b.close()


async def test_a_lone_append_whose_position_another_writer_took_is_written_after_it(
    tmp_path: Path,
) -> None:
    """A lone append to another stream, at a position another process has just taken: the
    writer learns that process's event and writes its own at the next position."""
    db_a, a = open_store(tmp_path / "psvis.db", "a")
    db_b, b = open_store(tmp_path / "psvis.db", "b")
    try:
        (first,) = await a.append("from-a", 0, [event("a")])
        await asyncio.sleep(0)  # let whatever the test runner scheduled run first
        (second,) = in_one_step(b.append("from-b", 0, [event("b")]))  # b has not seen a's event
        assert (first.position, second.position) == (0, 1)
        assert [e.version for e in await b.read_stream("from-a")] == [1]
        assert await a.read_stream("from-b") == [second]
    finally:
        for closing in (a.close(), b.close(), db_a.close(), db_b.close()):
            await closing


async def test_one_bad_append_in_a_group_commit_fails_alone(tmp_path: Path) -> None:
    db, store = open_store(tmp_path / "psvis.db")
    try:
        outcomes = await asyncio.gather(
            store.append("x", 0, [event("x1")]),
            store.append("y", 5, [event("stale")]),
            store.append("x", 1, [event("x2")]),  # follows the first one, in the same group
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], ConcurrencyConflict)
        assert [e.version for e in await store.read_stream("x")] == [1, 2]
        assert await store.read_stream("y") == []
        assert await store.log_size() == 2
    finally:
        await store.close()
        await db.close()


async def test_concurrent_appends_share_one_transaction_in_call_order(tmp_path: Path) -> None:
    async with store_at(tmp_path / "psvis.db") as (_, store):
        commits = store._checkpointer.commits
        recorded = await asyncio.gather(
            *(store.append(f"s-{k}", 0, [event(str(k))]) for k in range(32))
        )
        assert store._checkpointer.commits == commits + 1  # one group, one transaction
        assert [r.position for (r,) in recorded] == list(range(32))
        assert [r.stream_id for (r,) in recorded] == [f"s-{k}" for k in range(32)]


async def test_a_lone_append_is_written_without_waiting_for_the_loop(tmp_path: Path) -> None:
    """With no other task ready to run, no group can form: the append does not suspend."""
    async with store_at(tmp_path / "psvis.db") as (_, store):
        await asyncio.sleep(0)  # let whatever the test runner scheduled run first
        [recorded] = in_one_step(store.append("s", 0, [event("alone")]))
        assert recorded.position == 0 and recorded.version == 1
        other = sqlite3.connect(tmp_path / "psvis.db")  # committed: another connection sees it
        assert other.execute("SELECT COUNT(*) FROM events").fetchone() == (1,)
        other.close()
        with pytest.raises(ConcurrencyConflict):  # refusals are raised on this path too
            in_one_step(store.append("s", 0, [event("stale")]))
        assert await store.log_size() == 1


async def test_a_task_appending_in_a_loop_still_lets_the_loop_run(tmp_path: Path) -> None:
    async with store_at(tmp_path / "psvis.db") as (_, store):
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        beside = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        beside.cancel()  # it is ready to run once more (to end): the appends below are queued
        await asyncio.gather(beside, return_exceptions=True)
        for v in range(3 * UNYIELDED_APPENDS):
            await store.append("s", v, [event(str(v))])
        assert store._unyielded < UNYIELDED_APPENDS  # it went through the loop at least twice
        assert await store.log_size() == 3 * UNYIELDED_APPENDS


async def test_a_waiter_whose_wait_starts_after_the_write_is_still_woken(tmp_path: Path) -> None:
    """wait_for_append's wait begins a step late (asyncio.wait_for's task): an append written in
    that step must still wake it, not leave it to its timeout."""
    async with store_at(tmp_path / "psvis.db") as (_, store):
        writer = asyncio.ensure_future(store.append("s", 0, [event("1")]))
        await asyncio.sleep(0)  # the writer runs; this task is ready too, so it is queued
        assert not writer.done()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await store.wait_for_append(60)  # its wait starts after the queued write
        assert loop.time() - start < 30, "woken only by its timeout"
        assert len(await writer) == 1


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {tests!r})
    from store_harness import event
    from psvis.clock import RandomIds, SystemClock
    from psvis.eventstore.sqlite import SqliteEventStore
    from psvis.sqlite_db import SqliteDatabase

    async def main():
        store = SqliteEventStore(SqliteDatabase({path!r}), SystemClock(), RandomIds())
        versions, n = {{}}, 0
        while True:
            stream = f"s-{{n % 13}}"
            out = await store.append(stream, versions.get(stream, 0), [event(str(n))] * (1 + n % 2))
            versions[stream] = out[-1].version
            n += 1
            if n == 300:
                print("running", flush=True)

    asyncio.run(main())
    """
)


async def test_a_writer_killed_mid_append_leaves_a_log_that_verifies(tmp_path: Path) -> None:
    """SIGKILL while appending: the log is dense, every stream chained, and appends go on."""
    path = tmp_path / "psvis.db"
    script = WRITER.format(tests=str(KERNEL_TESTS), path=str(path))
    writer = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "running"
    await asyncio.sleep(0.3)
    writer.send_signal(signal.SIGKILL)
    writer.wait()

    db, store = open_store(tmp_path / "psvis.db", "after")
    try:
        report = await verify_store(store, SqliteCheckpointStore(db), [])
        assert report.ok, report.as_dict()
        size = await store.log_size()
        assert report.events_checked == size > 300
        for s in range(13):
            stream = f"s-{s}"
            stored = await store.read_stream(stream)
            assert [e.version for e in stored] == list(range(1, len(stored) + 1))
            await store.append(stream, len(stored), [event("after the crash")])
        assert await store.log_size() == size + 13
        assert (await verify_store(store, SqliteCheckpointStore(db), [])).ok
    finally:
        await store.close()
        await db.close()


async def test_an_index_that_cannot_be_written_fails_no_committed_append(tmp_path: Path) -> None:
    """The index is derived: its write failing (disk full...) must not fail a durable append."""
    db, store = open_store(tmp_path / "psvis.db")
    store._index = StreamIndex(store._conn, batch=4)
    store._conn.execute(
        "CREATE TEMP TRIGGER full BEFORE INSERT ON stream_index"
        " BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    try:
        for v in range(10):
            (recorded,) = await store.append("s", v, [event(f"e{v}")])
            assert recorded.version == v + 1
        assert store._index.upto == -1  # nothing indexed on disk: the tail stays in memory
        store._conn.execute("DROP TRIGGER full")
        await store.append("s", 10, [event("e10")])
        assert store._index.upto == 10  # written at the next chance
        assert [e.version for e in await store.read_stream("s")] == list(range(1, 12))
    finally:
        await store.close()
        await db.close()


class FailingCommit:
    """A connection whose next COMMIT fails, as on an I/O error or a full disk."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn, self.fail = conn, True

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.fail:
            self.fail = False
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


async def test_a_failed_commit_rolls_back_and_later_appends_are_durable(tmp_path: Path) -> None:
    db, store = open_store(tmp_path / "psvis.db")
    flaky = FailingCommit(store._conn)
    store._conn = store._index._conn = flaky  # type: ignore[assignment]
    try:
        outcomes = await asyncio.gather(
            store.append("a", 0, [event("1")]),
            store.append("b", 0, [event("2")]),
            return_exceptions=True,
        )  # one group: one transaction, whose COMMIT fails
        assert all(isinstance(o, sqlite3.OperationalError) for o in outcomes), outcomes
        assert not flaky.conn.in_transaction
        (recorded,) = await store.append("c", 0, [event("3")])
        assert recorded.position == 0  # the failed group left no position taken
        other = sqlite3.connect(tmp_path / "psvis.db")
        assert other.execute("SELECT stream_id FROM events").fetchall() == [("c",)]
        other.close()
        (again,) = await store.append("a", 0, [event("1 again")])
        assert again.position == 1
    finally:
        store._conn = flaky.conn
        await store.close()
        await db.close()


async def test_a_cancelled_caller_appends_nothing(tmp_path: Path) -> None:
    db, store = open_store(tmp_path / "psvis.db")
    try:
        doomed = asyncio.ensure_future(store.append("x", 0, [event("never")]))
        await asyncio.sleep(0)  # queued, not yet written
        doomed.cancel()
        (kept,) = await store.append("y", 0, [event("kept")])
        assert kept.position == 0 and await store.log_size() == 1
    finally:
        await store.close()
        await db.close()


async def test_the_wal_is_checkpointed_by_a_thread_not_by_appends(tmp_path: Path) -> None:
    """The log's pages reach the database file without any append waiting for it."""
    path = tmp_path / "log.db"
    db, store = open_store(path)
    writer_threshold = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    assert writer_threshold == WalCheckpointer.FALLBACK_PAGES  # commits no longer checkpoint
    empty = path.stat().st_size
    await fill(store, streams=40, rounds=10)  # ~800 events: far below the writer's threshold
    for _ in range(100):  # the checkpointer runs every 50 ms once something was committed
        if path.stat().st_size > empty + 100_000:
            break
        await asyncio.sleep(0.05)
    assert path.stat().st_size > empty + 100_000, "the WAL was never copied into the file"
    await store.close()
    await db.close()
    db, store = open_store(path)
    assert await store.log_size() == sum(1 + (r + s) % 3 for r in range(10) for s in range(40))
    report = await verify_store(store, SqliteCheckpointStore(db), [])
    assert report.ok, report
    await store.close()
    await db.close()


def test_a_checkpointer_that_cannot_open_the_file_says_so_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    checkpointer = WalCheckpointer(conn, str(tmp_path / "missing-folder" / "x.db"), interval=0.01)
    checkpointer.commits += 1
    checkpointer.close()
    assert "WAL checkpointer not started (unable to open database file)" in caplog.text
    conn.close()
