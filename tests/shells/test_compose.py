"""docker-compose.yml describes the same topology as `mta up --client` (and its `cluster`
profile the same as `mta up --nodes 3`): the same services, commands, readiness checks,
ports (on 127.0.0.1 only) and start order. No Docker engine runs here; where the
docker-compose tool is installed it also validates the file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from mta.cli.topology import (
    Addresses,
    Service,
    client_service,
    mta_node,
    mta_service,
    redis_service,
    shifted,
    sim_service,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
# Inside the shared network namespace: listeners reachable from the host on 0.0.0.0,
# the personas on port 25 as real MX hosts.
ADDRESSES = Addresses(
    smtp="0.0.0.0:2525",
    admin="0.0.0.0:8080",
    dns="127.0.0.1:5300",
    sim_http="0.0.0.0:8025",
    persona_port=25,
    webhook="0.0.0.0:8090",
)
REDIS = "127.0.0.1:6379"
CLUSTER = {"redis", "mta2", "mta3"}  # the `cluster` profile
NOT_COMPARED = {"--data-dir", "--log", "--log-level", "--clock-anchor", "--config", "--seed"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def topology() -> dict[str, Service]:
    data = Path("/data")
    return {
        "sim": sim_service(ADDRESSES, None, data / "sim"),
        "mta": mta_service(ADDRESSES, None, data / "mta"),
        "client": client_service(ADDRESSES, data, "secret"),
        "redis": redis_service(REDIS, data / "redis"),
        **{
            f"mta{k + 1}": mta_node(ADDRESSES, None, data / f"mta{k + 1}", k, f"redis://{REDIS}/0")
            for k in (1, 2)
        },
    }


def flags(argv: list[str] | tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """(subcommand, {flag: value}) of a command line, leaving out the per-run flags."""
    command, rest = argv[0], list(argv[1:])
    found: dict[str, str] = {}
    while rest:
        flag = rest.pop(0)
        assert flag.startswith("--"), f"unexpected argument {flag!r} in {argv}"
        value = rest.pop(0) if rest and not rest[0].startswith("--") else ""
        if flag not in NOT_COMPARED:
            found[flag] = value
    return command, found


def test_services_and_commands_match_the_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = topology()
    assert set(services) == set(expected)
    for name, service in expected.items():
        declared = services[name]
        if service.program == "redis-server":  # the official image, its own entrypoint
            assert declared["image"].startswith("redis:")
            assert declared["command"] == ["redis-server", "--save", "", "--appendonly", "no"]
            kept = service.argv[service.argv.index("--save") :][:4]
            assert kept == ("--save", "", "--appendonly", "no")
            continue
        program = declared.get("entrypoint", ["mta"])[0]
        assert program == service.program, name
        assert flags(declared["command"]) == flags(service.argv), name


def test_healthchecks_are_the_readiness_checks(compose: dict[str, Any]) -> None:
    for name, service in topology().items():
        test = compose["services"][name]["healthcheck"]["test"]
        if service.program == "redis-server":
            assert test == ["CMD", "redis-cli", "ping"]  # the image has no `mta`
            assert service.ready == ("check", "--redis", REDIS)
            continue
        assert test == ["CMD", "mta", *service.ready], name


def test_one_image_shared_network_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {s["build"] for n, s in services.items() if n != "redis"} == {"."}
    assert (ROOT / "Dockerfile").exists()
    for name in ("mta", "client", "redis"):
        assert services[name]["network_mode"] == "service:sim"
        assert services[name]["depends_on"] == {"sim": {"condition": "service_healthy"}}
    for name in ("mta2", "mta3"):
        assert services[name]["network_mode"] == "service:sim"
        assert services[name]["depends_on"] == {
            "sim": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
    for name, service in services.items():
        assert service.get("profiles", []) == (["cluster"] if name in CLUSTER else []), name


def test_ports_are_bound_to_loopback_and_cover_the_listeners(compose: dict[str, Any]) -> None:
    ports = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    published = {int(p.split(":")[2]) for p in ports}
    nodes = [shifted(a, k) for a in (ADDRESSES.smtp, ADDRESSES.admin) for k in (1, 2)]
    listeners = (ADDRESSES.smtp, ADDRESSES.admin, ADDRESSES.sim_http, ADDRESSES.webhook, *nodes)
    assert {int(address.rsplit(":", 1)[1]) for address in listeners} == published


def test_configuration_by_environment_names_real_keys(compose: dict[str, Any]) -> None:
    from mta.config.service import load_config

    def defaults(env: dict[str, str]) -> dict[str, str]:
        """Compose's ${VAR:-default} read with VAR unset."""
        return {k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", v) for k, v in env.items()}

    env = defaults(compose["services"]["mta"]["environment"])
    warnings: list[str] = []
    config = load_config(None, environ=env, warn=warnings.append)
    assert warnings == []  # every MTA_* variable names a real key
    assert config.feedback.endpoints[0].url == "http://127.0.0.1:8090/webhook"
    assert config.cluster.url == "" and config.cluster.node == "mta1"  # alone by default
    clustered = load_config(None, environ={**env, "MTA_CLUSTER_URL": f"redis://{REDIS}/0"})
    assert clustered.cluster.url == f"redis://{REDIS}/0"
    for name in ("mta2", "mta3"):
        node_env = defaults(compose["services"][name]["environment"])
        assert {k: v for k, v in env.items() if not k.startswith("MTA_CLUSTER")} == node_env
    client_secret = compose["services"]["client"]["environment"]["CAMPAIGN_CLIENT_SECRET"]
    assert client_secret == compose["services"]["mta"]["environment"]["MTA_FEEDBACK_SECRET"]


def test_docker_compose_validates_the_file_where_installed() -> None:
    tool = shutil.which("docker-compose")
    command = [tool, "-f", str(COMPOSE), "config", "-q"] if tool else None
    if command is None and shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        command = (
            ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
            if (probe.returncode == 0)
            else None
        )
    if command is None:
        return  # neither tool here: the structural tests above still hold the file
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
