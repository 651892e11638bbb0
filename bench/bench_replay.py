"""Benchmark 3: `audit replay` of a registry-like log into fresh read models (goal >= 100k events/s).

The log is written straight into the embedded store's `events` table (executemany of
psvis.envelope.seal output, prev_hash chained per stream; the stream index is built once at the end), not
through SqliteEventStore.append, so that a 1M-event log can be built in seconds. Generation runs
in two worker processes (one per core), one window of systems each.

psvis: psvis.audit.replay with the registry's real projections (psvis_registry.projections).
Baseline ("floor"): the least any replay of this log must do, hand-written: read the same rows
in pages, decode envelope and payload, fold into a plain dict per system, write one JSON
document per touched system per page into a fresh SQLite table.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from _common import Result, Row, finish, parser, profile_top, scaled, timer

EVENTS = 1_000_000  # the workload; about a minute in all at scale 1
PER_SYSTEM = 10  # SystemRegistered, then 9 small events
WINDOW = 1000  # systems whose events are interleaved in the log (so a page touches many)
START = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def _payloads(system: int) -> Iterator[object]:
    from psvis.registry.v1 import registry_pb2 as reg

    sid = f"sys-{system:07d}"
    point = reg.GeoPoint(longitude=114.3 + system * 1e-6, latitude=30.6)
    cams = [
        reg.Camera(
            camera_id=f"{sid}-c{c}",
            device_type="dome",
            address_code="420102",
            place="street",
            location=point,
            orientation_deg=90.0,
            function="traffic",
        )
        for c in range(3)
    ]
    yield reg.SystemRegistered(
        system_id=sid,
        name=f"Gate {system}",
        managing_unit="unit-a",
        operator="Operator Co.",
        site=reg.Site(
            site_id=f"site-{system}",
            category="other",
            address="1 Road",
            address_code="420102",
            location=point,
        ),
        cameras=cams,
        registered_on="2024-01-02",
    )
    for k in range(PER_SYSTEM - 1):
        match k % 3:
            case 0:
                yield reg.SignageInstalled(
                    camera_ids=[f"{sid}-c{k % 3}"], installed_on="2024-02-01"
                )
            case 1:
                yield reg.ArchiveAttached(
                    kind="design",
                    sha256=hashlib.sha256(f"{sid}/{k}".encode()).hexdigest(),
                    title="design drawings",
                    units=["unit-a"],
                    attached_on="2024-02-02",
                )
            case _:
                yield reg.InspectionRecorded(
                    inspection_id=f"{sid}-i{k}",
                    inspected_on="2024-02-03",
                    inspecting_agency="city bureau",
                    scope=["signage"],
                    outcome="passed",
                )


def _window(args: tuple[int, int, int]) -> list[tuple[str, bytes]]:
    """Events of systems [first, first+count), interleaved round-robin, sealed and chained."""
    from psvis.envelope import Actor, NewEvent, event_hash, seal

    first, count, base = args
    actor = Actor("unit-a", ("officer-1",), "clerk")
    streams = [(f"system-sys-{s:07d}", list(_payloads(s))) for s in range(first, first + count)]
    prev = {sid: b"" for sid, _ in streams}
    rows: list[tuple[str, bytes]] = []
    n = base
    for version in range(1, PER_SYSTEM + 1):
        for sid, payloads in streams:
            at = START + timedelta(seconds=n)
            data = seal(
                NewEvent(payloads[version - 1], at, actor),  # type: ignore[arg-type]
                event_id=f"ev-{n:09d}",
                stream_id=sid,
                version=version,
                prev_hash=prev[sid],
                recorded_at=at,
            )
            prev[sid] = event_hash(data)
            rows.append((sid, data))
            n += 1
    return rows


def build_log(path: Path, events: int) -> int:
    """Write `events` (rounded to whole systems) into a fresh embedded event store at path."""
    from psvis.clock import RandomIds, SystemClock
    from psvis.eventstore.sqlite import INSERT, SqliteEventStore
    from psvis.sqlite_db import SqliteDatabase

    db = SqliteDatabase(path)
    SqliteEventStore(db, SystemClock(), RandomIds())  # creates the schema
    asyncio.run(db.close())
    systems = max(1, events // PER_SYSTEM)
    windows = [(s, min(WINDOW, systems - s), s * PER_SYSTEM) for s in range(0, systems, WINDOW)]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    position = 0
    with ProcessPoolExecutor(2) as pool:
        for rows in pool.map(_window, windows):
            conn.execute("BEGIN")
            conn.executemany(INSERT, [(position + i, *r) for i, r in enumerate(rows)])
            conn.execute("COMMIT")
            position += len(rows)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db = SqliteDatabase(path)
    store = SqliteEventStore(db, SystemClock(), RandomIds())  # learns the log into its index
    asyncio.run(store.close())
    asyncio.run(db.close())
    return position


def count_fold(doc: dict[str, Any] | None, event: Any, env: Any) -> dict[str, Any]:
    """The cheapest fold: what the kernel (runner, read store, decoding) costs on its own."""
    doc = dict(doc or {"events": 0})
    doc["events"] += 1
    doc["last"] = env.type
    return doc


def psvis_replay(
    log: Path, into: Path, kernel_only: bool = False, workers: int | None = None
) -> tuple[int, str]:
    from psvis.audit import replay
    from psvis.clock import RandomIds, SystemClock
    from psvis.eventstore.sqlite import SqliteEventStore
    from psvis.projection import StreamProjection
    from psvis.sqlite_db import SqliteDatabase
    from psvis_registry.projections import COLLECTIONS, PROJECTIONS

    projections: list[StreamProjection] = PROJECTIONS
    collections: tuple[str, ...] = COLLECTIONS
    if kernel_only:
        projections = [StreamProjection("system-", "bench.count", count_fold)]
        collections = ("bench.count",)

    async def run() -> tuple[int, str]:
        db = SqliteDatabase(log)
        store = SqliteEventStore(db, SystemClock(), RandomIds())
        result = await replay(store, projections, collections, into=into, workers=workers)
        await result.db.close()
        await db.close()
        return result.position + 1, result.digest

    return asyncio.run(run())


def floor_replay(log: Path, into: Path, page: int = 5000) -> int:
    """Read, decode envelope + payload, fold to a dict, one JSON write per system per page."""
    from psvis.common.v1 import envelope_pb2 as pb
    from psvis.payloads import message_class
    from psvis.registry.v1 import registry_pb2  # noqa: F401  (registers the payload types)

    src = sqlite3.connect(log, isolation_level=None)
    dst = sqlite3.connect(into, isolation_level=None)
    dst.execute("PRAGMA journal_mode=WAL")
    dst.execute("PRAGMA synchronous=NORMAL")
    dst.execute(
        "CREATE TABLE docs (key TEXT PRIMARY KEY, version INTEGER NOT NULL, doc TEXT NOT NULL)"
    )
    docs: dict[str, dict[str, object]] = {}
    after, n = -1, 0
    while rows := src.execute(
        "SELECT position, data FROM events WHERE position > ? ORDER BY position LIMIT ?",
        (after, page),
    ).fetchall():
        touched: dict[str, int] = {}
        for _, data in rows:
            env = pb.EventEnvelope.FromString(data)
            stream_id, version = env.stream_id, env.stream_version
            event = message_class(env.type).FromString(env.payload)
            doc = docs.setdefault(stream_id, {"events": 0})
            doc["events"] = int(doc["events"]) + 1  # type: ignore[call-overload]
            doc["last"] = event.DESCRIPTOR.name
            touched[stream_id] = version
        dst.execute("BEGIN")
        dst.executemany(
            "INSERT OR REPLACE INTO docs VALUES (?, ?, ?)",
            [
                (k, v, orjson.dumps(docs[k], option=orjson.OPT_SORT_KEYS))
                for k, v in touched.items()
            ],
        )
        dst.execute("COMMIT")
        after, n = rows[-1][0], n + len(rows)
    return n


def import_both_sides() -> None:
    """Import what each side uses before timing either: imports are not replay (~0.3 s).

    (Worker processes import for themselves; that is inside the psvis figure.)
    """
    import psvis.audit
    import psvis.clock
    import psvis.eventstore.sqlite
    import psvis.payloads  # noqa: F401
    import psvis_registry.projections  # noqa: F401


def main(argv: list[str] | None = None) -> Result:
    from psvis.replaying import default_workers

    p = parser(__doc__ or "")
    p.add_argument("--events", type=int, default=EVENTS)
    args = p.parse_args(argv)
    import_both_sides()
    events = scaled(args.events, args.scale, PER_SYSTEM)
    result = Result("replay", args.scale)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        log = folder / "log.db"
        with timer() as elapsed:
            n = build_log(log, events)
        build_s = elapsed()
        print(f"built a {n:,}-event log in {build_s:.1f}s ({n / build_s:,.0f} events/s)")
        with timer() as elapsed:
            m = floor_replay(log, folder / "floor.db")
        floor_s = elapsed()
        if args.profile:  # the one-process replay: workers' time is not seen by cProfile
            profile_top(lambda: psvis_replay(log, folder / "prof.db", workers=1))
        workers = default_workers(n)
        with timer() as elapsed:
            replayed, digest = psvis_replay(log, folder / "reads.db")
        ps_s = elapsed()
        assert replayed == n == m, (replayed, n, m)
        result.rows.append(
            Row(
                f"replay into fresh SQLite read store ({workers} worker{'s' * (workers > 1)})",
                "events/s",
                n / ps_s,
                m / floor_s,
                "hand floor",
                goal=100_000,
                goal_on="psvis",
                n=n,
                note=f"{n // PER_SYSTEM:,} systems x {PER_SYSTEM} events; psvis {ps_s:.1f}s,"
                f" floor {floor_s:.1f}s; digest {digest[:12]}",
            )
        )
        with timer() as elapsed:
            replayed, one_digest = psvis_replay(log, folder / "one.db", workers=1)
        one_s = elapsed()
        assert (replayed, one_digest) == (n, digest), "a replay in parts must equal one in one"
        result.rows.append(
            Row(
                "  same, in this process alone",
                "events/s",
                n / one_s,
                m / floor_s,
                "hand floor",
                n=n,
                note="audit.replay(..., workers=1): the registry's folds on one core",
            )
        )
        with timer() as elapsed:
            replayed, _ = psvis_replay(log, folder / "kernel.db", kernel_only=True, workers=1)
        kernel_s = elapsed()
        assert replayed == n
        result.rows.append(
            Row(
                "  same, kernel only (trivial fold, one process)",
                "events/s",
                n / kernel_s,
                m / floor_s,
                "hand floor",
                goal=100_000,
                goal_on="psvis",
                n=n,
                note="audit.replay with one projection whose fold only counts events:"
                " runner + read store + decoding, without the registry's fold",
            )
        )
        result.extra.update(
            events=n,
            workers=workers,
            build_s=build_s,
            psvis_s=ps_s,
            one_process_s=one_s,
            floor_s=floor_s,
            kernel_only_s=kernel_s,
        )
    finish(result, args.json)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
