"""AUD-1, AUD-2: verify checks the stored bytes and names the first offset that fails."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
from kernel_fixtures import Log, build_log, note
from psvis import audit
from psvis.audit import verify_store
from psvis.clock import SequentialIds
from psvis.eventstore.port import StoredRow
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.signing import Signer


@pytest.fixture(autouse=True, params=["ledger-checked-here", "ledger-checked-in-a-worker"])
def ledger_worker(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> Iterator[bool]:
    """Every case runs both ways: the report must not depend on where the ledger is checked."""
    in_worker = request.param.endswith("worker")
    monkeypatch.setattr(audit, "LEDGER_WORKER_FROM", 1 if in_worker else 10**12)
    yield in_worker
    if request.node.name.find("no_answer") < 0:
        assert "ledger worker gave no answer" not in caplog.text  # it ran, where asked to


async def verify(log: Log, signer: Signer | None = None) -> dict:
    report = await verify_store(log.store, log.checkpoints, [(signer or log.signer).public])
    return report.as_dict()


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
    assert human.returncode == 1 and "offset 20" in human.stderr


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
    def dying() -> tuple[BaseProcess, Connection]:
        ctx = multiprocessing.get_context("spawn")
        conn, child_end = ctx.Pipe()
        process = ctx.Process(target=os._exit, args=(3,))  # dies before it answers
        process.start()
        child_end.close()
        return process, conn

    log = await build_log(tmp_path)
    monkeypatch.setattr(audit, "_start_ledger_worker", dying)
    report = await verify_store(log.store, log.checkpoints, [log.signer.public], ledger_worker=True)
    assert report.ok and report.checkpoints_checked == 4 and report.notarised_size == 30
    assert "the ledger worker gave no answer (exit code 3)" in caplog.text
    stranger = Signer.load_or_create(tmp_path / "other" / "k.key")
    report = await verify_store(log.store, log.checkpoints, [stranger.public], ledger_worker=True)
    assert not report.ok and report.failure is not None
    assert report.failure.check == "checkpoint-key"


async def test_aud2_a_verify_that_fails_leaves_no_worker_behind(tmp_path: Path) -> None:
    log = await build_log(tmp_path)

    class Failing:
        log_id = log.store.log_id

        async def read_page_bytes(self, after: int, limit: int) -> list[StoredRow]:
            raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        await verify_store(Failing(), log.checkpoints, [log.signer.public], ledger_worker=True)  # type: ignore[arg-type]
    assert multiprocessing.active_children() == []


async def test_aud1_an_unreadable_checkpoint_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    log = await build_log(tmp_path)
    tamper(tmp_path, ("UPDATE checkpoints SET signed = x'ffff' WHERE tree_size = 16", ()))
    report = await verify(log)
    assert not report["ok"]
    assert report["failure"]["offset"] == 8
    assert report["failure"]["check"] == "checkpoint-decode"
    assert report["checkpoints_checked"] == 1
