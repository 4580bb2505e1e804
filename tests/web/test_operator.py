"""Operator actions through the admin API and `mta queue ...`; chaos through the sim's API and
`mta sim chaos`: a real MTA delivering to a real simulation, the token on every write."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import wait_for
from tests.sim.conftest import Stack
from tests.sim.test_inbox import TOKEN, base, start

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def admin_stack(
    net: str, tmp_path: Path, token: str = TOKEN, client_url: str = ""
) -> Stack:
    flags = {"admin.listen": "127.0.0.1:0", "admin.token": token, "admin.client_url": client_url}
    return await start(net, tmp_path, mta_flags=flags)


def admin(stack: Stack) -> str:
    assert stack.app is not None and stack.app.admin_address is not None
    host, port = stack.app.admin_address
    return f"http://{host}:{port}"


async def mta(*argv: str, token: str | None = None) -> tuple[int, str, str]:
    env = {"PATH": "/usr/bin:/bin"}
    if token:
        env["MTA_ADMIN_TOKEN"] = token
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mta", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def held(stack: Stack, http: aiohttp.ClientSession, url: str) -> None:
    """Until the scheduler has planned the suspended site's new mail (and held it)."""
    assert stack.app is not None
    scheduler = stack.app.running.scheduler

    async def waiting() -> bool:
        async with http.get(f"{url}/api/v1/queue/sites") as got:
            sites = (await got.json())["sites"]
        return bool(sites) and sites[0]["queued"] == 1

    await wait_for(waiting)

    def refused() -> bool:  # planned, and the site admitted nothing until the suspension ends
        work = scheduler.domains.get("isp.test")
        return work is not None and work.not_before > stack.clock.now()

    await wait_for(lambda: refused() or scheduler.inflight > 0)


async def test_suspend_resume_bounce_and_the_audit(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path)
    try:
        url = admin(stack)
        await stack.submit(["ann@isp.test"])
        await stack.quiet()
        assert stack.rows()["ann@isp.test"].state == "delivered"
        async with aiohttp.ClientSession() as http:
            body: dict[str, Any] = {"target": "isp.test", "duration": "1h", "reason": "maintenance"}
            async with http.post(f"{url}/api/v1/control/suspend", json=body) as got:
                assert got.status == 401
                assert "token" in (await got.json())["error"]
            async with http.post(f"{url}/api/v1/control/suspend", json=body, headers=AUTH) as got:
                assert got.status == 200, await got.text()
                answer = await got.json()
            assert answer["sites"] and answer["reason"] == "maintenance"

            await stack.submit(["ben@isp.test"])
            await held(stack, http, url)
            assert stack.rows()["ben@isp.test"].state == "queued"
            assert stack.rows()["ben@isp.test"].attempts == 0  # the site admits nothing
            async with http.get(f"{url}/api/v1/queue/sites") as got:
                (site,) = (await got.json())["sites"]
            assert site["state"] == "suspended"
            assert site["last_reason"] == "suspended by the operator: maintenance"

            # `mta queue resume` ends it; the recipient goes out at once
            code, out, err = await mta("queue", "resume", "isp.test", "--api", url, token=TOKEN)
            assert code == 0, err
            assert out.startswith("resumed ")
            await stack.quiet()
            assert stack.rows()["ben@isp.test"].state == "delivered"

            # bounce a suspended site's queue: the reason flows into the event
            code, _, err = await mta(
                "queue", "suspend", "isp.test", "--duration", "2h", "--api", url, token=TOKEN
            )
            assert code == 0, err
            await stack.submit(["carl@isp.test"])
            await held(stack, http, url)
            code, out, err = await mta(
                "queue", "bounce", "isp.test", "--reason", "dead domain", "--api", url,
                token=TOKEN,
            )
            assert code == 0, err
            assert out.strip() == "bounced 1 queued recipient"
            assert stack.rows()["carl@isp.test"].state == "bounced"
            bounced = [json.loads(b) for k, b in stack.events() if k == "hard_bounce"]
            assert bounced[-1]["recipient"] == "carl@isp.test"
            assert bounced[-1]["smtp"]["text"] == "Bounced by the operator: dead domain"

            # every write is recorded in the spool: who, when, what
            async with http.get(f"{url}/api/v1/audit") as got:
                actions = (await got.json())["actions"]
            assert [a["action"] for a in actions] == ["bounce", "suspend", "resume", "suspend"]
            assert actions[0]["reason"] == "dead domain" and actions[0]["recipients"] == 1
            assert all(a["who"].startswith("token@127.") for a in actions)

            # no token given to the command: refused, one line naming the problem
            code, _, err = await mta("queue", "retry", "isp.test", "--api", url)
            assert code == 1
            assert err.count("\n") == 1 and "HTTP 401" in err
    finally:
        await stack.stop()


async def test_writes_are_refused_when_no_token_is_configured(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path, token="")
    try:
        async with aiohttp.ClientSession() as http:
            body = {"target": "isp.test"}
            url = f"{admin(stack)}/api/v1/control/retry"
            async with http.post(url, json=body, headers=AUTH) as got:
                assert got.status == 403
                assert "admin.token" in (await got.json())["error"]
            async with http.get(f"{admin(stack)}/api/v1/queue/sites") as got:
                assert got.status == 200  # reads stay open
    finally:
        await stack.stop()


async def test_chaos_changes_a_personas_replies(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path)
    try:
        sim = base(stack)
        code, out, err = await mta(
            "sim", "chaos", "isp", "--reply", "451 4.7.1 Chaos says later", "--url", sim,
            token=TOKEN,
        )
        assert code == 0, err
        assert json.loads(out)["state"]["reply"]["reply"] == "451 4.7.1 Chaos says later"
        await stack.submit(["dan@isp.test"])
        await stack.quiet()
        dan = stack.rows()["dan@isp.test"]
        assert (dan.state, dan.code, dan.text) == ("queued", 451, "Chaos says later")
        async with aiohttp.ClientSession() as http:
            update = {"reply": None, "greylisting": False, "rate": 0}
            async with http.put(f"{sim}/sim/v1/chaos/isp", json=update) as got:
                assert got.status == 401
            async with http.put(f"{sim}/sim/v1/chaos/isp", json=update, headers=AUTH) as got:
                state = (await got.json())["state"]
            assert state["reply"] is None and state["greylisting"] is False
            async with http.put(
                f"{sim}/sim/v1/chaos/isp", json={"reply": {"stage": "x"}}, headers=AUTH
            ) as got:
                assert got.status == 400 and "reply.stage" in (await got.json())["error"]
        code, _, err = await mta("sim", "chaos", "nosuch", "--rate", "1", "--url", sim,
                                 token=TOKEN)
        assert code == 1 and "no persona 'nosuch'" in err
    finally:
        await stack.stop()
