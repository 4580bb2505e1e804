"""The shared adaptive state of a cluster, node by node against a real redis-server (on a
free port): a congestion episode is cut once however many nodes saw it, additive steps
add up as one node's would, and a Redis restarted empty gets back the nodes' view (the
lowest level, suspensions still running, the highest ramp-up volume)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mta.clock import ManualClock
from mta.config.mx_rules import load_mx_data
from mta.config.service import ClusterConfig
from mta.core import rampup, throttle
from mta.core.shares import RateOp
from mta.core.throttle import SiteThrottle
from mta.queue.cluster import RedisState
from mta.queue.shared import Key
from tests.cluster_helpers import RedisServer
from tests.helpers import wait_for

KEY = Key("google.test", "default")
RULE = "throttle-backoff"


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = await RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


class Node:
    def __init__(self, name: str, server: RedisServer, clock: ManualClock) -> None:
        self.shared = RedisState(ClusterConfig(url=server.url, node=name, poll=0.05), clock, name)
        self.clock = clock
        self.state = throttle.new_state(
            KEY.site, KEY.binding, load_mx_data().rules.by_name("gmail"), clock.now()
        )

    async def start(self) -> Node:
        await self.shared.start()
        self.shared.grant(KEY, self.state, 1, 0, self.clock.now())  # the key is in use
        return self

    def cut(self, rate_per_min: float, started: float) -> None:
        """What the controller does on a throttling reply: cut, note when, share."""
        now = self.clock.now()
        self.state.rate = rate_per_min / 60
        self.state.fired_at[RULE] = now
        op = RateOp("cut", rate_per_min / 60, RULE, started)
        self.shared.publish(KEY, self.state, now, op)

    def step(self, per_min: float) -> None:
        self.state.rate += per_min / 60
        self.shared.publish(KEY, self.state, self.clock.now(), RateOp("add", per_min / 60))

    def adopted(self) -> SiteThrottle:
        self.shared.adopt(KEY, self.state, self.clock.now())
        return self.state


async def shared_rate(server: RedisServer) -> float | None:
    client = aioredis.Redis.from_url(server.url)
    try:
        value = await client.hget(f"{{mta:{KEY.site}|{KEY.binding}}}:s", "rate")
    finally:
        await client.aclose()
    return None if value is None else round(float(value) * 60, 6)


async def test_a_congestion_episode_is_cut_once_across_the_nodes(redis: RedisServer) -> None:
    """Three nodes draw throttling replies for what they sent before the first cut: only
    that cut applies, and every node goes by it; a reply to a transaction started after
    it cuts again."""
    clock = ManualClock()
    nodes = [await Node(f"n{i}", redis, clock).start() for i in range(3)]
    try:
        t0 = clock.now()
        clock.advance(10)
        nodes[0].cut(140, started=t0 + 5)
        await wait_for(lambda: nodes[0].shared.entries[KEY].remote is not None
                       and nodes[0].shared.entries[KEY].remote.by == "n0")
        clock.advance(1)
        nodes[1].cut(120, started=t0 + 8)  # sent before n0's cut: the same episode
        nodes[2].cut(130, started=t0 + 9)
        await wait_for(lambda: nodes[1].shared.cuts_dropped + nodes[2].shared.cuts_dropped == 2)
        assert await shared_rate(redis) == 140
        await wait_for(lambda: all(n.adopted().rate * 60 == pytest.approx(140) for n in nodes))
        clock.advance(5)
        nodes[2].cut(98, started=t0 + 12)  # sent after: a new episode
        await wait_for(lambda: nodes[0].adopted().rate * 60 == pytest.approx(98))
        assert nodes[2].shared.cuts_dropped == 1
    finally:
        for node in nodes:
            await node.shared.close()


async def test_additive_steps_add_up_as_one_nodes_would(redis: RedisServer) -> None:
    """Each node's recovery step adds to the shared level, whatever it had seen: three
    steps of 5/min from 70/min make 85/min, not 75."""
    clock = ManualClock()
    nodes = [await Node(f"n{i}", redis, clock).start() for i in range(3)]
    try:
        nodes[0].cut(70, started=clock.now())
        await wait_for(lambda: all(n.adopted().rate * 60 == pytest.approx(70) for n in nodes))
        clock.advance(1)
        for node in nodes:
            node.step(5)  # each from 70: none has seen the others' yet
        await wait_for(lambda: nodes[0].adopted().rate * 60 == pytest.approx(85))
        assert await shared_rate(redis) == 85
        await wait_for(lambda: all(n.adopted().rate * 60 == pytest.approx(85) for n in nodes))
    finally:
        for node in nodes:
            await node.shared.close()


async def test_a_redis_restarted_empty_gets_the_nodes_view_back(redis: RedisServer) -> None:
    """redis-server killed and started again, empty, on its port: each node puts back what
    it knew, conservatively: the lowest rate and connection count of the nodes, the
    suspension still running, the highest ramp-up volume of the day."""
    clock = ManualClock()
    nodes = [await Node(f"n{i}", redis, clock).start() for i in range(2)]
    try:
        now = clock.now()
        nodes[0].cut(70, started=now)
        await wait_for(lambda: all(n.adopted().rate * 60 == pytest.approx(70) for n in nodes))
        nodes[0].state.suspended_until = now + 1800
        nodes[0].shared.publish(KEY, nodes[0].state, now, RateOp("none"))
        await wait_for(lambda: nodes[1].adopted().suspended_until == now + 1800)
        isp = "gmail"
        nodes[0].shared.ledger.record("default", isp, now, 120)
        nodes[1].shared.ledger.record("default", isp, now, 30)
        await wait_for(lambda: all(n.shared.ledger.sent("default", isp, now) == 150
                                   and not n.shared.ledger.pending for n in nodes))
        nodes[1].state.rate = 60 / 60  # n1 saw the level lower (a cut not yet shared)
        nodes[1].state.concurrency = 4

        redis.kill()
        await wait_for(lambda: all(n.shared.health()["mode"] == "fallback" for n in nodes))
        await redis.start()
        await wait_for(lambda: all(n.shared.reseeds == 1 for n in nodes), timeout=15)
        await wait_for(lambda: all(n.shared.health()["mode"] == "shared" for n in nodes))

        client = aioredis.Redis.from_url(redis.url)
        try:
            state = await client.hgetall(f"{{mta:{KEY.site}|{KEY.binding}}}:s")
            day = rampup.day_index(now)
            volume = await client.hget(f"mta:ramp:{day}", f"default|{isp}")
        finally:
            await client.aclose()
        assert float(state[b"rate"]) * 60 == pytest.approx(60)
        assert int(float(state[b"conc"])) == 4
        assert float(state[b"susp"]) == now + 1800
        assert volume is not None and int(volume) == 150
        clock.advance(1)
        for node in nodes:
            await wait_for(lambda n=node: n.adopted().rate * 60 == pytest.approx(60))
            assert node.state.suspended_until == now + 1800
            assert node.shared.ledger.sent("default", isp, clock.now()) == 150
        assert not math.isinf(nodes[0].state.rate)
    finally:
        for node in nodes:
            await node.shared.close()
