"""Boundaries: campaign_client never imports mta; the pure modules do no I/O; terminal output."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
from pathlib import Path

import campaign_client
from campaign_client.cli import LiveTable, ProgressBar
from campaign_client.indicators import Row, compute_kpis
from tests.helpers import imported

PACKAGE = Path(campaign_client.__file__).resolve().parent
PURE = {"status", "events", "indicators", "webhook", "inbound"}
IO_MODULES = {
    "asyncio",
    "socket",
    "sqlite3",
    "aiohttp",
    "aiosmtpd",
    "aiosmtplib",
    "time",
    "subprocess",
    "threading",
}


def test_campaign_client_never_imports_mta() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 10
    for path in files:
        bad = {name for name in imported(path) if name == "mta" or name.startswith("mta.")}
        assert not bad, f"{path.name} imports {bad}"


def test_no_mta_module_is_loaded_by_the_whole_client() -> None:
    code = (
        "import sys, campaign_client.cli, campaign_client.receiver, campaign_client.submission,"
        " campaign_client.pull, campaign_client.wait;"
        " print(sorted(m for m in sys.modules if m == 'mta' or m.startswith('mta.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True
    ).stdout
    assert out.strip() == "[]"


def test_pure_modules_import_no_io() -> None:
    for name in PURE:
        roots = {module.split(".")[0] for module in imported(PACKAGE / f"{name}.py")}
        assert not roots & IO_MODULES, f"{name}.py imports {roots & IO_MODULES}"


def test_progress_bar_on_a_tty_redraws_one_line() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=True, width=10)
    bar(1, 4)
    bar(4, 4)
    bar.finish()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "[##########] 4/4 100.0%" in text


def test_progress_without_a_tty_prints_lines() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=False)
    bar(1, 2)
    bar(2, 2)
    assert stream.getvalue().splitlines()[-1].startswith("submitting: 2/2 (100.0%")


def test_live_table_redraws_in_place_on_a_tty() -> None:
    stream = io.StringIO()
    live = LiveTable(stream, tty=True)
    live.update(compute_kpis("D", [Row("Sent", count=2)]))
    live.last = 0.0
    live.update(compute_kpis("D", [Row("Sent", count=3)]))
    live.close()
    text = stream.getvalue()
    assert "\x1b[" in text and "Delivery D: 3 recipients" in text


def test_no_name_is_both_a_module_and_a_function() -> None:
    """Each name means one thing: no module of the package defines a function or class named
    like one of its modules, and no name of `__all__` is a module (a function named like its
    module turns into the module once that module is imported)."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {path.stem for path in files} | {path.parent.name for path in files}
    assert {"submission", "indicators", "bounces"} <= modules
    assert not set(campaign_client.__all__) & modules
    for path in files:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                assert node.name not in modules, f"{path.name} defines {node.name}, a module too"


def test_importing_every_module_leaves_the_exported_functions_functions() -> None:
    code = (
        "import importlib, pkgutil, campaign_client\n"
        "for m in pkgutil.iter_modules(campaign_client.__path__):\n"
        "    if m.name != '__main__':\n"
        "        importlib.import_module('campaign_client.' + m.name)\n"
        "from campaign_client import submit, kpis\n"
        "assert callable(submit) and callable(kpis), (submit, kpis)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
