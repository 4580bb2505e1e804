"""A new user's first hour, through the `mta` command as processes: bad flag values are
one line naming the flag, orchestrators' variables do not stop a start, output into a
closed pipe ends quietly, `--version` and every flag's help exist, AUTH logs no warning."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from mta.cli.main import build_parser
from tests.helpers import mta_config, started

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
    process = await asyncio.create_subprocess_exec(
        MTA,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "",
        "--data-dir",
        str(tmp_path / "mta"),
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        while not any(line.startswith("mta: listening on") for line in lines):
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "\n".join(lines)
            lines.append(line)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
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
    import aiosmtplib

    from mta.smtp.tls import write_self_signed

    cert, key = write_self_signed(tmp_path / "tls", "mta.test")
    config = mta_config(
        tmp_path,
        smtp__relay_networks=("10.0.0.0/8",),
        smtp__tls_cert=str(cert),
        smtp__tls_key=str(key),
        delivery__relayhost="127.0.0.1:9",
    )
    import dataclasses

    config = dataclasses.replace(
        config, smtp=dataclasses.replace(config.smtp, auth_users={"campaign": "s3cret"})
    )
    app = await started(config)
    caplog.set_level(logging.DEBUG)
    try:
        host, port = app.smtp_address
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.starttls(
            tls_context=ssl.create_default_context(cafile=str(cert)), server_hostname="mta.test"
        )
        await smtp.ehlo()
        assert (await smtp.login("campaign", "s3cret")).code == 235
        errors, response = await smtp.sendmail(
            "a@b.test", ["c@d.test"], b"Subject: x\r\n\r\nhi\r\n"
        )
        assert errors == {} and "queued" in response
        await smtp.quit()
    finally:
        await app.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in warnings if "deprecated" in r.getMessage().lower()]
