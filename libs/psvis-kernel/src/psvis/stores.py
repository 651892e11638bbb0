"""Open the stores of a deployment: embedded (SQLite) or distributed (MongoDB + Kafka)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from psvis.checkpoints import CheckpointStore, SqliteCheckpointStore
from psvis.clock import Clock, RandomIds, SystemClock
from psvis.eventstore.port import EventStore, LogSource
from psvis.eventstore.sqlite import SqliteEventStore
from psvis.eventstore.sqlite_reader import SqliteLogReader
from psvis.readstore.port import ReadStore
from psvis.readstore.sqlite import SqliteReadStore
from psvis.settings import Settings
from psvis.sqlite_db import SqliteDatabase


@dataclass
class Stores:
    events: EventStore
    reads: ReadStore
    checkpoints: CheckpointStore
    close: Callable[[], Awaitable[None]]
    # Background work the backend needs while it serves (e.g. the outbox relay).
    background: list[Callable[[], Awaitable[None]]]


async def open_stores(settings: Settings, clock: Clock | None = None) -> Stores:
    clock = clock or SystemClock()
    if settings.backend == "embedded":
        log_db = SqliteDatabase(settings.sqlite_path)
        reads_db = SqliteDatabase(settings.read_models_path)
        events = SqliteEventStore(log_db, clock, RandomIds())

        async def close() -> None:
            try:
                await events.close()
            finally:
                await log_db.close()
                await reads_db.close()

        return Stores(
            events=events,
            reads=SqliteReadStore(reads_db),
            checkpoints=SqliteCheckpointStore(log_db),
            close=close,
            background=[],
        )
    if settings.backend == "distributed":
        from psvis.distributed import open_distributed_stores

        return await open_distributed_stores(settings, clock)
    raise ValueError(f"unknown backend {settings.backend!r}: embedded or distributed")


@dataclass
class AuditedLog:
    """The log and its checkpoints as an audit reads them; for the embedded log, read-only."""

    events: LogSource
    checkpoints: CheckpointStore
    close: Callable[[], Awaitable[None]]


async def open_for_audit(settings: Settings) -> AuditedLog:
    """The deployment's log, opened so that auditing it changes nothing.

    Embedded: the database file opened read-only (FileNotFoundError when there is none),
    without the stream index, the read models or the WAL checkpointer a server opens.
    """
    if settings.backend == "embedded":
        db = SqliteDatabase(settings.sqlite_path, read_only=True)
        return AuditedLog(
            events=SqliteLogReader(db),
            checkpoints=SqliteCheckpointStore(db, read_only=True),
            close=db.close,
        )
    stores = await open_stores(settings)
    return AuditedLog(events=stores.events, checkpoints=stores.checkpoints, close=stores.close)
