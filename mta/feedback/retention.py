"""Outbox retention: delete feedback events every webhook has taken and the retention has passed.

Each delivered recipient leaves about 1.5 KB of events in the spool's outbox; kept
forever, they grow the spool without bound. An event is pruned once (a) every
enabled webhook endpoint's cursor has passed it (a disabled endpoint, after
`410 Gone`, holds nothing back) and (b) it is older than `feedback.retention`, so
the pull API's consumers have at least that long to read it. Retention is real
time, like the webhook window: at a time scale of 100 a consumer still has the
configured days of wall-clock time. The newest event is always kept, so event ids
(the cursors) never go back. Pruning runs every `interval` real seconds, in small
batches that each are one operation of the spool's group commit, off the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from mta.clock import Clock
from mta.queue.spool import Spool, SpoolError

log = logging.getLogger("mta.feedback")

BATCH = 500
INTERVAL = 60.0


def prune_limits(
    now: float, scale: float, retention: float, cursors: Sequence[int] | None
) -> tuple[float, int | None]:
    """(cutoff clock time, highest id every endpoint has) for a prune at `now` (pure).

    `cursors` are the enabled endpoints' cursors; None means no webhook is configured,
    so only the retention applies (bound None: no bound)."""
    cutoff = now - retention * scale
    if cursors is None:
        return cutoff, None
    return cutoff, min(cursors, default=0)


class OutboxPruner:
    """`start()` a task that prunes now and then; `prune_once()` for one full pass."""

    def __init__(
        self,
        spool: Spool,
        clock: Clock,
        retention: float,
        cursors: Callable[[], Sequence[int] | None],
        interval: float = INTERVAL,
        batch: int = BATCH,
    ) -> None:
        self.spool = spool
        self.clock = clock
        self.retention = retention
        self.cursors = cursors
        self.interval = interval
        self.batch = batch
        self.pruned = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="outbox pruner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def prune_once(self) -> int:
        """Prune until nothing more qualifies; returns how many events went."""
        cutoff, bound = prune_limits(
            self.clock.now(), self.clock.scale, self.retention, self.cursors()
        )
        if bound is not None and bound <= 0:
            return 0
        total = 0
        while True:
            count = await self.spool.prune_events(cutoff, bound, self.batch)
            total += count
            if count < self.batch:
                break
            await asyncio.sleep(0)  # let the hot path's operations into the next commit
        if total:
            self.pruned += total
            log.info("outbox: pruned %d events older than the retention and sent", total)
        return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.prune_once()
            except SpoolError as exc:
                log.warning("outbox: pruning failed, will try again: %s", exc)
