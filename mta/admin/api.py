"""The HTTP side of the MTA: health, metrics, events (pull), classification, queue and status.

    GET  /livez                      200 while the process runs
    GET  /readyz                     200 once mail can be accepted and stored, else 503
                                     (with the reason, e.g. spool writes failing)
    GET  /metrics                    Prometheus text format
    GET  /api/v1/status              counts by state, in flight, accepted, rejected
    GET  /api/v1/events?after=N&limit=M&wait=S
                                     outbox events after cursor N (long-poll up to S seconds):
                                     {"events": [...], "next": cursor}
    POST /api/v1/classify            {"reply": "550 5.1.1 ...", "phase": "rcpt"} -> verdict
    GET  /api/v1/messages/{queue_id} recipients and attempts of one message
    GET  /api/v1/webhooks            each endpoint's cursor, failures, disabled flag
    GET  /api/v1/queue/sites         per site: depth, limits, state, last change
    GET  /api/v1/openapi.json        this API as an OpenAPI 3.1 document

Collaborators are passed in as callables (`AdminSources`); this module imports no other shell.
Who may call it (Host header, token off loopback) is decided in `mta.admin.guard`. Bad query
values and bodies answer 400 with a one-line `{"error": ...}`, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from mta.admin import console, openapi, operator
from mta.admin.guard import Guard, middleware
from mta.admin.metrics import HistogramSource, exposition

log = logging.getLogger("mta.admin")

MAX_EVENTS = 1000
MAX_WAIT = 60.0
MAX_CURSOR = 2**63 - 1  # SQLite's INTEGER


@dataclass
class AdminSources:
    """What the API can read or ask; each returns JSON-ready data."""

    ready: Callable[[], bool]
    status: Callable[[], Awaitable[dict[str, Any]]]
    events_after: Callable[[int, int], Awaitable[list[tuple[int, dict[str, Any]]]]]
    message: Callable[[str], Awaitable[list[dict[str, Any]]]]
    metrics: Callable[[], Awaitable[dict[str, float]]]
    classify: Callable[[str, str | None, str | None], dict[str, Any]] | None = None
    webhooks: Callable[[], list[dict[str, Any]]] = field(default=lambda: [])
    sites: Callable[[], list[dict[str, Any]]] = field(default=lambda: [])
    inbox_url: str = ""  # the simulation's inbox, linked from the console
    client_url: str = ""  # the Campaign client's receiver, read for the console's Campaign view
    controls: operator.Controls | None = None  # operator actions (POST /api/v1/control/...)
    token: str = ""  # the write token; "": every write is refused
    problem: Callable[[], str | None] = field(default=lambda: None)  # why not ready, if so
    histograms: HistogramSource | None = None  # /metrics' histograms, from the spool
    detail: Callable[[], list[str]] = field(default=lambda: [])  # lines /readyz adds


class Admin:
    """An aiohttp application over `AdminSources`; `notify()` wakes long-polls."""

    def __init__(self, sources: AdminSources, guard: Guard | None = None) -> None:
        self.sources = sources
        self._new_events = asyncio.Event()
        self._runner: web.AppRunner | None = None
        guards = [middleware(guard)] if guard is not None else []
        self.app = web.Application(middlewares=[*guards, self._errors])
        self.app.add_routes(
            [
                web.get("/livez", self.livez),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/api/v1/status", self.status),
                web.get("/api/v1/events", self.events),
                web.post("/api/v1/classify", self.classify),
                web.get("/api/v1/messages/{queue_id}", self.message),
                web.get("/api/v1/webhooks", self.webhooks),
                web.get("/api/v1/queue/sites", self.sites),
                web.get("/api/v1/openapi.json", self.openapi),
            ]
        )
        console.add_routes(self.app, sources.inbox_url, sources.client_url)
        if sources.controls is not None:
            operator.add_routes(self.app, sources.controls, sources.token)

    def notify(self) -> None:
        self._new_events.set()

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None)
        assert sockets
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("admin API error on %s %s", request.method, request.path)
            return web.json_response({"error": "internal error"}, status=500)

    # -- handlers ---------------------------------------------------------------

    async def livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        lines = "".join(f"{line}\n" for line in self.sources.detail())
        if not self.sources.ready():
            return web.Response(text="not ready\n" + lines, status=503)
        problem = self.sources.problem()
        if problem:
            return web.Response(text=f"not ready: {problem}\n" + lines, status=503)
        return web.Response(text="ready\n" + lines)

    async def metrics(self, request: web.Request) -> web.Response:
        values = await self.sources.metrics()
        source = self.sources.histograms
        if source is not None:
            await source.refresh()
        body = exposition(values, source.histograms if source is not None else None)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.sources.status())

    async def events(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after", "0") or 0)
            limit = min(int(request.query.get("limit", "500")), MAX_EVENTS)
            wait = float(request.query.get("wait", "0"))
            wait = min(wait, MAX_WAIT) if math.isfinite(wait) else -1.0
        except ValueError:
            return _bad("after and limit are integers, wait is seconds")
        if not 0 <= after <= MAX_CURSOR or limit < 1 or not 0 <= wait <= MAX_WAIT:
            return _bad(f"after is 0-{MAX_CURSOR}, limit >= 1, wait is 0-{MAX_WAIT:g} seconds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            self._new_events.clear()
            rows = await self.sources.events_after(after, limit)
            remaining = deadline - loop.time()
            if rows or remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_events.wait(), remaining)
        return web.json_response(
            {
                "events": [event for _, event in rows],
                "next": rows[-1][0] if rows else after,
            }
        )

    async def classify(self, request: web.Request) -> web.Response:
        if self.sources.classify is None:
            return web.json_response({"error": "classification is not available"}, status=501)
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _bad('the body must be JSON: {"reply": "550 5.1.1 ..."}')
        except RecursionError:
            return _bad("the body's JSON is nested too deeply")
        if isinstance(data, str):
            data = {"reply": data}
        if not isinstance(data, dict) or not isinstance(data.get("reply"), str):
            return _bad('the body must be JSON with a string "reply"')
        phase, condition = data.get("phase"), data.get("condition")
        if not all(isinstance(value, str | None) for value in (phase, condition)):
            return _bad("phase and condition are strings")
        try:
            verdict = self.sources.classify(data["reply"], phase, condition)
        except ValueError as exc:
            return _bad(str(exc))
        return web.json_response(verdict)

    async def message(self, request: web.Request) -> web.Response:
        rows = await self.sources.message(request.match_info["queue_id"])
        if not rows:
            return web.json_response({"error": "no such queue id"}, status=404)
        return web.json_response({"queue_id": request.match_info["queue_id"], "attempts": rows})

    async def webhooks(self, request: web.Request) -> web.Response:
        return web.json_response({"webhooks": self.sources.webhooks()})

    async def sites(self, request: web.Request) -> web.Response:
        return web.json_response({"sites": self.sources.sites()})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.OPENAPI)


def _bad(text: str) -> web.Response:
    return web.json_response({"error": text}, status=400)
