"""The sim's small HTTP API (aiohttp): what the personas received, and their counters.

- `GET /sim/v1/messages?persona=NAME&limit=N` -> JSON list of summaries, newest first
  (limit default 100, at most 10000).
- `GET /sim/v1/messages/{persona}/{name}` -> the stored message, raw (message/rfc822):
  Return-Path and Delivered-To lines, then the bytes exactly as received. The id in
  the list is exactly `{persona}/{name}`: `gmail/42` (a row of the SQLite store) or
  `gmail/<file name>` (a Maildir file); see `mta.sim.store`.
- `GET /sim/v1/stats` -> per persona: accepted, stored (in the store, earlier runs
  included), rejected by code, throttled, greylisted, sessions (now, max, total,
  refused) and the same per sending IP; the outbox of asynchronous artefacts; the DNS
  query count; the store (kind, path).

Chaos (changing a persona at run time) is in `mta.sim.chaos_http`. The inbox page at
`/` and its API (search, one message, delete, a live stream) are
in `mta.sim.inbox_http`.

Reading is the same for both stores (`mta.sim.store_reader`, run in a thread);
a store that cannot be read answers 503 with a one-line error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from mta.sim import chaos_http, store_reader
from mta.sim.inbox_http import Inbox, add_routes
from mta.sim.persona import Persona

DEFAULT_LIMIT = 100
MAX_LIMIT = 10000


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def build_app(
    data_dir: Path,
    stats: Callable[[], dict[str, Any]],
    personas: Callable[[], list[str]],
    box: Inbox | None = None,
    chaos_personas: Mapping[str, Persona] | None = None,
) -> web.Application:
    async def messages(request: web.Request) -> web.Response:
        persona = request.query.get("persona") or None
        if persona is not None and persona not in personas():
            return _error(404, f"no persona {persona!r}")
        limit_text = request.query.get("limit", str(DEFAULT_LIMIT))
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            return _error(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                None, store_reader.list_messages, data_dir, persona, int(limit_text)
            )
        except OSError as exc:
            return _error(503, str(exc))
        return web.json_response([s.as_dict() for s in found])

    async def message(request: web.Request) -> web.StreamResponse:
        message_id = f"{request.match_info['persona']}/{request.match_info['name']}"
        try:
            body = await asyncio.get_running_loop().run_in_executor(
                None, store_reader.message_bytes, data_dir, message_id
            )
        except OSError as exc:
            return _error(503, str(exc))
        if body is None:
            return _error(404, f"no message {message_id!r}")
        return web.Response(body=body, content_type="message/rfc822")

    async def stats_view(request: web.Request) -> web.Response:
        return web.json_response(stats())

    app = web.Application()
    app.router.add_get("/sim/v1/messages", messages)
    app.router.add_get("/sim/v1/messages/{persona}/{name}", message)
    app.router.add_get("/sim/v1/stats", stats_view)
    if box is not None:
        add_routes(app, box)
        if chaos_personas is not None:
            chaos_http.add_routes(app, chaos_personas, box.token)
    return app


class HttpServer:
    """The app bound to host:port (port 0: any free port)."""

    def __init__(self, runner: web.AppRunner, address: tuple[str, int]) -> None:
        self.runner = runner
        self.address = address

    @classmethod
    async def start(cls, app: web.Application, host: str, port: int) -> HttpServer:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot listen for HTTP on {host}:{port}: {exc.strerror}") from None
        bound = port
        for address in runner.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                bound = int(address[1])
                break
        return cls(runner, (host, bound))

    async def stop(self) -> None:
        await self.runner.cleanup()
