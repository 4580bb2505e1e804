"""The inbox's API on a real sim fed by a real MTA: search, one message, DKIM, delete, live."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import aiohttp

from mta.cli.dkim import keygen
from mta.clock import ManualClock
from mta.config.service import DkimKey
from mta.sim import search
from tests.sim.conftest import Stack

TOKEN = "s3cret-token"


async def start(
    net: str,
    tmp_path: Path,
    token: str = TOKEN,
    store: str = "sqlite",
    mta_flags: dict[str, Any] | None = None,
) -> Stack:
    path, _ = keygen("campaign.test", "sim1", tmp_path / "keys")
    stack = Stack(net, tmp_path, ManualClock(time.time()))  # t= must not be in the future
    config = stack.config()
    config = dataclasses.replace(
        config,
        sim=dataclasses.replace(
            config.sim, token=token, dkim_keys=str(tmp_path / "keys"), store=store
        ),
    )
    await stack.start(
        config=config, dkim=(DkimKey("campaign.test", "sim1", str(path)),), mta_flags=mta_flags
    )
    return stack


def base(stack: Stack) -> str:
    assert stack.sim is not None and stack.sim.http_address is not None
    host, port = stack.sim.http_address
    return f"http://{host}:{port}"


async def test_search_view_and_delete(net: str, tmp_path: Path) -> None:
    stack = await start(net, tmp_path)
    try:
        await stack.submit(["ann@isp.test", "nobody@isp.test"], subject="Spring sale")
        await stack.quiet()  # stored before the next one: "newest first" is then an order
        await stack.submit(["ben@isp.test"], subject="Autumn news", sender="news@campaign.test")
        await stack.quiet()
        url = base(stack)
        async with aiohttp.ClientSession() as http:

            async def find(query: str) -> list[str]:
                async with http.get(f"{url}/sim/v1/search", params={"query": query}) as got:
                    assert got.status == 200
                    return [m["subject"] for m in (await got.json())["messages"]]

            assert await find("") == ["Autumn news", "Spring sale"]  # newest first
            assert await find("to:ann@isp") == ["Spring sale"]
            assert await find("from:news@") == ["Autumn news"]
            assert await find('subject:"spring SALE"') == ["Spring sale"]
            assert await find("delivery:d1 persona:isp dkim:pass") == ["Autumn news", "Spring sale"]
            assert await find("delivery:other") == []
            assert await find("dkim:fail") == []
            assert await find("autumn") == ["Autumn news"]
            async with http.get(f"{url}/sim/v1/search", params={"limit": "1"}) as got:
                page = await got.json()
            assert (page["total"], page["count"], page["start"]) == (2, 1, 0)
            message_id = page["messages"][0]["id"]

            async with http.get(f"{url}/sim/v1/message/{message_id}") as got:
                detail = await got.json()
            assert detail["dkim"]["result"] == "pass"
            assert detail["dkim"]["signatures"][0]["domain"] == "campaign.test"
            assert detail["dmarc"]["alignment"] == "strict" and detail["dmarc"]["result"] == "pass"
            assert detail["delivery_id"] == "d1"
            assert detail["text"].strip() == "Hello there."
            stages = [stage for stage, _ in detail["transcript"]]
            assert stages == ["MAIL FROM:<news@campaign.test>", "RCPT TO:<ben@isp.test>",
                              "DATA", "end of data"]
            assert detail["transcript"][-1][1].startswith("250 ")
            assert any(h["name"] == "Feedback-ID" for h in detail["headers"])

            async with http.get(f"{url}/sim/v1/message/{message_id}/raw") as got:
                assert (await got.text()).startswith("Return-Path: <news@campaign.test>")
            async with http.get(f"{url}/sim/v1/message/{message_id}/html") as got:
                assert "default-src 'none'" in got.headers["Content-Security-Policy"]
                assert "sandbox" in got.headers["Content-Security-Policy"]
            async with http.get(f"{url}/sim/v1/message/isp/999999") as got:
                assert got.status == 404

            # writes need the token
            async with http.delete(f"{url}/sim/v1/message/{message_id}") as got:
                assert got.status == 401
                assert "token" in (await got.json())["error"]
            wrong = {"Authorization": "Bearer nope"}
            async with http.delete(f"{url}/sim/v1/messages", headers=wrong) as got:
                assert got.status == 401
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with http.delete(f"{url}/sim/v1/message/{message_id}", headers=auth) as got:
                assert got.status == 200 and (await got.json())["deleted"] == 1
            assert await find("") == ["Spring sale"]
            assert stack.sim is not None
            assert stack.sim.stats()["personas"]["isp"]["stored"] == 1
            async with http.delete(f"{url}/sim/v1/messages", headers=auth) as got:
                assert (await got.json())["deleted"] == 1
            assert await find("") == []
    finally:
        await stack.stop()


async def test_the_stream_announces_arrivals(net: str, tmp_path: Path) -> None:
    stack = await start(net, tmp_path)
    try:
        url = base(stack)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/sim/v1/stream") as events:
            assert (await events.content.readline()).startswith(b"event: hello")
            await events.content.readline()
            await events.content.readline()
            await stack.submit(["ann@isp.test"], subject="Live")
            line = await asyncio.wait_for(events.content.readline(), 10)
            assert line == b"event: changed\n"
    finally:
        await stack.stop()


async def test_writes_are_refused_without_a_configured_token(net: str, tmp_path: Path) -> None:
    stack = await start(net, tmp_path, token="")
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": "Bearer anything"}
            async with http.delete(f"{base(stack)}/sim/v1/messages", headers=headers) as got:
                assert got.status == 403
                assert "MTA_ADMIN_TOKEN" in (await got.json())["error"]
            async with http.get(f"{base(stack)}/") as got:
                assert got.status == 200
                page = await got.text()
                assert '<script type="module" src="/static/inbox.js">' in page
                assert "script-src 'self'" in got.headers["Content-Security-Policy"]
    finally:
        await stack.stop()


async def test_maildir_store_lists_and_searches(net: str, tmp_path: Path) -> None:
    stack = await start(net, tmp_path, store="maildir")
    try:
        await stack.submit(["ann@isp.test"], subject="Kept in a Maildir")
        await stack.quiet()
        async with aiohttp.ClientSession() as http:
            params: Any = {"query": "subject:maildir"}
            async with http.get(f"{base(stack)}/sim/v1/search", params=params) as got:
                page = await got.json()
        assert [m["subject"] for m in page["messages"]] == ["Kept in a Maildir"]
    finally:
        await stack.stop()


def test_query_terms() -> None:
    terms = search.parse('to:ann from:"Big Shop" subject:"a b" dkim:pass words x:y')
    assert [(t.field, t.value) for t in terms] == [
        ("to", "ann"), ("from", "Big Shop"), ("subject", "a b"), ("dkim", "pass"),
        ("text", "words"), ("text", "x:y"),
    ]
    assert search.matches(search.Term("persona", "ISP"), {"persona": ["isp"]})
    assert not search.matches(search.Term("persona", "is"), {"persona": ["isp"]})
    assert search.matches(search.Term("to", "ANN"), {"to": ["ann@isp.test"]})


def test_a_version_1_store_gains_the_inbox_columns(tmp_path: Path) -> None:
    import sqlite3

    from mta.sim import inbox, store

    conn = sqlite3.connect(tmp_path / store.SQLITE_FILE)
    conn.executescript(
        "CREATE TABLE personas (name TEXT PRIMARY KEY) WITHOUT ROWID;"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, persona TEXT NOT NULL,"
        " received_at REAL NOT NULL, mail_from TEXT NOT NULL, recipients TEXT NOT NULL,"
        " size INTEGER NOT NULL, subject TEXT NOT NULL, header_from TEXT NOT NULL,"
        " header_to TEXT NOT NULL, message_id TEXT NOT NULL, dkim INTEGER NOT NULL,"
        " message BLOB NOT NULL);"
        "INSERT INTO messages VALUES (7, 'isp', 1.0, 'a@b.test', '[\"c@isp.test\"]', 4,"
        " 'Old', 'a@b.test', 'c@isp.test', '<m@b>', 0, x'61626364');"
        "PRAGMA user_version=1;"
    )
    conn.close()
    kept = store.SqliteStore(tmp_path)
    kept.close()
    page = inbox.search(tmp_path, search.parse("subject:old"))
    assert [(m["id"], m["delivery_id"], m["dkim_result"]) for m in page["messages"]] == [
        ("isp/7", "", "")
    ]
    found = inbox.record(tmp_path, "isp/7")
    assert found is not None and found["transcript"] == [] and found["content"] == b"abcd"
