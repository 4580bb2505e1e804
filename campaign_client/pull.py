"""The pull alternative to webhooks: long-poll the MTA's `GET /api/v1/events?after=&wait=`.

    cursor = await pull_events("http://127.0.0.1:8080", log, wait=30, stop=stop_event)

Each answer is {"events": [...], "next": cursor}; its events are applied to the log and the
cursor stored in the same transaction (table `cursors`, keyed by the base URL), so a restarted
puller resumes where it stopped and a page applied twice changes nothing (event ids). Errors
(connection refused, 5xx, a bad body) back off from 0.5 s to 30 s and are retried; the loop
ends when `stop` is set or after `max_rounds` requests. `fetch_events` is one request.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from campaign_client.events import Event, EventError, parse_batch
from campaign_client.log import DeliveryLog, LogError

EVENTS_PATH = "/api/v1/events"


class PullError(Exception):
    """One pull request failed; the message says how."""


@dataclass(slots=True)
class PullStats:
    rounds: int = 0
    events: int = 0
    errors: int = 0
    last_error: str | None = None
    cursor: str | None = None


async def fetch_events(
    session: aiohttp.ClientSession,
    base_url: str,
    after: str | None,
    wait: float,
    headers: Mapping[str, str] | None = None,
) -> tuple[list[Event], str | None]:
    """One long-poll request: (events, next cursor or None if the answer has none)."""
    params = {"wait": f"{wait:g}"}
    if after is not None:
        params["after"] = after
    url = base_url.rstrip("/") + EVENTS_PATH
    timeout = aiohttp.ClientTimeout(total=wait + 15.0)
    try:
        async with session.get(url, params=params, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                raise PullError(f"GET {url}: HTTP {resp.status}")
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PullError(f"GET {url}: {exc.__class__.__name__}: {exc}") from None
    try:
        data: Any = json.loads(body)
    except ValueError:
        raise PullError(f"GET {url}: answer is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise PullError(f"GET {url}: answer has no \"events\" list")
    try:
        events = parse_batch(data["events"])
    except EventError as exc:
        raise PullError(f"GET {url}: {exc}") from None
    following = data.get("next")
    return events, None if following is None else str(following)


async def pull_events(
    base_url: str,
    log: DeliveryLog,
    *,
    after: str | None = None,
    wait: float = 30.0,
    stop: asyncio.Event | None = None,
    max_rounds: int | None = None,
    headers: Mapping[str, str] | None = None,
    gap_timeout: float | None = 120.0,
    clock: Callable[[], float] = time.time,
    stats: PullStats | None = None,
) -> str | None:
    """Feed the log from the pull API until `stop` is set or `max_rounds` requests were made.

    `after` overrides the stored cursor. Returns the last cursor.
    """
    stats = stats if stats is not None else PullStats()
    source = base_url.rstrip("/")
    cursor = after if after is not None else await asyncio.to_thread(log.cursor, source)
    stats.cursor = cursor
    delay = 0.5
    rounds = 0
    async with aiohttp.ClientSession() as session:
        while (stop is None or not stop.is_set()) and (max_rounds is None or rounds < max_rounds):
            rounds += 1
            stats.rounds += 1
            try:
                events, following = await _until_stopped(
                    fetch_events(session, base_url, cursor, wait, headers), stop
                )
            except _Stopped:
                break
            except PullError as exc:
                stats.errors += 1
                stats.last_error = str(exc)
                if await _sleep_or_stop(delay, stop):
                    break
                delay = min(delay * 2, 30.0)
                continue
            delay = 0.5
            try:
                report = await asyncio.to_thread(
                    log.apply_pulled, source, events, following, clock()
                )
                if gap_timeout is not None:
                    await asyncio.to_thread(log.release_stale, clock(), gap_timeout)
            except (sqlite3.Error, LogError) as exc:
                stats.errors += 1
                stats.last_error = f"delivery log: {exc}"
                if await _sleep_or_stop(delay, stop):
                    break
                continue
            stats.events += report.applied
            if following is not None:
                cursor = following
                stats.cursor = cursor
    return cursor


class _Stopped(Exception):
    pass


async def _until_stopped(
    coro: Coroutine[Any, Any, tuple[list[Event], str | None]], stop: asyncio.Event | None
) -> tuple[list[Event], str | None]:
    if stop is None:
        result: tuple[list[Event], str | None] = await coro
        return result
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise _Stopped
    result = task.result()
    return result


async def _sleep_or_stop(delay: float, stop: asyncio.Event | None) -> bool:
    """Sleep `delay` seconds; True if `stop` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay)
    except TimeoutError:
        return False
    return True
