"""A webhook endpoint answering a redirect: a failure, retried, shown in the API, never followed.

Real HTTP both ways: the MTA's sender posts to an aiohttp receiver on port 0 that answers
302 or 307 first, with `Location` naming a second server that records anything it gets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from mta.cli.sink import Sink
from mta.config.service import FeedbackConfig, WebhookConfig
from tests.helpers import SECRET, Hook, mta_config, send_message, started, wait_for

MESSAGE = b"From: a@sender.test\r\nSubject: s\r\n\r\nbody\r\n"


class Elsewhere:
    """Where `Location` points: counts every request of any method and answers 200."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.method)
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def elsewhere() -> AsyncIterator[Elsewhere]:
    server = Elsewhere()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("code", [302, 307])
async def test_a_redirect_is_a_failure_that_is_retried_and_never_followed(
    tmp_path: Path, sink: Sink, hook: Hook, elsewhere: Elsewhere, code: int
) -> None:
    location = f"http://127.0.0.1:{elsewhere.port}/steal"
    # Redirects until the test has looked, then the endpoint takes the batch.
    hook.answers[:] = [(code, {"Location": location})] * 1000
    config = mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}")
    config = dataclasses.replace(
        config, feedback=FeedbackConfig(webhooks=(WebhookConfig(url=hook.url, secret=SECRET),))
    )
    app = await started(config)
    address = app.admin_address
    assert address is not None
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@d.test"], MESSAGE)
        status = app.running.feedback.status()[0]
        # Redirected twice (so retried), and the failure recorded in full.
        await wait_for(
            lambda: hook.requests >= 2
            and status.last_status == code
            and status.failing_since is not None
        )
        async with aiohttp.ClientSession() as http:
            url = f"http://{address[0]}:{address[1]}/api/v1/webhooks"
            async with http.get(url) as resp:
                (shown,) = (await resp.json())["webhooks"]
        assert shown["last_status"] == code and shown["location"] == location
        assert f"HTTP {code} redirect to {location}: not followed" == shown["last_error"]
        assert shown["delivered"] == 0 and shown["failing_since"] is not None
        # Retried with the usual backoff until the endpoint itself answers 2xx.
        hook.answers.clear()
        await wait_for(lambda: {e["kind"] for e in hook.events} == {"relayed", "delivered"}, 30)
        assert hook.requests >= 3 and hook.bad_signatures == 0
        assert elsewhere.requests == []  # neither a GET (302) nor the signed POST (307)
        assert status.delivered == len(hook.events) and status.failing_since is None
    finally:
        await app.stop()
