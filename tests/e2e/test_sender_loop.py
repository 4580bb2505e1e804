"""The README's sender loop, run as written: the commands are read from the README's "The
sender loop" section and run as processes in a fresh directory. Only what the README lets a
user set is changed: the listen addresses of `mta up` (its documented flags) and, to match,
the `--mta` address of `send`, so the test runs beside other processes holding 2525/8080."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mta.cli.topology import free_common_port, free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
PERSONAS = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.15"]
BOUNCE_HOST = "127.0.0.20"
ENV_DROPPED = ("CAMPAIGN_CLIENT_LOG", "CAMPAIGN_CLIENT_CONFIG", "CAMPAIGN_CLIENT_SECRET",
               "WEBHOOK_SECRET", "MTA_FEEDBACK_URL", "MTA_FEEDBACK_SECRET")


def readme_commands() -> list[list[str]]:
    """The indented command lines of the README's "### The sender loop" section."""
    text = README.read_text(encoding="utf-8")
    start = text.index("### The sender loop")
    end = text.index("\n#", start + 1)
    section = text[start:end].split("How the pieces are wired")[0]
    lines = [line[4:] for line in section.splitlines() if line.startswith("    ")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


def program(argv: list[str]) -> list[str]:
    """The installed console script of the command (as a user's shell would find it)."""
    script = Path(sys.executable).parent / argv[0]
    assert script.exists(), f"{argv[0]} is not installed beside {sys.executable}"
    return [str(script), *argv[1:]]


def count(table: str, label: str) -> int:
    match = re.search(rf"^  {re.escape(label)}\s+(\d+)\s", table, re.MULTILINE)
    assert match is not None, f"no {label!r} row in:\n{table}"
    return int(match.group(1))


@pytest.mark.timeout(600)
def test_the_readme_sender_loop_ends_with_every_recipient_sent_or_failed(
    tmp_path: Path,
) -> None:
    commands = readme_commands()
    assert commands[0][:3] == ["mta", "up", "--client"], commands
    assert "--time-scale" in commands[0]
    assert [argv[:3] for argv in commands[1:]] == [
        ["campaign-client", "send", "--mta"], ["campaign-client", "report", "D1"],
        ["campaign-client", "report", "D1"], ["campaign-client", "quarantine", "ls"],
        ["campaign-client", "send", "--mta"], ["campaign-client", "report", "D2"]]

    smtp = free_port()
    up = [*commands[0], "--listen", f"127.0.0.1:{smtp}", "--admin", f"127.0.0.1:{free_port()}",
          "--dns", f"127.0.0.1:{free_port()}", "--sim-http", f"127.0.0.1:{free_port()}",
          "--persona-port", str(free_common_port([*PERSONAS, BOUNCE_HOST], tries=50)),
          "--webhook", f"127.0.0.1:{free_port()}"]
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    stderr = open(tmp_path / "up.stderr", "w+b")  # noqa: SIM115 - closed below
    process = subprocess.Popen(program(up), cwd=tmp_path, env=env, stderr=stderr)
    results = []
    try:
        deadline = time.monotonic() + 120
        while b"mta up: submit mail to" not in (tmp_path / "up.stderr").read_bytes():
            assert process.poll() is None, (tmp_path / "up.stderr").read_text()
            assert time.monotonic() < deadline, "mta up did not start in 120 s"
            time.sleep(0.2)
        for argv in commands[1:]:
            if argv[1] == "send":
                at = argv.index("--mta") + 1
                assert argv[at] == "127.0.0.1:2525"
                argv = [*argv[:at], f"127.0.0.1:{smtp}", *argv[at + 1:]]
            done = subprocess.run(program(argv), cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=420)
            assert done.returncode == 0, f"{shlex.join(argv)}:\n{done.stderr[-3000:]}"
            results.append(done)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
        stderr.close()
    assert code == 0, (tmp_path / "up.stderr").read_text()[-3000:]
    assert (tmp_path / "var" / "campaign-log.sqlite").is_file()   # the one default location

    # D1: every recipient Sent or Failed; failures by type add up to the Failed count
    report = results[1].stdout
    sent, failed = count(report, "Sent"), count(report, "Failed")
    assert sent + failed == 500 and sent > 0
    assert count(report, "Pending") == 0
    assert count(report, "Taken into account by the service provider") == 0
    by_type = re.search(r"^Failures by type \(Failed lines\): (.*)$", report, re.MULTILINE)
    if failed:
        assert by_type is not None
        assert sum(int(n) for n in re.findall(r" (\d+)(?:,|$)", by_type.group(1))) == failed
    assert results[2].stdout.strip().splitlines()[-1] == f"{failed} recipients"

    # D2 leaves out every address that was in quarantine or denylisted after D1
    listing = results[3].stdout.strip().splitlines()
    assert listing[0].startswith("address")
    held = {line.split()[0] for line in listing[1:-1]
            if line.split()[1] in ("Quarantine", "Denylisted")}
    excluded_lines = results[5].stdout.strip().splitlines()
    excluded = {line.split()[1] for line in excluded_lines[:-1] if "Excluded" in line}
    assert held and held <= excluded     # the ISPs' seeded faults (seed 1) give hard bounces
    assert excluded_lines[-1] == f"{len(excluded)} recipients"
    second = results[4]
    if excluded:
        assert f"excluded {len(excluded)} recipients before submission" in second.stderr
    assert f"Delivery D2: {500 - len(excluded)} recipients" in second.stdout
    assert count(second.stdout, "Sent") + count(second.stdout, "Failed") == 500 - len(excluded)
