"""Benchmark 1: append throughput, psvis's embedded event store vs eventsourcing's SQLite recorder.

Workload (both sides, same order): A aggregates x E events, appended round-robin (every
aggregate gets its version v before any gets v+1), one event per append call, each call
checked for optimistic concurrency; then the batched variant, E events per call.

psvis:          SqliteEventStore(SqliteDatabase(file), SystemClock(), RandomIds()).append(
                stream, expected_version, [NewEvent(InspectionRecorded ~160 B)])
eventsourcing:  SQLiteApplicationRecorder(SQLiteDatastore(file)).insert_events([StoredEvent])
                with a state blob as large as psvis's stored envelope; uniqueness of
                (originator_id, originator_version) is its concurrency check.
Both: a file database in WAL mode with synchronous=NORMAL (psvis's setting; eventsourcing
leaves SQLite's default, FULL, which is also shown, on a tenth of the workload).
The goal rows (1 and E events per call, with their bare-sqlite3 floors) run in turn
--rounds times (default 3), each run on a fresh file; each side's fastest run counts.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import Result, Row, finish, parser, profile_top, scaled, timer

AGGREGATES = 10_000
PER_AGGREGATE = 10
TOPIC = "psvis.registry.v1:InspectionRecorded"
TASKS, THREADS = 32, 4


def payload() -> Any:
    from psvis.registry.v1 import registry_pb2 as reg

    return reg.InspectionRecorded(
        inspection_id="insp-0000000001",
        inspected_on="2024-03-01",
        inspecting_agency="city public security bureau",
        scope=["signage", "archives", "personnel"],
        outcome="passed",
        notes="all cameras signed; archives complete; personnel trained and filed",
    )


def new_event() -> Any:
    from psvis.envelope import Actor, NewEvent

    return NewEvent(payload(), datetime.now(UTC), Actor("unit-a", ("officer-1",), "inspector"))


def open_psvis(path: Path) -> Any:
    from psvis.clock import RandomIds, SystemClock
    from psvis.eventstore.sqlite import SqliteEventStore
    from psvis.sqlite_db import SqliteDatabase

    db = SqliteDatabase(path)
    return db, SqliteEventStore(db, SystemClock(), RandomIds())


def psvis_append(path: Path, aggregates: int, per: int, batch: int) -> tuple[int, float, int]:
    """Returns (events, seconds, bytes of one stored event).

    Each call gets new NewEvent objects (as eventsourcing gets new StoredEvents), around one
    payload message built beforehand (as eventsourcing's state blob is).
    """
    from psvis.envelope import Actor, NewEvent

    body = payload()
    actor = Actor("unit-a", ("officer-1",), "inspector")
    streams = [f"system-{uuid.uuid4()}" for _ in range(aggregates)]

    async def run() -> tuple[int, float, int]:
        db, store = open_psvis(path)
        size = 0
        with timer() as elapsed:
            for v in range(0, per, batch):
                for s in streams:
                    now = datetime.now(UTC)
                    events = [NewEvent(body, now, actor) for _ in range(batch)]
                    recorded = await store.append(s, v, events)
        size = len(recorded[0].data)
        seconds = elapsed()
        assert await store.log_size() == aggregates * per
        await db.close()
        return aggregates * per, seconds, size

    return asyncio.run(run())


def psvis_append_concurrent(path: Path, aggregates: int, per: int, tasks: int) -> tuple[int, float]:
    """`tasks` coroutines, each appending to its own share of the aggregates, one event a call."""
    ev = new_event()
    streams = [f"system-{uuid.uuid4()}" for _ in range(aggregates)]

    async def run() -> tuple[int, float]:
        db, store = open_psvis(path)

        async def worker(mine: list[str]) -> None:
            for v in range(per):
                for s in mine:
                    await store.append(s, v, [ev])

        with timer() as elapsed:
            await asyncio.gather(*(worker(streams[k::tasks]) for k in range(tasks)))
        seconds = elapsed()
        assert await store.log_size() == aggregates * per
        await db.close()
        return aggregates * per, seconds

    return asyncio.run(run())


def es_append_threads(
    path: Path, aggregates: int, per: int, threads: int, state_size: int
) -> tuple[int, float]:
    from eventsourcing.persistence import StoredEvent

    state = os.urandom(state_size)
    ids = [uuid.uuid4() for _ in range(aggregates)]
    datastore, recorder = es_recorder(path, "NORMAL")

    def worker(mine: list[uuid.UUID]) -> None:
        for v in range(1, per + 1):
            for i in mine:
                recorder.insert_events([StoredEvent(i, v, TOPIC, state)])

    pool = [threading.Thread(target=worker, args=(ids[k::threads],)) for k in range(threads)]
    with timer() as elapsed:
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    seconds = elapsed()
    datastore.close()
    return aggregates * per, seconds


def es_recorder(path: Path, synchronous: str | None) -> Any:
    from eventsourcing.sqlite import (
        SQLiteApplicationRecorder,
        SQLiteConnection,
        SQLiteConnectionPool,
        SQLiteDatastore,
    )

    class Pool(SQLiteConnectionPool):
        def _create_connection(self) -> SQLiteConnection:
            conn = super()._create_connection()
            if synchronous is not None:
                conn._sqlite_conn.execute(f"PRAGMA synchronous={synchronous}")
            return conn

    datastore = SQLiteDatastore(str(path))
    datastore.pool.close()
    datastore.pool = Pool(db_name=str(path))
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    return datastore, recorder


def es_append(
    path: Path, aggregates: int, per: int, batch: int, state_size: int, synchronous: str | None
) -> tuple[int, float]:
    from eventsourcing.persistence import StoredEvent

    state = os.urandom(state_size)
    ids = [uuid.uuid4() for _ in range(aggregates)]
    datastore, recorder = es_recorder(path, synchronous)
    with timer() as elapsed:
        for v in range(1, per + 1, batch):
            for i in ids:
                recorder.insert_events([StoredEvent(i, v + k, TOPIC, state) for k in range(batch)])
    seconds = elapsed()
    with datastore.transaction(commit=False) as c:
        c.execute("SELECT COUNT(*) FROM stored_events")
        assert c.fetchone()[0] == aggregates * per
    datastore.close()
    return aggregates * per, seconds


def es_append_mapped(path: Path, aggregates: int, per: int) -> tuple[int, float, int]:
    """eventsourcing with its own serialisation: DomainEvent -> Mapper(JSON) -> recorder."""
    from eventsourcing.domain import DomainEvent
    from eventsourcing.persistence import (
        DatetimeAsISO,
        JSONTranscoder,
        Mapper,
        UUIDAsHex,
    )

    @dataclass(frozen=True)
    class InspectionRecorded(DomainEvent):
        inspection_id: str
        inspected_on: str
        inspecting_agency: str
        scope: list[str]
        outcome: str
        notes: str
        actor: dict[str, Any]

    transcoder = JSONTranscoder()
    transcoder.register(UUIDAsHex())
    transcoder.register(DatetimeAsISO())
    mapper: Mapper[Any] = Mapper(transcoder)
    p = payload()
    fields = {
        "inspection_id": p.inspection_id,
        "inspected_on": p.inspected_on,
        "inspecting_agency": p.inspecting_agency,
        "scope": list(p.scope),
        "outcome": p.outcome,
        "notes": p.notes,
        "actor": {"agency": "unit-a", "officers": ["officer-1"], "role": "inspector"},
    }
    ids = [uuid.uuid4() for _ in range(aggregates)]
    datastore, recorder = es_recorder(path, "NORMAL")
    size = 0
    with timer() as elapsed:
        for v in range(1, per + 1):
            for i in ids:
                event = InspectionRecorded(
                    originator_id=i,
                    originator_version=v,
                    timestamp=datetime.now(UTC),
                    **fields,
                )
                stored = mapper.to_stored_event(event)
                recorder.insert_events([stored])
    seconds = elapsed()
    size = len(stored.state)
    datastore.close()
    return aggregates * per, seconds, size


def sqlite_floor(
    path: Path, aggregates: int, per: int, batch: int, state_size: int
) -> tuple[int, float]:
    """The least an append can cost on SQLite: psvis's events table and settings, bare sqlite3.

    The same rows (position, stream, a blob of the envelope's size) as psvis writes, one
    transaction per call, with no sealing, hashing or concurrency check.
    """
    from psvis.eventstore.sqlite import INSERT, SCHEMA
    from psvis.sqlite_conn import connect

    state = os.urandom(state_size)
    conn = connect(str(path))
    conn.executescript(SCHEMA)
    streams = [f"system-{uuid.uuid4()}" for _ in range(aggregates)]
    position = 0
    with timer() as elapsed:
        for _ in range(0, per, batch):
            for s in streams:
                rows = [(position + k, s, state) for k in range(batch)]
                if batch == 1:
                    conn.execute(INSERT, rows[0])
                else:
                    conn.execute("BEGIN")
                    conn.executemany(INSERT, rows)
                    conn.execute("COMMIT")
                position += batch
    seconds = elapsed()
    conn.close()
    return aggregates * per, seconds


def fastest(
    rounds: int, folder: Path, sides: dict[str, Callable[[Path], tuple[Any, ...]]]
) -> dict[str, tuple[Any, ...]]:
    """Run the sides in turn, `rounds` times, each on a fresh file; each side's fastest run.

    A side returns (events, seconds, ...). Alternating rounds give every side the same share
    of a noisy machine; the fastest of a few is the least disturbed.
    """
    best: dict[str, tuple[Any, ...]] = {}
    for r in range(rounds):
        for name, side in sides.items():
            path = folder / f"{name}-{r}.db"
            out = side(path)
            if name not in best or out[1] < best[name][1]:
                best[name] = out
            for leftover in folder.glob(f"{path.name}*"):  # the file, its WAL and shm
                leftover.unlink()
    return best


def conflict_check(folder: Path) -> None:
    """Both sides really refuse a stale expected version (so both pay for the check)."""
    from eventsourcing.persistence import IntegrityError, StoredEvent
    from psvis.errors import ConcurrencyConflict

    async def psvis_side() -> None:
        db, store = open_psvis(folder / "conflict-psvis.db")
        await store.append("system-x", 0, [new_event()])
        try:
            await store.append("system-x", 0, [new_event()])
        except ConcurrencyConflict:
            pass
        else:
            raise AssertionError("psvis accepted a stale expected version")
        await db.close()

    asyncio.run(psvis_side())
    datastore, recorder = es_recorder(folder / "conflict-es.db", "NORMAL")
    i = uuid.uuid4()
    recorder.insert_events([StoredEvent(i, 1, TOPIC, b"x")])
    try:
        recorder.insert_events([StoredEvent(i, 1, TOPIC, b"x")])
    except IntegrityError:
        pass
    else:
        raise AssertionError("eventsourcing accepted a duplicate version")
    datastore.close()


def main(argv: list[str] | None = None) -> Result:
    p = parser(__doc__ or "")
    p.add_argument("--aggregates", type=int, default=AGGREGATES)
    p.add_argument("--per-aggregate", type=int, default=PER_AGGREGATE)
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the goal rows (psvis, eventsourcing, floor in turn); the fastest counts",
    )
    args = p.parse_args(argv)
    aggs = scaled(args.aggregates, args.scale, 10)
    per = args.per_aggregate
    small = max(10, aggs // 10)
    result = Result("append", args.scale)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        conflict_check(folder)
        if args.profile:
            profile_top(lambda: psvis_append(folder / "prof.db", small, per, 1))

        size = psvis_append(folder / "size.db", 1, 2, 1)[2]  # version 2: a prev_hash, as most
        one = fastest(
            args.rounds,
            folder,
            {
                "psvis-1": lambda f: psvis_append(f, aggs, per, 1),
                "es-1": lambda f: es_append(f, aggs, per, 1, size, "NORMAL"),
                "floor-1": lambda f: sqlite_floor(f, aggs, per, 1, size),
            },
        )
        (n, ps_s, _), (m, es_s) = one["psvis-1"], one["es-1"]
        result.rows.append(
            Row(
                "1 event/append",
                "events/s",
                n / ps_s,
                m / es_s,
                "es recorder",
                goal=2.0,
                n=n,
                note=f"psvis stores {size} B/event (envelope); eventsourcing gets a {size} B blob",
            )
        )
        m, floor_s = one["floor-1"]
        result.rows.append(
            Row(
                "1 event/append, bare sqlite3 floor",
                "events/s",
                n / ps_s,
                m / floor_s,
                "sqlite3 floor",
                n=n,
                note="the same rows written by a bare sqlite3 loop: no sealing, hashing or check",
            )
        )
        m, es_map_s, es_size = es_append_mapped(folder / "es-map.db", aggs, per)
        result.rows.append(
            Row(
                "1 event/append, es incl. Mapper",
                "events/s",
                n / ps_s,
                m / es_map_s,
                "es mapper+recorder",
                n=n,
                note=f"eventsourcing builds a DomainEvent and JSON-encodes it ({es_size} B)",
            )
        )
        m, es_full_s = es_append(folder / "es-full.db", small, per, 1, size, None)
        result.rows.append(
            Row(
                "1 event/append, es synchronous=FULL",
                "events/s",
                n / ps_s,
                m / es_full_s,
                "es default FULL",
                n=m,
                note="eventsourcing with its own default durability (fsync per commit)",
            )
        )
        k, ps_c = psvis_append_concurrent(folder / "psvis-conc.db", small * 2, per, TASKS)
        m, es_c = es_append_threads(folder / "es-conc.db", small * 2, per, THREADS, size)
        result.rows.append(
            Row(
                f"1 event/append, {TASKS} concurrent",
                "events/s",
                k / ps_c,
                m / es_c,
                f"es {THREADS} threads",
                n=k,
                note=f"psvis: {TASKS} coroutines on one store; eventsourcing: {THREADS} threads"
                " on one recorder (its sequential figure above is higher)",
            )
        )
        batched = fastest(
            args.rounds,
            folder,
            {
                "psvis-10": lambda f: psvis_append(f, aggs, per, per),
                "es-10": lambda f: es_append(f, aggs, per, per, size, "NORMAL"),
                "floor-10": lambda f: sqlite_floor(f, aggs, per, per, size),
            },
        )
        (n, ps_b, _), (m, es_b) = batched["psvis-10"], batched["es-10"]
        result.rows.append(
            Row(
                f"{per} events/append",
                "events/s",
                n / ps_b,
                m / es_b,
                "es recorder",
                goal=2.0,
                n=n,
            )
        )
        m, floor_b = batched["floor-10"]
        result.rows.append(
            Row(
                f"{per} events/append, bare sqlite3 floor",
                "events/s",
                n / ps_b,
                m / floor_b,
                "sqlite3 floor",
                n=n,
                note=f"{per} rows per transaction by a bare sqlite3 loop",
            )
        )
        result.extra.update(
            aggregates=aggs,
            per_aggregate=per,
            stored_event_bytes=size,
            seconds={
                "psvis_1": ps_s,
                "es_1": es_s,
                "es_mapper_1": es_map_s,
                "psvis_concurrent": ps_c,
                "es_threads": es_c,
                "psvis_batch": ps_b,
                "es_batch": es_b,
                "floor_1": floor_s,
                "floor_batch": floor_b,
            },
        )
    finish(result, args.json)
    return result


if __name__ == "__main__":
    sqlite3.connect(":memory:").close()
    main(sys.argv[1:])
