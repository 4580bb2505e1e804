"""Fixtures the shell tests share: a sink that accepts everything, a scripted next hop and a
webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mta.cli.sink import Sink
from tests.helpers import Hook, ScriptedHandler, ScriptedServer


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await Sink.start()
    yield server
    await server.close()


@pytest.fixture
async def receiver() -> AsyncIterator[ScriptedServer]:
    """A next hop that accepts everything until the test scripts its replies
    (`receiver.handler.rcpt`, `.dot`, ...) and records what it received."""
    server = await ScriptedServer.start(ScriptedHandler())
    yield server
    await server.close()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    receiver = Hook()
    await receiver.start()
    yield receiver
    await receiver.stop()
