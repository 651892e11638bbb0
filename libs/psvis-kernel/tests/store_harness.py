"""Store fixtures: every contract test runs on the embedded and on the distributed adapters.

A test module defines its fixture from `BACKENDS` and `open_harness` (module-local, so that the
shared conftest.py stays untouched).

"distributed" is marked `distributed` and needs a real Kafka broker and MongoDB-wire server
(PSVIS_KAFKA_BOOTSTRAP, PSVIS_MONGO_URL; `scripts/services.sh start` then
`source .run/services/env`). Without them those tests FAIL; deselect them with
`-m "not distributed"`. Each distributed test uses its own namespace, so tests never collide.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from google.protobuf.wrappers_pb2 import StringValue
from psvis.checkpoints import CheckpointStore, SqliteCheckpointStore
from psvis.clock import FixedClock, SequentialIds
from psvis.envelope import Actor, NewEvent
from psvis.eventstore.port import EventStore
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.readstore.port import ReadStore
from psvis.readstore.sqlite import SqliteReadStore
from psvis.settings import Settings
from psvis.sqlite_db import SqliteDatabase
from psvis.stores import Stores

BACKENDS = ["sqlite", pytest.param("distributed", marks=pytest.mark.distributed)]
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def event(text: str) -> NewEvent:
    return NewEvent(
        payload=StringValue(value=text),
        occurred_at=T0,
        actor=Actor(agency="test-agency", officers=("officer-1",), role="clerk"),
        trace={"traceparent": TRACEPARENT},
    )


def distributed_settings(namespace: str | None = None) -> Settings:
    kafka = os.environ.get("PSVIS_KAFKA_BOOTSTRAP", "")
    mongo = os.environ.get("PSVIS_MONGO_URL", "")
    if not kafka or not mongo:
        pytest.fail(
            "distributed tests need PSVIS_KAFKA_BOOTSTRAP and PSVIS_MONGO_URL: run "
            "`scripts/services.sh start && source .run/services/env`, or deselect them with "
            '-m "not distributed"'
        )
    return Settings(
        backend="distributed",
        kafka_bootstrap=kafka,
        mongo_url=mongo,
        namespace=namespace or f"t{uuid.uuid4().hex[:16]}",
    )


async def open_distributed(namespace: str | None = None) -> Stores:
    from psvis.distributed import open_distributed_stores

    return await open_distributed_stores(distributed_settings(namespace), FixedClock(T0))


@dataclass
class Harness:
    """The stores of one backend, plus what the contract needs to drive them."""

    backend: str
    events: EventStore
    reads: ReadStore
    checkpoints: CheckpointStore
    # Makes appended events visible in the log (the distributed relay; nothing when embedded).
    publish: Callable[[], Awaitable[int]]
    # Another event store over the same data, as a second process would open it.
    another: Callable[[], Awaitable[EventStore]]
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        for close in reversed(self.closers):
            await close()


async def _nothing() -> int:
    return 0


async def sqlite_harness(path: Path) -> Harness:
    db = SqliteDatabase(path)
    h = Harness(
        "sqlite",
        SqliteEventStore(db, FixedClock(T0), SequentialIds("ev")),
        SqliteReadStore(db),
        SqliteCheckpointStore(db),
        publish=_nothing,
        another=lambda: _another_sqlite(h, path),
    )
    h.closers.append(db.close)
    return h


async def _another_sqlite(h: Harness, path: Path) -> EventStore:
    db = SqliteDatabase(path)
    h.closers.append(db.close)
    return SqliteEventStore(db, FixedClock(T0), SequentialIds("ev2"))


async def distributed_harness() -> Harness:
    stores = await open_distributed()
    events = stores.events
    namespace = events.namespace  # type: ignore[attr-defined]

    async def another() -> EventStore:
        more = await open_distributed(namespace)
        h.closers.append(more.close)
        return more.events

    h = Harness(
        "distributed",
        events,
        stores.reads,
        stores.checkpoints,
        publish=events.relay.relay_once,  # type: ignore[attr-defined]
        another=another,
    )
    h.closers.append(stores.close)
    return h


@contextlib.asynccontextmanager
async def open_harness(backend: str, folder: Path) -> AsyncIterator[Harness]:
    h = await (
        sqlite_harness(folder / "psvis.db") if backend == "sqlite" else distributed_harness()
    )
    try:
        yield h
    finally:
        await h.close()
