"""A node's connection leases against a real redis-server (on a free port): Redis never
counts fewer leases for a node than the transactions it has in flight and the
connections its pool holds open, whatever happens while a poll lowers them; cut off from
Redis, a node keeps within the leases it held until they lapse, then takes its fallback
share."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mta.clock import ManualClock
from mta.config.mx_rules import load_mx_data
from mta.config.service import ClusterConfig
from mta.core import throttle
from mta.core.throttle import SiteThrottle
from mta.queue.cluster import RedisState
from mta.queue.shared import Key
from tests.cluster_helpers import RedisServer
from tests.helpers import wait_for

KEY = Key("google.test", "default")
OTHER = Key("yahoo.test", "default")


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = await RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def open_state(clock: ManualClock, key: Key = KEY) -> SiteThrottle:
    """Gmail's rule (20 connections) with no rate limit: only the leases limit."""
    state = throttle.new_state(
        key.site, key.binding, load_mx_data().rules.by_name("gmail"), clock.now()
    )
    state.rate = math.inf
    assert state.concurrency == 20
    return state


async def leases_in_redis(server: RedisServer, node: str, key: Key = KEY) -> int:
    client = aioredis.Redis.from_url(server.url)
    try:
        value = await client.hget(f"{{mta:{key.site}|{key.binding}}}:c", node)
    finally:
        await client.aclose()
    return 0 if value is None else int(value)


async def node_in_use(
    url: str, clock: ManualClock, count: int, timeout: float = 0.5
) -> tuple[RedisState, dict[Key, int]]:
    """Node n0, polling only when the test says (else once a minute), holding `count`
    leases of KEY with a transaction and a connection on each; and its pool's
    connection counts, for the test to move."""
    node = RedisState(
        ClusterConfig(url=url, node="n0", poll=60, lease_ttl=120, timeout=timeout), clock, "n0"
    )
    connections = {KEY: 0}
    node.connections = connections.__getitem__
    await node.start()
    node.grant(KEY, open_state(clock), count, 0, clock.now())
    await wait_for(lambda: node.entries[KEY].held == count)
    node.started(KEY, count, clock.now())
    connections[KEY] = count
    return node, connections


async def test_a_lease_renewal_never_counts_less_than_the_node_uses(
    redis: RedisServer,
) -> None:
    """A poll sets out to give back leases the node no longer uses and, while it closes
    the idle connections, the node acquires more and starts transactions on them: the
    renewal that follows must count those, not the target set before (else other nodes
    take the leases while the connections are open). A key first used meanwhile does not
    upset the poll."""
    clock = ManualClock()
    config = ClusterConfig(url=redis.url, node="n0", poll=60, lease_ttl=120)
    node = RedisState(config, clock, "n0")
    connections = {KEY: 0, OTHER: 0}
    closing = asyncio.Event()

    async def trim(key: Key, count: int) -> None:
        await closing.wait()  # the QUITs of idle connections take their time

    node.trim = trim
    node.connections = connections.__getitem__
    await node.start()  # polls every minute: the test runs the polls itself
    try:
        state = open_state(clock)
        now = clock.now()
        assert node.grant(KEY, state, 2, 0, now).allowed == 0  # asks Redis
        await wait_for(lambda: node.entries[KEY].held == 2)
        assert node.grant(KEY, state, 2, 0, now).allowed == 2
        node.started(KEY, 2, now)
        connections[KEY] = 2
        node.ended(KEY)
        node.ended(KEY)
        await node._poll_once()  # wanted more lately: keeps its 2
        assert await leases_in_redis(redis, "n0") == 2

        poll = asyncio.create_task(node._poll_once())  # none in flight: gives them back
        await wait_for(lambda: node.entries[KEY].cap == 0)
        assert node.grant(KEY, state, 5, 0, now).allowed == 0  # asks Redis again
        await wait_for(lambda: node.entries[KEY].held == 5 and not node.entries[KEY].pending)
        assert node.grant(KEY, state, 5, 0, now).allowed == 5
        node.started(KEY, 5, now)
        connections[KEY] = 5
        node.grant(OTHER, open_state(clock, OTHER), 1, 0, now)  # a key new to the poll
        closing.set()
        await poll

        assert await leases_in_redis(redis, "n0") >= 5
        assert node.connection_limit(KEY, state) >= 5
    finally:
        closing.set()
        await node.close()


async def test_a_renewal_keeps_the_connections_still_open(redis: RedisServer) -> None:
    """No transaction in flight, but a connection still open that the trim could not
    close (its transaction just ended): the node keeps a lease for it, and its pool may
    open no more than that."""
    clock = ManualClock()
    node, connections = await node_in_use(redis.url, clock, 4)
    try:
        state = open_state(clock)
        await node._poll_once()
        for _ in range(4):
            node.ended(KEY)
        connections[KEY] = 3
        await node._poll_once()
        assert await leases_in_redis(redis, "n0") == 3
        assert node.connection_limit(KEY, state) == 3
        connections[KEY] = 0
        await node._poll_once()
        assert await leases_in_redis(redis, "n0") == 0
    finally:
        await node.close()


class LossyProxy:
    """A TCP relay to Redis that can stop passing Redis' replies on (a network losing
    them): what the node sent still runs in Redis, the node hears nothing back.
    `lose_replies_after(n)`: n more replies pass, then none."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.passing: int | None = None  # replies still to pass; None: all
        self.server: asyncio.Server | None = None

    def lose_replies_after(self, count: int) -> None:
        self.passing = count

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool) -> None:
            while data := await src.read(65536):
                if replies and self.passing is not None:
                    if self.passing <= 0:
                        continue
                    self.passing -= 1
                dst.write(data)
                await dst.drain()

        with contextlib.suppress(OSError):
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        writer.close()
        up_writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_a_renewal_whose_reply_is_lost_still_bounds_the_node(redis: RedisServer) -> None:
    """The node lowers its leases from 4 to the 1 connection still open; Redis runs the
    renewal but its reply is lost, so the node falls back: it must keep within the 1
    lease Redis now counts for it, not the 4 it held before."""
    clock = ManualClock()
    proxy = LossyProxy(redis.port)
    node, connections = await node_in_use(await proxy.start(), clock, 4)
    try:
        state = open_state(clock)
        now = clock.now()
        await node._poll_once()
        for _ in range(4):
            node.ended(KEY)
        connections[KEY] = 1
        # The client checks that the renewal script is loaded (one reply), then sends the
        # poll's pipeline: Redis runs it, its replies are lost.
        proxy.lose_replies_after(1)
        await node._poll_once()
        assert node.degraded
        assert await leases_in_redis(redis, "n0") == 1
        assert node.connection_limit(KEY, state) == 1
        assert node.grant(KEY, state, 10, 0, now).allowed <= 1
    finally:
        await node.close()
        proxy.close()


async def test_an_acquire_never_counts_less_than_the_node_uses(redis: RedisServer) -> None:
    """Redis lost the node's leases (emptied, or they expired while the node was slow)
    while 4 transactions are in flight: the next acquire counts those 4 and the new one,
    so other nodes cannot take them."""
    clock = ManualClock()
    node, _ = await node_in_use(redis.url, clock, 4)
    client = aioredis.Redis.from_url(redis.url)
    try:
        await client.flushall()
        node.grant(KEY, open_state(clock), 1, 4, clock.now())  # none free: asks Redis for one more
        await wait_for(lambda: not node.entries[KEY].pending and node.entries[KEY].held != 4)
        assert await leases_in_redis(redis, "n0") == 5
        assert node.entries[KEY].held == 5
    finally:
        await client.aclose()
        await node.close()


async def test_cut_off_a_node_keeps_within_its_leases_until_they_lapse(
    redis: RedisServer,
) -> None:
    """Three nodes alive, a 20-connection site: n0 holds 2 leases when Redis goes away.
    Until those lapse (lease_ttl after their last renewal) the others, if they still
    reached Redis, could hold the other 18: n0 keeps to 2; then it takes its fallback
    share, 20 // 3 = 6, and looks at the site again."""
    clock = ManualClock()
    nodes = [
        # lease_ttl: long enough that no stall of a loaded machine between the loss and
        # the first check outlasts the leases.
        RedisState(ClusterConfig(url=redis.url, node=f"n{i}", poll=0.05, lease_ttl=10), clock,
                   f"n{i}")
        for i in range(3)
    ]
    woken: list[str] = []
    nodes[0].on_wake = woken.append
    for node in nodes:
        await node.start()
    try:
        state = open_state(clock)
        now = clock.now()
        nodes[0].grant(KEY, state, 2, 0, now)
        await wait_for(lambda: nodes[0].entries[KEY].held == 2)
        nodes[0].started(KEY, 2, now)  # in use: the polls keep them
        await wait_for(lambda: all(n.nodes_alive == 3 for n in nodes))

        redis.kill()
        await wait_for(lambda: nodes[0].degraded)
        assert nodes[0].connection_limit(KEY, state) == 2
        assert nodes[0].grant(KEY, state, 10, 0, now).allowed <= 2
        woken.clear()
        await wait_for(lambda: nodes[0].connection_limit(KEY, state) == 6, timeout=30)
        await wait_for(lambda: KEY.site in woken)
        assert nodes[0].grant(KEY, state, 10, 0, now).allowed == 6
    finally:
        for node in nodes:
            await node.close()
