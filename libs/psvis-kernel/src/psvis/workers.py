"""Worker processes that each run the jobs they are sent, one at a time (for `audit verify`).

A job is a picklable callable. A worker is a fresh interpreter running workers_serve.serve_fd,
which imports only what its jobs need: multiprocessing's spawn would also import the parent's
__main__ (for the CLI, all of it) in every worker, and fork would copy the parent's threads
(its database's) half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

log = logging.getLogger(__name__)

Job = Callable[[], Any]
_SERVE = "import sys; from psvis.workers_serve import serve_fd; serve_fd(int(sys.argv[1]))"


class WorkerGone(Exception):
    """The worker ended without answering; its job is handed back with this."""


class WorkerProcess(Protocol):
    """What the pool needs of a worker's process (multiprocessing's Process has it too)."""

    @property
    def exitcode(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def terminate(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


class _Interpreter:
    """A worker started by spawn_worker, as a WorkerProcess."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def terminate(self) -> None:
        self._popen.terminate()

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)


def spawn_worker(name: str) -> tuple[WorkerProcess, Connection]:
    """A fresh interpreter serving jobs on one end of a socket pair; the other end is ours."""
    ours, theirs = socket.socketpair()
    try:
        popen = subprocess.Popen(
            [sys.executable, "-c", _SERVE, str(theirs.fileno()), name],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return _Interpreter(popen), Connection(ours.detach())


@dataclass
class _Worker:
    process: WorkerProcess
    conn: Connection
    # the keys of the jobs sent and not yet answered, oldest first, each with when it was
    # given (in jobs given by the pool); the worker runs them in that order
    held: deque[tuple[int, Hashable]] = field(default_factory=deque)
    # sends this worker's jobs one after another, in the order given
    sender: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="psvis-job-send")
    )
    sending: asyncio.Future[None] | None = None  # the last send


class JobPool:
    """`count` worker processes; give() hands a ready one a job, finished() collects answers.

    A worker holds up to `depth` jobs: with 2, its next job waits for it while it runs one,
    so it does not sit idle until the caller, busy with work of its own, next looks. Jobs go
    over from a thread of the worker's own, in the order given (a job may carry megabytes,
    more than a socket holds, and a worker reads it only once it has started or finished the
    one before). A worker that dies is dropped, and finished() hands each job it held back
    with WorkerGone for the caller to run elsewhere. Close the pool with close(): it stops
    the workers still running, whatever they were doing.
    """

    def __init__(
        self,
        count: int,
        name: str,
        start: Callable[[str], tuple[WorkerProcess, Connection]] = spawn_worker,
        depth: int = 1,
    ) -> None:
        self._workers: list[_Worker] = []
        self._gone: list[_Worker] = []  # ended without answering
        self._given = 0
        self._depth = depth
        try:
            for i in range(count):
                self._workers.append(_Worker(*start(f"{name}-{i}")))
        except BaseException:
            self._stop_all()
            raise

    def ready(self, depth: int | None = None) -> list[_Worker]:
        """The workers holding fewer than `depth` jobs (the pool's depth by default), those
        holding fewest first."""
        most = self._depth if depth is None else depth
        return sorted((w for w in self._workers if len(w.held) < most), key=lambda w: len(w.held))

    @property
    def busy(self) -> bool:
        return any(w.held for w in self._workers)

    def give(self, worker: _Worker, key: Hashable, job: Job) -> None:
        loop = asyncio.get_running_loop()
        self._given += 1
        worker.held.append((self._given, key))
        worker.sending = loop.run_in_executor(worker.sender, worker.conn.send, job)
        worker.sending.add_done_callback(functools.partial(_stop_if_unsent, worker))

    def finished(self, timeout: float = 0) -> list[tuple[Hashable, Any]]:
        """(key, answer) of each job done by now (or within timeout), one a worker; WorkerGone
        for each job of a worker that ended without answering."""
        busy = {w.conn: w for w in self._workers if w.held}
        done: list[tuple[Hashable, Any]] = []
        for conn in wait(list(busy), timeout):
            worker = busy[conn]  # type: ignore[index]
            try:
                answer = worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(timeout=1)  # it is ending: its exit code says how
                if worker.process.is_alive():  # it closed its end and goes on: no worker of ours
                    worker.process.terminate()
                    worker.process.join()
                gone = WorkerGone(f"exit code {worker.process.exitcode}")
                self._workers.remove(worker)
                self._gone.append(worker)  # its connection is closed by close(), after the send
                done += [(key, gone) for _, key in worker.held]
                worker.held.clear()
                continue
            done.append((worker.held.popleft()[1], answer))
        return done

    def held(self) -> list[Hashable]:
        """The keys of the jobs workers hold, in the order they were given."""
        return [key for _, key in sorted(h for w in self._workers for h in w.held)]

    def queued(self) -> list[Hashable]:
        """The keys of the jobs workers hold behind another, not started when it was looked
        at, in the order they were given."""
        return [key for _, key in sorted(h for w in self._workers for h in list(w.held)[1:])]

    async def answers(self, timeout: float) -> list[tuple[Hashable, Any]]:
        """finished(), waiting up to `timeout` seconds for an answer (on a thread: the loop
        goes on meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (done := self.finished()) and self.busy:
            left = deadline - loop.time()
            if left <= 0:
                break
            if done := await asyncio.to_thread(self.finished, min(left, 0.5)):
                break
        return done

    async def close(self) -> None:
        self._stop_all()
        for worker in self._workers + self._gone:
            if worker.sending is not None:
                with contextlib.suppress(OSError, TimeoutError):  # its fd must outlive the write
                    await asyncio.wait_for(asyncio.shield(worker.sending), 5)
            worker.conn.close()
            worker.sender.shutdown(wait=False)
        self._workers, self._gone = [], []

    def _stop_all(self) -> None:
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
            worker.process.join()


def _stop_if_unsent(worker: _Worker, sent: asyncio.Future[None]) -> None:
    """A job that could not be sent (the worker died, or the job does not pickle) is never
    answered, and the worker's later answers would be taken for it: the worker is stopped,
    so that finished() hands back every job it held (WorkerGone), in order."""
    if not sent.cancelled() and sent.exception() is not None and worker.process.is_alive():
        worker.process.terminate()


def take_error(done: asyncio.Future[Any]) -> None:
    """A done callback that takes a failed future's error, so that asyncio does not report
    it as never retrieved (whoever needs the error has it another way)."""
    if not done.cancelled():
        done.exception()
