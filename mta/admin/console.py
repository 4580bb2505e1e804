"""The operator console: a page on the admin port over the admin API, plus the Campaign view.

    GET /                      the console (static HTML + one ES module; no build step)
    GET /static/{name}         its script and style
    GET /api/v1/campaign       the Campaign side's deliveries and KPIs, read over HTTP from the
                               client's receiver (`admin.client_url`, set by `mta up --client`):
                               {"available": false} when no client is configured or reachable
    GET /api/v1/console        what the page needs to link out: the inbox's URL

The page reads `/api/v1/queue/sites` (polled: the rate chart is drawn from the deliveries
counted between two polls), `/api/v1/events` (long-poll) and `/api/v1/messages/{id}`.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import aiohttp
from aiohttp import web

STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'"
)
CLIENT_TIMEOUT = 3.0


def _static(name: str) -> bytes:
    return resources.files("mta.admin").joinpath("static", name).read_bytes()


def add_routes(app: web.Application, inbox_url: str = "", client_url: str = "") -> None:
    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=_static("console.html"),
            content_type="text/html",
            headers={"Content-Security-Policy": PAGE_CSP},
        )

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            return web.json_response({"error": "no such file"}, status=404)
        return web.Response(body=_static(name), content_type=STATIC_FILES[name])

    async def links(request: web.Request) -> web.Response:
        return web.json_response({"inbox_url": inbox_url, "campaign": bool(client_url)})

    async def campaign(request: web.Request) -> web.Response:
        if not client_url:
            return web.json_response(
                {"available": False, "reason": "no Campaign client (mta up --client runs one)"}
            )
        url = client_url.rstrip("/") + "/deliveries"
        try:
            timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.get(url, allow_redirects=False) as answer,
            ):
                if answer.status != 200:
                    reason = f"the client answered HTTP {answer.status}"
                    return web.json_response({"available": False, "reason": reason})
                data: Any = await answer.json()
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            reason = f"cannot reach the client at {url}: {type(exc).__name__}"
            return web.json_response({"available": False, "reason": reason})
        return web.json_response({"available": True, **(data if isinstance(data, dict) else {})})

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/v1/console", links)
    app.router.add_get("/api/v1/campaign", campaign)
