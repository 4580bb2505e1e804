"""The user's commands as processes: `mta demo` ends every recipient as designed, and
`mta up` runs the MTA with the simulated ISPs until SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

from mta.cli.demo import CATEGORIES
from mta.cli.topology import PERSONA_HOSTS_DEFAULT, free_common_port, free_port
from tests.helpers import wait_for


def test_demo_every_recipient_ends_as_designed(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mta",
            "demo",
            "--recipients",
            "24",
            "--time-scale",
            "30000",
            "--json",
            "--data-dir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["mismatches"] == [] and summary["not_final"] == 0
    assert summary["total"] == 24
    by_category = {row["category"]: row for row in summary["categories"]}
    assert set(by_category) == {c.name for c in CATEGORIES}
    for category in CATEGORIES:
        row = by_category[category.name]
        assert row["count"] >= 1 and row["got"] == {category.expected: row["count"]}
        if category.reason:
            assert row["reasons"] == {category.reason: row["count"]}, category.name
    assert summary["by_status"]["Sent"] + summary["by_status"]["Failed"] == 24
    assert 0 < summary["success_pct"] < 100
    assert summary["success_pct"] == summary["designed_success_pct"]
    assert any(site["throttled"] for site in summary["sites"])  # the throttled row was seen
    assert summary["processes"] == {"mta": 0, "sim": 0}  # both stopped cleanly


async def test_up_serves_until_sigterm(tmp_path: Path) -> None:
    smtp, admin, dns = free_port(), free_port(), free_port()
    personas = free_common_port(PERSONA_HOSTS_DEFAULT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mta",
        "up",
        "--data-dir",
        str(tmp_path),
        "--time-scale",
        "100",
        "--listen",
        f"127.0.0.1:{smtp}",
        "--admin",
        f"127.0.0.1:{admin}",
        "--dns",
        f"127.0.0.1:{dns}",
        "--sim-http",
        f"127.0.0.1:{free_port()}",
        "--persona-port",
        str(personas),
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
        assert line.startswith("mta up: submit mail to"), line
        message = EmailMessage()
        message["From"] = "news@campaign.test"
        message["To"] = "alice@gmail.test"
        message["Subject"] = "up"
        message.set_content("hello")
        with smtplib.SMTP("127.0.0.1", smtp) as client:
            client.send_message(message, from_addr="bounces@campaign.test")

        def arrived() -> bool:
            listing = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mta",
                    "sim",
                    "ls",
                    "--data-dir",
                    str(tmp_path / "sim"),
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            return any("alice@gmail.test" in m["recipients"] for m in json.loads(listing.stdout))

        await wait_for(arrived, timeout=30)
        sites = subprocess.run(
            [sys.executable, "-m", "mta", "queue", "sites", "--api", f"http://127.0.0.1:{admin}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "gmail" in sites.stdout
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
