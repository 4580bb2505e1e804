"""The inbox over HTTP: the page at `/`, and a Mailpit-like API for scripts.

    GET    /                                   the inbox page (static HTML + an ES module)
    GET    /sim/v1/search?query=Q&start=N&limit=M   a page of matches, newest first
                                               {"total", "start", "count", "messages"}
                                               (no query: the list of everything)
    GET    /sim/v1/message/{persona}/{name}    one message: summary, headers, text, HTML,
                                               attachments, DKIM, DMARC, the persona's answers
    GET    /sim/v1/message/{persona}/{name}/raw           the source, as text
    GET    /sim/v1/message/{persona}/{name}/html          the HTML body, under a CSP that
                                                          loads nothing and runs no script
    GET    /sim/v1/message/{persona}/{name}/part/{index}  an attachment
    DELETE /sim/v1/message/{persona}/{name}    delete one (token)
    DELETE /sim/v1/messages                    delete {"ids": [...]}, or all without a body (token)
    GET    /sim/v1/stream                      server-sent events: `stored` / `deleted`

Writes carry the token (`mta.core.tokens`); reads are open. Store reads run in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from mta.core import tokens
from mta.sim import inbox, mailview, search, store_reader

STATIC = "mta.sim"
STATIC_FILES = {"inbox.js": "text/javascript", "inbox.css": "text/css"}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; frame-src 'self'; base-uri 'none'; form-action 'none'"
)
BODY_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
KEEPALIVE = 15.0


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Inbox:
    """The inbox's state: where the store is, the published DKIM keys, the write token,
    and a change counter the live stream waits on."""

    def __init__(
        self, data_dir: Path, keys: Mapping[str, str], token: str, console: str = ""
    ) -> None:
        self.data_dir = data_dir
        self.keys = dict(keys)
        self.token = token
        self.console = console
        self.version = 0
        self._changed = asyncio.Event()
        self.forget: Callable[[str, int], None] = lambda persona, count: None

    def changed(self) -> None:
        self.version += 1
        self._changed.set()

    async def wait(self, seen: int, timeout: float) -> int:
        while self.version == seen:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                break
        return self.version


def static_bytes(name: str) -> bytes:
    return resources.files(STATIC).joinpath("static", name).read_bytes()


def refusal(request: web.Request, token: str) -> web.Response | None:
    """The 401/403 answer for a write without the right token, or None."""
    given = tokens.presented(request.headers.get("Authorization"), request.headers.get("X-Token"))
    denied = tokens.check_write(token, given)
    if denied is None:
        return None
    return _error(denied.status, denied.message)


def _run(function: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    return asyncio.get_running_loop().run_in_executor(None, function, *args)


def add_routes(app: web.Application, box: Inbox) -> None:
    async def page(request: web.Request) -> web.Response:
        html = static_bytes("inbox.html").replace(b"{{console}}", box.console.encode())
        return web.Response(
            body=html, content_type="text/html", headers={"Content-Security-Policy": PAGE_CSP}
        )

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            return _error(404, "no such file")
        return web.Response(body=static_bytes(name), content_type=STATIC_FILES[name])

    async def find(request: web.Request) -> web.Response:
        try:
            start = int(request.query.get("start", "0"))
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return _error(400, "start and limit are integers")
        if start < 0 or not 1 <= limit <= inbox.MAX_PAGE:
            return _error(400, f"start >= 0 and limit from 1 to {inbox.MAX_PAGE}")
        terms = search.parse(request.query.get("query", ""))
        try:
            found = await _run(inbox.search, box.data_dir, terms, start, limit)
        except OSError as exc:
            return _error(503, str(exc))
        found["version"] = box.version
        return web.json_response(found)

    def _id(request: web.Request) -> str:
        return f"{request.match_info['persona']}/{request.match_info['name']}"

    async def _record(request: web.Request) -> dict[str, Any] | web.Response:
        try:
            found = await _run(inbox.record, box.data_dir, _id(request))
        except OSError as exc:
            return _error(503, str(exc))
        if found is None:
            return _error(404, f"no message {_id(request)!r}")
        assert isinstance(found, dict)
        return found

    async def detail(request: web.Request) -> web.Response:
        found = await _record(request)
        if isinstance(found, web.Response):
            return found
        content = found.pop("content")
        found.update(await _run(mailview.view, content, box.keys))
        return web.json_response(found)

    async def raw(request: web.Request) -> web.Response:
        body = await _run(store_reader.message_bytes, box.data_dir, _id(request))
        if body is None:
            return _error(404, f"no message {_id(request)!r}")
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    async def html(request: web.Request) -> web.Response:
        found = await _record(request)
        if isinstance(found, web.Response):
            return found
        _, body, _ = mailview.parts(mailview.parse(found["content"]))
        return web.Response(
            text=body,
            content_type="text/html",
            headers={
                "Content-Security-Policy": BODY_CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def part(request: web.Request) -> web.Response:
        found = await _record(request)
        if isinstance(found, web.Response):
            return found
        index = request.match_info["index"]
        got = mailview.part_bytes(found["content"], int(index)) if index.isdigit() else None
        if got is None:
            return _error(404, "no such part")
        filename, _, data = got
        safe = "".join(c for c in filename if c.isalnum() or c in "._- ") or "attachment"
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{safe}"'},
        )

    async def _delete(request: web.Request, ids: list[str] | None) -> web.Response:
        try:
            deleted = await _run(inbox.delete, box.data_dir, ids)
        except OSError as exc:
            return _error(503, str(exc))
        for persona, count in deleted.items():
            box.forget(persona, count)
        box.changed()
        return web.json_response({"deleted": sum(deleted.values())})

    async def delete_one(request: web.Request) -> web.Response:
        denied = refusal(request, box.token)
        if denied is not None:
            return denied
        answer = await _delete(request, [_id(request)])
        if json.loads(answer.text or "{}").get("deleted") == 0:
            return _error(404, f"no message {_id(request)!r}")
        return answer

    async def delete_many(request: web.Request) -> web.Response:
        denied = refusal(request, box.token)
        if denied is not None:
            return denied
        ids: list[str] | None = None
        if request.can_read_body:
            try:
                data = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                return _error(400, 'the body is JSON: {"ids": ["gmail/42", ...]} or nothing')
            if data is not None:
                wanted = data.get("ids") if isinstance(data, dict) else None
                if not isinstance(wanted, list) or not all(isinstance(i, str) for i in wanted):
                    return _error(400, 'the body is JSON: {"ids": ["gmail/42", ...]} or nothing')
                ids = wanted
        return await _delete(request, ids)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        seen = box.version
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await response.write(f"event: hello\ndata: {seen}\n\n".encode())
            while True:
                now = await box.wait(seen, KEEPALIVE)
                if now == seen:
                    await response.write(b": keepalive\n\n")
                    continue
                seen = now
                await response.write(f"event: changed\ndata: {seen}\n\n".encode())
        return response

    prefix = "/sim/v1/message/{persona}/{name}"
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/sim/v1/search", find)
    app.router.add_get(prefix, detail)
    app.router.add_delete(prefix, delete_one)
    app.router.add_get(prefix + "/raw", raw)
    app.router.add_get(prefix + "/html", html)
    app.router.add_get(prefix + "/part/{index}", part)
    app.router.add_delete("/sim/v1/messages", delete_many)
    app.router.add_get("/sim/v1/stream", stream)
