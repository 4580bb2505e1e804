"""The layering DESIGN.md asks for, checked on the source: the pure core does no I/O and
reads no clock (it imports no sockets, threads, processes, databases or time). That the
Campaign-side client never imports the MTA is checked in tests/client."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import imported

ROOT = Path(__file__).resolve().parents[2]
CORE = sorted((ROOT / "mta" / "core").glob("*.py"))
FORBIDDEN_IN_CORE = {
    "asyncio",
    "socket",
    "sqlite3",
    "time",
    "threading",
    "subprocess",
    "aiohttp",
    "aiosmtplib",
    "aiosmtpd",
    "dns",
    "uvloop",
}
ALLOWED_PROJECT_IN_CORE = {"mta.model", "mta.core", "mta.durations"}
# The rule engine loads its rule files (next to its pure classifier) and reports a bad
# file with the config engine's error type.
EXCEPTIONS = {"bounce.py": {"mta.settings"}}


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_modules_are_pure(path: Path) -> None:
    for name in imported(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN_IN_CORE, f"{path.name} imports {name}"
        if top == "mta":
            allowed = ALLOWED_PROJECT_IN_CORE | EXCEPTIONS.get(path.name, set())
            assert any(name == a or name.startswith(a + ".") for a in allowed), (
                f"{path.name} imports {name}"
            )
