"""The read-model store port and its adapters (sqlite: embedded; mongo: distributed)."""

from psvis.readstore.port import Document, ReadStore, Write, canonical_digest

__all__ = ["Document", "ReadStore", "Write", "canonical_digest"]
