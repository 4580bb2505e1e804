"""MX routing over real DNS packets from the stub DNS: preference order with fallback to the
next MX when a connection fails, and the resolver's TTL cache on the MTA's clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mta.cli.sink import Sink
from mta.cli.topology import free_common_port
from mta.clock import ManualClock
from mta.config.service import DnsConfig
from mta.delivery.dns import Resolver
from mta.sim.dns_server import StubDns, Zone
from tests.helpers import events_of, mta_config, send_message, started, wait_for
from tests.simnet import new_net, sim_config

ZONE = """
[[hosts]]
name = "mx1.fallback.test"
address = "{net}.31"

[[hosts]]
name = "mx2.fallback.test"
address = "{net}.32"

[[domains]]
name = "fallback.test"
mx = ["mx1.fallback.test", "mx2.fallback.test"]
"""


async def stub_dns(net: str) -> StubDns:
    config = sim_config(net, ZONE)
    return await StubDns.start(Zone.from_config(config), f"{net}.1", 0)


async def test_the_next_mx_takes_the_mail_when_the_first_refuses(tmp_path: Path) -> None:
    net = new_net()
    dns = await stub_dns(net)
    port = free_common_port([f"{net}.31", f"{net}.32"])
    sink = await Sink.start(f"{net}.32", port)  # mx1 ({net}.31) has nothing listening
    host, dns_port = dns.address
    app = await started(
        mta_config(
            tmp_path,
            dns__nameservers=(host,),
            dns__port=dns_port,
            delivery__port=port,
            delivery__tls="none",
        )
    )
    try:
        reply = await send_message(
            *app.smtp_address,
            "b@sender.test",
            ["r@fallback.test"],
            b"From: a@b.test\r\nSubject: fallback\r\n\r\nhi\r\n",
        )
        assert reply.startswith("250")
        await wait_for(lambda: events_of(app)[-1]["kind"] == "delivered")
        assert events_of(app)[-1]["smtp"]["mx"] == "mx2.fallback.test"
        assert sink.handler.received == 1
    finally:
        await app.stop()
        await sink.close()
        await dns.stop()


async def test_answers_are_cached_for_their_ttl_on_the_mtas_clock() -> None:
    net = new_net()
    dns = await stub_dns(net)
    clock = ManualClock()
    host, port = dns.address
    resolver = Resolver(clock, DnsConfig(nameservers=(host,), port=port, timeout=2.0))
    try:
        first = await resolver.mx("fallback.test")
        assert [r.host for r in first.records] == ["mx1.fallback.test", "mx2.fallback.test"]
        assert [r.preference for r in first.records] == [0, 10]
        await resolver.mx("fallback.test")
        assert resolver.queries == 1
        clock.advance(3601)  # the test zone's TTL is an hour
        await asyncio.gather(resolver.mx("fallback.test"), resolver.mx("fallback.test"))
        assert resolver.queries == 2  # one query for both callers, after the TTL
        missing = await resolver.mx("nxdomain.test")
        assert missing.kind == "nxdomain"
    finally:
        await dns.stop()
