"""One SQLite connection on one worker thread, so async callers never block the event loop."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from psvis.sqlite_conn import connect, connect_read_only

T = TypeVar("T")
log = logging.getLogger(__name__)


class SqliteDatabase:
    """A WAL-mode SQLite file shared by the embedded adapters of one process.

    read_only: what an audit opens; nothing is created or written, and text comes back as
    bytes, as it is stored (a damaged file may hold text that is not UTF-8).
    """

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        self.path = str(path)
        if self.path != ":memory:" and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        opener = connect_read_only if read_only else connect
        try:
            self._conn = self._executor.submit(opener, self.path).result()
        except BaseException:
            self._executor.shutdown()
            raise

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work, self._conn)

    def run_sync(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return self._executor.submit(work, self._conn).result()

    async def close(self) -> None:
        await self.run(lambda c: c.close())
        self._executor.shutdown(wait=True)


class WalCheckpointer:
    """Checkpoints a WAL database from a thread of its own, so that its writer's commits don't.

    By default the commit that grows the WAL past 1,000 pages checkpoints it: copies it into
    the database file and, with synchronous=NORMAL, waits for the disk, milliseconds in the
    middle of one caller's append. The writer's connection is given to this class, which moves
    that threshold to FALLBACK_PAGES (so a stalled thread still cannot let the WAL grow for
    ever), and this thread runs a PASSIVE checkpoint, which waits for no reader or writer,
    every `interval` seconds in which something was committed. Durability is unchanged:
    commits still reach the WAL exactly as before, and checkpoints still wait for the disk.
    """

    FALLBACK_PAGES = 10_000

    def __init__(self, writer: sqlite3.Connection, path: str, interval: float = 0.05) -> None:
        writer.execute(f"PRAGMA wal_autocheckpoint={self.FALLBACK_PAGES}")
        self.commits = 0  # bumped by the writer after each commit
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = connect(self._path)
        except sqlite3.Error as e:  # the writer's fallback threshold bounds the WAL
            log.warning("WAL checkpointer not started (%s): commits checkpoint themselves", e)
            return
        try:
            seen = 0
            while not self._stop.wait(self._interval):
                if self.commits != seen:
                    seen = self.commits
                    self._checkpoint(conn)
            self._checkpoint(conn)
        finally:
            conn.close()

    @staticmethod
    def _checkpoint(conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:  # the writer's fallback threshold still bounds the WAL
            log.warning("WAL checkpoint failed (%s); the next one tries again", e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
