"""`mta serve` as a real process: SIGKILL loses nothing that was acknowledged, recipients that
were in flight are picked up again at once after a restart, SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mta.cli.sink import Sink
from tests.helpers import (
    SECRET,
    Hook,
    ScriptedHandler,
    ScriptedServer,
    events_of,
    send_message,
    spool_rows,
    wait_for,
)

MESSAGE = b"From: a@sender.test\r\nTo: r@dest.test\r\nSubject: crash\r\n\r\nbody\r\n"


class Serve:
    """A running `python -m mta serve` with its listening port (and admin API URL, when
    `--admin HOST:PORT` is among `extra`) read from stderr."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, admin: str = "") -> None:
        self.process = process
        self.port = port
        self.admin = admin

    @classmethod
    async def start(
        cls, data_dir: Path, relay_port: int, *extra: str, **env_overrides: str
    ) -> Serve:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
        env.update(env_overrides)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mta",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--relayhost",
            f"127.0.0.1:{relay_port}",
            "--admin",
            "",
            *extra,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert process.stderr is not None
        admin = ""
        while True:
            line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
            if not line:
                raise AssertionError("mta serve exited before listening")
            if match := re.match(r"mta: admin API on (\S+)/$", line):
                admin = match.group(1)  # printed just before the line below
            if match := re.match(r"mta: listening on 127\.0\.0\.1:(\d+)$", line):
                return cls(process, int(match.group(1)), admin)

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


@pytest.fixture
async def stalling() -> AsyncIterator[ScriptedServer]:
    handler = ScriptedHandler(stall_dot=asyncio.Event())
    server = await ScriptedServer.start(handler)
    yield server
    assert handler.stall_dot is not None
    handler.stall_dot.set()
    await server.close()


async def test_sigkill_loses_nothing_acknowledged(tmp_path: Path) -> None:
    # Delivery is refused (nothing listens on the relay port) so every message stays queued.
    refused = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    dead_port = refused.sockets[0].getsockname()[1]
    refused.close()
    mta = await Serve.start(tmp_path, dead_port, MTA_RETRY_FIRST="1s", MTA_RETRY_JITTER="0")
    replies = await asyncio.gather(
        *(
            send_message("127.0.0.1", mta.port, "b@sender.test", [f"r{i}@dest.test"], MESSAGE)
            for i in range(40)
        )
    )
    await mta.kill()
    acknowledged = [r.split()[2] for r in replies if r.startswith("250")]
    assert len(acknowledged) == 40
    sink = await Sink.start(maildir=tmp_path / "maildir")
    mta = await Serve.start(tmp_path, sink.port, MTA_RETRY_FIRST="1s", MTA_RETRY_JITTER="0")
    try:
        await wait_for(lambda: sink.handler.received == 40, timeout=30)
        queue_ids = {row[0] for row in spool_rows(tmp_path, "SELECT queue_id FROM messages")}
        assert set(acknowledged) <= queue_ids
        await wait_for(
            lambda: (
                spool_rows(tmp_path, "SELECT state, COUNT(*) FROM recipients GROUP BY state")
                == [("delivered", 40)]
            )
        )
    finally:
        assert await mta.terminate() == 0
        await sink.close()


async def test_recipients_in_flight_at_a_kill_are_retried_at_once_as_possible_duplicates(
    tmp_path: Path, stalling: ScriptedServer
) -> None:
    mta = await Serve.start(tmp_path, stalling.port)
    await send_message("127.0.0.1", mta.port, "b@sender.test", ["r@dest.test"], MESSAGE)
    await wait_for(lambda: spool_rows(tmp_path, "SELECT leased FROM recipients") == [(1,)])
    await mta.kill()
    sink = await Sink.start()
    # Restarted with the default schedule (first retry after 10 minutes): a recovered lease
    # is due at once, it does not wait for a retry.
    mta = await Serve.start(tmp_path, sink.port)
    try:
        await wait_for(lambda: sink.handler.received == 1, timeout=10)
        await wait_for(lambda: events_of(tmp_path)[-1]["kind"] == "delivered")
        assert events_of(tmp_path)[-1]["possible_duplicate"] is True
        assert [e["kind"] for e in events_of(tmp_path)] == ["relayed", "delivered"]
    finally:
        assert await mta.terminate() == 0
        await sink.close()


async def test_events_committed_before_a_kill_reach_the_webhook_after_restart(
    tmp_path: Path,
) -> None:
    hook = Hook()
    await hook.start()
    port = hook.port
    await hook.stop()  # the endpoint is down while the MTA works
    config = tmp_path / "mta.toml"
    config.write_text(
        f'[[feedback.webhooks]]\nurl = "http://127.0.0.1:{port}/efs"\nsecret = "{SECRET}"\n'
    )
    sink = await Sink.start()
    mta = await Serve.start(tmp_path, sink.port, "--config", str(config))
    try:
        await send_message("127.0.0.1", mta.port, "b@sender.test", ["r@dest.test"], MESSAGE)
        await wait_for(lambda: [e["kind"] for e in events_of(tmp_path)] == ["relayed", "delivered"])
        await mta.kill()
        hook = Hook()
        await hook.start(port)
        mta = await Serve.start(tmp_path, sink.port, "--config", str(config))
        await wait_for(lambda: len(hook.events) == 2, timeout=20)
        assert [e["kind"] for e in hook.events] == ["relayed", "delivered"]
        assert hook.bad_signatures == 0
    finally:
        assert await mta.terminate() == 0
        await hook.stop()
        await sink.close()
