"""Mailbox tables and mailbox-simulator addresses, observed through the MTA's delivery results."""

from __future__ import annotations

from typing import Any


async def test_mailbox_table_and_simulator_addresses(stack: Any, store_kind: str) -> None:
    await stack.start(store=store_kind)
    recipients = [
        "someone@isp.test",
        "nobody@isp.test",
        "unknown42@isp.test",
        "full1@isp.test",
        "disabled7@isp.test",
        "success@isp.test",
        "bounce@isp.test",
        "suppressionlist@isp.test",
        "someone@implicit.test",
    ]
    await stack.submit(recipients)
    rows = await stack.run_until(lambda rows: len(rows) == len(recipients))
    assert rows["someone@isp.test"].state == "delivered"
    assert rows["someone@implicit.test"].state == "delivered"  # no MX: the A record
    assert rows["success@isp.test"].state == "delivered"
    for address in ("nobody@isp.test", "unknown42@isp.test", "bounce@isp.test"):
        row = rows[address]
        assert (row.state, row.code, row.enhanced, row.phase) == ("bounced", 550, "5.1.1", "rcpt")
        assert "User unknown" in row.text
    disabled = rows["disabled7@isp.test"]
    assert (disabled.state, disabled.code, disabled.enhanced) == ("bounced", 550, "5.2.1")
    suppressed = rows["suppressionlist@isp.test"]
    assert (suppressed.code, suppressed.enhanced) == (550, "5.1.1")
    assert "suppression list" in suppressed.text
    full = rows["full1@isp.test"]
    assert (full.state, full.code, full.enhanced) == ("queued", 452, "4.2.2")
    # what arrived: the accepted recipients, each exactly once
    persona = stack.sim.personas["isp"]
    delivered = sorted(
        line.split(b": ", 1)[1]
        for stored in persona.stored()
        for line in stored.split(b"\r\n")[:5]
        if line.startswith(b"Delivered-To: ")
    )
    assert delivered == [b"someone@implicit.test", b"someone@isp.test", b"success@isp.test"]
    stats = stack.sim.stats()["personas"]["isp"]
    assert stats["accepted"] == stats["stored"] == len(persona.stored())
    assert stats["recipients_accepted"] == 3
    assert stats["rejected"] == {"452": 1, "550": 5}
