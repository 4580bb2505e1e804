"""Browser tests: each gets its own loopback network, like the sim's tests."""

from __future__ import annotations

import pytest

from tests.simnet import new_net


@pytest.fixture
def net() -> str:
    return new_net()
