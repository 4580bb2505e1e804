"""The stub DNS over real packets: dnspython directly, the MTA's Resolver, and delivery results."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest

from mta.clock import ManualClock
from mta.config.service import DnsConfig
from mta.delivery.dns import Resolver
from mta.sim.config import SimConfig
from mta.sim.simulation import Simulation

PERSONAS = """
[[personas]]
name = "gmail"
domains = ["gmail.test", "googlemail.test"]
mx = [
  { name = "mx1.google.test", address = "{net}.11", preference = 5 },
  { name = "mx2.google.test", address = "{net}.12", preference = 10 },
]
[[personas]]
name = "isp"
domains = ["isp.test", "implicit.test"]
mx = [{ name = "mx.isp.test", address = "{net}.15" }]
"""


@pytest.fixture
async def sim(net: str, tmp_path: Any, make_config: Callable[..., SimConfig]) -> Any:
    running = await Simulation.start(make_config(net, PERSONAS), ManualClock(), tmp_path)
    yield running
    await running.stop()


def resolver_for(sim: Any, timeout: float = 0.5) -> dns.asyncresolver.Resolver:
    r = dns.asyncresolver.Resolver(configure=False)
    r.nameservers = [sim.dns_address[0]]
    r.port = sim.dns_address[1]
    r.timeout = r.lifetime = timeout
    return r


async def test_records_over_udp_and_tcp(sim: Any, net: str) -> None:
    r = resolver_for(sim)
    mx = await r.resolve("gmail.test", "MX")
    assert sorted((x.preference, x.exchange.to_text()) for x in mx) == [
        (5, "mx1.google.test."),
        (10, "mx2.google.test."),
    ]
    assert mx.rrset is not None and mx.rrset.ttl == 3600
    shared = await r.resolve("googlemail.test", "MX")
    assert {x.exchange.to_text() for x in shared} == {"mx1.google.test.", "mx2.google.test."}
    a = await r.resolve("mx2.google.test", "A")
    assert [x.address for x in a] == [f"{net}.12"]
    null = await r.resolve("nullmx.test", "MX")
    assert [(x.preference, x.exchange.to_text()) for x in null] == [(0, ".")]
    implicit = await r.resolve("implicit.test", "A")
    assert [x.address for x in implicit] == [f"{net}.15"]
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("implicit.test", "MX")
    with pytest.raises(dns.resolver.NoAnswer):
        await r.resolve("mx.isp.test", "AAAA")
    with pytest.raises(dns.resolver.NXDOMAIN):
        await r.resolve("nxdomain.test", "MX")
    with pytest.raises(dns.resolver.NoNameservers):
        await r.resolve("dnsfail.test", "MX")
    with pytest.raises(dns.exception.Timeout):
        await r.resolve("slowdns.test", "MX")
    # TCP: the same answer, MX exchanges' addresses in the additional section
    query = dns.message.make_query("gmail.test", "MX")
    answer = await dns.asyncquery.tcp(query, sim.dns_address[0], port=sim.dns_address[1], timeout=2)
    assert answer.rcode() == dns.rcode.NOERROR and answer.flags & dns.flags.AA
    assert {rr.to_text() for rrset in answer.additional for rr in rrset} == {
        f"{net}.11",
        f"{net}.12",
    }


async def test_the_mta_resolver_sees_each_kind(sim: Any, net: str) -> None:
    host, port = sim.dns_address
    resolver = Resolver(ManualClock(), DnsConfig(nameservers=(host,), port=port, timeout=0.5))
    answers = await asyncio.gather(
        *(
            resolver.mx(d)
            for d in ("gmail.test", "nullmx.test", "implicit.test", "nxdomain.test", "dnsfail.test")
        )
    )
    assert [a.kind for a in answers] == ["records", "null", "implicit", "nxdomain", "failure"]
    assert "SERVFAIL" in answers[4].error
    timeout = await resolver.mx("slowdns.test")
    assert (timeout.kind, timeout.error) == ("failure", "DNS timeout for slowdns.test type=MX")
    addresses = await resolver.addresses("mx1.google.test")
    assert addresses.addresses == (f"{net}.11",)


async def test_dns_outcomes_through_delivery(stack: Any) -> None:
    await stack.start()
    await stack.submit(
        [
            "a@nullmx.test",
            "b@nxdomain.test",
            "c@dnsfail.test",
            "d@slowdns.test",
        ]
    )
    await stack.quiet()
    rows = stack.rows()
    null = rows["a@nullmx.test"]
    assert (null.state, null.code, null.enhanced) == ("bounced", 556, "5.1.10")
    nx = rows["b@nxdomain.test"]
    assert (nx.state, nx.code, nx.enhanced) == ("queued", 451, "4.4.4")
    assert "NXDOMAIN" in nx.text
    fail = rows["c@dnsfail.test"]
    assert (fail.state, fail.code, fail.enhanced) == ("queued", 451, "4.4.3")
    assert "SERVFAIL" in fail.text
    slow = rows["d@slowdns.test"]
    assert (slow.code, slow.enhanced) == (451, "4.4.3") and "timeout" in slow.text
    # no persona was contacted
    stats = stack.sim.stats()["personas"]
    assert all(p["sessions"]["total"] == 0 for p in stats.values())


async def test_black_hole_never_greets(stack: Any) -> None:
    blackhole = """
[[personas]]
name = "blackhole"
kind = "blackhole"
domains = ["blackhole.test"]
mx = [{ name = "mx.blackhole.test", address = "{net}.16" }]
"""
    await stack.start(blackhole, mta_flags={"delivery.timeouts.greeting": 0.3})
    await stack.submit(["x@blackhole.test"])
    await stack.quiet()
    row = stack.rows()["x@blackhole.test"]
    assert (row.state, row.code, row.phase) == ("queued", 421, "connect")
    assert "timed out: no greeting" in row.text
    stats = stack.sim.stats()["personas"]["blackhole"]
    assert stats["sessions"]["total"] == 1
