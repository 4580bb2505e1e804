"""`mta sim` (run the simulated internet) and `mta sim ls` (what the personas received).

    mta sim [--config FILE] [--data-dir DIR] [--mta HOST:PORT] [--time-scale X]
            [--clock-anchor REAL:VIRTUAL:SCALE] [--seed N] [--http HOST:PORT]
            [--dns HOST:PORT] [--port PORT] [--store sqlite|maildir]
    mta sim ls [--persona NAME] [--json] [--limit N] [--data-dir DIR] [--config FILE]
    mta sim show ID [--data-dir DIR] [--config FILE]

`ls` and `show` read every store present in the data directory (SQLite and
Maildirs alike, see `mta.sim.store`), so they need no `--store`. `show` writes
one stored message to stdout, raw (the Return-Path and Delivered-To lines, then
the bytes exactly as received): `mta sim show gmail/42 > m.eml`.

`mta/cli/main.py` registers the command with `add_parser(subparsers)`; the parser's
default `func` is `run(args) -> int`. Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from mta.cli.common import (
    add_log_level,
    check_time_scale,
    install_uvloop,
    setup_logging,
    until_signalled,
)
from mta.config.engine import ConfigError, parse_hostport
from mta.core.tokens import TOKEN_ENV
from mta.sim.config import SimConfig, load_sim_config
from mta.sim.store import STORES


def add_parser(subparsers: Any) -> None:
    """Register `sim` (and `sim ls`) on the `mta` command's subparsers."""
    sim: argparse.ArgumentParser = subparsers.add_parser(
        "sim", help="run the simulated internet: ISP personas, stub DNS, scenarios"
    )
    _common(sim, None)
    sim.add_argument(
        "--mta", metavar="HOST:PORT", help="the MTA's submission address (DSNs, replies, ARF)"
    )
    sim.add_argument(
        "--time-scale", type=float, metavar="X", help="run the clock X times faster than real"
    )
    sim.add_argument(
        "--clock-anchor",
        metavar="REAL:VIRTUAL:SCALE",
        help="share a clock with the MTA (wins over --time-scale)",
    )
    sim.add_argument("--seed", type=int, metavar="N", help="seed of the random behaviour")
    sim.add_argument(
        "--deterministic",
        action="store_true",
        help="no seeded random faults nor random async artefacts: only scripts, mailbox"
        " tables, greylisting and limits decide (exact, repeatable runs)",
    )
    sim.add_argument("--http", metavar="HOST:PORT", help="the HTTP API address")
    sim.add_argument("--dns", metavar="HOST:PORT", help="the stub DNS address")
    sim.add_argument("--port", type=int, metavar="PORT", help="the port every persona uses")
    sim.add_argument(
        "--store",
        choices=STORES,
        help="where the personas keep what they accept: one SQLite file (default) or a"
        " Maildir per persona (sim.store)",
    )
    sim.add_argument(
        "--dkim-keys",
        metavar="DIR",
        help="publish the DKIM keys of DIR (<selector>._domainkey.<domain>.pem) so the inbox"
        " verifies signatures (sim.dkim_keys)",
    )
    sim.add_argument(
        "--mta-admin", metavar="URL", help="the MTA's admin URL, linked from the inbox"
    )
    add_log_level(sim)
    sim.set_defaults(func=run, sim_command=None)
    sub = sim.add_subparsers(dest="sim_command", metavar="COMMAND")
    ls = sub.add_parser("ls", help="list the messages the personas received")
    _common(ls, argparse.SUPPRESS)
    ls.add_argument("--persona", metavar="NAME", help="only this persona")
    ls.add_argument("--json", action="store_true", help="one JSON array")
    ls.add_argument("--limit", type=int, metavar="N", help="the newest N messages only")
    show = sub.add_parser("show", help="write one stored message to stdout, raw")
    _common(show, argparse.SUPPRESS)
    show.add_argument("id", metavar="ID", help="a message id as `ls --json` lists it")
    chaos = sub.add_parser(
        "chaos", help="change a running persona: replies, rate, latency, greylisting"
    )
    chaos.add_argument("persona", nargs="?", help="the persona (none: show every persona's state)")
    chaos.add_argument("--url", default="http://127.0.0.1:8025", help="the simulation's HTTP URL")
    chaos.add_argument("--reply", metavar="REPLY", help='answer this, e.g. "451 4.7.1 Try later"')
    chaos.add_argument(
        "--stage",
        default="rcpt",
        choices=("mail", "rcpt", "data", "dot"),
        help="where the --reply is given (default rcpt)",
    )
    chaos.add_argument("--share", type=float, default=1.0, help="of the recipients (0-1)")
    chaos.add_argument("--no-reply", action="store_true", help="stop answering the --reply")
    chaos.add_argument("--rate", type=float, help="messages per second per sending IP (0: none)")
    chaos.add_argument(
        "--latency", action="append", default=[], metavar="STAGE=SECONDS", help="repeatable"
    )
    chaos.add_argument("--greylisting", choices=("on", "off"), help="turn greylisting on or off")
    chaos.add_argument("--token", help=f"the write token (default: ${TOKEN_ENV})")


def _common(parser: argparse.ArgumentParser, default: Any) -> None:
    # In `ls`, SUPPRESS keeps values given before the subcommand (`mta sim --data-dir X ls`).
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=default,
        help="isps.toml (default: the built-in defaults)",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help="what the personas stored, and their state (sim.data_dir)",
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        flags["sim.data_dir"] = args.data_dir
    for attr, key in (
        ("mta", "sim.mta_submit"),
        ("http", "sim.http_listen"),
        ("dns", "sim.dns_listen"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            if value:
                try:
                    parse_hostport(value)
                except ValueError as exc:
                    raise ConfigError(f"--{attr}: {exc}") from None
            flags[key] = value
    if getattr(args, "seed", None) is not None:
        flags["sim.seed"] = args.seed
    if getattr(args, "deterministic", False):
        flags["sim.random_faults"] = False
    if getattr(args, "port", None) is not None:
        flags["sim.smtp_port"] = args.port
    if getattr(args, "store", None):
        flags["sim.store"] = args.store
    if getattr(args, "dkim_keys", None):
        flags["sim.dkim_keys"] = args.dkim_keys
    if getattr(args, "mta_admin", None):
        flags["sim.mta_admin"] = args.mta_admin
    if os.environ.get(TOKEN_ENV):
        flags["sim.token"] = os.environ[TOKEN_ENV]
    return flags


def load_from_args(args: argparse.Namespace) -> SimConfig:
    return load_sim_config(getattr(args, "config", None), _flags(args))


def run(args: argparse.Namespace) -> int:
    try:
        config = load_from_args(args)
        command = getattr(args, "sim_command", None)
        if command == "ls":
            return _ls(args, config)
        if command == "show":
            return _show(args, config)
        if command == "chaos":
            return _chaos(args)
        return _serve(args, config)
    except (ConfigError, ValueError) as exc:
        print(f"mta sim: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # the reader went away: `mta` stops quietly
    except OSError as exc:
        print(f"mta sim: {exc}", file=sys.stderr)
        return 1


# -- ls -------------------------------------------------------------------------


def _when(stamp: float) -> str:
    if not stamp:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ls(args: argparse.Namespace, config: SimConfig) -> int:
    from mta.sim import store_reader

    data_dir = Path(config.sim.data_dir)
    persona = args.persona
    if persona and persona not in store_reader.personas_in(data_dir):
        known = ", ".join(store_reader.personas_in(data_dir)) or "none yet"
        print(f"mta sim ls: no messages for persona {persona!r} (known: {known})", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:
        print("mta sim ls: --limit must be at least 1", file=sys.stderr)
        return 2
    found = store_reader.list_messages(data_dir, persona, args.limit)
    if args.json:
        json.dump([s.as_dict() for s in found], sys.stdout, indent=1)
        print()
        return 0
    rows = [
        (
            _when(s.time),
            s.persona,
            s.mail_from or "<>",
            ",".join(s.recipients),
            "yes" if s.dkim else "no",
            str(s.size),
            s.subject,
        )
        for s in reversed(found)
    ]
    header = ("TIME (UTC)", "PERSONA", "FROM", "TO", "DKIM", "SIZE", "SUBJECT")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
        )
    counts = store_reader.count_messages(data_dir, persona)
    total = sum(counts.values())
    detail = ", ".join(f"{name}: {n}" for name, n in counts.items())
    print(f"{total} message{'s' if total != 1 else ''}" + (f" ({detail})" if detail else ""))
    return 0


def _show(args: argparse.Namespace, config: SimConfig) -> int:
    from mta.sim import store_reader

    body = store_reader.message_bytes(Path(config.sim.data_dir), args.id)
    if body is None:
        print(
            f"mta sim show: no message {args.id!r} in {config.sim.data_dir}"
            " (ids as `mta sim ls --json` lists them)",
            file=sys.stderr,
        )
        return 2
    sys.stdout.flush()
    sys.stdout.buffer.write(body)
    sys.stdout.buffer.flush()
    return 0


# -- chaos ----------------------------------------------------------------------


def _chaos_update(args: argparse.Namespace) -> dict[str, Any]:
    update: dict[str, Any] = {}
    if args.reply:
        update["reply"] = {"stage": args.stage, "reply": args.reply, "share": args.share}
    elif args.no_reply:
        update["reply"] = None
    if args.rate is not None:
        update["rate"] = args.rate
    if args.latency:
        latency: dict[str, float] = {}
        for spec in args.latency:
            stage, eq, seconds = spec.partition("=")
            try:
                latency[stage] = float(seconds)
            except ValueError:
                raise ValueError(f"--latency {spec!r}: use STAGE=SECONDS, e.g. rcpt=2") from None
            if not eq:
                raise ValueError(f"--latency {spec!r}: use STAGE=SECONDS, e.g. rcpt=2")
        update["latency"] = latency
    if args.greylisting:
        update["greylisting"] = args.greylisting == "on"
    return update


def _chaos(args: argparse.Namespace) -> int:
    import aiohttp

    update = _chaos_update(args)
    if update and not args.persona:
        raise ValueError("name the persona to change")
    token = args.token or os.environ.get(TOKEN_ENV)
    base = args.url.rstrip("/")

    async def call() -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            if update:
                url = f"{base}/sim/v1/chaos/{args.persona}"
                request = http.put(url, json=update, headers=headers)
            else:
                request = http.get(f"{base}/sim/v1/chaos")
            async with request as response:
                return response.status, await response.json(content_type=None)

    try:
        status, data = asyncio.run(call())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"mta sim chaos: cannot reach the simulation at {base}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        error = data.get("error") if isinstance(data, dict) else None
        print(f"mta sim chaos: refused (HTTP {status}): {error}", file=sys.stderr)
        return 1
    if not update and args.persona:
        data = data["personas"].get(args.persona, {})
    print(json.dumps(data, indent=1))
    return 0


# -- serve ----------------------------------------------------------------------


def _describe(sim: Any) -> str:
    lines = [f"mta sim: DNS on {sim.dns_address[0]}:{sim.dns_address[1]}"]
    for name, persona in sim.personas.items():
        addresses = ",".join(persona.addresses)
        domains = ", ".join(persona.config.domains)
        lines.append(f"  {name:10} {addresses}:{sim.smtp_port}  ({domains})")
    if sim.http_address:
        host, port = sim.http_address
        lines.append(f"  inbox on http://{host}:{port}/ (API: http://{host}:{port}/sim/v1/)")
    submit = sim.mta_submit
    lines.append(f"  artefacts go to {submit[0]}:{submit[1]}" if submit else "  artefacts: none")
    if sim.store is not None:
        lines.append(f"  accepted mail is kept in {sim.store.location} ({sim.store.kind})")
    return "\n".join(lines)


def _serve(args: argparse.Namespace, config: SimConfig) -> int:
    from mta.clock import make_clock
    from mta.sim.simulation import Simulation

    setup_logging(args.log_level)
    check_time_scale(args.time_scale)
    scale = args.time_scale if args.time_scale is not None else 1.0
    anchor = args.clock_anchor or None
    clock = make_clock(scale, anchor)

    async def main() -> int:
        sim = await Simulation.start(config, clock)
        print(_describe(sim), file=sys.stderr, flush=True)
        try:
            await until_signalled()
        finally:
            await sim.stop()
        return 0

    install_uvloop()
    return asyncio.run(main())
