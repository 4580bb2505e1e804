"""`mta queue sites | status | show QUEUE_ID`: look into a running MTA through its HTTP API;
`mta queue suspend | resume | bounce | retry`: act on it (with the write token).

    mta queue sites [--api http://127.0.0.1:8080] [--json]
    mta queue suspend gmail.test --duration 10m --reason "maintenance"
    mta queue resume gmail.test
    mta queue bounce nxdomain.test --reason "dead domain"   (or --queue-id ID)
    mta queue retry isp.test

The token comes from `--token` or the environment's MTA_ADMIN_TOKEN.

Per site (the set of MX hosts) and source binding: the queue depth, the current
rate and connection limits against the configured ones, the state (ok, slowed,
suspended, down), delivered / deferred / throttled counts, the delivery rate over
the last minute and on average (first attempt to last delivery, virtual time),
and the reason for the last change of limits. A node of a cluster adds the shared
state (fallback or shared, the shared rate and connections, its version) and the
connection leases every node holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from typing import Any

import aiohttp

from mta.core.durations import rate_text
from mta.core.tokens import TOKEN_ENV

DEFAULT_API = "http://127.0.0.1:8080"


class QueueError(Exception):
    pass


async def fetch(api: str, path: str) -> Any:
    url = api.rstrip("/") + path
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.get(url) as resp,
        ):
            if resp.status == 404:
                raise QueueError(f"{url}: not found")
            if resp.status != 200:
                raise QueueError(f"{url}: HTTP {resp.status}")
            return await resp.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise QueueError(f"cannot reach the MTA's API at {api}: {exc}") from None


async def post(api: str, path: str, body: dict[str, Any], token: str | None) -> Any:
    url = api.rstrip("/") + path
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
            http.post(url, json=body, headers=headers, allow_redirects=False) as resp,
        ):
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = {}
            if resp.status != 200:
                error = data.get("error") if isinstance(data, dict) else None
                raise QueueError(f"refused (HTTP {resp.status}): {error or 'no reason given'}")
            return data
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise QueueError(f"cannot reach the MTA's API at {api}: {exc}") from None


ACTIONS = ("suspend", "resume", "bounce", "retry")


def _rate(value: float | None) -> str:
    return rate_text(math.inf if value is None else value)


def render_sites(sites: list[dict[str, Any]]) -> str:
    """The `mta queue sites` table."""
    if not sites:
        return "no sites yet: nothing has been queued since the MTA started"
    header = ("site", "binding", "state", "queued", "flight", "rate/limit", "conns",
              "delivered", "deferred", "throttled", "rate now", "average", "last change")
    rows = []
    for s in sites:
        name = s.get("rule", "") + " " + (",".join(s.get("domains", [])[:3]) or s["site"])
        rows.append((
            name.strip()[:34],
            str(s["binding"]),
            str(s["state"]),
            str(s["queued"]),
            str(s["in_flight"]),
            f"{_rate(s['rate'])}/{_rate(s['configured_rate'])}",
            f"{s['concurrency']}/{s['max_connections']}",
            str(s["delivered"]),
            str(s["deferred"]),
            str(s["throttled"]),
            _rate(s["effective_rate"]) if s["effective_rate"] else "-",
            _rate(s["average_rate"]) if s.get("average_rate") else "-",
            (s.get("last_reason") or "-")[:60],
        ))
    table: list[tuple[str, ...]] = [tuple(str(c) for c in row) for row in rows]
    titles: tuple[str, ...] = header
    if any("cluster" in s for s in sites):
        titles = (*header, "shared", "conns by node")
        table = [
            (*row, *_cluster_cells(s.get("cluster") or {}))
            for row, s in zip(table, sites, strict=True)
        ]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(titles)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(titles, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in table]
    return "\n".join(lines)


def _cluster_cells(shared: dict[str, Any]) -> tuple[str, str]:
    """What the cluster shares for a row: mode, shared rate and connections (version),
    and every node's connection leases."""
    if not shared:
        return "-", "-"
    state = str(shared.get("mode", "-"))
    if "rate" in shared:
        state += f" {_rate(shared['rate'])} {shared.get('concurrency', '-')}c"
        state += f" v{shared.get('version', 0)}"
        if shared.get("suspended_until"):
            state += " suspended"
    conns = " ".join(f"{n}:{c}" for n, c in sorted(shared.get("shares", {}).items())) or "-"
    return state, conns


def render_status(status: dict[str, Any]) -> str:
    return "\n".join(f"{key:<12} {value}" for key, value in status.items())


def render_message(message: dict[str, Any]) -> str:
    lines = [f"queue id {message['queue_id']}"]
    for row in message["attempts"]:
        reply = " ".join(str(row[k]) for k in ("code", "enhanced", "text") if row.get(k))
        lines.append(f"  {row['address']:<40} {row['state']:<10} attempts={row['attempts']}"
                     f"  {row.get('phase') or ''} {reply}".rstrip())
    return "\n".join(lines)


def add_parser(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default=DEFAULT_API, metavar="URL",
                        help=f"the MTA's admin API (default {DEFAULT_API})")
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    parser = subparsers.add_parser("queue", help="inspect a running MTA's queue and sites")
    sub = parser.add_subparsers(dest="queue_command", required=True, metavar="WHAT")
    sub.add_parser("sites", parents=[common],
                   help="per site: depth, limits, state, last change, throughput")
    sub.add_parser("status", parents=[common],
                   help="recipients by state, in flight, accepted, rejected")
    show = sub.add_parser("show", parents=[common], help="one message's recipients and attempts")
    show.add_argument("queue_id")
    acting = argparse.ArgumentParser(add_help=False, parents=[common])
    acting.add_argument("--reason", default="operator", help="why (kept with the action)")
    acting.add_argument("--token", help=f"the write token (default: ${TOKEN_ENV})")
    helps = {
        "suspend": "stop deliveries to a site (named by a domain it serves) for a while",
        "resume": "end a site's suspension now",
        "bounce": "hard-bounce every queued recipient of a domain (or of one message)",
        "retry": "make a domain's queued recipients due now",
    }
    for action in ACTIONS:
        command = sub.add_parser(action, parents=[acting], help=helps[action])
        command.add_argument("target", nargs="?" if action == "bounce" else None,
                             help="a domain, or a site as `mta queue sites` names it")
        if action == "suspend":
            command.add_argument("--duration", default="10m", help="e.g. 90s, 10m, 2h")
        if action == "bounce":
            command.add_argument("--queue-id", help="bounce this message's queued recipients")


def act(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"reason": args.reason}
    if getattr(args, "queue_id", None):
        body["queue_id"] = args.queue_id
    elif args.target:
        body["target"] = args.target
    else:
        print("mta queue bounce: give a domain or --queue-id", file=sys.stderr)
        return 2
    if args.queue_command == "suspend":
        body["duration"] = args.duration
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        data = asyncio.run(post(args.api, f"/api/v1/control/{args.queue_command}", body, token))
    except QueueError as exc:
        print(f"mta queue {args.queue_command}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else data.get("message", "done"))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.queue_command in ACTIONS:
        return act(args)
    paths = {"sites": "/api/v1/queue/sites", "status": "/api/v1/status"}
    path = paths.get(args.queue_command) or f"/api/v1/messages/{args.queue_id}"
    try:
        data = asyncio.run(fetch(args.api, path))
    except QueueError as exc:
        print(f"mta queue: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.queue_command == "sites":
        print(render_sites(data["sites"]))
    elif args.queue_command == "status":
        print(render_status(data))
    else:
        print(render_message(data))
    return 0
