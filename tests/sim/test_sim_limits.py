"""Greylisting, per-IP token buckets, session caps and reputation, through the MTA."""

from __future__ import annotations

import asyncio
from typing import Any

PERSONA = """
[[personas]]
name = "isp"
domains = ["isp.test"]
mx = [{ name = "mx.isp.test", address = "{net}.15" }]
[personas.replies]
throttle = "451 4.7.500 Server busy. Please try again later from [{ip}]. (S77714)"
reputation = "550 5.7.1 Unfortunately, messages from [{ip}] weren't sent. (S3150)"

"""


def persona(extra: str) -> str:
    return PERSONA + extra + "\n"


def codes(row: Any) -> list[int | None]:
    return [code for code, _, _ in row.history]


async def test_greylisting_then_accept_after_the_window(stack: Any) -> None:
    await stack.start(persona('[personas.greylist]\nenabled = true\nwindow = "2m"'))
    await stack.submit(["gina@isp.test"])
    rows = await stack.run_until(stack.all_final, step=60.0)
    gina = rows["gina@isp.test"]
    assert gina.state == "delivered"
    assert codes(gina) == [451, 451, 250]  # t=0, t=60 (still in the window), t=120
    assert "Greylisted, try again in 120 seconds" in gina.history[0][2]
    assert "try again in 60 seconds" in gina.history[1][2]
    assert stack.sim.stats()["personas"]["isp"]["greylisted"] == 2


async def test_message_rate_throttles_only_above_the_limit_and_recovers(stack: Any) -> None:
    await stack.start(persona('[personas.limits]\nmessages = "5/m"'))
    addresses = [f"user{i}@isp.test" for i in range(8)]
    for address in addresses:
        await stack.submit([address])
    await stack.quiet()
    first = stack.rows()
    throttled = [a for a in addresses if first[a].history[0][0] == 451]
    accepted = [a for a in addresses if first[a].history[0][0] == 250]
    assert (len(accepted), len(throttled)) == (5, 3)  # the burst is one minute's worth
    assert all("Server busy" in first[a].text and first[a].phase == "mail" for a in throttled)
    # the clock moves on (the sender slowed down): the bucket refills, the retries pass
    rows = await stack.run_until(stack.all_final, step=60.0)
    assert all(rows[a].state == "delivered" for a in addresses)
    assert all(codes(rows[a]) == [451, 250] for a in throttled)
    stats = stack.sim.stats()["personas"]["isp"]
    assert stats["throttled"] == 3 and stats["accepted"] == 8


async def test_sessions_over_the_cap_are_refused_and_counted(stack: Any) -> None:
    # a slow greeting keeps sessions open while the MTA opens more for the next messages
    await stack.start(
        persona('[personas.limits]\nsessions = 2\n[personas.latency]\nconnect = "300ms"'),
        mx_rule={"max_connections": 6},
    )
    addresses = [f"s{i}@isp.test" for i in range(12)]
    await asyncio.gather(*(stack.submit([address]) for address in addresses))
    rows = await stack.run_until(stack.all_final, step=60.0)
    assert all(r.state == "delivered" for r in rows.values())
    refused = [r for r in rows.values() if r.history[0][0] == 421]
    assert refused, "some sessions were over the cap"
    assert all(r.history[0][1] == "connect" and "Server busy" in r.history[0][2] for r in refused)
    stats = stack.sim.stats()["personas"]["isp"]
    ip = stats["ips"]["127.0.0.1"]
    assert ip["sessions_refused"] > 0 and ip["sessions_max"] > 2
    assert ip["sessions_now"] == stats["sessions"]["now"]


async def test_connection_rate_limits_new_sessions(stack: Any) -> None:
    refusal = 'throttle_connections = "421 4.7.0 {hostname} Error: too many connections from {ip}"'
    await stack.start(
        persona(refusal + '\n[personas.limits]\nconnections = "1/m"'),
        mx_rule={"max_messages_per_connection": 1},  # a connection per message
    )
    for i in range(3):
        await stack.submit([f"c{i}@isp.test"])
    await stack.quiet()
    first = stack.rows()
    assert sorted(r.history[0][0] or 0 for r in first.values()) == [250, 421, 421]
    refused = [r.history[0] for r in first.values() if r.history[0][0] == 421]
    assert all(
        phase == "connect" and text == "mx.isp.test Error: too many connections from 127.0.0.1"
        for _, phase, text in refused
    )
    rows = await stack.run_until(stack.all_final, step=60.0)
    assert all(r.state == "delivered" for r in rows.values())
    # one new connection per virtual minute: the second passes at t=60, the third at t=120
    assert sorted(len(r.history) for r in rows.values()) == [1, 2, 3]
    stats = stack.sim.stats()["personas"]["isp"]
    assert stats["sessions"]["refused"] == 3
    assert stats["throttled"] == 3


async def test_young_ip_over_its_daily_volume_is_blocked(stack: Any) -> None:
    await stack.start(persona('[personas.reputation]\nnew_ip_age = "30d"\nnew_ip_daily_limit = 3'))
    for i in range(5):
        # One at a time: the persona counts a message when it accepts it and checks the count
        # at MAIL, so concurrent sessions would all pass the check (a real ISP's race too).
        await stack.submit([f"r{i}@isp.test"])
        await stack.quiet()
    rows = stack.rows()
    blocked = [r for r in rows.values() if r.state == "bounced"]
    assert len(blocked) == 2
    assert all((r.code, r.enhanced, r.phase) == (550, "5.7.1", "mail") for r in blocked)
    assert all("(S3150)" in r.text for r in blocked)
    assert sum(r.state == "delivered" for r in rows.values()) == 3
    persona_ = stack.sim.personas["isp"]
    assert persona_.ips["127.0.0.1"].messages == 3
    stack.clock.advance(86400.0)  # a new virtual day: the volume counter starts again
    await stack.submit(["next-day@isp.test"])
    await stack.quiet()
    assert stack.rows()["next-day@isp.test"].state == "delivered"
