"""`mta up --nodes 3`: three MTA nodes on consecutive ports sharing one real Redis
server, with the simulated ISPs; mail submitted to any node arrives, every node says in
/readyz that it shares its limits, and `mta queue sites` shows every node's share."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import socket
import subprocess
import sys
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from mta.cli.topology import PERSONA_HOSTS_DEFAULT, free_common_port, free_port
from tests.helpers import wait_for


def consecutive_ports(count: int, tries: int = 50) -> int:
    """The first of `count` consecutive ports free on 127.0.0.1."""
    for _ in range(tries):
        base = free_port()
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise OSError("no consecutive free ports")


def readyz(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
        return str(response.read().decode())


async def test_up_runs_three_nodes_sharing_one_redis(tmp_path: Path) -> None:
    smtp, admin, redis = consecutive_ports(3), consecutive_ports(3), free_port()
    personas = free_common_port(PERSONA_HOSTS_DEFAULT)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mta", "up", "--nodes", "3",
        "--data-dir", str(tmp_path),
        "--time-scale", "100",
        "--listen", f"127.0.0.1:{smtp}",
        "--admin", f"127.0.0.1:{admin}",
        "--dns", f"127.0.0.1:{free_port()}",
        "--sim-http", f"127.0.0.1:{free_port()}",
        "--persona-port", str(personas),
        "--redis", f"127.0.0.1:{redis}",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        line = (await asyncio.wait_for(process.stderr.readline(), 90)).decode()
        nodes = ", ".join(f"127.0.0.1:{smtp + k}" for k in range(3))
        assert line.startswith(f"mta up: submit mail to {nodes} (SMTP)"), line
        for k in range(3):
            message = EmailMessage()
            message["From"] = "news@campaign.test"
            message["To"] = f"node{k}@gmail.test"
            message["Subject"] = f"via node {k + 1}"
            message.set_content("hello")
            with smtplib.SMTP("127.0.0.1", smtp + k) as client:
                client.send_message(message, from_addr="bounces@campaign.test")

        def arrived() -> bool:
            listing = subprocess.run(
                [sys.executable, "-m", "mta", "sim", "ls", "--data-dir", str(tmp_path / "sim"),
                 "--json"],
                capture_output=True, text=True, check=True,
            )
            got = {r for m in json.loads(listing.stdout) for r in m["recipients"]}
            return {f"node{k}@gmail.test" for k in range(3)} <= got

        await wait_for(arrived, timeout=60)
        url = f"redis://127.0.0.1:{redis}/0"
        await wait_for(
            lambda: all(f"through {url} (3 nodes alive)" in readyz(admin + k) for k in range(3)),
            timeout=30,
        )
        sites = subprocess.run(
            [sys.executable, "-m", "mta", "queue", "sites", "--api", f"http://127.0.0.1:{admin}"],
            capture_output=True, text=True, check=True,
        )
        assert "gmail" in sites.stdout and "conns by node" in sites.stdout
        assert " shared " in sites.stdout
        for k in range(3):
            assert (tmp_path / f"mta{k + 1}" / "spool.sqlite3").exists()  # one spool each
    finally:
        process.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(process.wait(), 60)
    assert status == 0
