"""`psvis audit verify` and `psvis audit replay` on data folders as a user finds them: the
untouched, the damaged and the missing. An audit changes nothing in the folder it reads."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from kernel_fixtures import build_log, note
from psvis import pids
from psvis.cli.client import CliError
from psvis.cli.written import written_whole
from rich.progress import Progress, TaskID


def psvis(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "psvis.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def verify(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return psvis("audit", "verify", "--data-dir", str(folder), "--json", *extra)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A data folder with 30 notarised events in 3 streams and a tail of 6 not yet signed."""

    async def build() -> None:
        log = await build_log(tmp_path, events=30, every=8)
        for i in range(6):
            head = await log.store.head("s-tail")
            await log.store.append("s-tail", head.version, [note(f"tail {i}", log.clock)])
        await log.store.close()
        await log.db.close()

    asyncio.run(build())
    return tmp_path


def edit(folder: Path, *statements: str) -> None:
    conn = sqlite3.connect(folder / "psvis.db")
    for sql in statements:
        conn.execute(sql)
    conn.commit()
    conn.close()


def contents(folder: Path) -> dict[str, str]:
    """Every file's hash, but SQLite's own -shm/-wal housekeeping."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-shm", "-wal"))
    }


def test_an_untouched_folder_verifies_and_is_left_as_it_was(folder: Path) -> None:
    # as after a crash before the stream index was written: a server would learn it again
    edit(folder, "DELETE FROM stream_index", "DELETE FROM stream_index_state")
    before = contents(folder)
    run = verify(folder)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert (report["ok"], report["events_checked"], report["notarised_size"]) == (True, 36, 30)
    replayed = psvis("audit", "replay", "--data-dir", str(folder), "--json")
    assert replayed.returncode == 0, replayed.stderr
    human = psvis("audit", "verify", "--data-dir", str(folder))
    assert human.returncode == 0 and "trusted notary key" in human.stdout, human.stderr
    assert "the data folder's own" in human.stdout  # no --key: the auditor is told
    assert contents(folder) == before  # no read-models.db, no stream index written back


def test_a_replay_in_worker_processes_leaves_the_log_file_as_it_was(folder: Path) -> None:
    """Its workers open the log read-only too: not even the journal mode is set."""
    conn = sqlite3.connect(folder / "psvis.db")
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    conn.close()
    before = contents(folder)
    replayed = psvis("audit", "replay", "--data-dir", str(folder), "--workers", "2", "--json")
    assert replayed.returncode == 0, replayed.stderr
    assert contents(folder) == before
    conn = sqlite3.connect(folder / "psvis.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


@pytest.mark.parametrize(
    ("statement", "offset", "check"),
    [
        ("UPDATE events SET data = 'text, not bytes' WHERE position = 12", 12, "notarised-leaf"),
        ("UPDATE events SET data = 42 WHERE position = 27", 27, "notarised-leaf"),
        ("UPDATE events SET data = x'ff' WHERE position = 33", 33, "decode"),
        ("UPDATE events SET data = x'' WHERE position = 0", 0, "notarised-leaf"),
        ("DROP TABLE events", 0, "storage"),
        # the log's size is then 2**62 + 1: verify goes by the rows, not by that
        ("UPDATE events SET position = 4611686018427387904 WHERE position = 12", 12, "offset"),
    ],
)
def test_a_damaged_row_or_table_is_a_failure_report_not_a_traceback(
    folder: Path, statement: str, offset: int, check: str
) -> None:
    edit(folder, statement)
    run = verify(folder)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    failure = json.loads(run.stdout)["failure"]
    assert (failure["offset"], failure["check"]) == (offset, check), failure


def test_an_unsigned_tail_longer_than_the_notary_leaves_is_a_failure(folder: Path) -> None:
    """Deleting the newest checkpoints leaves a longer unsigned tail: past the bound, it fails."""
    assert verify(folder, "--max-unsigned", "6").returncode == 0  # the fixture's tail of 6
    run = verify(folder, "--max-unsigned", "5")
    assert run.returncode == 1, run.stderr
    failure = json.loads(run.stdout)["failure"]
    assert (failure["offset"], failure["check"]) == (30, "unsigned"), failure
    edit(folder, "DELETE FROM checkpoints WHERE tree_size > 8")  # all but the first
    assert verify(folder, "--max-unsigned", "28").returncode == 0  # 28 unsigned: within
    assert verify(folder, "--max-unsigned", "27").returncode == 1
    edit(folder, "DELETE FROM checkpoints")
    human = psvis("audit", "verify", "--data-dir", str(folder), "--max-unsigned", "35")
    assert human.returncode == 1 and "FAILED" in human.stdout and "unsigned" in human.stdout
    assert "checkpoints were deleted" in human.stdout, human.stdout


def test_a_checkpoint_holding_text_is_a_failure(folder: Path) -> None:
    edit(folder, "UPDATE checkpoints SET signed = 'not a signature' WHERE tree_size = 16")
    run = verify(folder)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert json.loads(run.stdout)["failure"]["check"] == "checkpoint-decode"


def test_a_file_that_is_not_a_database_is_a_failure(folder: Path) -> None:
    db = folder / "psvis.db"
    db.write_bytes(b"this is not SQLite\n" * 400)
    run = verify(folder)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    failure = json.loads(run.stdout)["failure"]
    assert failure["check"] == "storage" and "not a database" in failure["detail"]
    replayed = psvis("audit", "replay", "--data-dir", str(folder))
    assert replayed.returncode == 1 and "Traceback" not in replayed.stderr, replayed.stderr
    assert "cannot be read" in replayed.stderr


def test_no_log_in_the_folder_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for command in ("verify", "replay"):
        run = psvis("audit", command, "--data-dir", str(missing))
        assert run.returncode == 2 and "no event log at" in run.stderr, run.stderr
    assert not missing.exists()


def test_replay_into_an_existing_file_is_refused_and_the_file_kept(folder: Path) -> None:
    kept = folder / "kept.db"
    kept.write_bytes(b"someone's read models")
    run = psvis("audit", "replay", "--data-dir", str(folder), "--into", str(kept))
    assert run.returncode == 2 and "exists" in run.stderr, run.stderr
    assert kept.read_bytes() == b"someone's read models"
    fresh = folder / "fresh.db"
    assert psvis("audit", "replay", "--data-dir", str(folder), "--into", str(fresh)).returncode == 0
    assert fresh.is_file() and leftovers(folder, "fresh.db") == []
    replayed = sqlite3.connect(fresh)
    assert replayed.execute("SELECT position FROM projection_positions").fetchall() == [(35,)]
    replayed.close()


def leftovers(folder: Path, name: str) -> list[str]:
    """What a replay --into NAME may have left beside it: its temporary file, SQLite's
    journals, the workers' scratch folders."""
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith((f".{name}", "psvis-replay-"))
    )


def test_a_replay_is_put_at_into_whole_and_never_over_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted: nothing is left. A file that appeared at --into while the replay ran is
    kept, as one there before is. Without hard links (FAT), a rename puts it there."""
    target = tmp_path / "out.db"
    with pytest.raises(KeyboardInterrupt), written_whole(target) as written:
        Path(written).write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    appeared = pytest.raises(CliError, match="appeared while the replay ran")
    with appeared, written_whole(target) as written:
        Path(written).write_bytes(b"replayed")
        target.write_bytes(b"someone's")
    assert target.read_bytes() == b"someone's" and leftovers(tmp_path, "out.db") == []
    target.unlink()

    def no_links(*_: object) -> None:
        raise PermissionError("no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    with written_whole(target) as written:
        Path(written).write_bytes(b"replayed")
    assert target.read_bytes() == b"replayed" and leftovers(tmp_path, "out.db") == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_replay_into_a_file_that_fails_leaves_no_file(folder: Path, workers: str) -> None:
    """A replay is written beside --into and put there only once it is whole."""
    edit(folder, "UPDATE events SET data = x'ff' WHERE position = 33")  # not an envelope
    into = folder / "out.db"
    run = psvis("audit", "replay", "--data-dir", str(folder), "--into", str(into),
                "--workers", workers)  # fmt: skip
    assert run.returncode == 1 and "offset 33" in run.stderr, run.stderr
    assert not into.exists() and leftovers(folder, "out.db") == []


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE events SET position = 4611686018427387904 WHERE position = 12",  # moved far out
        "INSERT INTO events VALUES (4611686018427387904, 's-0', x'00')",  # a row added there
    ],
    ids=["moved", "added"],
)
def test_verify_progress_total_is_bounded_by_the_rows_not_the_last_position(
    folder: Path, statement: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AUD-2: the log's size is its last position + 1 (2**62 + 1 here); the progress bar counts
    to no more than the rows the table holds, as the verify itself goes by them."""
    from psvis.cli import audit, main

    edit(folder, statement)
    totals: list[float | None] = []
    shown = audit._progress

    def recorded(label: str) -> Progress:
        bar = shown(label)
        add_task = bar.add_task

        def add(description: str, **kwargs: Any) -> TaskID:
            totals.append(kwargs.get("total"))
            return add_task(description, **kwargs)

        bar.add_task = add  # type: ignore[method-assign]
        return bar

    monkeypatch.setattr(audit, "_progress", recorded)
    assert main.main(["audit", "verify", "--data-dir", str(folder), "--json"]) == 1
    assert totals == [36 + statement.startswith("INSERT")], totals  # the rows, not 2**62 + 1


def test_a_replay_into_removes_partials_left_by_dead_replays_never_a_live_ones(
    folder: Path,
) -> None:
    """AUD-3: a replay killed outright (SIGKILL) leaves its partial file, named with its pid, and
    SQLite's journals; the next replay into the same file removes them once that pid has ended.
    A running replay's partial, another file's, and one whose writer cannot be told, are kept."""
    with written_whole(folder / "probe.db") as written:
        assert Path(written).name.startswith(f".probe.db.{pids.owner()}."), written
        Path(written).write_bytes(b"replayed")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: its pid runs nothing now
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        dead = [
            *(f".out.db.{ended.pid}@{pids.HOST}.0badf00d.partial{e}" for e in ("", "-journal")),
            f".out.db.{ended.pid}.0badf00e.partial-wal",  # named before machines were
        ]
        kept = [
            f".out.db.{running.pid}@{pids.HOST}.5eed5eed.partial",
            f".out.db.{running.pid}@{pids.HOST}.5eed5eed.partial-journal",
            # the same pid on another machine sharing the folder may be running there
            f".out.db.{ended.pid}@other-host.example.0badf00d.partial",
            f".other.db.{ended.pid}.0badf00d.partial",  # another target's
            ".out.db.0badf00d.partial",  # no pid in its name: whose it is cannot be told
        ]
        for name in dead + kept:
            (folder / name).write_bytes(b"half a replay")
        run = psvis("audit", "replay", "--data-dir", str(folder), "--into", str(folder / "out.db"))
        assert run.returncode == 0, run.stderr
        assert (folder / "out.db").is_file()
        assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == sorted(kept)
    finally:
        running.kill()
        running.wait()
