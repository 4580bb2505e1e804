"""Several MTA nodes sharing limits through a real redis-server: what sharing costs and
how well it holds.

    python bench/bench_cluster.py [--messages 1000] [--throughput 3000] [--minutes 3]

Prints exactly three figures, each against a baseline measured in the same run:
1. Redis round trips per delivered message, three nodes, into a busy site (a Gmail-like
   persona taking 100/minute per IP, adaptive) and into an unthrottled one (every round
   trip of every node counted: token grants, heartbeats, adaptive changes);
2. aggregate throughput into an unthrottled persona, 1 vs 3 nodes as separate
   `mta serve` processes (the simulation in this process): messages per real second from
   the first submission to the last message received, the ratio to the single node;
3. the shared-limit error: mail into a site whose MX rule allows 600/minute, through 1,
   3 and 6 nodes: messages sent above the limit per minute (each whole virtual minute
   from the first delivery counted from the nodes' delivery records; the excess over
   600 summed and divided by the minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mta.clock import ScaledClock
from mta.queue.cluster import RedisState
from tests.cluster_helpers import OPEN_GMAIL, Cluster, RedisServer
from tests.simnet import GMAIL

RULE_RATE_PER_MIN = 600
MX_RULE = f'[[mx]]\nname = "gmail"\nrate = "{RULE_RATE_PER_MIN}/m"\n'


async def wait_delivered(cluster: Cluster, total: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cluster.states().get("delivered", 0) >= total:
            return True
        await asyncio.sleep(0.5)
    return False


async def round_trips(work: Path, personas: str, total: int) -> tuple[float, int]:
    """Round trips per delivered message with three nodes, and how many were delivered."""
    redis = await RedisServer(work / "redis").start()
    cluster = Cluster(work / "nodes", ScaledClock(60.0))
    try:
        await cluster.start(personas, 3, redis)
        await cluster.send([f"r{i}@gmail.test" for i in range(total)])
        await wait_delivered(cluster, total, 300)
        delivered = cluster.states().get("delivered", 0)
        trips = 0
        for app in cluster.apps:
            shared = app.running.shared
            assert isinstance(shared, RedisState)
            trips += shared.round_trips
        return trips / max(delivered, 1), delivered
    finally:
        await cluster.stop()
        redis.kill()


async def limit_error(work: Path, nodes: int, minutes: float) -> tuple[float, float]:
    """(messages sent above the limit per minute, whole minutes measured)."""
    total = int(RULE_RATE_PER_MIN * minutes)
    redis = await RedisServer(work / "redis").start()
    (work / "rules.toml").parent.mkdir(parents=True, exist_ok=True)
    (work / "rules.toml").write_text(MX_RULE)
    toml = f'[delivery]\nmx_rules_files = ["{work / "rules.toml"}"]\n'
    cluster = Cluster(work / "nodes", ScaledClock(10.0))
    try:
        await cluster.start(OPEN_GMAIL, nodes, redis if nodes > 1 else None, toml)
        await cluster.send([f"e{i}@gmail.test" for i in range(total)])
        await wait_delivered(cluster, total, 120 + 10 * minutes * 6)
        times = sorted(
            at for (at,) in cluster.rows("SELECT at FROM attempts WHERE result = 'delivered'")
        )
    finally:
        await cluster.stop()
        redis.kill()
    if not times:
        return math.nan, 0.0
    start = times[0]
    whole = math.floor((times[-1] - start) / 60)
    buckets = [0] * max(whole, 1)
    for at in times:
        index = math.floor((at - start) / 60)
        if index < len(buckets):
            buckets[index] += 1
    excess = sum(max(0, n - RULE_RATE_PER_MIN) for n in buckets)
    return excess / len(buckets), float(len(buckets))


async def throughput(work: Path, nodes: int, total: int) -> float:
    """Messages per real second from the first submission to the last delivery, through
    `nodes` separate `mta serve` processes (sharing a redis-server when more than one)
    into an unthrottled persona."""
    from campaign_client import Delivery, DeliveryLog, Recipient, submit
    from mta.cli.topology import Addresses, Service, Supervisor, free_port, mta_service
    from mta.clock import Anchor, make_clock
    from mta.sim.simulation import Simulation
    from tests.simnet import new_net, sim_config

    work.mkdir(parents=True, exist_ok=True)
    redis = await RedisServer(work / "redis").start() if nodes > 1 else None
    wall = time.time()
    anchor = Anchor(wall, wall, 60.0)
    sim = await Simulation.start(
        sim_config(new_net(), OPEN_GMAIL), make_clock(anchor=anchor.encode()), work / "sim",
        http=False,
    )
    supervisor = Supervisor()
    config = work / "mta.toml"
    config.write_text('[delivery]\ntls = "none"\n')
    host, port = sim.dns_address
    smtp = [f"127.0.0.1:{free_port()}" for _ in range(nodes)]
    try:
        for index in range(nodes):
            base = mta_service(
                Addresses(smtp=smtp[index], admin="", dns=f"{host}:{port}", sim_http="",
                          persona_port=sim.smtp_port),
                anchor, work / f"mta{index}", str(config), "warning",
            )
            argv = base.argv
            if redis is not None:
                argv = (*argv, "--cluster", redis.url, "--node", f"n{index}")
            await supervisor.start(Service(f"n{index}", argv, base.ready))

        async def send(index: int) -> None:
            h, p = smtp[index].rsplit(":", 1)
            count = total // nodes
            delivery = Delivery(
                f"D{index}",
                [Recipient(f"t{index}-{i}@gmail.test", str(i), {}) for i in range(count)],
                from_addr="news@campaign.test",
            )
            await submit(delivery, h, int(p), log=DeliveryLog(work / f"log{index}.sqlite"),
                         sessions=8)

        started = time.monotonic()
        await asyncio.gather(*(send(i) for i in range(nodes)))
        expected = (total // nodes) * nodes
        while True:
            got = sum(ip["messages"] for ip in sim.stats()["personas"]["gmail"]["ips"].values())
            if got >= expected or time.monotonic() - started > 600:
                break
            await asyncio.sleep(0.2)
        return got / (time.monotonic() - started)
    finally:
        await supervisor.stop()
        await sim.stop()
        if redis is not None:
            redis.kill()


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        print(f"1. Redis round trips per delivered message, 3 nodes, {args.messages} messages")
        for label, personas in (("busy site (gmail-like 100/min)", GMAIL),
                                ("unthrottled", OPEN_GMAIL)):
            per, delivered = await round_trips(root / f"rt-{len(label)}", personas, args.messages)
            print(f"   {label:<32} {per:6.3f}  ({delivered} delivered)")
        print(f"2. aggregate throughput into an unthrottled persona, {args.throughput} messages,"
              " each node an `mta serve` process")
        one = await throughput(root / "tp1", 1, args.throughput)
        three = await throughput(root / "tp3", 3, args.throughput)
        print(f"   1 node   {one:7.1f} messages/s")
        print(f"   3 nodes  {three:7.1f} messages/s  (x{three / one:.2f} the single node)")
        print(f"3. shared-limit error: messages sent above the limit per minute, MX rule"
              f" {RULE_RATE_PER_MIN}/min, {args.minutes:g} minutes of mail")
        for nodes in (1, 3, 6):
            error, minutes = await limit_error(root / f"err{nodes}", nodes, args.minutes)
            print(f"   {nodes} node{'s' if nodes > 1 else ' '}  {error:6.1f} /min"
                  f"  ({error / RULE_RATE_PER_MIN:.2%} of the limit; {minutes:g} whole minutes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--throughput", type=int, default=3000, help="messages for part 3")
    args = parser.parse_args(argv)
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
