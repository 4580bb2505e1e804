"""A new user's first hour, through the `mta` command as processes: bad flag values are
one line naming the flag, orchestrators' variables do not stop a start, output into a
closed pipe ends quietly, `--version` and every flag's help exist, AUTH logs no warning."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mta.cli.main import build_parser
from mta.cli.topology import PERSONA_HOSTS_DEFAULT, free_common_port, free_port
from tests.helpers import auth_config, serve_until_listening, started, tls_session

MTA = str(Path(sys.executable).with_name("mta"))
CLIENT = str(Path(sys.executable).with_name("campaign-client"))


def run(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0"])
@pytest.mark.parametrize("command", ["serve", "up", "demo", "sim"])
def test_a_bad_time_scale_is_one_line_naming_the_flag(command: str, value: str) -> None:
    done = run(MTA, command, f"--time-scale={value}")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("mta: --time-scale: expected a positive number"), line


def test_a_bad_config_value_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    for text, key in (
        ("[clock]\ntime_scale = nan\n", "clock.time_scale"),
        ("[dns]\nnameservers = ['my-resolver']\n", "dns"),
        ("[retry]\nfactor = inf\n", "retry.factor"),
    ):
        config = tmp_path / "mta.toml"
        config.write_text(text)
        done = run(MTA, "serve", "--config", str(config))
        assert done.returncode == 2 and "Traceback" not in done.stderr
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"mta: {config}: {key}"), line


async def test_kubernetes_service_variables_warn_and_the_mta_starts(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "MTA_SERVICE_HOST": "10.0.0.1",
        "MTA_SERVICE_PORT": "2525",
        "MTA_SMTP_HOSTNAM": "mx.test",
    }
    argv = [MTA, "serve", "--listen", "127.0.0.1:0", "--admin", ""]
    lines = await serve_until_listening([*argv, "--data-dir", str(tmp_path / "mta")], env=env)
    warnings = [line for line in lines if line.startswith("mta: warning: ")]
    assert len(warnings) == 3, lines
    assert any("MTA_SMTP_HOSTNAM ignored (did you mean MTA_SMTP_HOSTNAME?)" in w for w in warnings)
    assert any("unknown variable MTA_SERVICE_HOST ignored" in w for w in warnings)


@pytest.mark.parametrize(
    "argv",
    [
        (MTA, "sim", "ls", "--data-dir", "{tmp}"),
        (MTA, "classify", "550 5.1.1 user unknown"),
        (MTA, "--help"),
        (CLIENT, "--help"),
    ],
)
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, argv: tuple[str, ...]) -> None:
    """As `mta sim ls | head -1` when head has gone: no "[Errno 32] Broken pipe", no
    traceback, the status of a process ended by SIGPIPE."""
    command = [part.replace("{tmp}", str(tmp_path)) for part in argv]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the command writes anything
    stderr = process.stderr.read().decode()
    status = process.wait(timeout=60)
    assert stderr == ""
    assert status in (141, 0)  # argparse's --help exits 0 itself after a failed write
    if argv[1] != "--help":
        assert status == 141


def test_version() -> None:
    done = run(MTA, "--version")
    assert done.returncode == 0
    assert re.fullmatch(r"mta \d+\.\d+\.\d+\n", done.stdout)


def test_every_flag_of_every_command_has_help() -> None:
    missing: list[str] = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.option_strings and not action.help:
                missing.append(f"{path} {action.option_strings[0]}")

    walk(build_parser(), "mta")
    assert missing == []
    up_help = run(MTA, "up", "--help").stdout
    for flag in ("--time-scale X", "--admin HOST:PORT", "--sim-http HOST:PORT", "--seed N"):
        line = next(line for line in up_help.splitlines() if line.strip().startswith(flag))
        assert line.strip() != flag  # the help text follows on the same line


async def test_a_successful_auth_logs_no_deprecation_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, cert = auth_config(tmp_path)
    app = await started(config)
    caplog.set_level(logging.DEBUG)
    try:
        smtp = await tls_session(app, cert)
        assert (await smtp.login("campaign", "s3cret")).code == 235
        errors, response = await smtp.sendmail(
            "a@b.test", ["c@d.test"], b"From: a@b.test\r\nSubject: x\r\n\r\nhi\r\n"
        )
        assert errors == {} and "queued" in response
        await smtp.quit()
    finally:
        await app.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in warnings if "deprecated" in r.getMessage().lower()]


def up_argv(tmp_path: Path, smtp: int) -> list[str]:
    return [
        MTA,
        "up",
        "--data-dir",
        str(tmp_path / "var"),
        "--listen",
        f"127.0.0.1:{smtp}",
        "--admin",
        f"127.0.0.1:{free_port()}",
        "--dns",
        f"127.0.0.1:{free_port()}",
        "--sim-http",
        f"127.0.0.1:{free_port()}",
        "--persona-port",
        str(free_common_port(PERSONA_HOSTS_DEFAULT)),
    ]


def test_up_names_a_port_in_use_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run(*up_argv(tmp_path, port))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert f"in use already: TCP port {port} on 127.0.0.1 (--listen)" in line, line
    assert not (tmp_path / "var" / "sim.log").exists()  # no process was started


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_up_shows_the_end_of_a_failing_childs_log(tmp_path: Path) -> None:
    process = subprocess.Popen(up_argv(tmp_path, free_port()), stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        line = process.stderr.readline()
        assert line.startswith("mta up: submit mail to"), line
        (sim,) = [
            pid
            for pid in children(process.pid)
            if b"\0sim\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        os.kill(sim, signal.SIGKILL)  # the sim child this test's `mta up` started
        rest = process.stderr.read()  # up says why and stops: its stderr closes
        status = process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=90)
    assert status == 1
    log = tmp_path / "var" / "sim.log"
    assert f"mta up: sim exited with status -9; the end of {log}:" in rest
    last = [x for x in log.read_text().splitlines() if x.strip()][-1]
    assert f"  {last}" in rest.splitlines()


def test_demo_results_go_to_stdout_and_progress_to_stderr(tmp_path: Path) -> None:
    """As `make demo > f` does: the file gets the results; off a terminal the progress is
    a few lines, each a change, never the table again and again."""
    done = run(
        MTA,
        "demo",
        "--recipients",
        "24",
        "--time-scale",
        "30000",
        "--data-dir",
        str(tmp_path / "demo"),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mta demo: every recipient ended as designed" in done.stdout
    assert "per site:" in done.stdout and "Sent" in done.stdout
    assert done.stderr.startswith("mta demo: 24 recipients")
    assert "per site:" not in done.stderr and "every recipient" not in done.stderr
    assert "\x1b[" not in done.stderr  # no cursor movement off a terminal
    progress = [line for line in done.stderr.splitlines() if "not final yet" in line]
    assert len(progress) == len(set(progress))  # each line says something new
