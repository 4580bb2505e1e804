"""The Email Feedback Service: the spool's event outbox -> signed webhook POSTs, at least once.

One dispatcher per configured endpoint reads events after its durable cursor
(table `webhook_cursors` in the spool), POSTs them as a JSON array with
Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`),
and advances the cursor only after a 2xx, so a crash or restart re-sends (the
same event ids: receivers deduplicate). Failures are retried with exponential
backoff and full jitter; `429`/`503` with `Retry-After` are honoured; `410 Gone`
disables the endpoint; a redirect (3xx) is a failure like any other, never followed
(following would turn the POST into a GET that "succeeds", or send the signed batch
to whatever host `Location` names), shown with its `Location`; `413` halves the
batch for that endpoint (down to one event, then it is a failure like others); a
batch still failing after `window` is skipped (and logged) so one dead endpoint
cannot hold events forever — the pull API still serves them. Webhook timing is real time:
receivers check `webhook-timestamp` against their own clock, whatever the
simulation's clock says.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import time
from dataclasses import dataclass, field

import aiohttp

from mta.config.service import FeedbackConfig, WebhookConfig
from mta.core.standard_webhooks import secret_key, signature
from mta.queue.spool import Spool

log = logging.getLogger("mta.feedback")

BACKOFF_FIRST = 1.0  # real seconds before the first retry of a failing batch (then doubled)
BACKOFF_MAX = 300.0  # real seconds between retries, at most

def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


@dataclass
class EndpointStatus:
    url: str
    cursor: int = 0
    disabled: bool = False
    failing_since: float | None = None
    delivered: int = 0
    dropped: int = 0
    attempts: int = 0
    last_error: str | None = None
    last_status: int | None = None  # the last HTTP status that was not a 2xx
    location: str | None = None  # the Location of the last redirect refused
    next_try_at: float | None = None


@dataclass
class _State:
    endpoint: WebhookConfig
    key: bytes
    status: EndpointStatus
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    batch_max: int = 0  # 0: the config's batch_max; halved by a 413


class Feedback:
    """Dispatchers for every endpoint the `[feedback]` section names. `await start()`,
    `notify()` after commits, `await stop()`."""

    def __init__(
        self,
        spool: Spool,
        config: FeedbackConfig,
        rng: random.Random | None = None,
    ) -> None:
        self.spool = spool
        self.config = config
        self.rng = rng or random.Random()
        self.states = [
            _State(e, secret_key(e.secret), EndpointStatus(e.url)) for e in config.endpoints
        ]
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    async def start(self) -> None:
        if not self.states:
            return
        cursors = await self.spool.webhook_cursors([s.endpoint.url for s in self.states])
        for state in self.states:
            found = cursors[state.endpoint.url]
            state.status.cursor = found.last_id
            state.status.disabled = found.disabled
            state.status.failing_since = found.failing_since
            state.status.delivered = found.delivered
            state.status.dropped = found.dropped
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers={"User-Agent": "mta-sim feedback"},
        )
        loop = asyncio.get_running_loop()
        for state in self.states:
            if not state.status.disabled:
                state.task = loop.create_task(
                    self._run(state), name=f"webhook {state.endpoint.url}"
                )

    def notify(self) -> None:
        """New events may be in the outbox."""
        for state in self.states:
            state.wake.set()

    async def stop(self) -> None:
        self._stopping = True
        for state in self.states:
            if state.task is not None:
                state.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state.task
        if self._session is not None:
            await self._session.close()

    def status(self) -> list[EndpointStatus]:
        return [state.status for state in self.states]

    def cursors(self) -> list[int] | None:
        """The enabled endpoints' cursors; None when no endpoint is enabled (for pruning)."""
        found = [s.status.cursor for s in self.states if not s.status.disabled]
        return found or None

    async def _run(self, state: _State) -> None:
        status = state.status
        while not self._stopping:
            state.wake.clear()
            limit = state.batch_max or self.config.batch_max
            batch = await self.spool.events_after(status.cursor, limit)
            if not batch:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.wake.wait(), 1.0)
                continue
            last_id = batch[-1][0]
            body = json.dumps(
                [event for _, event in batch], separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
            msg_id = f"msg_{batch[0][1].get('event_id', batch[0][0])}"
            outcome = await self._post(state, msg_id, body, splittable=len(batch) > 1)
            if outcome == "too large":
                state.batch_max = max(1, len(batch) // 2)
                log.warning(
                    "webhook %s: 413 for %d events (%d bytes): sending %d per request",
                    status.url,
                    len(batch),
                    len(body),
                    state.batch_max,
                )
            elif outcome == "ok":
                status.delivered += len(batch)
                await self._advance(state, last_id, delivered=len(batch))
            elif outcome == "gone":
                status.disabled = True
                await self.spool.disable_webhook(status.url)
                log.error("webhook %s answered 410 Gone: disabled", status.url)
                return
            elif outcome == "expired":
                status.dropped += len(batch)
                log.error(
                    "webhook %s failed for %.0fs: skipping %d events (ids up to %d);"
                    " they remain available from the pull API",
                    status.url,
                    self.config.window,
                    len(batch),
                    last_id,
                )
                await self._advance(state, last_id, dropped=len(batch))

    async def _advance(
        self, state: _State, last_id: int, delivered: int = 0, dropped: int = 0
    ) -> None:
        status = state.status
        status.cursor = last_id
        status.failing_since = None
        status.attempts = 0
        status.next_try_at = None
        await self.spool.advance_webhook(status.url, last_id, delivered, dropped)

    async def _post(
        self, state: _State, msg_id: str, body: bytes, splittable: bool = False
    ) -> str:
        """POST until a 2xx ("ok"), a 410 ("gone"), a 413 for a batch that can be split
        ("too large") or the window ends ("expired")."""
        status = state.status
        assert self._session is not None
        while not self._stopping:
            timestamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature(state.key, msg_id, timestamp, body),
            }
            wait: float | None = None
            try:
                async with self._session.post(
                    status.url, data=body, headers=headers, allow_redirects=False
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return "ok"
                    if resp.status == 410:
                        return "gone"
                    status.last_status = resp.status
                    status.last_error = f"HTTP {resp.status}"
                    if resp.status == 413 and splittable:
                        return "too large"
                    if 300 <= resp.status < 400:
                        status.location = resp.headers.get("Location", "")[:500]
                        status.last_error += (
                            f" redirect to {status.location or '(no Location)'}: not followed"
                        )
                    if resp.status in (429, 503):
                        wait = retry_after(resp.headers.get("Retry-After"), time.time())
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status.last_error = f"{type(exc).__name__}: {exc}"
            now = time.time()
            if status.failing_since is None:
                status.failing_since = since = now
                await self.spool.webhook_failing(status.url, since)
            if now - status.failing_since >= self.config.window:
                return "expired"
            status.attempts += 1
            if wait is None:
                cap = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(status.attempts - 1, 20))
                wait = self.rng.uniform(cap / 2, cap)  # jitter, never a stampede
            wait = min(wait, max(self.config.window - (now - status.failing_since), 0.0))
            status.next_try_at = now + wait
            log.warning(
                "webhook %s: %s; retry %d in %.1fs",
                status.url,
                status.last_error,
                status.attempts,
                wait,
            )
            await asyncio.sleep(wait)
        return "stopped"
