"""The `mta` command: serve | sink | up | sim | demo | classify | dkim | tls-cert | check | ...

Every error is one line on stderr naming the problem, with a non-zero exit
code; tracebacks are for bugs only. Flags override env (`MTA_*`), which
overrides the config file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from mta.config import DkimKey, MtaConfig, load_config
from mta.settings import ConfigError, parse_hostport

log = logging.getLogger("mta")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every command and data line at INFO/DEBUG: far too costly on the hot path.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def until_signalled(stop: asyncio.Event | None = None) -> None:
    """Wait for SIGTERM or SIGINT (or `stop`)."""
    event = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, event.set)
    await event.wait()


def run_async(main: Callable[[], Awaitable[int]]) -> int:
    install_uvloop()
    return asyncio.run(main())  # type: ignore[arg-type]


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
        "--dns", metavar="HOST:PORT", help="the nameserver to ask (default: the system's)"
    )
    parser.add_argument(
        "--delivery-port",
        type=int,
        metavar="PORT",
        help="destination port for MX hosts (default 25)",
    )
    parser.add_argument("--admin", metavar="HOST:PORT",
                        help="HTTP API address (default 127.0.0.1:8080; '' disables it)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def config_from_args(args: argparse.Namespace) -> MtaConfig:
    flags: dict[str, Any] = {}
    simple = {
        "listen": "smtp.listen",
        "data_dir": "data_dir",
        "relayhost": "delivery.relayhost",
        "time_scale": "clock.time_scale",
        "clock_anchor": "clock.anchor",
        "delivery_port": "delivery.port",
        "admin": "admin.listen",
        "log_level": "log_level",
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
    config = load_config(args.config, flags=flags)
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
        await app.start()
        host, port = app.smtp_address
        admin = app.admin_address
        if admin is not None:
            print(f"mta: admin API on http://{admin[0]}:{admin[1]}/", file=sys.stderr, flush=True)
        print(f"mta: listening on {host}:{port}", file=sys.stderr, flush=True)
        try:
            await until_signalled()
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
        from mta.sink import Sink

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
    from mta.tls import write_self_signed

    cert, key = write_self_signed(Path(args.out), args.hostname)
    print(f'wrote {cert} and {key}\n\n[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"')
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """A health check for containers and scripts: can we talk SMTP to HOST:PORT?"""
    try:
        host, port = parse_hostport(args.smtp)
    except ValueError as exc:
        raise CliError(f"--smtp: {exc}") from None

    async def main() -> int:
        import aiosmtplib

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
            print(f"mta check: {host}:{port}: {exc}", file=sys.stderr)
            return 1
        return 0 if code == 250 else 1

    return run_async(main)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mta", description="An Enhanced-MTA simulator: relay, simulated ISPs, feedback."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the MTA (SMTP in, durable spool, delivery out)")
    add_config_flags(serve)
    serve.set_defaults(func=cmd_serve)

    sink = sub.add_parser("sink", help="accept all mail and store it in a Maildir")
    sink.add_argument("--listen", default="127.0.0.1:2526", metavar="HOST:PORT")
    sink.add_argument("--maildir", metavar="DIR", help="where to store (default: store nothing)")
    sink.add_argument("--fsync", action="store_true", help="fsync each stored message")
    sink.add_argument("--hostname", default="sink.localhost")
    sink.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sink.set_defaults(func=cmd_sink)

    tls = sub.add_parser("tls-cert", help="write a self-signed certificate and key for STARTTLS")
    tls.add_argument("--out", required=True, metavar="DIR")
    tls.add_argument("--hostname", default="mta.localhost")
    tls.set_defaults(func=cmd_tls_cert)

    check = sub.add_parser("check", help="health check: exit 0 if an SMTP server answers")
    check.add_argument("--smtp", default="127.0.0.1:2525", metavar="HOST:PORT")
    check.add_argument("--timeout", type=float, default=5.0)
    check.set_defaults(func=cmd_check)

    for register in _plugins():
        register(sub)
    return parser


def _plugins() -> list[Callable[[Any], None]]:
    """Subcommands that live in their own modules (each sets `func` on its parser)."""
    from mta import classify_cmd, dkim_cmd, queue_cmd

    return [
        _with_func(dkim_cmd.add_parser, "dkim", dkim_cmd.run),
        _with_func(classify_cmd.add_parser, "classify", classify_cmd.run),
        _with_func(queue_cmd.add_parser, "queue", queue_cmd.run),
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
    except OSError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
