"""What a worker process of workers.spawn_worker runs: the jobs it is sent, one at a time.

It imports nothing beyond the standard library, so that the worker starts quickly; a job's
own modules are imported when the job arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection


def serve_jobs(conn: Connection) -> None:
    """A worker process's whole life: run each job it is sent and send back what it returns.

    A job is a picklable callable (check_ledger or check_span_file with their arguments); None
    or the parent going away ends the worker. It lives here, in a module that imports little,
    so the worker starts quickly.
    """
    try:
        while (job := conn.recv()) is not None:
            conn.send(job())
    except (EOFError, BrokenPipeError, ConnectionResetError):  # the parent went away
        pass
    finally:
        conn.close()


def serve_fd(fd: int) -> None:
    """serve_jobs on the connection at file descriptor fd: how workers.spawn_worker starts one."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's, which stops its workers
    serve_jobs(Connection(fd))
