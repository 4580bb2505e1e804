"""The processes of a whole simulated setup, as data: what `mta up` runs and what
docker-compose.yml describes (a test holds the two together).

    sim     `mta sim`                 personas on 127.0.0.1x:PORT, stub DNS, HTTP API
    mta     `mta serve`               SMTP submission, admin API; resolver -> the stub DNS,
                                      delivery -> the personas' PORT
    client  `campaign-client receive` (with `mta up --client`): webhooks in, and the bounce
                                      mailbox on 127.0.0.20:PORT (the sender domain's MX)
    redis   `redis-server`            (with `mta up --nodes N`, N > 1) the limits the nodes share
    mtaK    `mta serve --cluster ...` (with `mta up --nodes N`) node K of N: SMTP and admin on
                                      the base ports + K - 1, one spool each

Each service has a readiness check (`mta check ...`), the same command the containers
use as their healthcheck. `mta up` gives all of them one clock anchor, so virtual time
agrees across processes.
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
from mta.config.engine import parse_hostport

# Where the default simulated internet lives: the personas, and the sender's bounce mailbox.
PERSONA_HOSTS_DEFAULT = ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14", "127.0.0.15"]
BOUNCE_HOST_DEFAULT = "127.0.0.20"


def reachable(listen: str) -> str:
    """The address to connect to for a listen address (0.0.0.0 and :: mean this host)."""
    host, port = parse_hostport(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"{host}:{port}"


@dataclass(frozen=True)
class Addresses:
    """Where each listener goes (HOST:PORT strings; "" for sim_http: none)."""

    smtp: str = "127.0.0.1:2525"
    admin: str = "127.0.0.1:8080"
    dns: str = "127.0.0.1:5300"
    sim_http: str = "127.0.0.1:8025"
    persona_port: int = 2525
    webhook: str = "127.0.0.1:8090"
    bounce_host: str = BOUNCE_HOST_DEFAULT

    @property
    def webhook_url(self) -> str:
        return f"http://{reachable(self.webhook)}/webhook"


@dataclass(frozen=True)
class Service:
    name: str
    argv: tuple[str, ...]  # after the program name
    ready: tuple[str, ...]  # `mta check ...` arguments that succeed once it serves
    program: str = "mta"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> tuple[str, ...]:
        if self.program == "redis-server":
            from mta.cli.redis_server import redis_server_binary

            return (redis_server_binary(), *self.argv)
        module = "mta" if self.program == "mta" else "campaign_client"
        return (sys.executable, "-m", module, *self.argv)

    @property
    def ready_command(self) -> tuple[str, ...]:
        return (sys.executable, "-m", "mta", *self.ready)


def sim_service(
    a: Addresses,
    anchor: Anchor | None,
    data_dir: Path,
    config: str | None = None,
    seed: int | None = None,
    log_level: str = "warning",
    deterministic: bool = False,
    dkim_keys: Path | None = None,
) -> Service:
    argv = [
        "sim",
        "--data-dir",
        str(data_dir),
        "--port",
        str(a.persona_port),
        "--dns",
        a.dns,
        "--http",
        a.sim_http,
        "--mta",
        reachable(a.smtp),
        "--log-level",
        log_level,
    ]
    if anchor is not None:
        argv += ["--clock-anchor", anchor.encode()]
    if config:
        argv += ["--config", config]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if deterministic:
        argv.append("--deterministic")
    if dkim_keys is not None:
        argv += ["--dkim-keys", str(dkim_keys)]
    if a.admin and a.sim_http:
        argv += ["--mta-admin", f"http://{reachable(a.admin)}/"]
    ready = ["check", "--dns", a.dns]
    if a.sim_http:
        ready += ["--http", f"http://{reachable(a.sim_http)}/sim/v1/stats"]
    return Service("sim", tuple(argv), tuple(ready))


def mta_service(
    a: Addresses,
    anchor: Anchor | None,
    data_dir: Path,
    config: str | None = None,
    log_level: str = "warning",
    env: dict[str, str] | None = None,
) -> Service:
    argv = [
        "serve",
        "--data-dir",
        str(data_dir),
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
    if anchor is not None:
        argv += ["--clock-anchor", anchor.encode()]
    if config:
        argv += ["--config", config]
    ready = ["check", "--smtp", reachable(a.smtp)]
    if a.admin:
        ready += ["--http", f"http://{reachable(a.admin)}/readyz"]
    return Service("mta", tuple(argv), tuple(ready), env=env or {})


def redis_service(address: str, data_dir: Path) -> Service:
    """A Redis server for the cluster: loopback, nothing kept on disk."""
    host, port = parse_hostport(address)
    argv = ("--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--protected-mode", "no")
    return Service("redis", argv, ("check", "--redis", reachable(address)), program="redis-server")


def shifted(listen: str, offset: int) -> str:
    """A listen address `offset` ports further ("" stays "")."""
    if not listen:
        return listen
    host, port = parse_hostport(listen)
    return f"[{host}]:{port + offset}" if ":" in host else f"{host}:{port + offset}"


def mta_node(
    a: Addresses,
    anchor: Anchor | None,
    data_dir: Path,
    index: int,
    redis_url: str,
    config: str | None = None,
    log_level: str = "warning",
    env: dict[str, str] | None = None,
) -> Service:
    """Node `index` (0-based) of a cluster: `mta serve --cluster URL --node mtaK`, its SMTP
    and admin API on the base ports + index, its own spool in `data_dir`."""
    name = f"mta{index + 1}"
    own = Addresses(
        smtp=shifted(a.smtp, index),
        admin=shifted(a.admin, index),
        dns=a.dns,
        sim_http=a.sim_http,
        persona_port=a.persona_port,
        webhook=a.webhook,
        bounce_host=a.bounce_host,
    )
    base = mta_service(own, anchor, data_dir, config, log_level, env)
    argv = (*base.argv, "--cluster", redis_url, "--node", name)
    return Service(name, argv, base.ready, env=base.env)


def client_service(a: Addresses, data_dir: Path, secret: str) -> Service:
    """The Campaign side's receiver: webhooks in, the bounce mailbox on the sender's MX; its
    delivery log is DATA_DIR/campaign-log.sqlite, so with the default data dir (var) it is the
    log every `campaign-client` command reads by default (var/campaign-log.sqlite)."""
    argv = [
        "receive",
        "--listen",
        a.webhook,
        "--bounce-listen",
        f"{a.bounce_host}:{a.persona_port}",
        "--log",
        str(data_dir / "campaign-log.sqlite"),
    ]
    ready = ("check", "--http", f"http://{reachable(a.webhook)}/livez")
    return Service(
        "client",
        tuple(argv),
        ready,
        program="campaign-client",
        env={"CAMPAIGN_CLIENT_SECRET": secret},
    )


def feedback_env(a: Addresses, secret: str) -> dict[str, str]:
    """What tells the MTA to send its events to the client's receiver."""
    return {"MTA_FEEDBACK_URL": a.webhook_url, "MTA_FEEDBACK_SECRET": secret}


def busy_ports(a: Addresses, personas: list[str] | None, client: bool) -> list[str]:
    """The listen addresses of a setup that something else already holds, each said with
    the flag that moves it (checked before any process starts, as each would bind it)."""
    wanted: list[tuple[str, int, int, str]] = []  # host, port, socket type, flag
    for listen, flag in ((a.smtp, "--listen"), (a.admin, "--admin"), (a.sim_http, "--sim-http")):
        if listen:
            host, port = parse_hostport(listen)
            wanted.append((host, port, socket.SOCK_STREAM, flag))
    dns_host, dns_port = parse_hostport(a.dns)
    wanted += [
        (dns_host, dns_port, socket.SOCK_DGRAM, "--dns"),
        (dns_host, dns_port, socket.SOCK_STREAM, "--dns"),
    ]
    for host in personas or []:
        wanted.append((host, a.persona_port, socket.SOCK_STREAM, "--persona-port"))
    if client:
        host, port = parse_hostport(a.webhook)
        wanted.append((host, port, socket.SOCK_STREAM, "--webhook"))
        wanted.append((a.bounce_host, a.persona_port, socket.SOCK_STREAM, "--persona-port"))
    busy: dict[tuple[str, int, str], list[str]] = {}
    for host, port, kind, flag in wanted:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, kind) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
            try:
                sock.bind((host, port))
            except OSError:
                what = "UDP" if kind == socket.SOCK_DGRAM else "TCP"
                busy.setdefault((what, port, flag), []).append(host)
    return [
        f"{what} port {port} on {', '.join(hosts)} ({flag})"
        for (what, port, flag), hosts in busy.items()
    ]


def log_tail(path: Path, lines: int = 8) -> list[str]:
    """The last lines of a child's log, to show when it stops."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


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
        stderr = open(log, "ab") if log is not None else None  # noqa: SIM115 - the child's
        try:
            process = await asyncio.create_subprocess_exec(
                *service.command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr
            )
        finally:
            if stderr is not None:
                stderr.close()
        self.children.append((service, process))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        where = f"; see {log}" if log else ""
        while True:
            if process.returncode is not None:
                tail = "".join(f"\n  {line}" for line in log_tail(log)) if log else ""
                raise RuntimeError(
                    f"{service.name} exited with status {process.returncode}{where}{tail}"
                )
            check = await asyncio.create_subprocess_exec(
                *service.ready_command,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await check.wait() == 0:
                return process
            if loop.time() > deadline:
                raise RuntimeError(f"{service.name} not ready after {timeout:.0f}s{where}")
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
