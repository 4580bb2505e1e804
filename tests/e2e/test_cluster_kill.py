"""A node of three (`mta serve --cluster ... --node ...` processes) killed with SIGKILL
under load: its connection leases expire in Redis, the other nodes deliver all of
theirs meanwhile, and once it restarts on its spool nothing it acknowledged is lost."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
import redis as redis_sync

from campaign_client import Delivery, DeliveryLog, Recipient, submit
from mta.cli.topology import Addresses, Service, Supervisor, free_port, mta_service
from mta.clock import Anchor, make_clock
from mta.sim.simulation import Simulation
from tests.cluster_helpers import SLOW_GMAIL, RedisServer
from tests.helpers import wait_for
from tests.simnet import new_net, sim_config

TOTAL_PER_NODE = 200


def states(root: Path, nodes: range) -> dict[str, int]:
    totals: dict[str, int] = {}
    for index in nodes:
        conn = sqlite3.connect(root / f"mta{index}" / "spool.sqlite3")
        try:
            for state, count in conn.execute(
                "SELECT state, COUNT(*) FROM recipients GROUP BY state"
            ):
                totals[state] = totals.get(state, 0) + count
        finally:
            conn.close()
    return totals


def node_service(
    root: Path, index: int, sim: Simulation, anchor: Anchor, redis: RedisServer, smtp: str
) -> Service:
    host, port = sim.dns_address
    config = root / "mta.toml"
    config.write_text('[delivery]\ntls = "none"\n[cluster]\nlease_ttl = "2s"\n')
    base = mta_service(
        Addresses(smtp=smtp, admin="", dns=f"{host}:{port}", sim_http="",
                  persona_port=sim.smtp_port),
        anchor,
        root / f"mta{index}",
        str(config),
        "info",
    )
    argv = (*base.argv, "--cluster", redis.url, "--node", f"n{index}")
    return Service(f"n{index}", argv, base.ready)


@pytest.mark.timeout(300)  # three processes started, one twice: slow on a busy machine
async def test_a_node_killed_under_load(tmp_path: Path) -> None:
    redis = await RedisServer(tmp_path / "redis").start()
    wall = time.time()
    anchor = Anchor(wall, wall, 60.0)
    sim = await Simulation.start(
        sim_config(new_net(), SLOW_GMAIL), make_clock(anchor=anchor.encode()),
        tmp_path / "sim", http=False,
    )
    supervisor = Supervisor()
    smtp = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    client = redis_sync.Redis(port=redis.port)
    try:
        for index in range(3):
            await supervisor.start(
                node_service(tmp_path, index, sim, anchor, redis, smtp[index]),
                log=tmp_path / f"n{index}.log",
            )

        async def send(index: int) -> None:
            host, port = smtp[index].rsplit(":", 1)
            addresses = [f"k{index}-{i}@gmail.test" for i in range(TOTAL_PER_NODE)]
            delivery = Delivery(
                f"D{index}",
                [Recipient(a, str(i), {}) for i, a in enumerate(addresses)],
                from_addr="news@campaign.test",
            )
            log = DeliveryLog(tmp_path / f"log{index}.sqlite")
            result = await submit(delivery, host, int(port), log=log, sessions=4)
            assert result.error is None and not result.not_submitted  # all acknowledged

        began = time.monotonic()
        await asyncio.gather(*(send(i) for i in range(3)))
        print(f"\nsubmitted after {time.monotonic() - began:.1f}s", states(tmp_path, range(3)))
        lease_key = next(k for k in client.scan_iter("*:c"))

        def holds(node: bytes) -> bool:
            return int(client.hget(lease_key, node) or 0) > 0

        await wait_for(lambda: holds(b"n1"), timeout=30)
        victim = supervisor.children[1][1]
        victim.kill()  # SIGKILL, mid-delivery
        await victim.wait()
        print(f"killed after {time.monotonic() - began:.1f}s", states(tmp_path, range(3)))
        await wait_for(lambda: not holds(b"n1"), timeout=30)  # its leases expired
        await wait_for(lambda: states(tmp_path, range(0, 3, 2)) == {"delivered": 400}, 120)
        print(f"others done after {time.monotonic() - began:.1f}s")
        left = states(tmp_path, range(1, 2))
        assert sum(left.values()) == TOTAL_PER_NODE  # what it acknowledged is in its spool
        restarted = node_service(tmp_path, 1, sim, anchor, redis, smtp[1])
        await supervisor.start(restarted, log=tmp_path / "n1-again.log")
        await wait_for(lambda: states(tmp_path, range(3)) == {"delivered": 600}, 120)
        print(f"all done after {time.monotonic() - began:.1f}s")
        received = sim.stats()["personas"]["gmail"]["ips"]
        assert sum(ip["messages"] for ip in received.values()) >= 600
    finally:
        await supervisor.stop()
        await sim.stop()
        client.close()
        redis.kill()
