"""A persona's stateful rules, as plain objects with `now` passed in (no I/O, no clock reads).

- `bucket_for`: a token bucket for a configured rate and burst.
- `Greylist`: (sender, recipient, client IP) triples; the first attempt waits `window`.
- `IpRecord` + `reputation_blocked`: per-sending-IP volume and complaint memory.
- `MailboxTable`: unknown / full / disabled / suppressed users by list or pattern.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mta.core.bucket import TokenBucket
from mta.sim.config import MailboxesConfig, ReputationConfig

DAY = 86400.0


def bucket_for(rate: float, burst: int, now: float) -> TokenBucket | None:
    """A full bucket for a configured rate (None: unlimited); burst 0 means one minute's
    worth. The bucket is the MTA's own (`mta.core.bucket`): `try_take(now)` says whether
    one more event fits."""
    if rate <= 0:
        return None
    return TokenBucket.full(rate, float(burst) if burst > 0 else max(1.0, rate * 60.0), now)


class Greylist:
    """First sight of a triple: wait `window` seconds; a retry after that passes."""

    def __init__(self, window: float, expiry: float) -> None:
        self.window = window
        self.expiry = expiry
        self.first_seen: dict[str, float] = {}
        self._checks = 0

    @staticmethod
    def key(sender: str, recipient: str, ip: str) -> str:
        return f"{sender}\x1f{recipient}\x1f{ip}"

    def check(self, key: str, now: float) -> float:
        """0 when the triple may pass, else the seconds still to wait."""
        self._checks += 1
        if self._checks % 10000 == 0:
            self.prune(now)
        seen = self.first_seen.get(key)
        if seen is None or now - seen > self.expiry + self.window:
            self.first_seen[key] = now
            return self.window
        waited = now - seen
        return 0.0 if waited >= self.window else self.window - waited

    def prune(self, now: float) -> None:
        limit = self.expiry + self.window
        self.first_seen = {k: t for k, t in self.first_seen.items() if now - t <= limit}


@dataclass(slots=True)
class IpRecord:
    """What a persona remembers of one sending IP (virtual times)."""

    first_seen: float
    day: int = -1
    today: int = 0
    messages: int = 0
    complaints: int = 0
    sessions: int = 0  # open now
    sessions_max: int = 0
    sessions_total: int = 0
    refused_sessions: int = 0

    def count_message(self, now: float) -> None:
        day = int(now // DAY)
        if day != self.day:
            self.day, self.today = day, 0
        self.today += 1
        self.messages += 1

    def sent_today(self, now: float) -> int:
        return self.today if int(now // DAY) == self.day else 0


def reputation_blocked(record: IpRecord, now: float, rule: ReputationConfig) -> bool:
    """Whether the IP is refused: young and over its daily volume, or too many complaints."""
    young = now - record.first_seen < rule.new_ip_age
    if rule.new_ip_daily_limit and young and record.sent_today(now) >= rule.new_ip_daily_limit:
        return True
    if rule.complaint_rate and record.messages >= max(rule.complaint_min_messages, 1):
        return record.complaints / record.messages > rule.complaint_rate
    return False


@dataclass(frozen=True)
class _Matcher:
    locals_: frozenset[str]
    addresses: frozenset[str]
    pattern: re.Pattern[str] | None

    def matches(self, local: str, address: str) -> bool:
        if local in self.locals_ or address in self.addresses:
            return True
        return self.pattern is not None and self.pattern.search(address) is not None


def _matcher(entries: tuple[str, ...], where: str) -> _Matcher:
    locals_: set[str] = set()
    addresses: set[str] = set()
    patterns: list[str] = []
    for entry in entries:
        if entry.startswith("re:"):
            try:
                re.compile(entry[3:])
            except re.error as exc:
                raise ValueError(f"{where}: bad pattern {entry[3:]!r}: {exc}") from None
            patterns.append(f"(?:{entry[3:]})")
        elif "@" in entry:
            addresses.add(entry.lower())
        else:
            locals_.add(entry.lower())
    pattern = re.compile("|".join(patterns), re.IGNORECASE) if patterns else None
    return _Matcher(frozenset(locals_), frozenset(addresses), pattern)


@dataclass(frozen=True)
class MailboxTable:
    """Which table (if any) a recipient is in; patterns are compiled once."""

    tables: tuple[tuple[str, _Matcher], ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, config: MailboxesConfig, where: str) -> MailboxTable:
        tables = []
        for name in ("unknown", "full", "disabled", "suppressed"):
            entries: tuple[str, ...] = getattr(config, name)
            if entries:
                tables.append((name, _matcher(entries, f"{where}.{name}")))
        return cls(tuple(tables))

    def lookup(self, local: str, address: str) -> str | None:
        """ "unknown", "full", "disabled", "suppressed" or None (an ordinary mailbox)."""
        for name, matcher in self.tables:
            if matcher.matches(local, address):
                return name
        return None
