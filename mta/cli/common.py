"""What every `mta` command shares: the one-line user error, logging, the event loop, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Awaitable, Callable


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
