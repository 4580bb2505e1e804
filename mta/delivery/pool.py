"""Open SMTP connections to the next hops (aiosmtplib sessions), kept under three limits:
per (address, port, source), per group (a site and a source binding, as the scheduler
limits them) and in all. Idle connections are reused until the
per-connection message limit or the idle timeout; trimming a group closes idle ones.
A connection being closed (its QUIT under way) still counts until it is closed: the
receiving server counts it until then, so its slot (and a cluster's connection lease)
is not handed to a new connection before.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import aiosmtplib
from aiosmtplib import SMTPException

Key = tuple[str, int, str | None]  # (address, port, source address)
GroupLimit = Callable[[], int]  # the most connections a group may keep open, now
LIMIT_RECHECK = 0.25  # seconds: a job waiting at its group's limit reads it again


@dataclass(eq=False)
class Connection:
    smtp: aiosmtplib.SMTP
    key: Key
    group: Hashable
    host: str
    tls: bool
    messages: int = 0
    last_used: float = field(default_factory=time.monotonic)

    @property
    def usable(self) -> bool:
        return self.smtp.is_connected


class Pool:
    """Open connections (busy and idle) per key, per group and in all, each under a limit.

    A key is one (address, port, source); a group is what the scheduler limits
    together (a site and a source binding): a site's several MX addresses share
    its connection limit, idle connections included, because the receiving
    server counts them all.
    """

    def __init__(self, per_key: int, total: int, idle_timeout: float) -> None:
        self.per_key = per_key
        self.total = total
        self.idle_timeout = idle_timeout
        self.idle: dict[Key, list[Connection]] = {}
        self.counts: dict[Key, int] = {}
        self.group_counts: dict[Hashable, int] = {}
        self.open_total = 0
        self._changed = asyncio.Condition()
        self.opened = 0
        self.reused = 0
        self._closing: set[asyncio.Task[None]] = set()
        self.closing_counts: dict[Hashable, int] = {}  # per group: QUITs under way

    def _quit_later(self, conn: Connection) -> None:
        """Close `conn` in the background; its slot is free once it is closed."""
        self.closing_counts[conn.group] = self.closing_counts.get(conn.group, 0) + 1
        task = asyncio.get_running_loop().create_task(self._quit_then_forget(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit_then_forget(self, conn: Connection) -> None:
        try:
            await _quit(conn.smtp)
        finally:
            async with self._changed:
                self.closing_counts[conn.group] -= 1
                self._forget(conn)
                self._changed.notify_all()

    def connections_in(self, group: Hashable) -> int:
        """Connections of `group` open, being opened or being closed: what the receiving
        server may count."""
        return self.group_counts.get(group, 0)

    def _staying_open_in(self, group: Hashable) -> int:
        """Open connections of `group` that stay open (those being closed left out)."""
        return self.group_counts.get(group, 0) - self.closing_counts.get(group, 0)

    def take_idle(self, key: Key) -> Connection | None:
        idle = self.idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.last_used < self.idle_timeout:
                self.reused += 1
                return conn
            self._forget(conn)
            conn.smtp.close()
        return None

    async def reserve(
        self, key: Key, group: Hashable, group_limit: GroupLimit | None = None
    ) -> Connection | None:
        """An idle connection, or None once a slot for a new one is reserved (waits at limits).
        `group_limit` is read each time a slot is looked for: a cluster node's connection
        leases may have shrunk since the job was started."""
        async with self._changed:
            while True:
                conn = self.take_idle(key)
                if conn is not None:
                    return conn
                group_full = group_limit is not None and (
                    self.group_counts.get(group, 0) >= group_limit()
                )
                key_full = self.counts.get(key, 0) >= self.per_key
                if not group_full and not key_full and self.open_total < self.total:
                    self.counts[key] = self.counts.get(key, 0) + 1
                    self.group_counts[group] = self.group_counts.get(group, 0) + 1
                    self.open_total += 1
                    return None
                # Make room by closing one idle connection, unless one is closing already
                # (its slot comes free when it is closed).
                if group_full:
                    if not self.closing_counts.get(group) and self._close_idle(
                        lambda c: c.group == group and c.key != key
                    ):
                        continue
                elif (
                    not key_full
                    and not any(self.closing_counts.values())
                    and self._close_idle(lambda c: c.key != key)
                ):
                    continue
                if group_limit is None:
                    await self._changed.wait()
                else:
                    # A rise of the group's limit (leases granted) sends no notice: look
                    # again now and then.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LIMIT_RECHECK):  # no task, one timer
                            await self._changed.wait()

    def _close_idle(self, which: Callable[[Connection], bool]) -> bool:
        """Close the oldest idle connection that `which` accepts; False if there is none."""
        for conns in self.idle.values():
            for conn in conns:
                if which(conn):
                    conns.remove(conn)
                    self._quit_later(conn)
                    return True
        return False

    async def trim(self, group: Hashable, limit: int) -> None:
        """Close idle connections of a group while it has more open than `limit`; returns
        once those are closed (so their slots may go to another node)."""
        async with self._changed:
            while self._staying_open_in(group) > limit:
                if not self._close_idle(lambda c: c.group == group):
                    break
            while self.closing_counts.get(group):
                await self._changed.wait()

    def _forget(self, conn: Connection) -> None:
        self.counts[conn.key] = self.counts.get(conn.key, 1) - 1
        self.group_counts[conn.group] = self.group_counts.get(conn.group, 1) - 1
        self.open_total -= 1

    async def unreserve(self, key: Key, group: Hashable) -> None:
        async with self._changed:
            self.counts[key] = self.counts.get(key, 1) - 1
            self.group_counts[group] = self.group_counts.get(group, 1) - 1
            self.open_total -= 1
            self._changed.notify_all()

    async def give_back(self, conn: Connection, reusable: bool, limit: int) -> None:
        conn.messages += 1
        conn.last_used = time.monotonic()
        async with self._changed:
            if reusable and conn.usable and conn.messages < limit:
                self.idle.setdefault(conn.key, []).append(conn)
            else:
                self._quit_later(conn)
            self._changed.notify_all()

    async def discard(self, conn: Connection) -> None:
        async with self._changed:
            self._forget(conn)
            conn.smtp.close()
            self._changed.notify_all()

    async def reap(self) -> None:
        """Close idle connections older than the idle timeout."""
        now = time.monotonic()
        async with self._changed:
            while self._close_idle(
                lambda c: now - c.last_used >= self.idle_timeout or not c.usable
            ):
                pass
            self._changed.notify_all()

    async def close(self) -> None:
        async with self._changed:
            conns = [c for group in self.idle.values() for c in group]
            self.idle.clear()
            for conn in conns:
                self._forget(conn)
        await asyncio.gather(
            *(_quit(c.smtp) for c in conns), *self._closing, return_exceptions=True
        )


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        if smtp.is_connected:
            await asyncio.wait_for(smtp.quit(), 2.0)
    except (SMTPException, OSError, TimeoutError):
        pass
    finally:
        smtp.close()
