"""The embedded log checked a span at a time, as the worker processes of `audit verify` do.

This module imports little (no asyncio, no threads), so that those workers start quickly.
"""

from __future__ import annotations

import sqlite3

from psvis.sqlite_conn import connect_read_only
from psvis.verify_report import Stop
from psvis.verify_spans import SpanChecker, SpanReport

# (position, stored bytes, stored stream id) of a page, as audit verify reads them: a damaged
# row's value that is not a blob comes as the bytes of its text (and fails its check), a NULL
# data as no bytes and a NULL stream id as None
STORED_ROWS = (
    "SELECT position, COALESCE(CAST(data AS BLOB), x''), CAST(stream_id AS BLOB) FROM events"
)
# those of the span (after, before)
SPAN_PAGE = STORED_ROWS + " WHERE position > ? AND position < ? ORDER BY position LIMIT ?"


def check_span_file(path: str, start: int, end: int, leaves: bytes, page: int = 5000) -> SpanReport:
    """SpanChecker over the events [start, end) of the embedded log at `path`.

    What a worker process of `audit verify` runs: it reads the span on a read-only connection
    of its own, as SqliteLogReader reads pages, and names a storage failure as it does.
    """
    checker = SpanChecker(start, end, leaves)
    try:
        conn = connect_read_only(path)
    except (OSError, sqlite3.Error) as e:
        checker.unreadable(f"the log at {path} cannot be read: {e}")
        return checker.report()
    try:
        after = start - 1
        while rows := conn.execute(SPAN_PAGE, (after, end, page)).fetchall():
            checker.check_page(rows)
            after = rows[-1][0]
        if not checker.complete:
            (following,) = conn.execute(
                "SELECT MIN(position) FROM events WHERE position >= ?", (end,)
            ).fetchone()
            checker.rows_end(following)
    except Stop:
        pass
    except sqlite3.Error as e:
        checker.unreadable(f"the log at {path} cannot be read: {e}")
    finally:
        conn.close()
    return checker.report()
