"""From an MX answer to the ordered list of hosts to try, and the site they form (pure).

RFC 5321 5.1: lower preference first, equal preferences in random order (the
caller supplies the random generator); no MX means the domain itself is the
implicit MX; a single MX of "." is a null MX (RFC 7505): the domain accepts no
mail. A site is the set of MX hosts: domains hosted by one provider share a site.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    host: str  # lower case, without the trailing dot


def normalise_host(name: str) -> str:
    return name.rstrip(".").lower()


def is_null_mx(records: Sequence[MxRecord]) -> bool:
    """True when every MX record is "." (RFC 7505); a "." beside real hosts is ignored."""
    return bool(records) and all(record.host == "" for record in records)


def order_hosts(records: Iterable[MxRecord], rng: random.Random) -> list[str]:
    """Hosts by preference, shuffled within a preference; duplicates and "." dropped."""
    by_preference: dict[int, list[str]] = {}
    for record in records:
        if record.host:
            by_preference.setdefault(record.preference, []).append(record.host)
    ordered: list[str] = []
    seen: set[str] = set()
    for preference in sorted(by_preference):
        hosts = sorted(set(by_preference[preference]))
        rng.shuffle(hosts)
        for host in hosts:
            if host not in seen:
                seen.add(host)
                ordered.append(host)
    return ordered


def site_key(hosts: Iterable[str]) -> str:
    """One name for the set of MX hosts, independent of order."""
    return ",".join(sorted(set(hosts)))
