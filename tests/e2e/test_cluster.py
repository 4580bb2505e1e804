"""Several MTA nodes sharing their limits through a real Redis server (started here on a
free port): together they send no faster than one node alone, a connection limit holds
across them, a suspension decided on one stops the others, a node killed with SIGKILL
loses nothing and its leases expire, and Redis going away and coming back leaves
delivery going on within the fallback shares."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mta.clock import ManualClock, ScaledClock
from mta.config.mx_rules import load_mx_data
from mta.queue.cluster import RedisState
from mta.queue.shared import Key
from tests.cluster_helpers import SLOW_GMAIL, Cluster, RedisServer
from tests.helpers import wait_for
from tests.simnet import GMAIL, YAHOO


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = await RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def throttles(cluster: Cluster) -> int:
    return len(cluster.rows("SELECT id FROM attempts WHERE code = 421"))


@pytest.mark.timeout(600)  # 2 x 6,000 messages at 100/minute, virtual time x60
async def test_three_nodes_send_no_faster_than_one(tmp_path: Path, redis: RedisServer) -> None:
    """6,000 messages into a persona taking 100/minute per IP, once through one node and
    once spread over three sharing Redis: the three draw no more throttling replies per
    1,000 messages than 1.2x the one, and deliver no faster (unshared, each would learn
    the limit alone and together send three times too fast; sharing a level but each
    cutting it, they would cut three times per congestion episode).

    An hour of virtual time makes some 50 AIMD rounds each way, so that the count is
    about the rounds, not about the start (a round more or less moves it by 2%)."""
    total = 6000
    per_1000: dict[int, float] = {}
    rates: dict[int, float] = {}
    for nodes, server in ((1, None), (3, redis)):
        cluster = Cluster(tmp_path / f"n{nodes}", ScaledClock(60.0))
        try:
            await cluster.start(GMAIL, nodes, server)
            await cluster.send([f"user{i}@gmail.test" for i in range(total)])
            await wait_for(lambda c=cluster: c.states().get("delivered", 0) == total, timeout=400)
            per_1000[nodes] = throttles(cluster) * 1000 / total
            delivered = sorted(
                at for (at,) in cluster.rows("SELECT at FROM attempts WHERE result='delivered'")
            )
            late = delivered[total // 2 :]
            rates[nodes] = (len(late) - 1) / (late[-1] - late[0]) * 60
            print(f"\n{nodes} node(s): {per_1000[nodes]:.1f} throttling replies per 1,000"
                  f" messages, {rates[nodes]:.0f}/min late")
            if nodes == 3:
                sent_by = cluster.rows("SELECT COUNT(*) FROM attempts")
                assert all(n > 0 for (n,) in sent_by)  # every node delivered its share
        finally:
            await cluster.stop()
    assert per_1000[3] <= 1.2 * per_1000[1], per_1000
    assert rates[3] <= 1.2 * rates[1], rates


@pytest.mark.timeout(300)
async def test_a_connection_limit_holds_across_nodes(tmp_path: Path, redis: RedisServer) -> None:
    """Three nodes into a site whose rule allows 20 connections, slow enough to fill
    them: the site never sees more than 20 sessions from the three together."""
    limit = load_mx_data().rules.by_name("gmail").max_connections
    assert limit == 20
    cluster = Cluster(tmp_path, ScaledClock(60.0))
    try:
        await cluster.start(SLOW_GMAIL, 3, redis)
        total = 900
        await cluster.send([f"c{i}@gmail.test" for i in range(total)])
        await wait_for(lambda: cluster.states().get("delivered", 0) == total, timeout=150)
        ip = cluster.persona_ip("gmail")
        print(f"\nsessions at most {ip['sessions_max']} for a limit of {limit}")
        assert ip["messages"] == total
        assert 1 < ip["sessions_max"] <= limit
        per_node = cluster.rows("SELECT COUNT(*) FROM attempts WHERE result = 'delivered'")
        assert sum(n for (n,) in per_node) == total and all(n > 0 for (n,) in per_node)
    finally:
        await cluster.stop()


async def test_a_suspension_on_one_node_stops_the_others(
    tmp_path: Path, redis: RedisServer
) -> None:
    """Yahoo's [TSS04] through node 0 suspends the site for 30 minutes on all three: the
    others show it suspended and send nothing there until it ends."""
    clock = ManualClock()
    cluster = Cluster(tmp_path, clock)
    try:
        await cluster.start(YAHOO, 3, redis)
        await cluster.send(["first1@yahoo.test"], nodes=[1])
        await cluster.send(["first2@yahoo.test"], nodes=[2])
        await wait_for(lambda: cluster.states() == {"delivered": 2})
        await cluster.send(["t+421-250@yahoo.test"], nodes=[0])
        await wait_for(lambda: cluster.rows("SELECT code FROM attempts", [0]) == [(421,)])

        def states() -> list[str]:
            return [app.running.scheduler.site_report()[0]["state"] for app in cluster.apps]

        await wait_for(lambda: states() == ["suspended"] * 3)
        others = [app.running.scheduler.site_report()[0] for app in cluster.apps[1:]]
        assert all(s["changes"][-1]["rule"] == "cluster" for s in others)
        assert all("shared by node n0" in s["last_reason"] for s in others)
        await cluster.send([f"u{i}@yahoo.test" for i in range(6)], nodes=[1, 2])
        clock.advance(29 * 60)
        await asyncio.sleep(1.0)
        assert cluster.rows("SELECT COUNT(*) FROM attempts", [1, 2]) == [(1,), (1,)]
        assert cluster.states() == {"delivered": 2, "queued": 7}
        clock.advance(61)
        for _ in range(100):
            if cluster.states() == {"delivered": 9}:
                break
            clock.advance(10)
            await asyncio.sleep(0.05)
        assert cluster.states() == {"delivered": 9}
        # Events name the node that decided them; their ids stay unique across nodes.
        for index in range(3):
            bodies = [json.loads(b) for (b,) in cluster.rows("SELECT body FROM events", [index])]
            assert bodies and {b["node"] for b in bodies} == {f"n{index}"}
        ids = [i for (i,) in cluster.rows("SELECT event_id FROM events")]
        assert len(ids) == len(set(ids)) >= 9
    finally:
        await cluster.stop()


@pytest.mark.timeout(300)
async def test_redis_lost_and_back(tmp_path: Path, redis: RedisServer) -> None:
    """Redis killed mid-run: no node stops, each says so (log, /readyz detail, metric) and
    keeps to 1/3 of the connection limit (within its leases until they lapse); nothing
    is lost; Redis back on its port: the nodes return to the shared limits and deliver
    the rest."""
    cluster = Cluster(tmp_path, ScaledClock(60.0))
    try:
        await cluster.start(SLOW_GMAIL, 3, redis)
        first = 300
        await cluster.send([f"a{i}@gmail.test" for i in range(first)])
        await wait_for(lambda: cluster.states().get("delivered", 0) >= 30, timeout=60)
        redis.kill()
        shared = [app.running.shared for app in cluster.apps]
        assert all(isinstance(s, RedisState) for s in shared)
        await wait_for(lambda: all(s.health()["mode"] == "fallback" for s in shared))
        for app in cluster.apps:
            assert any("fallback shares (1/3" in line for line in app.detail())
            assert (await app.metrics())["mta_cluster_fallback"] == 1
        site = cluster.apps[0].running.scheduler.sites
        state = next(iter(site.values())).states["default"]
        key = Key(next(iter(site)), "default")
        # Within the leases each held until those lapse (lease_ttl), then 1/3 of the limit.
        assert all(s.connection_limit(key, state) <= 20 // 3 for s in shared)
        await wait_for(
            lambda: all(s.connection_limit(key, state) == 20 // 3 for s in shared), timeout=15
        )
        during = cluster.states().get("delivered", 0)
        await cluster.send([f"b{i}@gmail.test" for i in range(150)])  # still accepted
        await wait_for(lambda: cluster.states().get("delivered", 0) >= during + 100, timeout=60)
        await redis.start()
        await wait_for(lambda: all(s.health()["mode"] == "shared" for s in shared))
        # Redis came back empty: each node put back what it knew.
        await wait_for(lambda: all(s.health()["reseeds"] == 1 for s in shared))
        for app in cluster.apps:
            metrics = await app.metrics()
            assert metrics["mta_cluster_fallback"] == 0
            assert metrics["mta_cluster_reseeds_total"] == 1
            assert app.running.shared.health()["fallbacks"] == 1
        await wait_for(lambda: cluster.states().get("delivered", 0) == first + 150, timeout=120)
        assert cluster.persona_ip("gmail")["messages"] == first + 150
    finally:
        await cluster.stop()
