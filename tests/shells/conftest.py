"""Fixtures the shell tests share: a sink that accepts everything and a webhook receiver."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mta.cli.sink import Sink
from tests.helpers import Hook


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await Sink.start()
    yield server
    await server.close()


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    receiver = Hook()
    await receiver.start()
    yield receiver
    await receiver.stop()
