"""Test helpers with real parts: raw SMTP conversations, scripted receivers, MTA instances."""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import sqlite3
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiohttp import web
from aiosmtpd.smtp import Envelope, Session

from mta.app import MtaApp
from mta.clock import Clock
from mta.config.service import MtaConfig, load_config
from mta.smtp.server import FastSMTP, bound_port, close_server, content_of, start_server
from mta.smtp.tls import write_self_signed


async def read_reply(reader: asyncio.StreamReader) -> str:
    """One (possibly multiline) SMTP reply, lines joined by newlines, CRLF removed."""
    lines = []
    while True:
        line = (await asyncio.wait_for(reader.readline(), 10)).decode("utf-8", "replace")
        if not line:
            raise ConnectionError("closed")
        lines.append(line.rstrip("\r\n"))
        if line[3:4] != "-":
            return "\n".join(lines)


class Conversation:
    """A raw SMTP client: send exact bytes, read exact replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, ehlo: str | None = "client.test") -> Conversation:
        reader, writer = await asyncio.open_connection(host, port)
        conv = cls(reader, writer)
        greeting = await read_reply(reader)
        assert greeting.startswith("220"), greeting
        if ehlo:
            reply = await conv.command(f"EHLO {ehlo}")
            assert reply.startswith("250"), reply
        return conv

    async def command(self, line: str | bytes) -> str:
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        self.writer.write(data + b"\r\n")
        await self.writer.drain()
        return await read_reply(self.reader)

    async def send_data(self, raw: bytes) -> str:
        """Send message bytes as given (the caller stuffs and terminates) and read the reply."""
        self.writer.write(raw)
        await self.writer.drain()
        return await read_reply(self.reader)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def send_message(
    host: str, port: int, mail_from: str, rcpts: list[str], message: bytes
) -> str:
    """A whole transaction; returns the reply to the final dot (or the first failure)."""
    conv = await Conversation.open(host, port)
    try:
        reply = await conv.command(f"MAIL FROM:<{mail_from}>")
        if not reply.startswith("250"):
            return reply
        for rcpt in rcpts:
            reply = await conv.command(f"RCPT TO:<{rcpt}>")
            if not reply.startswith("250"):
                return reply
        reply = await conv.command("DATA")
        if not reply.startswith("354"):
            return reply
        body = message.replace(b"\r\n.", b"\r\n..")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        return await conv.send_data(body + b".\r\n")
    finally:
        await conv.close()


@dataclass
class ScriptedHandler:
    """Replies taken in turn from per-command scripts; the default is success. Records what came."""

    rcpt: list[str] = field(default_factory=list)
    dot: list[str] = field(default_factory=list)
    mail: list[str] = field(default_factory=list)
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    rcpt_seen: list[str] = field(default_factory=list)
    stall_dot: asyncio.Event | None = None

    async def handle_MAIL(
        self,
        server: FastSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        return self.mail.pop(0) if self.mail else "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: FastSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self.rcpt_seen.append(address)
        return self.rcpt.pop(0) if self.rcpt else "250 2.1.5 Ok"

    async def handle_DATA(
        self,
        server: FastSMTP,
        session: Session,
        envelope: Envelope,
    ) -> str:
        if self.stall_dot is not None:
            await self.stall_dot.wait()
        reply = self.dot.pop(0) if self.dot else "250 2.0.0 Ok: queued"
        if reply.startswith("2"):
            self.received.append(
                (envelope.mail_from or "", list(envelope.rcpt_tos), content_of(envelope))
            )
        return reply


class ScriptedServer:
    def __init__(self, handler: ScriptedHandler, server: asyncio.Server) -> None:
        self.handler = handler
        self.server = server

    @property
    def port(self) -> int:
        return bound_port(self.server)

    @classmethod
    async def start(cls, handler: ScriptedHandler, host: str = "127.0.0.1") -> ScriptedServer:
        server = await start_server(
            lambda: FastSMTP(handler, hostname="receiver.test", data_size_limit=10_000_000),
            host,
            0,
        )
        return cls(handler, server)

    async def close(self) -> None:
        await close_server(self.server)


def mta_config(tmp_path: Path, **flags: Any) -> MtaConfig:
    base: dict[str, Any] = {
        "smtp.listen": "127.0.0.1:0",
        "admin.listen": "127.0.0.1:0",
        "data_dir": str(tmp_path / "spool"),
        "smtp.workers": 0,  # in-process tests look inside the app; e2e tests run the default
    }
    base.update({key.replace("__", "."): value for key, value in flags.items()})
    return load_config(None, flags=base, environ={})


def auth_config(tmp_path: Path, **flags: Any) -> tuple[MtaConfig, Path]:
    """An MTA for which loopback is outside the relay networks: a client must STARTTLS (a
    self-signed certificate for mta.test), then AUTH as campaign / s3cret. Delivery goes
    nowhere. Returns the config and the certificate a client trusts."""
    cert, key = write_self_signed(tmp_path / "tls", "mta.test")
    config = mta_config(
        tmp_path,
        smtp__relay_networks=("10.0.0.0/8",),
        smtp__tls_cert=str(cert),
        smtp__tls_key=str(key),
        delivery__relayhost="127.0.0.1:9",
        **flags,
    )
    smtp = dataclasses.replace(config.smtp, auth_users={"campaign": "s3cret"})
    return dataclasses.replace(config, smtp=smtp), cert


async def tls_session(app: MtaApp, cert: Path) -> aiosmtplib.SMTP:
    """A client of `app` past EHLO, STARTTLS (trusting `cert`) and EHLO again."""
    host, port = app.smtp_address
    smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.starttls(
        tls_context=ssl.create_default_context(cafile=str(cert)), server_hostname="mta.test"
    )
    await smtp.ehlo()
    return smtp


async def serve_until_listening(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> list[str]:
    """Run a server command (`mta serve ...`) until it says "mta: listening on", then stop it
    with SIGTERM; it must exit 0. Returns its stderr lines up to there, without newlines."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        while not any(line.startswith("mta: listening on") for line in lines):
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            assert line, "\n".join(lines)
            lines.append(line.rstrip("\n"))
    finally:
        process.terminate()
        await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    return lines


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0
) -> None:
    """Poll until the predicate holds (sync or async); fail the test after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def spool_rows(app_or_dir: MtaApp | Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Read the spool file with a separate connection, as an operator would."""
    data_dir = app_or_dir.config.data_path if isinstance(app_or_dir, MtaApp) else app_or_dir
    conn = sqlite3.connect(data_dir / "spool.sqlite3")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def events_of(app_or_dir: MtaApp | Path) -> list[dict[str, Any]]:
    return [
        json.loads(body)
        for (body,) in spool_rows(app_or_dir, "SELECT body FROM events ORDER BY id")
    ]


async def started(config: MtaConfig, clock: Clock | None = None, **kwargs: Any) -> MtaApp:
    app = MtaApp(config, clock=clock, **kwargs)
    await app.start()
    return app


def states(app: MtaApp) -> Mapping[str, str]:
    return dict(spool_rows(app, "SELECT address, state FROM recipients"))


SECRET = "whsec_" + base64.b64encode(b"test-secret-key-0123456789").decode()
KEY = b"test-secret-key-0123456789"


class Hook:
    """A webhook receiver that checks signatures; its answers can be scripted."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, dict[str, str]]] = []
        self.events: list[dict[str, Any]] = []
        self.batches: list[int] = []
        self.requests = 0
        self.bad_signatures = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        msg_id = request.headers["webhook-id"]
        timestamp = request.headers["webhook-timestamp"]
        expected = base64.b64encode(
            hmac.new(KEY, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        ).decode()
        if (
            request.headers["webhook-signature"] != f"v1,{expected}"
            or abs(time.time() - int(timestamp)) > 300
        ):
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.answers:
            status, headers = self.answers.pop(0)
            if status >= 300:
                return web.Response(status=status, headers=headers)
        batch = json.loads(body)
        self.batches.append(len(batch))
        self.events.extend(batch)
        return web.Response(status=204)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.add_routes([web.post("/efs", self.handle)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/efs"


def imported(path: Path) -> set[str]:
    """The absolute module names a Python source file imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names
