"""Adaptive delivery against the simulated ISPs, on real sockets and the real rule sets:
the MTA learns a Gmail-like rate limit, a Yahoo-like [TSS04] suspends the site, and a
young source binding keeps to its ramp-up cap (the rest waits for the next day)."""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from campaign_client import Delivery, DeliveryLog, Recipient, submit
from mta.app import MtaApp
from mta.clock import Clock, ManualClock, ScaledClock
from mta.config.mx_rules import load_mx_data
from mta.config.service import load_config
from mta.core.rampup import next_day_at
from mta.sim.simulation import Simulation
from tests.helpers import wait_for
from tests.simnet import GMAIL, YAHOO, new_net, sim_config


class Net:
    """The simulated internet and the MTA on one clock, with the built-in rules."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.root = root
        self.clock = clock
        self.net = new_net()
        self.sim: Simulation | None = None
        self.app: MtaApp | None = None

    async def start(self, personas: str, mta_toml: str = "") -> Net:
        self.sim = await Simulation.start(
            sim_config(self.net, personas), self.clock, self.root / "sim", http=False
        )
        host, port = self.sim.dns_address
        path = self.root / "mta.toml"
        path.write_text(mta_toml)
        config = load_config(
            path,
            environ={},
            flags={
                "smtp.listen": "127.0.0.1:0",
                "admin.listen": "",
                "data_dir": str(self.root / "mta"),
                "dns.nameservers": (host,),
                "dns.port": port,
                "delivery.port": self.sim.smtp_port,
                "delivery.tls": "none",
                "smtp.workers": 0,
            },
        )
        self.app = MtaApp(config, clock=self.clock)
        await self.app.start()
        self.sim.mta_submit = self.app.smtp_address
        return self

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
        if self.sim is not None:
            await self.sim.stop()

    async def send(self, addresses: list[str]) -> None:
        assert self.app is not None
        host, port = self.app.smtp_address
        log = DeliveryLog(self.root / f"log-{len(addresses)}-{addresses[0]}.sqlite")
        delivery = Delivery(
            "D",
            [Recipient(a, str(i), {}) for i, a in enumerate(addresses)],
            from_addr="news@campaign.test",
        )
        result = await submit(delivery, host, port, log=log, sessions=10)
        assert result.error is None and not result.not_submitted

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        assert self.app is not None
        conn = sqlite3.connect(self.app.config.data_path / "spool.sqlite3")
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def states(self) -> dict[str, int]:
        return dict(self.rows("SELECT state, COUNT(*) FROM recipients GROUP BY state"))

    def site(self, rule: str) -> dict[str, Any]:
        assert self.app is not None
        return next(s for s in self.app.running.scheduler.site_report() if s["rule"] == rule)

    def persona_ip(self, persona: str) -> dict[str, Any]:
        assert self.sim is not None
        ips = self.sim.stats()["personas"][persona]["ips"]
        assert len(ips) == 1
        return dict(next(iter(ips.values())))


@pytest.fixture
async def scaled(tmp_path: Path) -> AsyncIterator[Net]:
    net = Net(tmp_path, ScaledClock(60.0))
    yield net
    await net.stop()


@pytest.fixture
async def manual(tmp_path: Path) -> AsyncIterator[Net]:
    net = Net(tmp_path, ManualClock())
    yield net
    await net.stop()


async def test_a_burst_converges_under_gmails_rate_limit(scaled: Net) -> None:
    """2,000 messages to a persona taking 100/minute per IP: everything arrives, throttling
    replies stay few, each one slows the site down (an AIMD cut in its timeline, a learned rate
    under the configured one), deliveries never run above the persona's limit, and the MTA
    never opens more connections than its MX rule allows.

    The clock runs 60x real time, so how fast deliveries go and how the throttling replies
    fall over the run depend on how busy this machine is: those are printed here and measured
    by bench/bench_throttling.py, never asserted (a lower bound on a rate is a timing test)."""
    await scaled.start(GMAIL)
    total = 2000
    await scaled.send([f"user{i}@gmail.test" for i in range(total)])
    await wait_for(lambda: scaled.states().get("delivered", 0) == total, timeout=150)
    attempts = scaled.rows(
        "SELECT at, code, result FROM attempts ORDER BY id"
    )  # every attempt, in order
    throttled = [at for at, code, _ in attempts if code == 421]
    delivered = sorted(at for at, _, result in attempts if result == "delivered")
    middle = delivered[total // 2]
    first_half = sum(1 for at in throttled if at <= middle)
    late = [at for at in delivered if at >= middle]
    rate_per_minute = (len(late) - 1) / (late[-1] - late[0]) * 60
    print(
        f"\nthrottling replies: {len(throttled)} for {total} messages "
        f"({first_half} in the first half, {len(throttled) - first_half} in the second);"
        f" second half's rate {rate_per_minute:.0f}/min"
    )
    assert len(throttled) < total * 0.15
    # The persona admits 100/min (plus its bucket's burst): the MTA cannot run above that.
    assert rate_per_minute <= 115, rate_per_minute
    gmail_rule = load_mx_data().rules.by_name("gmail")
    assert scaled.persona_ip("gmail")["sessions_max"] <= gmail_rule.max_connections
    site = scaled.site("gmail")
    assert site["delivered"] == total and site["throttled"] == len(throttled)
    # It learned: throttling replies cut the site's rate, and the rate now in force is under
    # the rule's configured rate.
    assert throttled and any(change["what"] == "rate" for change in site["changes"])
    assert site["rate"] is not None and site["rate"] < site["configured_rate"]
    assert site["average_rate"] * 60 <= 130  # what `mta queue sites` shows as average


async def test_yahoo_tss04_suspends_the_site_for_its_duration(manual: Net) -> None:
    """The built-in yahoo rule suspends the site for 30 minutes on [TSS0x]."""
    await manual.start(YAHOO)
    clock = manual.clock
    assert isinstance(clock, ManualClock)
    await manual.send(["t+421-250@yahoo.test"])
    await wait_for(lambda: manual.rows("SELECT code FROM attempts") == [(421,)])
    await wait_for(lambda: manual.site("yahoo")["state"] == "suspended")
    site = manual.site("yahoo")
    assert math.isclose(site["until"] - clock.now(), 1800, abs_tol=1)
    assert "TSS0" in site["changes"][-1]["reason"] or "TSS0" in site["last_reason"]
    await manual.send([f"u{i}@yahoo.test" for i in range(3)])
    clock.advance(29 * 60)
    await asyncio.sleep(0.5)
    assert manual.rows("SELECT COUNT(*) FROM attempts") == [(1,)]  # nothing during the hold
    assert manual.states() == {"queued": 4}
    clock.advance(60)  # the hold is over; the rate that came with the reply paces the rest
    for _ in range(60):
        if manual.states() == {"delivered": 4}:
            break
        clock.advance(10)
        await asyncio.sleep(0.05)
    assert manual.states() == {"delivered": 4}
    # The throttled recipient did not use an attempt: its delivery is its first attempt.
    assert manual.rows("SELECT attempts FROM recipients WHERE address LIKE 't+%'") == [(1,)]


async def test_a_new_binding_keeps_to_its_ramp_up_cap(manual: Net) -> None:
    """A binding on its first day sends at most its cap to an ISP; the rest waits, not
    bounced, and goes on the next (virtual) day."""
    source = f"{manual.net}.200"
    await manual.start(
        GMAIL.replace('messages = "100/m"', "messages = 0"),
        f'[[delivery.bindings]]\naddress = "{source}"\nname = "fresh"\n',
    )
    clock = manual.clock
    assert isinstance(clock, ManualClock)
    data = load_mx_data()
    cap = data.rampup.cap(1, "gmail")
    assert cap is not None
    total = cap + 20
    await manual.send([f"r{i}@gmail.test" for i in range(total)])
    await wait_for(lambda: manual.states().get("delivered", 0) == cap)
    await asyncio.sleep(0.5)
    assert manual.states() == {"delivered": cap, "queued": 20}  # waiting, not bounced
    assert manual.persona_ip("gmail")["messages"] == cap
    assert manual.site("gmail")["binding"] == "fresh"
    clock.set(next_day_at(clock.now()) + 1)
    await wait_for(lambda: manual.states() == {"delivered": total})
    assert manual.rows("SELECT DISTINCT binding FROM attempts") == [("fresh",)]
