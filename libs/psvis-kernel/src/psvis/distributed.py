"""Open the distributed stores: Kafka for the log, MongoDB (PyMongo's async API) for the rest.

PSVIS_KAFKA_BOOTSTRAP (host:port[,host:port]) and PSVIS_MONGO_URL (mongodb://host:port/database;
database "psvis" when the URL names none) are required; both are checked before anything starts,
so a missing or unreachable service fails at start-up with a message that names it.
PSVIS_NAMESPACE prefixes the Kafka topic (`<namespace>.events`) and every MongoDB collection, so
several deployments (or test runs) can share one broker and one database.

`open_live_feed` starts the FastStream subscriber that the live read models follow
(psvis.subscribers); `psvis serve` opens it beside the stores.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from psvis.checkpoints_mongo import MongoCheckpointStore
from psvis.clock import Clock, RandomIds
from psvis.errors import Unavailable
from psvis.eventstore.mongo_kafka import MongoKafkaEventStore
from psvis.eventstore.port import EventStore
from psvis.readstore.mongo import MongoReadStore
from psvis.settings import Settings
from psvis.stores import Stores
from psvis.subscribers import DeliveredLog, EventsFeed

CONNECT_TIMEOUT = 10.0


def client_options(url: str) -> dict[str, Any]:
    """Defaults for what the URL does not set (the URL wins; PyMongo lets arguments win).

    A small connection pool: FerretDB 1.24 (SQLite) has 100 SQLite connections in all and
    deadlocks when writes need more, so a few processes with 16 each stay well below that; on
    MongoDB raise maxPoolSize in the URL if needed.
    """
    defaults = {
        "maxPoolSize": 16,
        "serverSelectionTimeoutMS": int(CONNECT_TIMEOUT * 1000),
        "connectTimeoutMS": int(CONNECT_TIMEOUT * 1000),
    }
    query = url.partition("?")[2].lower()
    return {k: v for k, v in defaults.items() if f"{k.lower()}=" not in query}


def redact(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


async def open_distributed_stores(settings: Settings, clock: Clock) -> Stores:
    missing = [
        name
        for name, value in (
            ("PSVIS_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
            ("PSVIS_MONGO_URL", settings.mongo_url),
        )
        if not value
    ]
    if missing:
        raise Unavailable(
            f"the distributed backend needs {' and '.join(missing)} "
            "(e.g. PSVIS_KAFKA_BOOTSTRAP=127.0.0.1:9092 PSVIS_MONGO_URL=mongodb://127.0.0.1:27017/psvis;"
            " scripts/services.sh start starts both locally)"
        )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        settings.mongo_url,
        **client_options(settings.mongo_url),
    )
    try:
        await client.admin.command("ping")
    except PyMongoError as e:
        await client.close()
        raise Unavailable(f"MongoDB at {redact(settings.mongo_url)} is unreachable: {e}") from e
    db = client.get_default_database(default="psvis")
    events = MongoKafkaEventStore(
        db, settings.kafka_bootstrap, settings.namespace, clock, RandomIds()
    )
    try:
        await asyncio.wait_for(events.start(), CONNECT_TIMEOUT * 2)
    except Exception as e:
        await events.close()
        await client.close()
        raise Unavailable(
            f"Kafka at {settings.kafka_bootstrap} is unreachable or refused topic "
            f"{events.topic}: {str(e) or type(e).__name__}"
        ) from e
    reads = MongoReadStore(db, settings.namespace)
    checkpoints = MongoCheckpointStore(db, settings.namespace)

    async def close() -> None:
        try:
            await events.close()
        finally:
            await client.close()

    return Stores(
        events=events,
        reads=reads,
        checkpoints=checkpoints,
        close=close,
        background=[events.relay.relay_forever],
    )


async def open_live_feed(settings: Settings, events: EventStore) -> EventsFeed:
    """The subscriber that feeds the live read models, started and positioned at the log's end."""
    feed = EventsFeed(settings.kafka_bootstrap, settings.namespace, DeliveredLog(events))
    try:
        await asyncio.wait_for(feed.start(), CONNECT_TIMEOUT * 2)
    except Exception as e:
        with contextlib.suppress(Exception):
            await feed.stop()
        raise Unavailable(
            f"Kafka at {settings.kafka_bootstrap}: cannot subscribe to {feed.partition.topic}: "
            f"{str(e) or type(e).__name__}"
        ) from e
    return feed
