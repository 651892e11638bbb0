"""The worker pool of `audit verify`: jobs held in order, answered in order, handed back whole."""

from __future__ import annotations

import functools
import os
import signal
import time
import zlib

import pytest
from psvis.workers import JobPool, WorkerGone


async def answers_of(pool: JobPool, count: int, within: float = 30) -> list[tuple[object, object]]:
    """The next `count` answers; fails if they have not all come within `within` seconds."""
    got: list[tuple[object, object]] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {got} of {count} answers came"
        got += await pool.answers(timeout=1)
    return got


async def test_a_worker_holds_its_next_job_and_answers_each_in_the_order_given() -> None:
    pool = JobPool(1, "psvis-pool-test", depth=2)
    try:
        [worker] = pool.ready(1)
        pool.give(worker, "slow", functools.partial(time.sleep, 0.3))
        assert pool.ready(1) == [] and pool.ready() == [worker]  # room for one more
        pool.give(worker, "sorted", functools.partial(sorted, "cba"))
        assert pool.ready() == []
        assert pool.held() == ["slow", "sorted"]
        assert pool.queued() == ["sorted"]  # behind the one it runs
        assert await answers_of(pool, 2) == [("slow", None), ("sorted", ["a", "b", "c"])]
        assert pool.held() == [] and not pool.busy and pool.ready(1) == [worker]
    finally:
        await pool.close()


async def test_a_job_larger_than_a_socket_holds_waits_behind_the_one_running() -> None:
    """A second job of megabytes is given while the worker runs the first, and can be read only
    once the first is done: give() does not wait for it (it is sent from a thread of the
    worker's own), and each job reaches the worker whole, in order."""
    pool = JobPool(1, "psvis-pool-test", depth=2)
    big = os.urandom(8 << 20)
    try:
        [worker] = pool.ready()
        pool.give(worker, "first", functools.partial(time.sleep, 2))
        pool.give(worker, "second", functools.partial(zlib.crc32, big))
        assert worker.sending is not None and not worker.sending.done()  # still being sent
        got = await answers_of(pool, 2)
        assert got == [("first", None), ("second", zlib.crc32(big))]
    finally:
        await pool.close()


async def test_a_job_that_cannot_be_sent_hands_back_every_job_its_worker_held() -> None:
    """Else the worker's next answer would be taken for the job it never got."""
    pool = JobPool(1, "psvis-pool-test", depth=2)
    try:
        [worker] = pool.ready()
        pool.give(worker, "unpicklable", lambda: "never sent")
        pool.give(worker, "sorted", functools.partial(sorted, "ba"))
        got = await answers_of(pool, 2)
        assert [key for key, _ in got] == ["unpicklable", "sorted"]
        assert all(isinstance(answer, WorkerGone) for _, answer in got)
    finally:
        await pool.close()


async def test_a_worker_that_dies_hands_back_every_job_it_held() -> None:
    pool = JobPool(1, "psvis-pool-test", depth=2)
    try:
        [worker] = pool.ready()
        pool.give(worker, "running", functools.partial(time.sleep, 30))
        pool.give(worker, "waiting", functools.partial(sorted, "ba"))
        os.kill(worker.process.pid, signal.SIGKILL)  # type: ignore[attr-defined]
        got = await answers_of(pool, 2)
        assert [key for key, _ in got] == ["running", "waiting"]
        assert all(isinstance(answer, WorkerGone) for _, answer in got)
        assert pool.ready() == [] and not pool.busy  # the dead worker is no longer offered
    finally:
        await pool.close()


@pytest.mark.parametrize("depth", [1, 2])
async def test_jobs_go_to_the_workers_holding_fewest(depth: int) -> None:
    pool = JobPool(2, "psvis-pool-test", depth=depth)
    try:
        first = pool.ready()[0]
        pool.give(first, "a", functools.partial(time.sleep, 0.2))
        second = pool.ready()[0]
        assert second is not first
        pool.give(second, "b", functools.partial(sorted, "b"))
        assert len(pool.ready()) == (2 if depth == 2 else 0)
        assert sorted(key for key, _ in await answers_of(pool, 2)) == ["a", "b"]
    finally:
        await pool.close()
