"""The processes of a whole simulated setup, as data: what `mta up` and `mta demo` run and
what docker-compose.yml describes (a test holds the two together).

    sim     `mta sim`    personas on 127.0.0.1x:PORT, stub DNS, HTTP API
    mta     `mta serve`  SMTP submission, admin API; resolver -> sim DNS; delivery -> PORT
    client  `campaign-client receive` (demo only): webhooks in, bounce mailbox on 127.0.0.20

All share one clock anchor, so virtual time agrees across processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mta.clock import Anchor


@dataclass(frozen=True)
class Addresses:
    """Where each listener goes (HOST:PORT strings)."""

    smtp: str = "127.0.0.1:2525"
    admin: str = "127.0.0.1:8080"
    dns: str = "127.0.0.1:5300"
    sim_http: str = "127.0.0.1:8025"
    persona_port: int = 2525
    webhook: str = "127.0.0.1:8090"
    bounce_host: str = "127.0.0.20"


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]
    ready: tuple[str, ...]  # an `mta check ...` command line that exits 0 once it serves
    env: dict[str, str] = field(default_factory=dict)


# Where the default simulated internet lives: the personas, and the sender's bounce mailbox.
PERSONA_HOSTS_DEFAULT = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.15"]
BOUNCE_HOST_DEFAULT = "127.0.0.20"


def mta_command(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "mta", *args)


def sim_service(
    a: Addresses,
    anchor: Anchor,
    data_dir: Path,
    config: str | None = None,
    seed: int | None = None,
    log_level: str = "warning",
    deterministic: bool = False,
) -> Service:
    argv = [
        "sim",
        "--data-dir",
        str(data_dir),
        "--clock-anchor",
        anchor.encode(),
        "--mta",
        a.smtp,
        "--dns",
        a.dns,
        "--http",
        a.sim_http,
        "--port",
        str(a.persona_port),
        "--log-level",
        log_level,
    ]
    if config:
        argv += ["--config", config]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if deterministic:
        argv.append("--deterministic")
    return Service("sim", mta_command(*argv), mta_command("check", "--dns", a.dns))


def mta_service(
    a: Addresses,
    anchor: Anchor,
    data_dir: Path,
    config: str | None = None,
    log_level: str = "warning",
    env: dict[str, str] | None = None,
) -> Service:
    argv = [
        "serve",
        "--data-dir",
        str(data_dir),
        "--clock-anchor",
        anchor.encode(),
        "--listen",
        a.smtp,
        "--admin",
        a.admin,
        "--dns",
        a.dns,
        "--delivery-port",
        str(a.persona_port),
        "--log-level",
        log_level,
    ]
    if config:
        argv += ["--config", config]
    return Service("mta", mta_command(*argv), mta_command("check", "--smtp", a.smtp), env or {})


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_common_port(hosts: list[str], tries: int = 20) -> int:
    """A TCP port free on every one of `hosts` (the personas share one port number)."""
    for _ in range(tries):
        port = free_port(hosts[0])
        sockets = []
        try:
            for host in hosts:
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise OSError(f"no port free on all of {', '.join(hosts)}")


class Supervisor:
    """Child processes started in order, each waited for until ready; stopped in reverse."""

    def __init__(self) -> None:
        self.children: list[tuple[Service, asyncio.subprocess.Process]] = []

    async def start(
        self, service: Service, timeout: float = 30.0, log: Path | None = None
    ) -> asyncio.subprocess.Process:
        env = {**os.environ, **service.env}
        stderr = open(log, "ab") if log is not None else None  # noqa: SIM115 - kept by child
        try:
            process = await asyncio.create_subprocess_exec(
                *service.argv,
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr if stderr is not None else None,
            )
        finally:
            if stderr is not None:
                stderr.close()
        self.children.append((service, process))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if process.returncode is not None:
                raise RuntimeError(
                    f"{service.name} exited with status {process.returncode}"
                    + (f"; see {log}" if log else "")
                )
            check = await asyncio.create_subprocess_exec(
                *service.ready,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await check.wait() == 0:
                return process
            if loop.time() > deadline:
                raise RuntimeError(
                    f"{service.name} not ready after {timeout:.0f}s"
                    + (f"; see {log}" if log else "")
                )
            await asyncio.sleep(0.2)

    async def wait_any(self) -> tuple[Service, int]:
        """The first child to exit, and its status."""
        waits = {asyncio.ensure_future(p.wait()): s for s, p in self.children}
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        task = done.pop()
        return waits[task], task.result()

    async def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM each child, newest first; SIGKILL what is still there after `timeout`."""
        statuses: dict[str, int] = {}
        for service, process in reversed(self.children):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            statuses[service.name] = process.returncode if process.returncode is not None else -1
        self.children.clear()
        return statuses
