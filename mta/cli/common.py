"""What every `mta` command shares: the one-line user error, logging, the event loop, signals."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def stdout_closed() -> int:
    """The reader of our output went away (`mta sim ls | head -1`): stop quietly.

    Later writes, and the flush at exit, go to /dev/null instead of raising again;
    the status is the one a process killed by SIGPIPE reports (128 + 13).
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def warn(message: str) -> None:
    """A one-line warning on stderr, before logging is set up (e.g. from the config)."""
    print(f"mta: warning: {message}", file=sys.stderr, flush=True)


def check_time_scale(value: float | None, flag: str = "--time-scale") -> None:
    """A clock speed-up must be a positive finite number (nan, inf, 0, -1 are not)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise CliError(f"{flag}: expected a positive number, got {value:g}")


LOG_LEVELS = ("debug", "info", "warning", "error")


def add_log_level(
    parser: argparse.ArgumentParser,
    default: str | None = "info",
    help: str = "what to log on stderr (default info)",
) -> None:
    """The `--log-level` flag, with the same choices on every command.

    `default` None leaves the choice to the config (`mta serve`'s log_level key).
    """
    parser.add_argument("--log-level", default=default, choices=LOG_LEVELS, help=help)


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
