"""The worker pool of `audit verify`: jobs held in order, answered in order, handed back whole."""

from __future__ import annotations

import functools
import os
import signal
import time

import pytest
from psvis.workers import JobPool, WorkerGone


async def answers_of(pool: JobPool, count: int) -> list[tuple[object, object]]:
    got: list[tuple[object, object]] = []
    while len(got) < count:
        got += await pool.answers(timeout=10)
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
    """A second job of megabytes is sent while the worker runs the first, which it reads only
    afterwards: the send waits on its own thread, and neither job is mixed with the other."""
    pool = JobPool(1, "psvis-pool-test", depth=2)
    big = os.urandom(8 << 20)
    try:
        [worker] = pool.ready()
        pool.give(worker, "first", functools.partial(len, big))
        pool.give(worker, "second", functools.partial(bytes.hex, big[:4]))
        assert await answers_of(pool, 2) == [("first", len(big)), ("second", big[:4].hex())]
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
