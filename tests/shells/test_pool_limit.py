"""The pool reads a group's connection limit when it looks for a slot: a job waiting at
the limit gets its slot once the limit rises (a cluster node granted more leases), though
nothing in the pool changed to tell it."""

from __future__ import annotations

import asyncio

from mta.delivery.pool import Pool


async def test_a_job_waiting_at_the_limit_goes_once_the_limit_rises() -> None:
    pool = Pool(per_key=10, total=10, idle_timeout=30)
    key, group = ("127.0.0.1", 25, None), ("site", "default")
    limit = 1
    assert await pool.reserve(key, group, lambda: limit) is None  # the one slot, busy
    waiting = asyncio.create_task(pool.reserve(key, group, lambda: limit))
    await asyncio.sleep(0.1)
    assert not waiting.done()  # at the limit
    limit = 2
    assert await asyncio.wait_for(waiting, timeout=5) is None  # a slot for a new connection
    assert pool.connections_in(group) == 2
