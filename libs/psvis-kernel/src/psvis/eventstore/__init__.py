"""The event store port and its adapters (sqlite: embedded; mongo_kafka + outbox_relay: distributed)."""

from psvis.eventstore.port import EventStore, StreamHead

__all__ = ["EventStore", "StreamHead"]
