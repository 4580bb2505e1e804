"""DNS for delivery: MX and address lookups through dnspython's async resolver, with a TTL cache.

The resolver is injectable (nameservers and port from config, so the MTA can
be pointed at the simulated internet's stub DNS). Answers are cached for their
TTL on the MTA's clock; negative answers (NXDOMAIN, no data) for a short while,
failures (SERVFAIL, timeouts) only briefly so a recovered server is seen soon.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal, Protocol

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mta.clock import Clock
from mta.config.service import DnsConfig
from mta.core.routing import MxRecord, is_null_mx, normalise_host

log = logging.getLogger("mta.dns")

NEGATIVE_TTL = 300.0
FAILURE_TTL = 30.0
MIN_TTL = 1.0


@dataclass(frozen=True, slots=True)
class MxAnswer:
    """What the DNS says about where a domain's mail goes."""

    kind: Literal["records", "implicit", "null", "nxdomain", "failure"]
    records: tuple[MxRecord, ...] = ()
    error: str = ""


class MxLookup(Protocol):
    """What the scheduler needs of DNS: where a domain's mail goes (`Resolver` is one)."""

    async def mx(self, domain: str) -> MxAnswer: ...


@dataclass(frozen=True, slots=True)
class AddressAnswer:
    kind: Literal["addresses", "nxdomain", "nodata", "failure"]
    addresses: tuple[str, ...] = ()
    error: str = ""


class _TtlCache:
    def __init__(self, clock: Clock, size: int) -> None:
        self.clock = clock
        self.size = size
        self.items: OrderedDict[tuple[str, str], tuple[float, object]] = OrderedDict()

    def get(self, key: tuple[str, str]) -> object | None:
        item = self.items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self.clock.now():
            del self.items[key]
            return None
        self.items.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: object, ttl: float) -> None:
        self.items[key] = (self.clock.now() + max(ttl, MIN_TTL), value)
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


@functools.lru_cache(maxsize=1024)  # asked for each delivery, of a few hosts
def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class Resolver:
    """MX and A/AAAA lookups for delivery. See the module docstring."""

    def __init__(self, clock: Clock, config: DnsConfig | None = None) -> None:
        """`config` is the `[dns]` section (default: the system's resolv.conf, port 53)."""
        config = config or DnsConfig()
        self.clock = clock
        if config.nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(config.nameservers)
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.port = config.port
        self._resolver.timeout = config.timeout
        self._resolver.lifetime = config.timeout
        self._resolver.cache = None
        self._cache = _TtlCache(clock, config.cache_size)
        self._inflight: dict[tuple[str, str], asyncio.Future[object]] = {}
        self.queries = 0

    async def _query(self, name: str, rdtype: str) -> tuple[object, float]:
        """(answer, ttl) where answer is a list of rdata, or an exception instance."""
        self.queries += 1
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as exc:
            return exc, NEGATIVE_TTL
        except dns.resolver.NoAnswer as exc:
            return exc, NEGATIVE_TTL
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            return exc, FAILURE_TTL
        except dns.exception.DNSException as exc:
            return exc, FAILURE_TTL
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else NEGATIVE_TTL
        return list(answer), ttl

    async def _cached(self, name: str, rdtype: str) -> object:
        key = (name, rdtype)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value, ttl = await self._query(name, rdtype)
            self._cache.put(key, value, ttl)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise, nobody logs it twice
            raise
        finally:
            del self._inflight[key]

    async def mx(self, domain: str) -> MxAnswer:
        result = await self._cached(domain, "MX")
        if isinstance(result, dns.resolver.NXDOMAIN):
            return MxAnswer("nxdomain", error=f"NXDOMAIN for {domain} type=MX")
        if isinstance(result, dns.resolver.NoAnswer):
            return MxAnswer("implicit", (MxRecord(0, domain),))
        if isinstance(result, Exception):
            return MxAnswer("failure", error=_describe(result, domain, "MX"))
        assert isinstance(result, list)
        records = tuple(
            MxRecord(int(r.preference), normalise_host(r.exchange.to_text())) for r in result
        )
        if is_null_mx(records):
            return MxAnswer("null", records)
        return MxAnswer("records", records)

    async def addresses(self, host: str) -> AddressAnswer:
        if is_ip_literal(host):
            return AddressAnswer("addresses", (host.strip("[]"),))
        v4, v6 = await asyncio.gather(self._cached(host, "A"), self._cached(host, "AAAA"))
        found: list[str] = []
        for result in (v4, v6):
            if isinstance(result, list):
                found.extend(r.address for r in result)
        if found:
            return AddressAnswer("addresses", tuple(found))
        if isinstance(v4, dns.resolver.NXDOMAIN):
            return AddressAnswer("nxdomain", error=f"NXDOMAIN for {host} type=A")
        failures = [
            r
            for r in (v4, v6)
            if isinstance(r, Exception)
            and not isinstance(r, dns.resolver.NoAnswer | dns.resolver.NXDOMAIN)
        ]
        if failures:
            return AddressAnswer("failure", error=_describe(failures[0], host, "A"))
        return AddressAnswer("nodata", error=f"no A or AAAA record for {host}")


def _describe(exc: BaseException, name: str, rdtype: str) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return f"DNS timeout for {name} type={rdtype}"
    if isinstance(exc, dns.resolver.NoNameservers):
        return f"SERVFAIL for {name} type={rdtype}"
    return f"DNS failure for {name} type={rdtype}: {type(exc).__name__}"
