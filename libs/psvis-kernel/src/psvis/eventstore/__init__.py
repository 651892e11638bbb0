"""The event store port and its adapters (sqlite: embedded; mongo_kafka: distributed)."""

from psvis.eventstore.port import EventStore, StreamHead

__all__ = ["EventStore", "StreamHead"]
