"""What arrived, listed and counted: the HTTP API and `mta sim ls`; config and CLI errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mta.cli import sim as cli
from mta.sim.config import ConfigError, load_sim_config, parse_sim_config


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mta")
    cli.add_parser(top.add_subparsers(dest="command"))
    return top


async def test_http_lists_serves_and_counts(stack: Any, store_kind: str) -> None:
    await stack.start(store=store_kind)
    await stack.submit(["ann@isp.test", "nobody@isp.test"], subject="First")
    await stack.quiet()
    await stack.submit(["ben@isp.test"], subject="Second")
    await stack.quiet()
    host, port = stack.sim.http_address
    base = f"http://{host}:{port}/sim/v1"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/messages", params={"persona": "isp"}) as response:
            assert response.status == 200
            listed = await response.json()
        assert [m["subject"] for m in listed] == ["Second", "First"]  # newest first
        first = listed[1]
        assert first["recipients"] == ["ann@isp.test"]
        assert first["mail_from"] == "bounces@campaign.test"
        assert first["dkim"] is False and first["size"] > 0
        assert first["time"] == stack.clock.now()  # the sim's clock, not the wall clock
        persona, name = first["id"].split("/")
        assert persona == "isp" and name.isdigit() == (store_kind == "sqlite")
        async with http.get(f"{base}/messages/{first['id']}") as response:
            assert response.status == 200
            assert response.content_type == "message/rfc822"
            raw = await response.read()
        return_path, delivered_to, content = raw.split(b"\r\n", 2)
        assert (return_path, delivered_to) == (
            b"Return-Path: <bounces@campaign.test>",
            b"Delivered-To: ann@isp.test",
        )
        assert b"Subject: First\r\n" in content and first["size"] == len(content)
        assert raw in stack.sim.personas["isp"].stored()
        async with http.get(f"{base}/messages", params={"limit": "1"}) as response:
            assert [m["subject"] for m in await response.json()] == ["Second"]
        async with http.get(f"{base}/messages/isp/..%2F..%2Fstate.json") as response:
            assert response.status == 404
        for missing in ("isp/999", "other/1", f"isp/{'9' * 30}", "isp/1.x"):
            async with http.get(f"{base}/messages/{missing}") as response:
                assert response.status == 404, missing
        async with http.get(f"{base}/messages", params={"limit": "x"}) as response:
            assert response.status == 400
        async with http.get(f"{base}/messages", params={"persona": "nope"}) as response:
            assert response.status == 404
        async with http.get(f"{base}/stats") as response:
            stats = await response.json()
    isp = stats["personas"]["isp"]
    assert isp["accepted"] == isp["stored"] == 2 and isp["rejected"] == {"550": 1}
    assert stats["store"]["kind"] == store_kind
    assert isp["ips"]["127.0.0.1"]["sessions_max"] >= 1
    assert stats["dns"]["queries"] > 0


async def test_ls_reads_the_store(stack: Any, capsys: Any, store_kind: str) -> None:
    await stack.start(store=store_kind)
    await stack.submit(["ann@isp.test"], subject="Hello ls")
    await stack.quiet()
    data_dir = str(stack.sim.data_dir)
    assert cli.run(parser().parse_args(["sim", "ls", "--data-dir", data_dir, "--json"])) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(m["persona"], m["subject"], m["recipients"]) for m in listed] == [
        ("isp", "Hello ls", ["ann@isp.test"])
    ]
    args = parser().parse_args(["sim", "--data-dir", data_dir, "ls", "--persona", "isp"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["TIME", "(UTC)", "PERSONA", "FROM"]
    assert "isp" in out[1] and "ann@isp.test" in out[1] and out[1].endswith("Hello ls")
    assert out[-1] == "1 message (isp: 1)"
    assert (
        cli.run(parser().parse_args(["sim", "ls", "--data-dir", data_dir, "--persona", "x"])) == 2
    )
    assert "no messages for persona 'x'" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: Any) -> None:
    missing = tmp_path / "nope.toml"
    assert cli.run(parser().parse_args(["sim", "--config", str(missing), "ls"])) == 2
    assert capsys.readouterr().err == f"mta sim: {missing}: no such file\n"
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[personas]]\nname = "x"\nmx = [{ name = "m", address = "1.2.3.4" }]\n'
        '[personas.limits]\nmessages = "lots"\n'
    )
    assert cli.run(parser().parse_args(["sim", "--config", str(bad), "ls"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{bad}: personas[0].limits.messages: not a rate" in err
    assert cli.run(parser().parse_args(["sim", "--mta", "nonsense", "ls"])) == 2
    assert "--mta: expected HOST:PORT" in capsys.readouterr().err


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"t.toml: unknown key 'personas\[0\].colour'"):
        parse_sim_config('[[personas]]\nname = "x"\ncolour = 1\n', "t.toml")
    with pytest.raises(ConfigError, match=r"personas\[0\].async.delay: not a duration"):
        parse_sim_config(
            '[[personas]]\nname = "x"\nmx = [{ name = "m", address = "1.2.3.4" }]\n'
            '[personas.async]\ndelay = "soon"\n',
            "t.toml",
        )
    with pytest.raises(ConfigError, match="not an IP address"):
        parse_sim_config('[[hosts]]\nname = "m"\naddress = "here"\n', "t.toml")
    with pytest.raises(ConfigError, match="must start with an SMTP code"):
        parse_sim_config(
            '[[personas]]\nname = "x"\nmx = [{ name = "m", address = "1.2.3.4" }]\n'
            '[personas.replies]\nfull = "mailbox full"\n',
            "t.toml",
        )


def test_builtin_defaults_and_example_agree() -> None:
    builtin = load_sim_config()
    example = load_sim_config(Path(__file__).parents[2] / "config" / "isps.toml")
    assert builtin == example
    names = {p.name: p for p in builtin.personas}
    assert set(names) == {"gmail", "yahoo", "microsoft", "isp", "blackhole"}
    assert names["gmail"].domains == ("gmail.test", "googlemail.test")
    assert [h.address for h in names["gmail"].mx] == ["127.0.0.11", "127.0.0.12"]
    assert names["gmail"].replies.throttle.startswith("421 4.7.28")
    assert names["yahoo"].replies.throttle.startswith("421 4.7.0 [TSS04]")
    assert names["microsoft"].replies.throttle.startswith("451 4.7.500 Server busy")
    assert "(S3150)" in names["microsoft"].replies.reputation
    overridden = load_sim_config(None, {"sim.seed": 9, "sim.smtp_port": 2600})
    assert (overridden.sim.seed, overridden.sim.smtp_port) == (9, 2600)
