"""The `mta` command: serve | sink | up | sim | demo | classify | dkim | tls-cert | check | ...

Every error is one line on stderr naming the problem, with a non-zero exit
code; tracebacks are for bugs only. Flags override env (`MTA_*`), which
overrides the config file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mta.cli.common import (
    CliError,
    add_log_level,
    check_time_scale,
    run_async,
    setup_logging,
    stdout_closed,
    until_signalled,
    warn,
)
from mta.cli.up import cmd_up
from mta.config.engine import ConfigError, parse_hostport
from mta.config.service import DkimKey, MtaConfig, load_config
from mta.queue.spool import SpoolError

log = logging.getLogger("mta")


# -- config from flags ----------------------------------------------------------


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("MTA_CONFIG"),
        help="TOML config file (default: built-in defaults; env MTA_CONFIG)",
    )
    parser.add_argument("--listen", metavar="HOST:PORT", help="SMTP submission address")
    parser.add_argument("--data-dir", metavar="DIR", help="spool and state directory")
    parser.add_argument(
        "--relayhost",
        metavar="HOST:PORT",
        help="send all mail to this smart host instead of the MX hosts",
    )
    parser.add_argument(
        "--dkim",
        metavar="DOMAIN:SELECTOR:KEYFILE",
        action="append",
        help="sign mail from DOMAIN with this key (repeatable; replaces the config's keys)",
    )
    parser.add_argument(
        "--time-scale", type=float, metavar="X", help="run the clock X times faster than real time"
    )
    parser.add_argument("--clock-anchor", metavar="REAL:VIRTUAL:SCALE", help=argparse.SUPPRESS)
    parser.add_argument(
        "--workers",
        type=_number_or_word,
        metavar="N|auto",
        help="SMTP sessions and DKIM signing in N processes (smtp.workers; default auto: "
        "one per core, at most 4; 0: in this one)",
    )
    parser.add_argument(
        "--dns", metavar="HOST:PORT", help="the nameserver to ask (default: the system's)"
    )
    parser.add_argument(
        "--delivery-port",
        type=int,
        metavar="PORT",
        help="destination port for MX hosts (default 25)",
    )
    parser.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="HTTP API address (default 127.0.0.1:8080; '' disables it)",
    )
    add_log_level(parser, default=None)  # None: the config's log_level decides
    parser.add_argument(
        "--cluster",
        metavar="redis://HOST:PORT/DB",
        help="share per-site limits with the other nodes through this Redis (cluster.url)",
    )
    parser.add_argument(
        "--node", metavar="NAME", help="this node's name in the cluster (cluster.node)"
    )


def _number_or_word(text: str) -> int | str:
    """An integer flag that also takes a word ("auto"); the config checks which words."""
    try:
        return int(text)
    except ValueError:
        return text


def config_from_args(args: argparse.Namespace) -> MtaConfig:
    flags: dict[str, Any] = {}
    check_time_scale(getattr(args, "time_scale", None))
    simple = {
        "listen": "smtp.listen",
        "data_dir": "data_dir",
        "relayhost": "delivery.relayhost",
        "time_scale": "clock.time_scale",
        "clock_anchor": "clock.anchor",
        "delivery_port": "delivery.port",
        "admin": "admin.listen",
        "log_level": "log_level",
        "cluster": "cluster.url",
        "node": "cluster.node",
        "workers": "smtp.workers",
    }
    for attr, key in simple.items():
        value = getattr(args, attr, None)
        if value is not None:
            flags[key] = value
    dns = getattr(args, "dns", None)
    if dns:
        try:
            host, port = parse_hostport(dns)
        except ValueError as exc:
            raise CliError(f"--dns: {exc}") from None
        flags["dns.nameservers"] = (host,)
        flags["dns.port"] = port
    names = {key: "--" + attr.replace("_", "-") for attr, key in simple.items()}
    names.update({"dns.nameservers": "--dns", "dns.port": "--dns"})
    config = load_config(args.config, flags=flags, warn=warn, flag_names=names)
    if getattr(args, "dkim", None):
        keys = []
        for spec in args.dkim:
            parts = spec.split(":", 2)
            if len(parts) != 3 or not all(parts):
                raise CliError(f"--dkim: expected DOMAIN:SELECTOR:KEYFILE, got {spec!r}")
            keys.append(DkimKey(domain=parts[0].lower(), selector=parts[1], key_file=parts[2]))
        config = dataclasses.replace(
            config, dkim=dataclasses.replace(config.dkim, keys=tuple(keys))
        )
    return config


# -- commands -------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    setup_logging(config.log_level)

    async def main() -> int:
        from mta.app import MtaApp

        app = MtaApp(config)
        # Signal handlers first: a SIGTERM from then on (even during the start) stops cleanly.
        signalled = asyncio.ensure_future(until_signalled())
        try:
            await app.start()
        except BaseException:
            signalled.cancel()
            raise
        host, port = app.smtp_address
        found = app.running.spool.found
        if found.file in ("empty", "missing"):
            warn(found.describe())
        else:
            print(f"mta: {found.describe()}", file=sys.stderr, flush=True)
        admin = app.admin_address
        if admin is not None:
            print(f"mta: admin API on http://{admin[0]}:{admin[1]}/", file=sys.stderr, flush=True)
        print(f"mta: listening on {host}:{port}", file=sys.stderr, flush=True)
        try:
            await signalled
        finally:
            await app.stop()
        return 0

    return run_async(main)


def cmd_sink(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        host, port = parse_hostport(args.listen)
    except ValueError as exc:
        raise CliError(f"--listen: {exc}") from None

    async def main() -> int:
        from mta.cli.sink import Sink

        sink = await Sink.start(
            host,
            port,
            Path(args.maildir) if args.maildir else None,
            fsync=args.fsync,
            hostname=args.hostname,
        )
        print(f"mta sink: listening on {host}:{sink.port}", file=sys.stderr, flush=True)
        try:
            await until_signalled()
        finally:
            await sink.close()
            print(f"mta sink: {sink.handler.received} messages received", file=sys.stderr)
        return 0

    return run_async(main)


def cmd_tls_cert(args: argparse.Namespace) -> int:
    from mta.smtp.tls import write_self_signed

    cert, key = write_self_signed(Path(args.out), args.hostname)
    print(f'wrote {cert} and {key}\n\n[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"')
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """A health check for containers and scripts (no curl needed): exit 0 when every
    given service answers: SMTP (EHLO), HTTP (a 2xx), DNS (any answer)."""
    if not (args.smtp or args.http or args.dns or args.redis):
        raise CliError(
            "check: give --smtp HOST:PORT, --http URL, --dns HOST:PORT or --redis HOST:PORT"
        )
    try:
        for target in (*args.smtp, *args.dns, *args.redis):
            parse_hostport(target)
    except ValueError as exc:
        raise CliError(f"check: {exc}") from None

    async def smtp_ok(target: str) -> str | None:
        import aiosmtplib

        host, port = parse_hostport(target)
        smtp = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            timeout=args.timeout,
            start_tls=False,
            local_hostname="healthcheck.localhost",
        )
        try:
            await smtp.connect()
            code, _ = await smtp.ehlo()
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            return f"SMTP {target}: {exc}"
        return None if code == 250 else f"SMTP {target}: EHLO answered {code}"

    async def http_ok(url: str) -> str | None:
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as http,
                http.get(url) as resp,
            ):
                return None if 200 <= resp.status < 300 else f"HTTP {url}: {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"HTTP {url}: {exc or type(exc).__name__}"

    async def dns_ok(target: str) -> str | None:
        import dns.asyncquery
        import dns.exception
        import dns.message

        host, port = parse_hostport(target)
        query = dns.message.make_query("healthcheck.test.", "A")
        try:
            await dns.asyncquery.udp(query, host, port=port, timeout=args.timeout)
        except (dns.exception.DNSException, OSError) as exc:
            return f"DNS {target}: {exc or type(exc).__name__}"
        return None

    async def redis_ok(target: str) -> str | None:
        from mta.cli.redis_server import ping

        host, port = parse_hostport(target)
        return None if await ping(host, port, args.timeout) else f"Redis {target}: no PONG"

    async def main() -> int:
        checks = [
            *(smtp_ok(t) for t in args.smtp),
            *(redis_ok(t) for t in args.redis),
            *(http_ok(u) for u in args.http),
            *(dns_ok(t) for t in args.dns),
        ]
        problems = [p for p in await asyncio.gather(*checks) if p]
        for problem in problems:
            print(f"mta check: {problem}", file=sys.stderr)
        return 1 if problems else 0

    return run_async(main)


def build_parser() -> argparse.ArgumentParser:
    from mta import __version__

    parser = argparse.ArgumentParser(
        prog="mta", description="An Enhanced-MTA simulator: relay, simulated ISPs, feedback."
    )
    parser.add_argument("--version", action="version", version=f"mta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the MTA (SMTP in, durable spool, delivery out)")
    add_config_flags(serve)
    serve.set_defaults(func=cmd_serve)

    sink = sub.add_parser("sink", help="accept all mail and store it in a Maildir")
    sink.add_argument(
        "--listen", default="127.0.0.1:2526", metavar="HOST:PORT", help="default 127.0.0.1:2526"
    )
    sink.add_argument("--maildir", metavar="DIR", help="where to store (default: store nothing)")
    sink.add_argument("--fsync", action="store_true", help="fsync each stored message")
    sink.add_argument(
        "--hostname", default="sink.localhost", help="the name in the greeting and Received"
    )
    add_log_level(sink)
    sink.set_defaults(func=cmd_sink)

    tls = sub.add_parser("tls-cert", help="write a self-signed certificate and key for STARTTLS")
    tls.add_argument("--out", required=True, metavar="DIR", help="where to write cert and key")
    tls.add_argument(
        "--hostname", default="mta.localhost", help="the certificate's name (default mta.localhost)"
    )
    tls.set_defaults(func=cmd_tls_cert)

    check = sub.add_parser("check", help="health check: exit 0 when the given services answer")
    check.add_argument(
        "--smtp", action="append", default=[], metavar="HOST:PORT", help="answers EHLO with 250"
    )
    check.add_argument("--http", action="append", default=[], metavar="URL", help="answers 2xx")
    check.add_argument(
        "--dns", action="append", default=[], metavar="HOST:PORT", help="answers a query"
    )
    check.add_argument(
        "--redis", action="append", default=[], metavar="HOST:PORT", help="answers PING"
    )
    check.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per check (default 5)"
    )
    check.set_defaults(func=cmd_check)

    up = sub.add_parser("up", help="run the MTA and the simulated internet together")
    up.add_argument("--config", metavar="FILE", help="the MTA's mta.toml")
    up.add_argument("--sim-config", metavar="FILE", help="the simulation's isps.toml")
    up.add_argument(
        "--data-dir",
        default="var",
        metavar="DIR",
        help="DIR/mta (spool), DIR/sim (what the ISPs received, and their state),"
        " DIR/campaign-log.sqlite (with --client: the client's delivery log), logs"
        " (default var)",
    )
    up.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="run the shared clock X times faster than real time: retries, validity,"
        " greylisting (default 1; 5040 makes 3.5 days a minute)",
    )
    up.add_argument(
        "--listen",
        default="127.0.0.1:2525",
        metavar="HOST:PORT",
        help="the MTA's SMTP submission address",
    )
    up.add_argument(
        "--admin",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="the MTA's HTTP API (default 127.0.0.1:8080)",
    )
    up.add_argument(
        "--dns",
        default="127.0.0.1:5300",
        metavar="HOST:PORT",
        help="the stub DNS the MTA resolves through",
    )
    up.add_argument(
        "--sim-http",
        default="127.0.0.1:8025",
        metavar="HOST:PORT",
        help="the simulation's HTTP API: what the ISPs received (default 127.0.0.1:8025)",
    )
    up.add_argument(
        "--persona-port",
        type=int,
        default=2525,
        metavar="PORT",
        help="the port every simulated ISP listens on (each on its own address)",
    )
    up.add_argument(
        "--seed", type=int, metavar="N", help="seed the simulated ISPs' random faults"
    )
    up.add_argument(
        "--nodes",
        type=int,
        default=1,
        metavar="N",
        help="run N MTA nodes sharing limits through one Redis server (node K listens on"
        " the --listen and --admin ports + K - 1)",
    )
    up.add_argument(
        "--redis",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where the Redis server of --nodes N listens (default: a free loopback port)",
    )
    up.add_argument(
        "--client",
        action="store_true",
        help="also run the Campaign side's receiver (webhooks and bounce mailbox),"
        " as docker-compose does",
    )
    up.add_argument(
        "--webhook",
        default="127.0.0.1:8090",
        metavar="HOST:PORT",
        help="where the client's receiver listens (with --client)",
    )
    add_log_level(up, help="of the processes' logs in DIR (default info)")
    up.set_defaults(func=cmd_up)

    for register in _plugins():
        register(sub)
    return parser


def _plugins() -> list[Callable[[Any], None]]:
    """Subcommands that live in their own modules (each sets `func` on its parser)."""
    from mta.cli import classify as classify_cmd
    from mta.cli import demo
    from mta.cli import dkim as dkim_cmd
    from mta.cli import queue as queue_cmd
    from mta.cli import sim as sim_cli
    from mta.cli import spool as spool_cmd

    return [
        _with_func(dkim_cmd.add_parser, "dkim", dkim_cmd.run),
        _with_func(classify_cmd.add_parser, "classify", classify_cmd.run),
        _with_func(queue_cmd.add_parser, "queue", queue_cmd.run),
        _with_func(sim_cli.add_parser, "sim", sim_cli.run),
        _with_func(demo.add_parser, "demo", demo.run),
        _with_func(spool_cmd.add_parser, "spool", spool_cmd.run),
    ]


def _with_func(
    add_parser: Callable[[Any], None], name: str, run: Callable[[argparse.Namespace], int]
) -> Callable[[Any], None]:
    """Register a module's subcommand and route it to the module's `run`."""

    def register(sub: Any) -> None:
        add_parser(sub)
        sub.choices[name].set_defaults(func=run)

    return register


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except (ConfigError, CliError) as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return stdout_closed()
    except SpoolError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
