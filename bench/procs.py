"""Start `mta` subcommands as real processes for benchmarks, and read their CPU time."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass

_LISTENING = re.compile(r"listening on [\d.]+:(\d+)")
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Proc:
    process: asyncio.subprocess.Process
    port: int

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (all its threads) so far."""
        with open(f"/proc/{self.process.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_mta(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> Proc:
    """`python -m mta ARGS...` (from `cwd`: its `mta` package, when it has one); waits for
    its "listening on HOST:PORT" line."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mta", *args, stderr=asyncio.subprocess.PIPE, env=environment, cwd=cwd
    )
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
        if not line:
            raise RuntimeError(f"mta {' '.join(args)} exited before listening")
        match = _LISTENING.search(line)
        if match:
            asyncio.get_running_loop().create_task(_drain(process.stderr))
            return Proc(process, int(match.group(1)))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
