"""/metrics through prometheus_client (HELP and TYPE on every family, the three histograms),
the OpenAPI document (valid, every route described, the webhook payload), and a
property-based run of schemathesis against the live admin API that finds no 5xx."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import aiohttp
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from mta.config.service import load_config
from tests.helpers import started
from tests.sim.test_inbox import TOKEN
from tests.web.test_operator import admin, admin_stack


async def test_metrics_have_help_type_and_histograms(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path)
    try:
        await stack.submit(["ann@isp.test", "ben@isp.test"])
        await stack.quiet()
        async with aiohttp.ClientSession() as http, http.get(f"{admin(stack)}/metrics") as got:
            assert got.status == 200
            assert got.content_type == "text/plain"
            text = await got.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for family in families.values():
            assert family.documentation, family.name
            names = (family.name, f"{family.name}_total")  # a counter's lines may say _total
            assert any(f"# HELP {name} " in text for name in names), family.name
            assert any(f"# TYPE {name} {family.type}" in text for name in names), family.name
        assert families["mta_messages_accepted"].type == "counter"
        latency = families["mta_delivery_latency_seconds"]
        assert latency.type == "histogram"
        counts = {s.labels["isp"]: s.value for s in latency.samples if s.name.endswith("_count")}
        assert counts == {"sim-tests": 2.0}  # the MX rule of the site, a bounded label
        age = families["mta_queue_age_seconds"]
        assert [s.value for s in age.samples if s.name.endswith("_count")] == [0.0]
        assert families["mta_webhook_lag_seconds"].type == "histogram"
        recipients = {s.labels["state"]: s.value for s in families["mta_recipients"].samples}
        assert recipients["delivered"] == 2.0
    finally:
        await stack.stop()


async def test_the_openapi_document_describes_every_route(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path)
    try:
        url = admin(stack)
        async with aiohttp.ClientSession() as http, http.get(f"{url}/api/v1/openapi.json") as got:
            document = await got.json()
        validate(document)
        assert stack.app is not None
        served = stack.app.running.admin
        assert served is not None
        routes = {r.canonical for r in served.app.router.resources()}
        described = {
            "/api/v1/control/{action}" if p.startswith("/api/v1/control/") else p
            for p in document["paths"]
        }
        assert routes - {"/", "/static/{name}"} == described  # the page's files aside
        for path, item in document["paths"].items():
            for operation in item.values():
                for code, answer in operation["responses"].items():
                    if code.startswith("2") and "content" in answer:
                        schema = next(iter(answer["content"].values()))["schema"]
                        assert schema, (path, code)  # no empty schema
        event = document["webhooks"]["feedback"]["post"]["requestBody"]["content"]
        assert event["application/json"]["schema"]["items"] == {
            "$ref": "#/components/schemas/Event"
        }
    finally:
        await stack.stop()


async def test_schemathesis_finds_no_server_error(tmp_path: Path) -> None:
    """The real service (its own bounce rules), with the token, so writes are exercised too."""
    config = load_config(
        None,
        flags={
            "smtp.listen": "127.0.0.1:0",
            "admin.listen": "127.0.0.1:0",
            "admin.token": TOKEN,
            "data_dir": str(tmp_path / "mta"),
            "delivery.relayhost": "127.0.0.1:9",
            "smtp.workers": 0,
        },
        environ={},
    )
    app = await started(config)
    try:
        assert app.admin_address is not None
        url = "http://{}:{}".format(*app.admin_address)
        tool = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
        process = await asyncio.create_subprocess_exec(
            tool or "schemathesis", "run", f"{url}/api/v1/openapi.json",
            "--checks", "not_a_server_error",
            "--max-examples", "12", "--seed", "7", "--generation-deterministic",
            "--exclude-path", "/api/v1/events",  # a long-poll: valid waits are slow, not wrong
            "--request-timeout", "20",
            "-H", f"Authorization: Bearer {TOKEN}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,  # its cache of found cases stays out of the repository
        )
        out, _ = await process.communicate()
        report = out.decode(errors="replace")
        assert process.returncode == 0, report[-6000:]
        assert "Server error" not in report
    finally:
        await app.stop()
