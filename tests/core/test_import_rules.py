"""The layering DESIGN.md asks for, checked on the source: the pure core does no I/O and
reads no clock (it imports no sockets, threads, processes, databases or time), and the
Campaign-side client never imports the MTA (their contract is SMTP and JSON)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


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


def test_the_client_never_imports_the_mta() -> None:
    for path in sorted((ROOT / "campaign_client").glob("*.py")):
        assert not any(n.split(".")[0] == "mta" for n in imported(path)), path.name
