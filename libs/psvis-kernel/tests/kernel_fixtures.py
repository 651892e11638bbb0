"""Builders shared by the kernel's tests: a populated embedded log with signed checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psvis.checkpoints import SqliteCheckpointStore
from psvis.clock import FixedClock, SequentialIds
from psvis.common.v1 import envelope_pb2 as pb
from psvis.envelope import Actor, NewEvent
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.notary import Notary
from psvis.signing import Signer
from psvis.sqlite_db import SqliteDatabase

START = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def note(text: str, clock: FixedClock) -> NewEvent:
    """A small event; the kernel does not care what the payload is."""
    return NewEvent(
        pb.Citation(rule="test", reason=text), clock.now(), Actor("unit-a", ("officer-1",))
    )


@dataclass
class Log:
    db: SqliteDatabase
    store: SqliteEventStore
    checkpoints: SqliteCheckpointStore
    signer: Signer
    clock: FixedClock
    notary: Notary


async def build_log(folder: Path, events: int = 30, streams: int = 3, every: int = 8) -> Log:
    clock = FixedClock(START)
    db = SqliteDatabase(folder / "psvis.db")
    store = SqliteEventStore(db, clock, SequentialIds("ev"))
    checkpoints = SqliteCheckpointStore(db)
    signer = Signer.load_or_create(folder / "keys" / "notary.key")
    for i in range(events):
        clock.advance(timedelta(minutes=1))
        stream = f"s-{i % streams}"
        head = await store.head(stream)
        await store.append(stream, head.version, [note(f"event {i}", clock)])
    notary = Notary(store, checkpoints, signer, clock, every=every)
    await notary.catch_up()
    return Log(db, store, checkpoints, signer, clock, notary)
