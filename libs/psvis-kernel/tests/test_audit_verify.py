"""AUD-1, AUD-2: verify checks the stored bytes and names the first offset that fails."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from kernel_fixtures import Log, build_log, note
from psvis import audit, workers
from psvis.audit import verify_store
from psvis.clock import SequentialIds
from psvis.eventstore.port import StoredRow
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.eventstore.sqlite_reader import SqliteLogReader
from psvis.signing import Signer
from psvis.sqlite_db import SqliteDatabase
from psvis.workers import WorkerProcess


@pytest.fixture(
    autouse=True, params=["ledger-checked-here", "ledger-checked-in-a-worker", "spans-in-workers"]
)
def ledger_worker(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[str]:
    """Every case runs every way: the report must not depend on where the ledger is checked,
    nor on the log being checked in spans by worker processes (7-event spans here, so that
    the 30-event log has five, and two workers, so that this process checks some too)."""
    monkeypatch.setattr(
        audit, "LEDGER_WORKER_FROM", 1 if request.param.endswith("worker") else 10**12
    )
    spans = request.param == "spans-in-workers"
    monkeypatch.setattr(audit, "SPANS_FROM", 1 if spans else 10**12)
    monkeypatch.setattr(audit, "SPAN", 7)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1, 2})
    SPANS_CHECKED.clear()
    if spans:
        real = audit._check_in_spans

        async def spied(*args: Any, **kwargs: Any) -> None:
            SPANS_CHECKED.append(args[2])  # the log's size
            await real(*args, **kwargs)

        monkeypatch.setattr(audit, "_check_in_spans", spied)
    yield request.param
    if request.node.name.find("no_answer") < 0:
        assert "worker gave no answer" not in caplog.text  # it ran, where asked to


SPANS_CHECKED: list[int] = []  # the size of each log checked in spans, in spans-in-workers


async def verify(log: Log, signer: Signer | None = None) -> dict:
    report = await verify_store(log.store, log.checkpoints, [(signer or log.signer).public])
    if audit.SPANS_FROM == 1:
        assert SPANS_CHECKED, "the log was not checked in spans"
    return report.as_dict()


def busy_platform(log: Log, appended: int = 40) -> Any:
    """Make the log's checkpoints, once read, be followed by `appended` events, as a running
    platform appends them while a verify runs; returns the checkpoints' own reader."""
    read = log.checkpoints.all

    async def read_then_append(log_id: str) -> Any:
        records = await read(log_id)
        for i in range(appended):
            head = await log.store.head("s-busy")
            await log.store.append("s-busy", head.version, [note(f"busy {i}", log.clock)])
        return records

    log.checkpoints.all = read_then_append  # type: ignore[method-assign]
    return read


def tamper(folder: Path, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(folder / "psvis.db")
    for sql, params in statements:
        conn.execute(sql, params)
    conn.commit()
    conn.close()


def data_at(folder: Path, position: int) -> bytes:
    conn = sqlite3.connect(folder / "psvis.db")
    (data,) = conn.execute("SELECT data FROM events WHERE position = ?", (position,)).fetchone()
    conn.close()
    return bytes(data)


async def test_aud2_untouched_log_verifies(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    report = await verify(log)
    assert report["ok"], report
    assert report["events_checked"] == 30
    assert report["notarised_size"] == 30 and report["checkpoints_checked"] == 4


async def test_events_appended_while_a_verify_runs_are_not_an_unsigned_tail(
    tmp_path: Path,
) -> None:
    """A verify of a running platform: the 40 events appended once it has read the
    checkpoints are for the notary's next checkpoint, not ones it failed to sign; a tail
    unsigned before the verify began still counts."""
    log = await build_log(tmp_path)
    read = busy_platform(log)
    report = await verify_store(log.store, log.checkpoints, [log.signer.public], max_unsigned=5)
    assert report.ok, report
    assert report.events_checked in (30, 70)  # read to the end as it was, or as it is
    log.checkpoints.all = read  # type: ignore[method-assign]
    late = await verify_store(log.store, log.checkpoints, [log.signer.public], max_unsigned=39)
    assert not late.ok and late.failure is not None and late.failure.check == "unsigned"


async def test_the_reported_unsigned_tail_is_the_one_counted_and_appended_events_apart(
    tmp_path: Path,
) -> None:
    """--max-unsigned counts the tail the log held when the verify began: the report says that
    tail (2 here), and the 40 events appended while it ran apart, not 42 as one tail."""
    log = await build_log(tmp_path)
    for i in range(2):
        head = await log.store.head("s-late")
        await log.store.append("s-late", head.version, [note(f"late {i}", log.clock)])
    busy_platform(log)
    report = await verify_store(log.store, log.checkpoints, [log.signer.public], max_unsigned=2)
    assert report.ok, report
    assert (report.notarised_size, report.unnotarised_tail) == (30, 2)
    assert report.events_checked == 72 and report.unnotarised_appended == 40
    assert report.warnings == [
        "2 newest events are not yet covered by a checkpoint",
        "40 events appended while the verify ran are not yet covered by a checkpoint"
        " (they are for the notary's next one)",
    ]


async def test_aud1_flipped_byte_is_found_at_its_offset(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    data = bytearray(data_at(tmp_path, 13))
    data[-3] ^= 0x01
    tamper(tmp_path, ("UPDATE events SET data = ? WHERE position = 13", (bytes(data),)))
    report = await verify(log)
    assert not report["ok"]
    assert report["failure"]["offset"] == 13


async def test_aud1_removed_event_is_found(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    tamper(tmp_path, ("DELETE FROM events WHERE position = 9", ()))
    report = await verify(log)
    assert not report["ok"] and report["failure"]["offset"] == 9


async def test_aud1_reordered_events_are_found_at_the_first_moved_offset(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    a, b = data_at(tmp_path, 4), data_at(tmp_path, 5)  # different streams: each chain still holds
    tamper(
        tmp_path,
        ("UPDATE events SET data = ?, stream_id = 'x' WHERE position = 4", (b,)),
        ("UPDATE events SET data = ?, stream_id = 'y' WHERE position = 5", (a,)),
    )
    report = await verify(log)
    assert not report["ok"] and report["failure"]["offset"] == 4


async def test_aud1_inserted_event_is_found(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    copy = data_at(tmp_path, 3)
    tamper(
        tmp_path,
        ("UPDATE events SET position = position + 1000 WHERE position >= 6", ()),
        ("UPDATE events SET position = position - 999 WHERE position >= 1006", ()),
        ("INSERT INTO events VALUES (6, 'forged', ?)", (copy,)),
    )
    report = await verify(log)
    assert not report["ok"] and report["failure"]["offset"] == 6


@pytest.mark.parametrize(
    ("moved", "offset"),
    [(12, 12), (None, 30)],  # an event moved out to it, or a forged one added there
    ids=["moved", "added"],
)
async def test_aud1_an_event_at_a_huge_position_is_found_in_memory_bounded_by_the_rows(
    tmp_path: Path, moved: int | None, offset: int
) -> None:
    """The log's size is its last position + 1; a verify that planned its work by that size
    (spans of the offsets 0..2**62) could never allocate it. It goes by the rows stored."""
    log = await build_log(tmp_path)
    huge = 2**62
    if moved is None:
        tamper(tmp_path, ("INSERT INTO events VALUES (?, 's-0', ?)", (huge, data_at(tmp_path, 3))))
    else:
        tamper(tmp_path, ("UPDATE events SET position = ? WHERE position = ?", (huge, moved)))
    assert await log.store.log_size() == huge + 1
    report = await verify(log)
    assert not report["ok"], report
    assert (report["failure"]["offset"], report["failure"]["check"]) == (offset, "offset")
    assert f"found {offset + 1 if moved is not None else huge}" in report["failure"]["detail"]


@pytest.mark.parametrize("reader", ["event-store", "read-only-log"])
async def test_aud2_verify_reads_the_tables_rows_and_least_position_in_one_statement(
    tmp_path: Path, reader: str
) -> None:
    """The rows the events table holds (which bound the offsets checked) and the least position
    among them (a row put before offset 0) come from one statement, not a scan and a query
    each; the report is the one it was."""
    log = await build_log(tmp_path)
    tamper(tmp_path, ("INSERT INTO events VALUES (-3, 's-0', ?)", (data_at(tmp_path, 3),)))
    db, events = log.db, log.store
    if reader == "read-only-log":
        db = SqliteDatabase(tmp_path / "psvis.db", read_only=True)
        events = SqliteLogReader(db)  # type: ignore[assignment]
    statements: list[str] = []
    db.run_sync(lambda c: c.set_trace_callback(statements.append))
    report = await verify_store(events, log.checkpoints, [log.signer.public])
    db.run_sync(lambda c: c.set_trace_callback(None))
    if db is not log.db:
        await db.close()
    assert (report.failure and report.failure.offset, report.ok) == (-3, False), report
    counted = [s for s in statements if "COUNT(" in s.upper() or "MIN(" in s.upper()]
    assert len(counted) == 1, counted


@pytest.mark.parametrize("position", [-1, -5, -(2**62)])
async def test_aud1_an_event_inserted_before_offset_0_is_found(
    tmp_path: Path, position: int
) -> None:
    """Pages are read from offset 0 on: a row put before it is found by the least position
    the table holds, and named there."""
    log = await build_log(tmp_path)
    tamper(tmp_path, ("INSERT INTO events VALUES (?, 's-0', ?)", (position, data_at(tmp_path, 3))))
    report = await verify(log)
    assert not report["ok"], report
    assert (report["failure"]["offset"], report["failure"]["check"]) == (position, "offset")
    assert "before the log's first offset 0 (inserted event)" in report["failure"]["detail"]


async def test_aud1_truncated_log_is_found(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    tamper(tmp_path, ("DELETE FROM events WHERE position >= 28", ()))
    report = await verify(log)
    assert not report["ok"] and report["failure"]["check"] == "truncated"
    assert report["failure"]["offset"] == 28


async def test_aud1_an_event_filed_under_another_stream_is_found(tmp_path: Path) -> None:
    """The bytes are intact, but the table's stream column (which replay's workers and the
    stream index go by) says another stream: verify names the row."""
    log = await build_log(tmp_path)
    tamper(tmp_path, ("UPDATE events SET stream_id = 's-2' WHERE position = 7", ()))
    report = await verify(log)
    assert not report["ok"]
    assert (report["failure"]["offset"], report["failure"]["check"]) == (7, "stream-column")
    assert "s-1 v3 is filed under stream 's-2'" in report["failure"]["detail"]


async def test_aud1_forged_checkpoint_signature_fails(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    stranger = Signer.load_or_create(tmp_path / "other" / "k.key")
    report = await verify(log, stranger)
    assert not report["ok"] and report["failure"]["check"] == "checkpoint-key"


async def test_aud1_changed_event_after_the_last_checkpoint_breaks_its_chain(
    tmp_path: Path,
) -> None:
    log = await build_log(tmp_path)
    for text in ("late 1", "late 2"):
        head = await log.store.head("s-0")
        await log.store.append("s-0", head.version, [note(text, log.clock)])
    assert (await verify(log))["unnotarised_tail"] == 2
    data = bytearray(data_at(tmp_path, 30))
    data[-2] ^= 0x01  # inside its own prev_hash, the envelope's last field
    tamper(tmp_path, ("UPDATE events SET data = ? WHERE position = 30", (bytes(data),)))
    report = await verify(log)
    assert not report["ok"] and report["failure"]["offset"] == 30
    assert report["failure"]["check"] == "prev-hash"


def test_aud2_cli_exits_non_zero_and_names_the_offset(tmp_path: Path) -> None:
    import asyncio

    log = asyncio.run(build_log(tmp_path))
    asyncio.run(log.db.close())
    psvis = [
        sys.executable,
        "-m",
        "psvis.cli.main",
        "audit",
        "verify",
        "--data-dir",
        str(tmp_path),
        "--json",
    ]
    ok = subprocess.run(psvis, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    data = bytearray(data_at(tmp_path, 20))
    data[10] ^= 0xFF
    tamper(tmp_path, ("UPDATE events SET data = ? WHERE position = 20", (bytes(data),)))
    bad = subprocess.run(psvis, capture_output=True, text=True, check=False)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["failure"]["offset"] == 20
    human = subprocess.run(psvis[:-1], capture_output=True, text=True, check=False)
    assert human.returncode == 1 and "offset 20" in human.stdout, human.stderr


@pytest.mark.parametrize("events", [1, 7, 8, 9, 64])
async def test_aud1_checkpoint_boundaries_verify(tmp_path: Path, events: int) -> None:
    log = await build_log(tmp_path, events=events)
    assert (await verify(log))["ok"]


async def test_aud1_checkpoints_filed_under_another_log_id_do_not_vouch_for_it(
    tmp_path: Path,
) -> None:
    """The log id is inside what the notary signs; relabelling the stored rows is not enough."""
    log = await build_log(tmp_path)
    tamper(tmp_path, ("UPDATE checkpoints SET log_id = 'psvis.events/9'", ()))
    relabelled = SqliteEventStore(log.db, log.clock, SequentialIds("x"), log_id="psvis.events/9")
    try:
        report = await verify_store(relabelled, log.checkpoints, [log.signer.public])
    finally:
        await relabelled.close()
    assert not report.ok and report.failure is not None
    assert (report.failure.offset, report.failure.check) == (0, "checkpoint-log")
    assert "psvis.events/0" in report.failure.detail


async def test_aud1_a_bad_ledger_is_named_before_a_changed_event(tmp_path: Path) -> None:
    """As if the checkpoints were checked first, wherever and whenever that check finishes."""
    log = await build_log(tmp_path)
    data = bytearray(data_at(tmp_path, 3))
    data[-3] ^= 0x01
    tamper(
        tmp_path,
        ("UPDATE events SET data = ? WHERE position = 3", (bytes(data),)),
        ("UPDATE checkpoints SET leaves = zeroblob(length(leaves)) WHERE tree_size = 24", ()),
    )
    report = await verify(log)
    assert not report["ok"]
    assert report["failure"] == {
        "offset": 16,
        "check": "checkpoint-root",
        "detail": "checkpoint 24: ledger does not match the signed root",
    }
    assert report["checkpoints_checked"] == 2 and report["events_checked"] == 0


async def test_aud2_a_worker_that_gives_no_answer_leaves_the_check_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def dying(name: str) -> tuple[BaseProcess, Connection]:
        ctx = multiprocessing.get_context("spawn")
        conn, child_end = ctx.Pipe()
        process = ctx.Process(target=os._exit, args=(3,), name=name)  # dies before it answers
        process.start()
        child_end.close()
        return process, conn

    log = await build_log(tmp_path)
    monkeypatch.setattr(audit, "_start_worker", dying)
    report = await verify_store(log.store, log.checkpoints, [log.signer.public], ledger_worker=True)
    assert report.ok and report.checkpoints_checked == 4 and report.notarised_size == 30
    assert report.events_checked == 30
    assert "a verify worker gave no answer (exit code 3): its job is done again" in caplog.text
    stranger = Signer.load_or_create(tmp_path / "other" / "k.key")
    report = await verify_store(log.store, log.checkpoints, [stranger.public], ledger_worker=True)
    assert not report.ok and report.failure is not None
    assert report.failure.check == "checkpoint-key"


async def test_aud2_workers_that_give_no_answer_for_long_hold_nothing_up(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    ledger_worker: str,
) -> None:
    """Stuck workers (alive, silent): this process does their jobs too, after a while, and the
    workers are stopped when verify ends."""

    kept_open = []  # the workers' ends of their pipes: alive, and silent

    def stuck(name: str) -> tuple[BaseProcess, Connection]:
        ctx = multiprocessing.get_context("spawn")
        conn, child_end = ctx.Pipe()
        kept_open.append(child_end)
        process = ctx.Process(target=time.sleep, args=(3600,), name=name)
        process.start()
        return process, conn

    monkeypatch.setattr(audit, "_start_worker", stuck)
    monkeypatch.setattr(audit, "WORKER_PATIENCE", 0.2)
    log = await build_log(tmp_path)
    data = bytearray(data_at(tmp_path, 17))
    data[-3] ^= 0x01
    tamper(tmp_path, ("UPDATE events SET data = ? WHERE position = 17", (bytes(data),)))
    report = await verify(log)
    assert (report["failure"]["offset"], report["failure"]["check"]) == (17, "notarised-leaf")
    assert report["checkpoints_checked"] == 4
    assert multiprocessing.active_children() == []
    if ledger_worker != "ledger-checked-here":
        assert "a verify worker gave no answer in 0.2 s: its job is done again" in caplog.text


async def test_aud2_a_span_a_worker_holds_but_has_not_started_is_checked_here_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker holds its next span while it checks one. Once nothing is left for this
    process, that next span is checked here rather than waited for: this worker (slow to
    answer its first span, and never reading its second) holds nothing up, and no worker is
    reported silent."""

    def answers_its_first_job_only(name: str) -> tuple[BaseProcess, Connection]:
        ctx = multiprocessing.get_context("spawn")
        conn, child_end = ctx.Pipe()
        code = "import time; job = conn.recv(); time.sleep(1); conn.send(job()); time.sleep(3600)"
        process = ctx.Process(target=exec, args=(code, {"conn": child_end}), name=name)
        process.start()
        child_end.close()
        return process, conn

    monkeypatch.setattr(audit, "_start_worker", answers_its_first_job_only)
    monkeypatch.setattr(audit, "WORKER_PATIENCE", 5.0)  # the second span would wait that long
    log = await build_log(tmp_path)
    report = await verify_store(log.store, log.checkpoints, [log.signer.public], span_workers=1)
    assert report.ok and report.events_checked == 30 and report.checkpoints_checked == 4
    assert "gave no answer" not in caplog.text
    assert multiprocessing.active_children() == []


async def test_aud2_a_verify_that_fails_leaves_no_worker_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await build_log(tmp_path)
    started: list[WorkerProcess] = []

    def start(name: str) -> tuple[WorkerProcess, Connection]:
        process, conn = workers.spawn_worker(name)
        started.append(process)
        return process, conn

    class Failing:
        log_id = log.store.log_id

        async def log_size(self) -> int:
            return 30

        async def read_page_bytes(self, after: int, limit: int) -> list[StoredRow]:
            raise OSError("disk gone")

    monkeypatch.setattr(audit, "_start_worker", start)
    with pytest.raises(OSError, match="disk gone"):
        await verify_store(Failing(), log.checkpoints, [log.signer.public], ledger_worker=True)  # type: ignore[arg-type]
    assert len(started) == 1 and not started[0].is_alive()


async def test_aud2_workers_are_fresh_interpreters_that_ignore_ctrl_c(tmp_path: Path) -> None:
    """A worker imports what its jobs need, not this process's __main__, and leaves Ctrl-C
    (SIGINT, sent to the whole terminal's process group) to its parent, which stops it."""
    process, conn = workers.spawn_worker("psvis-verify-test")
    try:
        conn.send(functools.partial(sorted, ["b", "a"]))
        assert conn.recv() == ["a", "b"]
        os.kill(process.pid, signal.SIGINT)  # type: ignore[attr-defined]
        imported = (
            "[m for m in __import__('sys').modules if m.split('.')[0] in ('pytest', '_pytest')]"
        )
        conn.send(functools.partial(eval, imported))
        assert conn.recv() == [] and process.is_alive()
        conn.send(None)  # ends it
        process.join(timeout=10)
        assert process.exitcode == 0
    finally:
        process.terminate()
        conn.close()


async def test_aud1_an_unreadable_checkpoint_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    tamper(tmp_path, ("UPDATE checkpoints SET signed = x'ffff' WHERE tree_size = 16", ()))
    report = await verify(log)
    assert not report["ok"]
    assert report["failure"]["offset"] == 8
    assert report["failure"]["check"] == "checkpoint-decode"
    assert report["checkpoints_checked"] == 1
