"""Deterministic scripts in local parts, across the MTA's retries, at each stage."""

from __future__ import annotations

import json
from typing import Any


def codes(row: Any) -> list[tuple[int | None, str | None]]:
    return [(code, phase) for code, phase, _ in row.history]


async def test_sequence_across_retries(stack: Any) -> None:
    await stack.start()
    await stack.submit(["alice+452-452-250@isp.test", '"bob+451,250"@isp.test'])
    rows = await stack.run_until(stack.all_final)
    alice = rows["alice+452-452-250@isp.test"]
    assert alice.state == "delivered"
    assert codes(alice) == [(452, "rcpt"), (452, "rcpt"), (250, "dot")]
    assert "Mailbox full" in alice.history[0][2]  # the persona's own 452 text
    bob = rows['"bob+451,250"@isp.test']
    assert codes(bob) == [(451, "rcpt"), (250, "dot")]
    assert stack.sim.personas["isp"].attempts["alice+452-452-250@isp.test"] == 3


async def test_stages_data_dot_and_sender_mail(stack: Any) -> None:
    await stack.start()
    await stack.submit(["carl+data=554@isp.test"])
    await stack.submit(["dave+dot=452-250@isp.test"])
    await stack.submit(["eve@isp.test"], sender="bounces+mail=451-250@campaign.test")
    rows = await stack.run_until(stack.all_final)
    assert codes(rows["carl+data=554@isp.test"]) == [(554, "data")]
    assert rows["carl+data=554@isp.test"].state == "bounced"
    assert codes(rows["dave+dot=452-250@isp.test"]) == [(452, "dot"), (250, "dot")]
    assert codes(rows["eve@isp.test"]) == [(451, "mail"), (250, "dot")]
    assert len(stack.sim.personas["isp"].stored()) == 2


async def test_drop_after_dot_marks_possible_duplicate(stack: Any) -> None:
    await stack.start()
    await stack.submit(["erin+drop-250@isp.test"])
    rows = await stack.run_until(stack.all_final)
    erin = rows["erin+drop-250@isp.test"]
    assert codes(erin) == [(421, "dot"), (250, "dot")]
    assert "unknown" in erin.history[0][2]  # "after the final dot: the outcome is unknown"
    bounces = [json.loads(body) for kind, body in stack.events() if kind == "soft_bounce"]
    assert [b["possible_duplicate"] for b in bounces] == [True]
    assert stack.sim.stats()["personas"]["isp"]["drops"] == 1


async def test_stall_is_bounded_by_the_mta_timeout(stack: Any) -> None:
    # The persona offers PIPELINING and holds the group's replies until it has answered all
    # of it (as Postfix does), so a stalled RCPT leaves the MAIL reply unsent: the envelope's
    # first reply is bounded by the sum of the group's timeouts, and the stall is reported at
    # MAIL, the stage whose reply did not come.
    timeouts = {f"delivery.timeouts.{stage}": 0.1 for stage in ("mail", "rcpt", "data")}
    await stack.start(mta_flags=timeouts)
    await stack.submit(["frank+rcpt=stall-250@isp.test"])
    rows = await stack.run_until(stack.all_final)
    frank = rows["frank+rcpt=stall-250@isp.test"]
    assert codes(frank) == [(421, "mail"), (250, "dot")]
    assert "timed out: at MAIL" in frank.history[0][2]
    assert "pipelined MAIL, RCPT x1, DATA" in frank.history[0][2]
    assert stack.sim.stats()["personas"]["isp"]["stalls"] == 1


async def test_mailbox_simulator_with_script_and_unscripted_tags(stack: Any) -> None:
    await stack.start()
    await stack.submit(["success+452-250@isp.test", "john+news@isp.test"])
    rows = await stack.run_until(stack.all_final)
    assert codes(rows["success+452-250@isp.test"]) == [(452, "rcpt"), (250, "dot")]
    assert codes(rows["john+news@isp.test"]) == [(250, "dot")]  # a plain sub-address
