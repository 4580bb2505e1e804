"""A real Redis server on a free port and several MTA nodes sharing it, against the
simulated ISPs: what the cluster tests and bench/bench_cluster.py run."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from campaign_client import Delivery, DeliveryLog, Recipient, submit
from mta.app import MtaApp
from mta.cli.redis_server import ping, server_argv
from mta.cli.topology import free_port
from mta.clock import Clock
from mta.config.service import load_config
from mta.sim.simulation import Simulation
from tests.simnet import new_net, sim_config

OPEN_GMAIL = '''
[[personas]]
name = "gmail"
domains = ["gmail.test"]
mx = [{ name = "mx1.google.test", address = "{net}.11" }]
[personas.limits]
messages = 0
sessions = 1000
connections = 0
'''

# Open, but slow to answer the final dot (3 virtual seconds): connections pile up.
SLOW_GMAIL = OPEN_GMAIL + '''[personas.latency]
dot = "3s"
'''



class RedisServer:
    """redis-server on 127.0.0.1 and a free port; kill() and start() again on the same."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False  # started again, it must keep its port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> RedisServer:
        """Start it and wait for its PONG (a loaded machine may take seconds). A first
        start whose port another process took since `free_port` tries another port."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            self.process = subprocess.Popen(
                server_argv(self.port, directory=str(self.directory)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(300):
                if await ping("127.0.0.1", self.port):
                    self.started_once = True
                    return self
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            self.kill()
            if self.started_once:
                break
            self.port = free_port()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


class Cluster:
    """The simulated internet and `nodes` MTAs on one clock, sharing `redis` (None: each
    node alone)."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.root = root
        self.clock = clock
        self.net = new_net()
        self.sim: Simulation | None = None
        self.apps: list[MtaApp] = []

    async def start(
        self, personas: str, nodes: int, redis: RedisServer | None, mta_toml: str = ""
    ) -> Cluster:
        self.sim = await Simulation.start(
            sim_config(self.net, personas), self.clock, self.root / "sim", http=False
        )
        for index in range(nodes):
            await self.add_node(index, redis, mta_toml)
        self.sim.mta_submit = self.apps[0].smtp_address
        return self

    async def add_node(self, index: int, redis: RedisServer | None, mta_toml: str = "") -> MtaApp:
        assert self.sim is not None
        host, port = self.sim.dns_address
        path = self.root / f"mta{index}.toml"
        path.write_text(mta_toml)
        flags: dict[str, Any] = {
            "smtp.listen": "127.0.0.1:0",
            "admin.listen": "",
            "data_dir": str(self.root / f"mta{index}"),
            "dns.nameservers": (host,),
            "dns.port": port,
            "delivery.port": self.sim.smtp_port,
            "delivery.tls": "none",
            "smtp.workers": 0,
        }
        if redis is not None:
            flags["cluster.url"] = redis.url
            flags["cluster.node"] = f"n{index}"
        app = MtaApp(load_config(path, environ={}, flags=flags), clock=self.clock)
        await app.start()
        self.apps.append(app)
        return app

    async def stop(self) -> None:
        for app in self.apps:
            with contextlib.suppress(Exception):
                await app.stop()
        if self.sim is not None:
            await self.sim.stop()

    async def send(self, addresses: list[str], nodes: list[int] | None = None) -> None:
        """Submit round-robin over the nodes (as a sender behind DNS round-robin would)."""
        chosen = nodes if nodes is not None else list(range(len(self.apps)))
        batches: dict[int, list[str]] = {n: [] for n in chosen}
        for i, address in enumerate(addresses):
            batches[chosen[i % len(chosen)]].append(address)
        await asyncio.gather(
            *(self._send_to(n, batch) for n, batch in batches.items() if batch)
        )

    async def _send_to(self, node: int, addresses: list[str]) -> None:
        host, port = self.apps[node].smtp_address
        log = DeliveryLog(self.root / f"log-{node}-{len(addresses)}-{addresses[0]}.sqlite")
        delivery = Delivery(
            "D",
            [Recipient(a, str(i), {}) for i, a in enumerate(addresses)],
            from_addr="news@campaign.test",
        )
        result = await submit(delivery, host, port, log=log, sessions=5)
        assert result.error is None and not result.not_submitted

    def rows(self, sql: str, nodes: list[int] | None = None) -> list[Any]:
        """The query's rows from every node's spool (in node order)."""
        found: list[Any] = []
        for index in nodes if nodes is not None else range(len(self.apps)):
            conn = sqlite3.connect(self.root / f"mta{index}" / "spool.sqlite3")
            try:
                found += conn.execute(sql).fetchall()
            finally:
                conn.close()
        return found

    def states(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for state, count in self.rows("SELECT state, COUNT(*) FROM recipients GROUP BY state"):
            totals[state] = totals.get(state, 0) + count
        return totals

    def persona_ip(self, persona: str) -> dict[str, Any]:
        assert self.sim is not None
        ips = self.sim.stats()["personas"][persona]["ips"]
        assert len(ips) == 1
        return dict(next(iter(ips.values())))
