"""Benchmark 2: `audit verify` speed against a raw SHA-256 pass over the same stored bytes.

The log (registry-like events, see bench_replay) is written straight into the embedded store's
`events` table, then notarised with the real Notary.catch_up (a signed checkpoint every 1000
events, with its leaf ledger), as `psvis serve` would have done.

psvis:  psvis.audit.verify_store(log.events, log.checkpoints, [public key]) on the log opened
        as `psvis audit verify` opens it (psvis.stores.open_for_audit: read-only, no stream
        index): checkpoint signatures and Merkle roots, then per event SHA-256 leaf,
        comparison with the notarised leaf, envelope decode, stream version, prev_hash chain
        and stream column. A log this long is checked in spans by this process and a worker
        process per other core (psvis.audit._check_in_spans); starting the workers is inside
        the timed run. Timed from opening the log to closing it; psvis.audit is imported
        before the clock starts (its import time is printed in the note), as the baseline's
        sqlite3 and hashlib are.
raw:    the same pages (position > ? ORDER BY position LIMIT 5000) from the same table on a
        plain sqlite3 connection, hashlib.sha256(b"\\x00" + data) per row.
In memory: LogVerifier.check_checkpoints + check_page over a pre-read list, against
        sha256 over the same list: where the time goes once SQLite is out of the picture.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import Result, Row, best_of, finish, parser, profile_top, scaled, timer
from bench_replay import build_log

EVENTS = 200_000
ROUNDS = 3  # each side timed 3 times, alternately; the fastest counts
PAGE = 5000


def open_log(path: Path) -> tuple[Any, Any, Any]:
    from psvis.checkpoints import SqliteCheckpointStore
    from psvis.clock import FixedClock, RandomIds
    from psvis.eventstore.sqlite import SqliteEventStore
    from psvis.sqlite_db import SqliteDatabase

    db = SqliteDatabase(path)
    clock = FixedClock(datetime(2024, 6, 1, tzinfo=UTC))
    return db, SqliteEventStore(db, clock, RandomIds()), SqliteCheckpointStore(db)


def notarise(path: Path, key: Path) -> tuple[int, Any]:
    from psvis.clock import FixedClock
    from psvis.notary import Notary
    from psvis.signing import Signer

    signer = Signer.load_or_create(key)

    async def run() -> int:
        db, store, checkpoints = open_log(path)
        notary = Notary(store, checkpoints, signer, FixedClock(datetime(2024, 6, 1, tzinfo=UTC)))
        size = await notary.catch_up()
        await db.close()
        return size

    return asyncio.run(run()), signer.public


def psvis_verify(path: Path, public: Any) -> Any:
    """verify_store on the log opened as `psvis audit verify` opens it (read-only)."""
    from psvis.audit import verify_store
    from psvis.settings import Settings
    from psvis.stores import open_for_audit

    async def run() -> Any:
        log = await open_for_audit(Settings(data_dir=path.parent))
        try:
            return await verify_store(log.events, log.checkpoints, [public])
        finally:
            await log.close()

    return asyncio.run(run())


def raw_verify(path: Path) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    sha256 = hashlib.sha256
    after, n = -1, 0
    while rows := conn.execute(
        "SELECT position, data, stream_id FROM events WHERE position > ? ORDER BY position LIMIT ?",
        (after, PAGE),
    ).fetchall():
        for row in rows:
            sha256(b"\x00" + row[1]).digest()
        after, n = rows[-1][0], n + len(rows)
    conn.close()
    return n


def read_all(path: Path) -> tuple[list[tuple[int, bytes, bytes]], list[Any]]:
    async def run() -> list[Any]:
        db, _, checkpoints = open_log(path)
        records = await checkpoints.all("psvis.events/0")
        await db.close()
        return records  # type: ignore[no-any-return]

    conn = sqlite3.connect(path)
    events = conn.execute(
        "SELECT position, data, CAST(stream_id AS BLOB) FROM events ORDER BY position"
    ).fetchall()
    conn.close()
    return events, asyncio.run(run())


def memory_verify(events: list[tuple[int, bytes, bytes]], records: list[Any], public: Any) -> Any:
    from psvis.signing import key_id
    from psvis.verify import LogVerifier

    verifier = LogVerifier("psvis.events/0", records, {key_id(public): public})
    verifier.check_checkpoints()
    verifier.check_page(events)
    verifier.finish()
    return verifier.report


def memory_sha(events: list[tuple[int, bytes]]) -> int:
    sha256 = hashlib.sha256
    for _, data, _ in events:
        sha256(b"\x00" + data).digest()
    return len(events)


def main(argv: list[str] | None = None) -> Result:
    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=EVENTS)
    args = p.parse_args(argv)
    events = scaled(args.events, args.scale, 10)
    result = Result("audit verify", args.scale)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        log = folder / "psvis.db"  # where `psvis audit verify --data <folder>` looks
        with timer() as elapsed:
            n = build_log(log, events)
            built = elapsed()
        with timer() as elapsed:
            size, public = notarise(log, folder / "keys" / "notary.key")
            notarised = elapsed()
        print(
            f"built a {n:,}-event log in {built:.1f}s, notarised in {notarised:.1f}s"
            f" ({n / notarised:,.0f} events/s)"
        )
        assert size == n
        raw_verify(log)  # warm the page cache for both sides alike
        with timer() as elapsed:  # as the baseline's sqlite3 and hashlib already are
            import psvis.audit
            import psvis.stores  # noqa: F401
        import_s = elapsed()
        if args.profile:
            profile_top(lambda: psvis_verify(log, public))
        (report, ps_s), (m, raw_s) = best_of(
            ROUNDS, lambda: psvis_verify(log, public), lambda: raw_verify(log)
        )
        assert report.ok and report.events_checked == n, report
        result.rows.append(
            Row(
                "verify_store vs raw sha256 read",
                "events/s",
                n / ps_s,
                m / raw_s,
                "raw sqlite+sha256",
                goal=0.5,
                n=n,
                note=f"{report.checkpoints_checked} checkpoints, {report.streams:,} streams;"
                f" best of {ROUNDS}: psvis {ps_s:.2f}s, raw {raw_s:.2f}s; importing psvis.audit, not timed: {import_s:.2f}s",
            )
        )
        rows, records = read_all(log)
        with timer() as elapsed:
            mem = memory_verify(rows, records, public)
        mem_s = elapsed()
        assert mem.ok
        with timer() as elapsed:
            memory_sha(rows)
        sha_s = elapsed()
        result.rows.append(
            Row(
                "in memory: LogVerifier vs sha256",
                "events/s",
                n / mem_s,
                n / sha_s,
                "sha256 only",
                n=n,
            )
        )
        from psvis.signing import key_id
        from psvis.verify import LogVerifier

        with timer() as elapsed:
            LogVerifier("psvis.events/0", records, {key_id(public): public}).check_checkpoints()
        cp_s = elapsed()
        result.extra.update(
            events=n,
            build_s=built,
            notary_s=notarised,
            psvis_s=ps_s,
            import_s=import_s,
            raw_s=raw_s,
            memory_verify_s=mem_s,
            memory_sha_s=sha_s,
            check_checkpoints_s=cp_s,
        )
        print(
            f"of the in-memory {mem_s:.2f}s, check_checkpoints (signatures + rebuilding the"
            f" Merkle tree from {n:,} leaves) takes {cp_s:.2f}s"
        )
    finish(result, args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
