"""`mta up`: the MTA and the simulated internet together (with `--client`, the Campaign side's
receiver too; with `--nodes N`, a cluster sharing one Redis), as processes sharing a clock,
supervised until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import secrets
import sys
from pathlib import Path

from mta.cli.common import CliError, check_time_scale, run_async, setup_logging, until_signalled
from mta.config.engine import parse_hostport
from mta.core.tokens import TOKEN_ENV


def _new_secret() -> str:
    import base64
    import secrets

    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def _log_flag(data: Path) -> str:
    """The --log the client's commands need to find `mta up --client`'s delivery log: none
    when it is the client's default (var/campaign-log.sqlite from this directory)."""
    log = data / "campaign-log.sqlite"
    return "" if log == Path("var") / "campaign-log.sqlite" else f" --log {log}"


def _default_dkim(directory: Path) -> str:
    """`mta up` signs mail from campaign.test (the README's sender) with a key of its own,
    which the simulation publishes, so the inbox shows a DKIM verdict out of the box."""
    from mta.cli.dkim import keygen

    path = directory / "mta._domainkey.campaign.test.pem"
    if not path.exists():
        keygen("campaign.test", "mta", directory)
    return f"campaign.test:mta:{path}"


def cmd_up(args: argparse.Namespace) -> int:
    """The MTA and the simulated internet together, as two processes sharing a clock."""
    import time

    from mta.cli.topology import (
        Addresses,
        Supervisor,
        client_service,
        feedback_env,
        free_port,
        mta_node,
        mta_service,
        reachable,
        redis_service,
        shifted,
        sim_service,
    )
    from mta.clock import Anchor

    setup_logging(args.log_level)
    for name in ("listen", "admin", "dns", "sim_http", "webhook"):
        try:
            parse_hostport(getattr(args, name))
        except ValueError as exc:
            raise CliError(f"--{name.replace('_', '-')}: {exc}") from None
    check_time_scale(args.time_scale)
    if not 1 <= args.nodes <= 64:
        raise CliError("--nodes must be 1-64")
    try:
        redis_host, redis_port = parse_hostport(args.redis)
    except ValueError as exc:
        raise CliError(f"--redis: {exc}") from None
    for name in ("listen", "admin"):
        if args.nodes > 1 and parse_hostport(getattr(args, name))[1] + args.nodes - 1 > 65535:
            raise CliError(f"--{name}: no room for {args.nodes} consecutive ports")
    data = Path(args.data_dir)
    addresses = Addresses(
        smtp=args.listen,
        admin=args.admin,
        dns=args.dns,
        sim_http=args.sim_http,
        persona_port=args.persona_port,
        webhook=args.webhook,
    )
    from mta.cli.topology import PERSONA_HOSTS_DEFAULT, busy_ports, log_tail

    personas = None if args.sim_config else PERSONA_HOSTS_DEFAULT
    busy = busy_ports(addresses, personas, args.client)
    if busy:
        raise CliError(
            "up: in use already: " + "; ".join(busy) + ": stop what holds it, or choose"
            " another address with the flag named"
        )
    secret = os.environ.get("WEBHOOK_SECRET") or _new_secret()
    token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(18)
    dkim_keys = data / "dkim"
    signing = _default_dkim(dkim_keys) if args.config is None else None
    wall = time.time()
    anchor = Anchor(wall, wall, args.time_scale)
    redis_address = f"{redis_host}:{redis_port or free_port(redis_host)}"
    redis_url = f"redis://{redis_address}/0"

    async def main() -> int:
        supervisor = Supervisor()
        data.mkdir(parents=True, exist_ok=True)
        try:
            sim = sim_service(
                addresses,
                anchor,
                data / "sim",
                args.sim_config,
                args.seed,
                args.log_level,
                dkim_keys=dkim_keys,
            )
            await supervisor.start(
                dataclasses.replace(sim, env={TOKEN_ENV: token}), log=data / "sim.log"
            )
            env: dict[str, str] = {
                TOKEN_ENV: token,
                "MTA_ADMIN_INBOX_URL": f"http://{reachable(addresses.sim_http)}/",
            }
            if args.client:
                await supervisor.start(
                    client_service(addresses, data, secret), log=data / "client.log"
                )
                env.update(feedback_env(addresses, secret))
                env["MTA_ADMIN_CLIENT_URL"] = f"http://{reachable(addresses.webhook)}/"
            if args.nodes == 1:
                nodes = [
                    mta_service(addresses, anchor, data / "mta", args.config, args.log_level, env)
                ]
            else:
                (data / "redis").mkdir(exist_ok=True)
                await supervisor.start(
                    redis_service(redis_address, data / "redis"), log=data / "redis.log"
                )
                nodes = [
                    mta_node(addresses, anchor, data / f"mta{k + 1}", k, redis_url, args.config,
                             args.log_level, env)
                    for k in range(args.nodes)
                ]
            for mta in nodes:
                if signing is not None:
                    mta = dataclasses.replace(mta, argv=(*mta.argv, "--dkim", signing))
                await supervisor.start(mta, log=data / f"{mta.name}.log")
        except RuntimeError as exc:
            await supervisor.stop()
            raise CliError(str(exc)) from None
        submit = ", ".join(shifted(addresses.smtp, k) for k in range(args.nodes))
        admins = ", ".join(f"http://{shifted(addresses.admin, k)}/" for k in range(args.nodes))
        print(
            f"mta up: submit mail to {submit} (SMTP); admin API {admins}\n"
            + (
                f"  {args.nodes} nodes sharing limits through {redis_url}: spread your"
                f" sessions over their addresses (each keeps its own spool in {data}/mtaK)\n"
                if args.nodes > 1
                else ""
            )
            +
            f"  inbox http://{reachable(addresses.sim_http)}/ ; operator console"
            f" http://{reachable(addresses.admin)}/ ; write token: {token}\n"
            f"  simulated ISPs on port {addresses.persona_port} of 127.0.0.11-15, stub DNS"
            f" {addresses.dns}\n"
            f"  what they received: mta sim ls --data-dir {data / 'sim'}"
            f"  or http://{addresses.sim_http}/sim/v1/messages\n"
            + (
                f"  client: webhooks at {addresses.webhook_url}, bounce mailbox"
                f" {addresses.bounce_host}:{addresses.persona_port}, delivery log"
                f" {data / 'campaign-log.sqlite'}; send: campaign-client send --mta"
                f" {addresses.smtp} ...{_log_flag(data)}; report: campaign-client report"
                f" DELIVERY_ID{_log_flag(data)}\n"
                if args.client
                else ""
            )
            + f"  time x{args.time_scale:g}; logs in {data}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        watcher = asyncio.ensure_future(supervisor.wait_any())
        signalled = asyncio.ensure_future(until_signalled())
        done, _ = await asyncio.wait({watcher, signalled}, return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if watcher in done:
            service, code = watcher.result()
            log_file = data / f"{service.name}.log"
            print(
                f"mta up: {service.name} exited with status {code}; the end of {log_file}:",
                file=sys.stderr,
            )
            for line in log_tail(log_file):
                print(f"  {line}", file=sys.stderr)
            status = 1
        signalled.cancel()
        watcher.cancel()
        statuses = await supervisor.stop()
        return status or (1 if any(statuses.values()) else 0)

    return run_async(main)
