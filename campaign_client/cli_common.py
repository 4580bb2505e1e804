"""What every `campaign-client` subcommand shares: the one-line error, the `--config` and
`--log` options, opening the delivery log with the config's quarantine policy, times as text."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from campaign_client.config import (
    CONFIG_ENV,
    DEFAULT_LOG,
    LOG_ENV,
    ClientConfig,
    ConfigError,
    load_config,
    log_path,
)
from campaign_client.log import DeliveryLog, LogError

PROG = "campaign-client"


class CliError(Exception):
    """A one-line error for the user, with the exit code to use."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """--config and --log, on every subcommand."""
    parser.add_argument("--config", metavar="FILE",
                        help=f"the client's TOML config (or ${CONFIG_ENV})")
    parser.add_argument("--log", metavar="FILE",
                        help=f"delivery log (or ${LOG_ENV}, or the config's log; "
                             f"default {DEFAULT_LOG})")


def config_of(args: argparse.Namespace) -> ClientConfig:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def open_log(args: argparse.Namespace, create: bool) -> DeliveryLog:
    """The delivery log the options name, with the config's quarantine policy; sets
    `args.log_path` to the path used (for messages)."""
    config = config_of(args)
    path = log_path(args.log, config)
    args.log_path = path
    if create:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(f"cannot create the directory of {path}: {exc.strerror}") from None
    try:
        return DeliveryLog(path, create=create, policy=config.quarantine)
    except LogError as exc:
        raise CliError(str(exc)) from None


def when(at: float | None) -> str:
    """A time on the events' clock as UTC text ("-" for none)."""
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))
