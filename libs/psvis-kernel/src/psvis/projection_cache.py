"""The documents a ProjectionRunner keeps between batches, written back when they leave."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from psvis.readstore.port import Document, Write


@dataclass(slots=True)
class Entry:
    """A document as folded so far, and the version the store holds (0: none)."""

    doc: Document | None
    version: int
    stored: int

    def write(self, key: str) -> Write:
        assert self.doc is not None, "only folded documents are written"
        return Write(key, self.doc, self.version, self.stored)


class DocumentCache:
    """One projection's documents kept between batches, least recently used first.

    Documents are written back: when they leave the cache, or when the runner flushes.
    """

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()

    def touch(self, keys: set[str]) -> list[str]:
        """Mark keys as just used; returns, sorted, those not kept."""
        entries, missing = self.entries, []
        for key in keys:
            if key in entries:
                entries.move_to_end(key)
            else:
                missing.append(key)
        return sorted(missing)

    def load(self, stored: dict[str, tuple[Document, int]], keys: list[str]) -> None:
        for key in keys:
            doc, version = stored.get(key, (None, 0))
            self.entries[key] = Entry(doc, version, version)

    def evict(self, keep: int) -> list[tuple[str, Entry]]:
        """Drop the least recently used entries beyond `keep`; returns those not yet written."""
        entries, leaving = self.entries, []
        while len(entries) > keep:
            key, entry = entries.popitem(last=False)
            if entry.version != entry.stored:
                leaving.append((key, entry))
        return leaving

    def dirty(self) -> list[tuple[str, Entry]]:
        return [(k, e) for k, e in self.entries.items() if e.version != e.stored]

    def clear(self) -> None:
        self.entries.clear()
