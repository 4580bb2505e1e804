"""The admin API refuses what an attacker or a bad client sends, over real HTTP to a real MTA:
a foreign Host header (DNS rebinding), out-of-range query values, deeply nested JSON.
Who needs a token is a pure decision (`mta.admin.guard.check`), tested on its table: every
test's peer is loopback, so requests "from another host" are given as the peer address."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mta.admin.guard import Guard, bind_warning, check, host_name
from mta.app import MtaApp
from mta.config.service import load_config
from tests.helpers import mta_config, started


@pytest.fixture
async def mta(tmp_path: Path) -> AsyncIterator[MtaApp]:
    app = await started(
        mta_config(tmp_path, delivery__relayhost="127.0.0.1:9", admin__allowed_hosts=("mta.lan",))
    )
    yield app
    await app.stop()


def base(app: MtaApp) -> str:
    address = app.admin_address
    assert address is not None
    return f"http://{address[0]}:{address[1]}"


async def get(app: MtaApp, path: str, host: str | None = None) -> tuple[int, str]:
    headers = {"Host": host} if host is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(base(app) + path, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def test_a_foreign_host_header_is_refused_with_one_line(mta: MtaApp) -> None:
    port = mta.running.admin_port
    for path in ("/api/v1/status", "/api/v1/events?after=0", "/metrics", "/readyz"):
        status, text = await get(mta, path, host=f"evil.example:{port}")
        assert status == 421, path
        reason = "Host 'evil.example' is not this server (see admin.allowed_hosts)"
        assert text == json.dumps({"error": reason})
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST", "mta.lan"):
        status, text = await get(mta, "/api/v1/status", host=host)
        assert status == 200 and '"queued": 0' in text, host
    assert (await get(mta, "/api/v1/status", host="mta.lan.evil.example"))[0] == 421


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("after=" + "1" + "0" * 30, "after is 0-9223372036854775807"),
        ("after=-1", "after is 0-"),
        ("wait=nan", "wait is 0-60 seconds"),
        ("wait=inf", "wait is 0-60 seconds"),
        ("wait=-1", "wait is 0-60 seconds"),
        ("limit=0", "limit >= 1"),
        ("after=x", "after and limit are integers"),
        ("after=" + "9" * 5000, "after and limit are integers"),
    ],
)
async def test_out_of_range_query_values_answer_400_with_a_reason(
    mta: MtaApp, query: str, reason: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base(mta)}/api/v1/events?{query}") as resp,
    ):
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert reason in error and "\n" not in error


async def test_deeply_nested_json_answers_400(mta: MtaApp) -> None:
    async with aiohttp.ClientSession() as http:
        for body in (b"[" * 100_000, b'{"reply": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
            async with http.post(f"{base(mta)}/api/v1/classify", data=body) as resp:
                assert resp.status == 400
                assert await resp.json() == {"error": "the body's JSON is nested too deeply"}
        # The API still answers afterwards.
        async with http.post(
            f"{base(mta)}/api/v1/classify", json={"reply": "550 5.1.1 no such user"}
        ) as resp:
            assert resp.status == 200


OTHER = "192.0.2.7"  # a peer beyond loopback (TEST-NET-1)


def test_other_hosts_need_the_token_loopback_does_not() -> None:
    guard = Guard("0.0.0.0", token="s3cret")
    assert check(guard, "/api/v1/status", "127.0.0.1:8080", "127.0.0.1", None) is None
    assert check(guard, "/api/v1/status", "localhost", "::1", None) is None
    refused = check(guard, "/api/v1/status", "10.1.2.3:8080", OTHER, None)
    assert refused is not None and refused.status == 401
    assert refused.reason == "missing Authorization: Bearer <admin.token>"
    wrong = check(guard, "/api/v1/events", "10.1.2.3:8080", OTHER, "Bearer nope")
    assert wrong is not None and (wrong.status, wrong.reason) == (401, "wrong token")
    assert check(guard, "/api/v1/events", "10.1.2.3:8080", OTHER, "Bearer s3cret") is None
    assert check(guard, "/api/v1/events", "10.1.2.3", OTHER, "bearer  s3cret ") is None
    assert check(guard, "/metrics", "10.1.2.3", OTHER, "Basic czNjcmV0") is not None
    # Probes tell nothing and orchestrators call them without a token.
    assert check(guard, "/readyz", "10.1.2.3:8080", OTHER, None) is None
    assert check(guard, "/livez", "10.1.2.3:8080", OTHER, None) is None


def test_without_a_token_other_hosts_are_refused() -> None:
    guard = Guard("0.0.0.0")
    refused = check(guard, "/api/v1/status", "10.1.2.3:8080", OTHER, "Bearer anything")
    assert refused is not None and refused.status == 403
    assert "admin.token (MTA_ADMIN_TOKEN)" in refused.reason
    assert check(guard, "/api/v1/status", "127.0.0.1:8080", "127.0.0.1", None) is None


def test_host_names_follow_the_bound_address() -> None:
    loopback = Guard("127.0.0.1")
    assert check(loopback, "/", "10.1.2.3:8080", "127.0.0.1", None) is not None
    named = Guard("mta.internal", allowed_hosts=("api.example.com",))
    assert check(named, "/", "MTA.internal:8080", "127.0.0.1", None) is None
    assert check(named, "/", "api.example.com", "127.0.0.1", None) is None
    assert check(named, "/", "10.1.2.3", "127.0.0.1", None) is not None  # not wildcard
    wildcard = Guard("::")
    assert check(wildcard, "/", "[2001:db8::1]:8080", "127.0.0.1", None) is None
    refused = check(wildcard, "/", "rebind.evil.example:8080", "127.0.0.1", None)
    assert refused is not None and refused.status == 421
    assert check(wildcard, "/", None, "127.0.0.1", None) is None  # HTTP/1.0, no Host
    assert host_name("[::1]:8080") == "::1" and host_name("Example.COM:80") == "example.com"


def test_a_bind_beyond_loopback_is_warned_about() -> None:
    assert bind_warning("127.0.0.1", 8080, "") is None
    assert bind_warning("localhost", 8080, "") is None
    assert bind_warning("::1", 8080, "") is None
    warning = bind_warning("0.0.0.0", 8080, "")
    assert warning is not None and "0.0.0.0:8080" in warning and "MTA_ADMIN_TOKEN" in warning
    assert "\n" not in warning
    with_token = bind_warning("10.0.0.5", 8080, "t")
    assert with_token is not None and "Bearer" in with_token


def test_the_token_comes_from_the_config_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "mta.toml"
    path.write_text('[admin]\ntoken = "from-file"\nallowed_hosts = ["mta.lan"]\n')
    assert load_config(path, environ={}).admin.token == "from-file"
    config = load_config(path, environ={"MTA_ADMIN_TOKEN": "from-env"})
    assert config.admin.token == "from-env" and config.admin.allowed_hosts == ("mta.lan",)
