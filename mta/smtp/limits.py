"""Limits one SMTP listener shares between its sessions: connections, AUTH failures, DATA memory.

- `ConnectionGate`: a total and a per-client-IP cap on open sessions, and the set of open
  sessions so that a shutdown can say 421 to each (RFC 5321 3.8).
- `AuthThrottle`: failed AUTH attempts per client IP within a window; past the limit the IP
  is refused AUTH for the lockout period, and each failure slows the next reply. A pure
  decision: every call takes `now` (monotonic seconds).
- `MemoryBudget`: bytes of DATA held in memory by all sessions at once. Readers take what
  fits and spill the rest to disk; handlers wait for their turn before they copy a message.

`SmtpLimits` holds the settings (0 turns a limit off); `Listener` bundles the shared state
that one listener's sessions use.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mta.smtp.replies import SHUTTING_DOWN


@dataclass(frozen=True)
class SmtpLimits:
    """Per-listener limits; 0 disables the limit it names."""

    max_connections: int = 0
    max_connections_per_ip: int = 0
    session_timeout: float = 0.0  # seconds a whole session may last
    junk_command_limit: int = 0  # NOOP/RSET/VRFY/EXPN/HELP per message transaction
    line_length_hard_limit: int = 0  # octets before CRLF
    auth_failures_per_session: int = 0  # then 421 4.7.0 and close
    auth_failures_per_ip: int = 0  # within auth_lockout, then AUTH refused for auth_lockout
    auth_lockout: float = 600.0
    auth_failure_delay: float = 0.0  # seconds per failure so far in the session, at most 5 s
    data_memory_limit: int = 0  # bytes of DATA in memory over all sessions; 0: unbounded
    spill_dir: Path | None = None  # where DATA past the memory budget goes


class Closable(Protocol):
    def shut_down(self) -> None: ...


class ConnectionGate:
    """Counts open sessions in total and per client IP."""

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.per_ip: collections.Counter[str] = collections.Counter()
        self.sessions: set[Closable] = set()
        self.refused_total = 0
        self.refused_per_ip = 0

    @property
    def open(self) -> int:
        return len(self.sessions)

    def admit(self, session: Closable, ip: str) -> str | None:
        """None when the session may go on (it is then counted), else the 421 reply to give."""
        if self.max_total and len(self.sessions) >= self.max_total:
            self.refused_total += 1
            return "421 4.3.2 Too many connections, try again later"
        if self.max_per_ip and self.per_ip[ip] >= self.max_per_ip:
            self.refused_per_ip += 1
            return "421 4.7.0 Too many connections from your address, try again later"
        self.sessions.add(session)
        self.per_ip[ip] += 1
        return None

    def release(self, session: Closable, ip: str) -> None:
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    def shut_down_all(self) -> None:
        """Ask every open session to say 421 and close (at once, or after its current reply)."""
        for session in list(self.sessions):
            session.shut_down()


@dataclass
class _Failures:
    times: collections.deque[float] = field(default_factory=collections.deque)
    locked_until: float = 0.0


class AuthThrottle:
    """Failed AUTH attempts per client IP (pure: callers pass `now`)."""

    MAX_TRACKED = 10000

    def __init__(self, max_failures: int, lockout: float) -> None:
        self.max_failures = max_failures
        self.lockout = lockout
        self.failures_total = 0
        self.refusals_total = 0
        self._by_ip: dict[str, _Failures] = {}

    def refused(self, ip: str, now: float) -> bool:
        """Whether AUTH from this IP is refused at `now` (counted when it is)."""
        entry = self._by_ip.get(ip)
        if entry is None or entry.locked_until <= now:
            return False
        self.refusals_total += 1
        return True

    def locked_for(self, ip: str, now: float) -> float:
        """Seconds left of the IP's lockout at `now` (0: none); counts nothing."""
        entry = self._by_ip.get(ip)
        return max(0.0, entry.locked_until - now) if entry is not None else 0.0

    def lock(self, ip: str, until: float) -> None:
        """Refuse AUTH from the IP until `until` (a lockout decided elsewhere)."""
        entry = self._by_ip.setdefault(ip, _Failures())
        entry.locked_until = max(entry.locked_until, until)

    def failed(self, ip: str, now: float) -> None:
        """Record one failed attempt; lock the IP once it has `max_failures` in the window."""
        self.failures_total += 1
        if not self.max_failures:
            return
        entry = self._by_ip.get(ip)
        if entry is None:
            if len(self._by_ip) >= self.MAX_TRACKED:
                self._forget(now)
            entry = self._by_ip.setdefault(ip, _Failures())
        entry.times.append(now)
        while entry.times and entry.times[0] <= now - self.lockout:
            entry.times.popleft()
        if len(entry.times) >= self.max_failures:
            entry.locked_until = now + self.lockout
            entry.times.clear()

    def _forget(self, now: float) -> None:
        """Drop IPs with nothing recent, then the oldest half if still too many."""
        horizon = now - self.lockout
        stale = [
            ip
            for ip, entry in self._by_ip.items()
            if entry.locked_until <= now and (not entry.times or entry.times[-1] <= horizon)
        ]
        for ip in stale:
            del self._by_ip[ip]
        if len(self._by_ip) >= self.MAX_TRACKED:
            for ip in list(self._by_ip)[: self.MAX_TRACKED // 2]:
                del self._by_ip[ip]


def failure_delay(step: float, failures: int) -> float:
    """Seconds to wait before answering the n-th failure of a session: n x step, at most 5 s."""
    return min(step * failures, 5.0)


class MemoryBudget:
    """Bytes of DATA in memory: `try_take` for readers (who spill when refused), `take` for
    handlers (who wait their turn; one message larger than the budget may go alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.spilled_total = 0
        self._freed = asyncio.Event()

    def try_take(self, size: int) -> bool:
        if self.limit and self.held + size > self.limit:
            return False
        self.held += size
        return True

    async def take(self, size: int) -> None:
        while self.limit and self.held and self.held + size > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size
        self._freed.set()


class Listener:
    """The state one listener's sessions share."""

    def __init__(self, limits: SmtpLimits) -> None:
        self.limits = limits
        self.gate = ConnectionGate(limits.max_connections, limits.max_connections_per_ip)
        self.auth = AuthThrottle(limits.auth_failures_per_ip, limits.auth_lockout)
        self.reading = MemoryBudget(limits.data_memory_limit)
        self.handling = MemoryBudget(limits.data_memory_limit)
        self.closing = False
        # Whether a client at this address can do nothing without AUTH (the ingress says:
        # outside relay_networks); such a client locked out of AUTH is refused at connect.
        self.needs_auth: Callable[[str], bool] = lambda ip: False
        # Told the client IP of each session that ends, refused at connect or closed (an
        # ingress worker tells the main process, which counts the sessions of all workers).
        self.ended: Callable[[str], None] = lambda ip: None
        self.junk_closed_total = 0
        self.session_timeouts_total = 0
        self.long_lines_total = 0

    def admit(self, session: Closable, ip: str) -> str | None:
        """None when a new session from `ip` may go on (it is then counted), else the 421
        reply to give: shutting down, the IP locked out of AUTH while it needs AUTH, or a
        connection limit."""
        if self.closing:
            return SHUTTING_DOWN
        if self.needs_auth(ip) and self.auth.refused(ip, time.monotonic()):
            return "421 4.7.0 Too many failed authentications; try again later"
        return self.gate.admit(session, ip)

    def shut_down(self) -> None:
        """Refuse new sessions and close the open ones with 421 4.3.2."""
        self.closing = True
        self.gate.shut_down_all()
