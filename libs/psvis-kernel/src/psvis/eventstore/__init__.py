"""The event store port and its adapters.

Embedded: sqlite. Distributed: mongo_kafka (streams) + kafka_log (the log), and the relay
between them, outbox_relay + outbox_rounds.
"""

from psvis.eventstore.port import EventStore, StreamHead

__all__ = ["EventStore", "StreamHead"]
