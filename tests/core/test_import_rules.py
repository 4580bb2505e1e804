"""The layering the folders promise, checked on the source.

- `mta/core` is pure: no sockets, threads, processes, databases or clock, and of the project
  only `mta.model` and itself.
- No stage of the service (ingress, queue, delivery, feedback, admin, config, smtp, the wiring
  in app.py) and nothing of the simulation imports a command (`mta.cli`).
- The simulation talks to the MTA over the network only: it imports the shared pieces
  (model, clock, the SQLite opener, smtp, the config engine, core's pure helpers), never a
  stage.
- The shared folders (config, smtp) import no stage of the service.
- No import circle anywhere in `mta`, counting imports inside functions too.
That the Campaign-side client never imports the MTA is checked in tests/client.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import imported

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mta"
CORE = sorted((PACKAGE / "core").glob("*.py"))
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
ALLOWED_PROJECT_IN_CORE = ("mta.model", "mta.core")
STAGES = ("ingress", "queue", "delivery", "feedback", "admin", "config", "smtp", "sim", "core")
ALLOWED_IN_SIM = (
    "mta.sim", "mta.model", "mta.clock", "mta.sqlite", "mta.smtp", "mta.config.engine", "mta.core"
)
SERVICE = ("mta.ingress", "mta.queue", "mta.delivery", "mta.feedback", "mta.admin", "mta.app")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports; `from mta.cli import demo` counts as mta.cli.demo."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "mta")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "mta":
                continue
            modules = {f"{node.module}.{a.name}" for a in node.names}
            names.update(modules if modules <= MODULES.keys() else {node.module})
    return names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_modules_are_pure(path: Path) -> None:
    for name in imported(path):
        top = name.split(".")[0]
        assert top not in FORBIDDEN_IN_CORE, f"{path.name} imports {name}"
        if top == "mta":
            assert _within(name, ALLOWED_PROJECT_IN_CORE), f"{path.name} imports {name}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_a_command(stage: str) -> None:
    files = sorted((PACKAGE / stage).rglob("*.py"))
    assert files, f"mta/{stage} is empty"
    for path in [*files, PACKAGE / "app.py", PACKAGE / "model.py", PACKAGE / "clock.py"]:
        bad = {n for n in imported(path) if _within(n, ("mta.cli",))}
        assert not bad, f"{path.relative_to(ROOT)} imports the command(s) {sorted(bad)}"


def test_the_simulation_never_imports_the_service() -> None:
    for path in sorted((PACKAGE / "sim").rglob("*.py")):
        for name in project_imports(path):
            assert not _within(name, SERVICE), f"{path.name} imports the service's {name}"
            assert _within(name, ALLOWED_IN_SIM), f"{path.name} imports {name}"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of the graph (as a path a -> ... -> a), or None."""
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> list[str] | None:
        if name in trail:
            return [*trail[trail.index(name) :], name]
        if name in done:
            return None
        for dep in sorted(graph.get(name, ())):
            found = visit(dep, [*trail, name])
            if found:
                return found
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name, [])
        if found:
            return found
    return None


@pytest.mark.parametrize(
    ("folder", "allowed"),
    [
        ("config", ("mta.config", "mta.core", "mta.model")),
        ("smtp", ("mta.smtp", "mta.core", "mta.model", "mta.config.engine")),
    ],
)
def test_shared_folders_import_no_stage(folder: str, allowed: tuple[str, ...]) -> None:
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for name in project_imports(path):
            assert _within(name, allowed), f"mta/{folder}/{path.name} imports {name}"


def test_no_import_circles() -> None:
    graph = {name: project_imports(path) - {name} for name, path in MODULES.items()}
    # Importing mta.a.b runs mta/a/__init__.py first: the package is a dependency too.
    for deps in graph.values():
        for dep in list(deps):
            parent = dep.rsplit(".", 1)[0]
            if parent in MODULES and parent != "mta":
                deps.add(parent)
    assert "mta.cli.demo" in graph["mta.cli.main"]  # `from mta.cli import demo` is seen
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_circle_finder_finds_circles() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
