"""Work belongs to its caller: cancelled snippets stop, owners take turns, the queue has a bound.

Real R in real bubblewrap; each case measures how soon the next snippet runs.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from evaluator import Limits, QueueFull, WorkerPool
from tests.evaluator.conftest import needs_sandbox

pytestmark = [needs_sandbox, pytest.mark.sandbox, pytest.mark.asyncio(loop_scope="module")]

LIMITS = Limits(wall_s=10.0, cpu_s=10.0)


async def test_cancelled_snippets_stop_and_free_their_workers_at_once() -> None:
    async with WorkerPool(workers=2, limits=LIMITS) as pool:
        dropped = [asyncio.create_task(pool.run("Sys.sleep(4)", owner="gone")) for _ in range(6)]
        await asyncio.sleep(0.5)
        assert pool.queued == 4
        t0 = time.perf_counter()
        for task in dropped:
            task.cancel()
        await asyncio.gather(*dropped, return_exceptions=True)
        assert pool.queued == 0  # the four that waited never started
        r = await pool.run("cat('next')", owner="other")
        waited = time.perf_counter() - t0
        restarts = pool.restarts
    assert r.verdict == "passed" and r.stdout == "next"
    assert waited < 1.0, waited  # not the 4 s of the running ones, let alone 12 s for all six
    assert restarts == 0  # the stopped workers went back to the pool warm


async def test_a_big_request_does_not_starve_a_small_one() -> None:
    async with WorkerPool(workers=2, limits=LIMITS) as pool:
        big = [asyncio.create_task(pool.run("Sys.sleep(0.3)", owner="big")) for _ in range(5000)]
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        small = await pool.run("cat('small')", owner="small")
        waited = time.perf_counter() - t0
        done_big = sum(t.done() for t in big)
        for task in big:
            task.cancel()
        await asyncio.gather(*big, return_exceptions=True)
    assert small.verdict == "passed" and small.stdout == "small"
    assert waited < 1.5, waited  # one turn of the big request at most, not 5,000 / 2 x 0.3 s
    assert done_big < 20


async def test_the_queue_is_bounded() -> None:
    async with WorkerPool(workers=1, limits=LIMITS, max_queue=3) as pool:
        held = [asyncio.create_task(pool.run("Sys.sleep(2)", owner=i)) for i in range(4)]
        await asyncio.sleep(0.3)
        with pytest.raises(QueueFull) as full:
            await pool.run("1")
        assert full.value.retry_after_s >= 1
        assert "3 snippets are waiting" in str(full.value)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        after = await pool.run("cat('room again')")
    assert after.verdict == "passed" and after.stdout == "room again"
