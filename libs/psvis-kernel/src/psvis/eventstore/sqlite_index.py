"""Where each stream's events sit in the embedded log, kept off the append path.

An append writes one row to `events` and nothing else. Which positions belong to which stream is
derived from the log, from each event's envelope: durable in `stream_index` up to position
`upto`, and held in memory for the tail after it. The tail is written to `stream_index` in
batches (one transaction per `batch` events), so the random B-tree pages of a per-stream index
are written once per batch instead of once per append. The index is never the source of
truth: after a crash the tail is learnt again from the log, and a log written by another
process is learnt the same way. An index whose entries, when a store opens it, are not one per
event up to `upto` is rebuilt from the log; an entry pointing at the wrong event is found when it
is read (IndexDisagrees). A damaged log holding one stream version twice cannot be indexed whole:
the positions a rebuild could not index are kept in `stream_index_unindexed`, so an index short
by just those events, each still a copy of an indexed version, is not rebuilt at every open.

Stream ids are stored once, in `streams`; the index rows are small integers, so one page holds
hundreds of them.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence

from psvis.envelope import RecordedEvent
from psvis.eventstore.port import StreamHead, stored_events
from psvis.sqlite_conn import in_transaction

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    no INTEGER PRIMARY KEY,
    stream_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS stream_index (
    no INTEGER NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (no, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stream_index_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    upto INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_index_unindexed (
    position INTEGER PRIMARY KEY
);
"""

INDEX_TABLES = ("stream_index", "streams", "stream_index_state", "stream_index_unindexed")

# (stream id, version, position) of one event
Entry = tuple[str, int, int]


class IndexDisagrees(Exception):
    """The index points a stream at events of the log that are not that stream's versions
    (the index was damaged or edited): the store rebuilds it from the log."""

    def __init__(self, stream_id: str) -> None:
        super().__init__(f"the stream index disagrees with the log about stream {stream_id!r}")
        self.stream_id = stream_id


LEARNT_PER_PAGE = 5000  # rows of the log read at a time when learning it
HEADS_CACHED = 65_536
NUMBERS_CACHED = 262_144  # stream id -> number in `streams`, about 100 B each
NUMBERS_READ = 500  # stream ids looked up in one statement (SQLite allows 999 parameters at least)


class StreamIndex:
    """Stream -> positions and heads. Used from one thread, on the connection that appends.

    Every event at or below `known` is in stream_index or in the tail; heads are cached for the
    streams appended to most recently. Another writer's events are learnt by learn_from_log():
    the log is dense (each writer appends at known + 1, and a taken position fails its insert),
    so a writer that missed another's events finds out at its next append.
    """

    def __init__(self, conn: sqlite3.Connection, batch: int = 4096) -> None:
        self._conn = conn
        self._batch = batch
        conn.executescript(SCHEMA)
        upto, entries, unindexed = self._counts()
        self._reset(upto)
        # one entry per event up to `upto` (but those a rebuild could not index), else entries
        # were lost (or added): a lost newest entry would give a stream an older head, and an
        # append a version already taken
        whole = entries + unindexed == upto + 1 and self._unindexed_are_copies(unindexed)
        if not whole:
            log.warning(
                "the stream index holds %d entries for the %d events up to position %d:"
                " rebuilding it from the log",
                entries,
                upto + 1,
                upto,
            )
            upto, entries, unindexed = self.rebuild()
        if entries != upto + 1:  # said at every open: the log is damaged
            _say_damage(upto, entries, unindexed)
        if whole:
            self.learn_from_log()
            if self.due:
                self.flush()

    def _counts(self) -> tuple[int, int, int]:
        """(upto, the entries stream_index holds for numbered streams, the events the last
        rebuild could not index), in one statement: one snapshot, even while another writer
        flushes."""
        upto, entries, unindexed = self._conn.execute(
            "SELECT COALESCE((SELECT upto FROM stream_index_state WHERE id = 0), -1),"
            " (SELECT COUNT(*) FROM stream_index i JOIN streams s ON s.no = i.no),"
            " (SELECT COUNT(*) FROM stream_index_unindexed)"
        ).fetchone()
        return int(upto), int(entries), int(unindexed)

    def _unindexed_are_copies(self, unindexed: int) -> bool:
        """Whether each of the `unindexed` events the last rebuild could not index is still
        there, with the stream and version of an event indexed at another position: else the log
        changed since, and an entry the index lacks may be a stream's newest."""
        if not unindexed:
            return True
        rows = self._conn.execute(
            "SELECT e.position, e.data FROM stream_index_unindexed u"
            " JOIN events e ON e.position = u.position ORDER BY e.position"
        ).fetchall()
        if len(rows) != unindexed:
            return False
        for e in stored_events(rows):
            indexed = self._conn.execute(
                "SELECT i.position FROM streams s JOIN stream_index i ON i.no = s.no"
                " WHERE s.stream_id = ? AND i.version = ?",
                (e.stream_id, e.version),
            ).fetchone()
            if indexed is None or indexed[0] == e.position:
                return False
        return True

    def _reset(self, upto: int) -> None:
        """Know the events up to `upto` (in stream_index) and nothing in memory."""
        self.upto = self.known = upto  # every event <= upto is in stream_index
        self._tail: dict[str, list[tuple[int, int]]] = {}  # stream -> [(version, position)] > upto
        self._tail_size = 0  # entries in _tail, all of them still to be written
        self._heads: dict[str, StreamHead] = {}
        self._number_of: dict[str, int] = {}

    def learn_from_log(self) -> None:
        """Take in the events the log holds beyond `known` (written by another writer)."""
        rows = self._conn.execute(
            "SELECT position, data FROM events WHERE position > ? ORDER BY position",
            (self.known,),
        )
        while page := stored_events(rows.fetchmany(LEARNT_PER_PAGE)):  # a tail may be long
            for e in page:
                self._heads.pop(e.stream_id, None)
            self._add((e.stream_id, e.version, e.position) for e in page)

    def behind(self) -> bool:
        """Whether the log holds events this index has not learnt (another writer's)."""
        (last,) = self._conn.execute("SELECT COALESCE(MAX(position), -1) FROM events").fetchone()
        return bool(last > self.known)

    def appended(self, records: Sequence[RecordedEvent]) -> None:
        """Events this writer has just committed, in position order."""
        if not records:
            return
        heads, tail = self._heads, self._tail
        for r in records:  # each beyond `known`, so beyond `upto`: all go to the tail
            stream_id, version = r.stream_id, r.version
            heads.pop(stream_id, None)  # re-inserted last: the cache drops the oldest first
            heads[stream_id] = StreamHead(version, r.hash)
            tail.setdefault(stream_id, []).append((version, r.position))
        while len(heads) > HEADS_CACHED:
            del heads[next(iter(heads))]
        self.known = records[-1].position
        self._tail_size += len(records)

    def _add(self, entries: Iterable[Entry]) -> None:
        tail, upto, known, added = self._tail, self.upto, self.known, 0
        for stream_id, version, position in entries:
            if position > upto:
                tail.setdefault(stream_id, []).append((version, position))
                added += 1
            if position > known:
                known = position
        self.known, self._tail_size = known, self._tail_size + added

    @property
    def due(self) -> bool:
        """Whether the tail is long enough to be written (flush)."""
        return self._tail_size >= self._batch

    def head(self, stream_id: str) -> StreamHead:
        cached = self._heads.get(stream_id)
        if cached is not None:
            return cached
        last = self._last(stream_id)
        if last is None:
            return StreamHead(0, b"")
        version, position = last
        found = stored_events(
            self._conn.execute(
                "SELECT position, data FROM events WHERE position = ?", (position,)
            ).fetchall()
        )
        if not found:
            raise IndexDisagrees(stream_id)
        check_history(stream_id, found, first_version=version)
        return StreamHead(version, found[0].hash)

    def _last(self, stream_id: str) -> tuple[int, int] | None:
        tail = self._tail.get(stream_id)
        if tail:
            return tail[-1]
        row = self._conn.execute(
            "SELECT i.version, i.position FROM streams s JOIN stream_index i ON i.no = s.no"
            " WHERE s.stream_id = ? ORDER BY i.version DESC LIMIT 1",
            (stream_id,),
        ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]))

    def positions(self, stream_id: str) -> list[int]:
        """Every position of the stream's events, in version order."""
        indexed = self._conn.execute(
            "SELECT i.position FROM streams s JOIN stream_index i ON i.no = s.no"
            " WHERE s.stream_id = ? AND i.position <= ? ORDER BY i.version",
            (stream_id, self.upto),
        ).fetchall()
        return [p for (p,) in indexed] + [p for _, p in self._tail.get(stream_id, ())]

    def rebuild(self) -> tuple[int, int, int]:
        """Forget the index, on disk and in memory, and learn it again from the whole log; what
        _counts() says of the index it wrote."""

        def forget(conn: sqlite3.Connection) -> None:
            for table in INDEX_TABLES:
                conn.execute(f"DELETE FROM {table}")

        def note_unindexed(conn: sqlite3.Connection) -> None:
            """The events up to `upto` the index holds no entry for: each has the stream and
            version of an earlier event, which the index holds (the log is damaged)."""
            conn.execute(
                "INSERT OR IGNORE INTO stream_index_unindexed (position) SELECT position FROM events"
                " WHERE position <= ? AND position NOT IN (SELECT position FROM stream_index)",
                (self.upto,),
            )

        in_transaction(self._conn, forget)
        self._reset(-1)
        self.learn_from_log()
        self.flush()
        upto, entries, _ = self._counts()
        if entries == upto + 1:
            return upto, entries, 0
        in_transaction(self._conn, note_unindexed)
        return self._counts()

    def flush(self) -> None:
        """Write the tail to stream_index in one transaction, in key order."""
        if not self._tail_size:
            return
        tail = self._tail

        def write(conn: sqlite3.Connection) -> int:
            numbers = self._numbers(set(tail))
            rows = sorted(
                (numbers[stream_id], v, p) for stream_id in tail for v, p in tail[stream_id]
            )
            conn.executemany(
                "INSERT OR IGNORE INTO stream_index (no, version, position) VALUES (?, ?, ?)", rows
            )
            # another writer may have indexed further than this one knows of
            (upto,) = conn.execute(
                "SELECT MAX(?, COALESCE((SELECT upto FROM stream_index_state WHERE id = 0), -1))",
                (self.known,),
            ).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO stream_index_state (id, upto) VALUES (0, ?)", (upto,)
            )
            return int(upto)

        try:
            upto = in_transaction(self._conn, write)
        except BaseException:
            self._number_of.clear()  # numbers given out in the rolled-back transaction are gone
            raise
        self.upto, self._tail, self._tail_size = upto, {}, 0

    def _numbers(self, names: set[str]) -> dict[str, int]:
        """Each stream's number in `streams`, given one if it has none (inside a transaction).

        Streams not numbered yet are inserted in one statement and their numbers read back in
        chunks of NUMBERS_READ, whoever numbered them (this writer now, or another before).
        """
        known = self._number_of
        new = sorted(names.difference(known))
        if new:
            self._conn.executemany(
                "INSERT INTO streams (stream_id) VALUES (?) ON CONFLICT (stream_id) DO NOTHING",
                [(name,) for name in new],
            )
            for start in range(0, len(new), NUMBERS_READ):
                chunk = new[start : start + NUMBERS_READ]
                known.update(
                    self._conn.execute(
                        "SELECT stream_id, no FROM streams"
                        f" WHERE stream_id IN ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                )
        numbers = {name: known[name] for name in names}
        while len(known) > NUMBERS_CACHED:
            del known[next(iter(known))]
        return numbers


def _say_damage(upto: int, entries: int, unindexed: int) -> None:
    """Name what keeps the index short of one entry per position up to `upto`: events that
    repeat a stream's version (`unindexed`), and positions that hold no event (rows deleted,
    or one moved beyond the others)."""
    damage = []
    if unindexed:
        damage.append(
            f"the log holds events that share a stream and version ({unindexed} of the"
            f" {entries + unindexed} events up to position {upto})"
        )
    if missing := upto + 1 - entries - unindexed:
        damage.append(f"{missing} of the positions up to {upto} hold no event")
    log.error("%s; run `psvis audit verify`", "; ".join(damage))


def check_history(stream_id: str, events: Sequence[RecordedEvent], first_version: int = 1) -> None:
    """The events must be the stream's, at versions first_version, first_version + 1, ...;
    IndexDisagrees if they are not (found where the index said they were)."""
    found = [(e.stream_id, e.version) for e in events]
    wanted = [(stream_id, v) for v in range(first_version, first_version + len(events))]
    if found != wanted:
        raise IndexDisagrees(stream_id)
