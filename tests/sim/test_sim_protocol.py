"""The persona's SMTP details on a raw socket: data framing, pipelined replies, greeting refusal."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mta.clock import ManualClock
from mta.sim.config import SimConfig
from mta.sim.simulation import Simulation
from mta.sim.store import STORES
from mta.smtp.maildir import strip_trace

PERSONA = """
[[personas]]
name = "isp"
domains = ["isp.test"]
mx = [{ name = "mx.isp.test", address = "{net}.15" }]
banner = "ESMTP Postfix"
[personas.limits]
max_message_size = 2000
sessions = 1
"""


@pytest.fixture
async def sim(
    net: str,
    tmp_path: Path,
    make_config: Callable[..., SimConfig],
    request: pytest.FixtureRequest,
) -> AsyncIterator[Any]:
    config = make_config(net, PERSONA)
    store = getattr(request, "param", config.sim.store)  # indirect: the store to use
    config = dataclasses.replace(config, sim=dataclasses.replace(config.sim, store=store))
    running = await Simulation.start(config, ManualClock(), tmp_path)
    yield running
    await running.stop()


async def reply(reader: asyncio.StreamReader) -> bytes:
    lines = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), 5)
        lines += line
        if line[3:4] != b"-":
            return lines


async def session(sim: Any, net: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(f"{net}.15", sim.smtp_port)
    assert (await reply(reader)) == b"220 mx.isp.test ESMTP Postfix\r\n"
    writer.write(b"EHLO client.test\r\n")
    assert (await reply(reader)).startswith(b"250-mx.isp.test\r\n250-PIPELINING")
    return reader, writer


@pytest.mark.parametrize("sim", STORES, indirect=True)
async def test_data_framing_and_pipelined_replies(sim: Any, net: str) -> None:
    reader, writer = await session(sim, net)
    bodies = [
        b"",  # the terminator right after 354
        b"\r\n",  # one empty line
        b"Subject: dots\r\n\r\n..leading dot\r\nends with a dot.\r\n...\r\nlast.\r\n",
    ]
    for body in bodies:
        # MAIL, RCPT and DATA in one write: the three replies come back in one read
        writer.write(b"MAIL FROM:<s@campaign.test>\r\nRCPT TO:<u@isp.test>\r\nDATA\r\n")
        first = await asyncio.wait_for(
            reader.readuntil(b"354 End data with <CR><LF>.<CR><LF>\r\n"), 5
        )
        assert first == (b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n")
        writer.write(body + b".\r\n")
        assert (await reply(reader)).startswith(b"250 2.0.0 OK ")
    writer.write(b"MAIL FROM:<s@campaign.test>\r\nRCPT TO:<u@isp.test>\r\nDATA\r\n")
    await reply(reader), await reply(reader), await reply(reader)
    writer.write(b"x" * 80 + b"\r\n" + (b"y" * 78 + b"\r\n") * 30 + b".\r\n")
    assert (await reply(reader)).startswith(b"552 5.3.4")  # over max_message_size
    writer.write(b"QUIT\r\n")
    assert (await reply(reader)).startswith(b"221")
    writer.close()
    stored = [strip_trace(m) for m in sim.personas["isp"].stored()]
    assert stored == [  # byte for byte as sent, dot-unstuffed, in arrival order
        b"",
        b"\r\n",
        b"Subject: dots\r\n\r\n.leading dot\r\nends with a dot.\r\n..\r\nlast.\r\n",
    ]
    assert sim.stats()["personas"]["isp"]["stored"] == 3


@pytest.mark.parametrize("sim", STORES, indirect=True)
async def test_a_store_failure_is_a_451_not_a_250(sim: Any, net: str) -> None:
    sim.store.close()  # SQLite: a closed connection; Maildir: nothing yet, so break the dir
    maildir = sim.data_dir / "personas" / "isp" / "Maildir"
    if sim.store.kind == "maildir":
        (maildir / "tmp").rmdir()
    reader, writer = await session(sim, net)
    writer.write(b"MAIL FROM:<s@campaign.test>\r\nRCPT TO:<u@isp.test>\r\nDATA\r\n")
    await reply(reader), await reply(reader), await reply(reader)
    writer.write(b"Subject: lost\r\n\r\nbody\r\n.\r\n")
    assert await reply(reader) == b"451 4.3.0 Temporary local problem, please try again later\r\n"
    writer.write(b"QUIT\r\n")
    await reply(reader)
    writer.close()
    stats = sim.stats()["personas"]["isp"]
    assert (stats["accepted"], stats["stored"], stats["rejected"]) == (0, 0, {"451": 1})


async def test_greeting_refusal_over_the_session_cap(sim: Any, net: str) -> None:
    reader, writer = await session(sim, net)  # the one session allowed
    second_reader, second_writer = await asyncio.open_connection(f"{net}.15", sim.smtp_port)
    refusal = await reply(second_reader)
    # no throttle_connections reply: the throttle reply, as a 421 (a greeting refusal)
    assert refusal.startswith(b"421 4.7.1 Client host [127.0.0.1] rejected: too many messages")
    assert await asyncio.wait_for(second_reader.read(), 5) == b""  # closed after the 421
    second_writer.close()
    writer.write(b"QUIT\r\n")
    await reply(reader)
    writer.close()
    stats = sim.stats()["personas"]["isp"]
    assert stats["sessions"]["refused"] == 1 and stats["sessions"]["max"] == 2
