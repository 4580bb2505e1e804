"""Operator actions over HTTP, in the style of KumoMTA's admin API (every one needs the token).

    POST /api/v1/control/suspend  {"target": "gmail.test", "duration": "10m", "reason": "..."}
    POST /api/v1/control/resume   {"target": ..., "reason": "..."}
    POST /api/v1/control/bounce   {"target": domain | site} or {"queue_id": "..."}, "reason": "..."
                                  every queued recipient is hard-bounced now; the reason is in
                                  each event's reply text ("Bounced by the operator: <reason>")
    POST /api/v1/control/retry    {"target": domain | site, "reason": "..."}: due now
    GET  /api/v1/audit            the operator actions recorded in the spool, newest first

A site is named by its key (as `mta queue sites` shows it) or by any domain it serves. Each
accepted action is recorded in the spool (who: the caller's address; when: the clock; what:
action, target, reason, duration) before the answer, and shows in the console's timeline.
Without the token: 401; with no token configured: 403 (`mta.core.tokens`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mta.core import tokens
from mta.core.durations import parse_duration

if TYPE_CHECKING:
    from mta.clock import Clock
    from mta.queue.scheduler import Scheduler
    from mta.queue.spool import Spool

log = logging.getLogger("mta.admin.operator")

ACTIONS = ("suspend", "resume", "bounce", "retry")
MAX_REASON = 200
MAX_SUSPEND = 7 * 86400.0


@dataclass
class Controls:
    """What the actions do, as the scheduler and the spool provide it."""

    now: Callable[[], float]
    suspend: Callable[[str, float, str], Awaitable[list[str]]]  # target, until, reason -> sites
    resume: Callable[[str, str], Awaitable[list[str]]]  # target, reason -> site keys
    bounce: Callable[[str | None, str | None, str], Awaitable[int]]  # target, queue id, reason
    retry: Callable[[str], Awaitable[int]]  # target -> recipients made due
    record: Callable[[dict[str, Any]], Awaitable[None]]  # keep one action in the spool
    actions: Callable[[int], Awaitable[list[dict[str, Any]]]]  # the newest N recorded


AUDIT_BINDING = "operator"  # operator actions share the spool's site_events table


def operator_controls(clock: Clock, scheduler: Scheduler, spool: Spool) -> Controls:
    """The controls over a running scheduler, recorded in its spool."""

    async def record(entry: dict[str, Any]) -> None:
        await spool.site_event(entry["at"], entry["target"], AUDIT_BINDING, json.dumps(entry))

    async def actions(limit: int) -> list[dict[str, Any]]:
        return [json.loads(body) for body in await spool.operator_actions(AUDIT_BINDING, limit)]

    return Controls(
        now=clock.now,
        suspend=scheduler.suspend,
        resume=scheduler.resume,
        bounce=scheduler.bounce,
        retry=scheduler.retry_now,
        record=record,
        actions=actions,
    )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_routes(app: web.Application, controls: Controls, token: str) -> None:
    async def act(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ACTIONS:
            return _error(404, f"no action {action!r} (one of: {', '.join(ACTIONS)})")
        given = tokens.presented(
            request.headers.get("Authorization"), request.headers.get("X-Token")
        )
        denied = tokens.check_write(token, given)
        if denied is not None:
            return _error(denied.status, denied.message)
        try:
            data = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, 'the body must be JSON: {"target": "gmail.test", "reason": "..."}')
        if not isinstance(data, dict):
            return _error(400, "the body must be a JSON object")
        target = data.get("target")
        queue_id = data.get("queue_id")
        reason = data.get("reason") or "operator"
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            return _error(400, f"reason is a string of at most {MAX_REASON} characters")
        reason = " ".join(reason.split())
        if queue_id is not None and (action != "bounce" or not isinstance(queue_id, str)):
            return _error(400, "queue_id (a string) goes with bounce only")
        if queue_id is None and (not isinstance(target, str) or not target.strip()):
            return _error(400, "target: a domain or a site (as `mta queue sites` names it)")
        target = target.strip().lower() if isinstance(target, str) else None
        now = controls.now()
        record: dict[str, Any] = {
            "action": action,
            "target": target or queue_id,
            "reason": reason,
            "who": tokens.who(given, request.remote or "unknown"),
            "at": now,
        }
        if action == "suspend":
            try:
                duration = parse_duration(data.get("duration", "10m"))
            except (ValueError, TypeError):
                return _error(400, 'duration: e.g. "90s", "10m", "2h"')
            if not 0 < duration <= MAX_SUSPEND:
                return _error(400, "duration: more than 0 and at most 7d")
            assert target is not None
            sites = await controls.suspend(target, now + duration, reason)
            record.update(duration=duration, until=now + duration, sites=sites)
            message = f"suspended {', '.join(sites)} for {duration:g}s"
        elif action == "resume":
            assert target is not None
            sites = await controls.resume(target, reason)
            record["sites"] = sites
            message = f"resumed {', '.join(sites)}"
        elif action == "bounce":
            count = await controls.bounce(target, queue_id, reason)
            record["recipients"] = count
            message = f"bounced {count} queued recipient{'s' if count != 1 else ''}"
        else:
            assert target is not None
            count = await controls.retry(target)
            record["recipients"] = count
            message = f"{count} recipient{'s' if count != 1 else ''} due now"
        if action in ("suspend", "resume") and not record["sites"]:
            return _error(404, f"no site known for {target!r}: nothing was queued for it yet")
        await controls.record(record)
        log.warning("operator %s %s by %s: %s", action, record["target"], record["who"], reason)
        return web.json_response({**record, "message": message})

    async def audit(request: web.Request) -> web.Response:
        text = request.query.get("limit", "100")
        if not text.isdigit() or not 1 <= int(text) <= 1000:
            return _error(400, "limit: 1 to 1000")
        return web.json_response({"actions": await controls.actions(int(text))})

    app.router.add_post("/api/v1/control/{action}", act)
    app.router.add_get("/api/v1/audit", audit)
