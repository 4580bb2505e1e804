"""The client's receiver: the signed-webhook endpoint (aiohttp) and the bounce mailbox (aiosmtpd).

    receiver = Receiver(log, "whsec_...", "127.0.0.1", 0, bounce_host="127.0.0.1", bounce_port=0)
    await receiver.start()          # receiver.port / receiver.bounce_port are the bound ports
    ... receiver.webhook_url ...    # http://127.0.0.1:<port>/webhook
    await receiver.stop()

HTTP: `POST /webhook` (also `POST /`) takes a Standard Webhooks request whose body is a JSON
array of events: missing signature headers or a timestamp outside the tolerance (default 300 s)
-> 401 before the body is read; a body over `max_body` (default 1 MiB) -> 413 without reading
past the limit; a bad signature -> 401 and nothing applied; a body that is not valid events
(fields of the wrong type or out of range) -> 400; the log cannot commit -> 503; otherwise 204
once the batch is committed to the SQLite file. `GET /livez` -> 200. The MTA's batches are
about 1.5 KB per event: `max_body` must hold `feedback.batch_max` of them (100 by default).
A sweeper applies events held for a missing seq longer than `gap_timeout` (flagging the gap).
The bounce mailbox stamps what it applies on the events' clock (`events_clock`: the later of the
wall clock and the latest event time seen, as the MTA's clock may run faster), so a DSN's error
counts for quarantine on the same clock as the MTA's own events.
Everything runs in the caller's event loop (no threads besides `asyncio.to_thread` for SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiosmtpd.smtp import SMTP

from campaign_client.events import EventError, parse_batch
from campaign_client.inbound import Rule, load_rules
from campaign_client.log import DeliveryLog, LogError
from campaign_client.mailbox import BounceMailbox
from campaign_client.webhook import (
    DEFAULT_TOLERANCE,
    SignatureError,
    check_headers,
    parse_secret,
    verify,
)

DEFAULT_GAP_TIMEOUT = 120.0
MAX_BODY = 16 * 1024 * 1024  # a bounce message to the mailbox
DEFAULT_MAX_BODY = 1024 * 1024  # a webhook request


DELIVERY_LINES = 500


@dataclass(slots=True)
class ReceiverStats:
    batches: int = 0
    events: int = 0
    duplicates: int = 0
    held: int = 0
    released: int = 0
    rejected_signature: int = 0
    rejected_body: int = 0
    rejected_size: int = 0
    storage_errors: int = 0


class Receiver:
    """Webhook endpoint + bounce mailbox feeding one DeliveryLog. Ports may be 0 (any free)."""

    def __init__(
        self,
        log: DeliveryLog,
        secret: str | Sequence[str] | None,
        host: str = "127.0.0.1",
        port: int | None = 0,
        bounce_host: str | None = None,
        bounce_port: int | None = None,
        *,
        tolerance: float = DEFAULT_TOLERANCE,
        gap_timeout: float = DEFAULT_GAP_TIMEOUT,
        rules: tuple[Rule, ...] | None = None,
        bounce_addresses: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
        path: str = "/webhook",
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if port is not None:
            if secret is None:
                raise ValueError("a webhook receiver needs a secret (whsec_...)")
            secrets = [secret] if isinstance(secret, str) else list(secret)
            self._keys = tuple(parse_secret(item) for item in secrets)
        else:
            self._keys = ()
        if gap_timeout <= 0:
            raise ValueError("gap_timeout must be > 0 seconds")
        if max_body < 1024:
            raise ValueError("max_body must be at least 1024 bytes")
        self.max_body = max_body
        self.log = log
        self.host = host
        self._port = port
        self.bounce_host = bounce_host or (host if bounce_port is not None else None)
        self._bounce_port = bounce_port
        self.tolerance = tolerance
        self.gap_timeout = gap_timeout
        self.rules = rules if rules is not None else load_rules()
        self.clock = clock
        self.path = path
        self.stats = ReceiverStats()
        self._events_at = 0.0          # the latest event time seen (the MTA's clock)
        self.mailbox = BounceMailbox(log, self.rules, self.events_clock, bounce_addresses)
        self._runner: web.AppRunner | None = None
        self._smtp_server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and serve; raises OSError (e.g. address in use) with nothing left running."""
        self._events_at = await asyncio.to_thread(self.log.clock, 0.0)
        try:
            if self._port is not None:
                app = web.Application(client_max_size=self.max_body)
                app.router.add_post(self.path, self._handle_webhook)
                if self.path != "/":
                    app.router.add_post("/", self._handle_webhook)
                app.router.add_get("/livez", self._handle_livez)
                app.router.add_get("/deliveries", self._handle_deliveries)
                self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await self._runner.setup()
                site = web.TCPSite(self._runner, self.host, self._port, reuse_address=True)
                await site.start()
            if self._bounce_port is not None:
                loop = asyncio.get_running_loop()
                mailbox = self.mailbox
                self._smtp_server = await loop.create_server(
                    lambda: SMTP(mailbox, hostname="bounces.campaign-client.test",
                                 ident="campaign-client bounce mailbox",
                                 data_size_limit=MAX_BODY, enable_SMTPUTF8=True),
                    self.bounce_host, self._bounce_port,
                )
            self._sweeper = asyncio.create_task(self._sweep(), name="campaign-client-gap-sweeper")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._smtp_server is not None:
            self._smtp_server.close()
            await self._smtp_server.wait_closed()
            self._smtp_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int | None:
        """The webhook port actually bound (None before start or without a webhook)."""
        if self._runner is None or not self._runner.addresses:
            return None
        return int(self._runner.addresses[0][1])

    @property
    def bounce_port(self) -> int | None:
        """The bounce mailbox's SMTP port actually bound (None before start or if disabled)."""
        if self._smtp_server is None or not self._smtp_server.sockets:
            return None
        return int(self._smtp_server.sockets[0].getsockname()[1])

    @property
    def webhook_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the webhook receiver is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.path}"

    # -- HTTP -----------------------------------------------------------------------------

    async def _handle_livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _handle_deliveries(self, request: web.Request) -> web.Response:
        """The delivery log for the MTA's operator console: each delivery's KPIs and its
        most recently changed lines (at most DELIVERY_LINES), read-only."""
        deliveries = []
        lines: list[dict[str, object]] = []
        for delivery_id in self.log.deliveries():
            deliveries.append(self.log.kpis(delivery_id).to_json())
            for line in self.log.lines(delivery_id):
                lines.append({
                    "delivery_id": line.delivery_id, "recipient": line.recipient,
                    "status": line.status, "failure_type": line.failure_type,
                    "failure_reason": line.failure_reason, "attempts": line.attempts,
                    "last_reply": line.last_reply, "queue_id": line.queue_id,
                    "updated_at": line.updated_at,
                })
        lines.sort(key=lambda item: float(str(item["updated_at"])), reverse=True)
        return web.json_response({"deliveries": deliveries, "lines": lines[:DELIVERY_LINES]})

    async def _handle_webhook(self, request: web.Request) -> web.Response:
        try:
            check_headers(request.headers, self.clock(), self.tolerance)
        except SignatureError as exc:
            self.stats.rejected_signature += 1
            return web.Response(status=401, text=f"{exc}\n")
        too_large = web.Response(status=413, text=f"body over {self.max_body} bytes\n")
        if request.content_length is not None and request.content_length > self.max_body:
            self.stats.rejected_size += 1
            return too_large
        try:
            body = await request.read()  # stops past client_max_size
        except web.HTTPRequestEntityTooLarge:
            self.stats.rejected_size += 1
            return too_large
        try:
            verify(self._keys, request.headers, body, self.clock(), self.tolerance)
        except SignatureError as exc:
            self.stats.rejected_signature += 1
            return web.Response(status=401, text=f"{exc}\n")
        try:
            events = parse_batch(body)
        except EventError as exc:
            self.stats.rejected_body += 1
            return web.Response(status=400, text=f"{exc}\n")
        times = [event.at for event in events if event.at is not None]
        if times:
            self._events_at = max(self._events_at, *times)
        try:
            report = await asyncio.to_thread(self.log.apply_events, events, self.clock())
        except (sqlite3.Error, LogError):
            self.stats.storage_errors += 1
            return web.Response(status=503, text="delivery log unavailable, retry later\n",
                                headers={"Retry-After": "5"})
        self.stats.batches += 1
        self.stats.events += report.applied
        self.stats.duplicates += report.duplicates
        self.stats.held += report.held
        self.stats.released += report.released
        return web.Response(status=204)

    # -- held events ------------------------------------------------------------------------

    async def _sweep(self) -> None:
        interval = min(max(self.gap_timeout / 4.0, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            try:
                report = await asyncio.to_thread(
                    self.log.release_stale, self.clock(), self.gap_timeout
                )
                seen = await asyncio.to_thread(self.log.clock, 0.0)   # pulls, other writers
                self._events_at = max(self._events_at, seen)
            except (sqlite3.Error, LogError):
                self.stats.storage_errors += 1
                continue
            self.stats.released += report.released

    def events_clock(self) -> float:
        """Now on the events' clock: no I/O (the latest event time is kept in memory)."""
        return max(self.clock(), self._events_at)

    def describe(self) -> str:
        """One line saying where it listens and which delivery log it writes."""
        parts: list[str] = []
        if self.port is not None:
            parts.append(f"webhooks at {self.webhook_url}")
        if self.bounce_port is not None:
            parts.append(f"bounce mailbox at smtp://{self.bounce_host}:{self.bounce_port}")
        parts.append(f"writing {self.log.path}")
        return "; ".join(parts)
