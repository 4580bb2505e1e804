"""The stub DNS of the simulated internet: an authoritative dnslib zone served over UDP and TCP.

`Zone.from_config` builds the records: MX per persona domain (pointing to the
persona's host names), A records for those hosts and for `[[hosts]]`, and the
special domains of `[[domains]]` (null MX, implicit MX by A record, SERVFAIL,
timeout). `Zone.answer(query bytes)` is pure: it returns the reply bytes, or
None when the name is a "timeout" domain (the server stays silent). Names not
in the zone get NXDOMAIN; names in it without records of the asked type get an
empty answer (NODATA); both carry an SOA so resolvers can cache the negative.
MX answers carry the exchanges' A records as additional data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from dnslib import MX, QTYPE, RCODE, RR, SOA, A, DNSError, DNSRecord

from mta.sim.config import SimConfig

log = logging.getLogger("mta.sim.dns")

NEGATIVE_TTL = 60
TCP_IDLE = 10.0  # real seconds a DNS-over-TCP connection may stay silent
TCP_MAX_QUERIES = 100


def _name(text: str) -> str:
    return text.rstrip(".").lower()


def _parents(name: str) -> Iterable[str]:
    labels = name.split(".")
    for i in range(len(labels)):
        yield ".".join(labels[i:])


@dataclass
class Zone:
    """Records by (name, type) plus the names that fail or stay silent."""

    records: dict[tuple[str, int], list[RR]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    servfail: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    queries: int = 0

    def add(self, name: str, qtype: int, rdata: object, ttl: int) -> None:
        name = _name(name)
        self.names.add(name)
        self.records.setdefault((name, qtype), []).append(
            RR(name + ".", qtype, rdata=rdata, ttl=ttl)
        )

    @classmethod
    def from_config(cls, config: SimConfig) -> Zone:
        zone = cls()
        ttl = int(config.sim.dns_ttl)
        overridden = {_name(d.name) for d in config.domains}
        for persona in config.personas:
            for host in persona.mx:
                zone.add(host.name, QTYPE.A, A(host.address), ttl)
            for served in persona.domains:
                if _name(served) in overridden:
                    continue
                for host in persona.mx:
                    zone.add(served, QTYPE.MX, MX(_name(host.name) + ".", host.preference), ttl)
        for host in config.hosts:
            zone.add(host.name, QTYPE.A, A(host.address), ttl)
        for domain in config.domains:
            name = _name(domain.name)
            dttl = ttl if domain.ttl < 0 else int(domain.ttl)
            if domain.kind == "mx":
                for preference, host_name in enumerate(domain.mx):
                    zone.add(name, QTYPE.MX, MX(_name(host_name) + ".", 10 * preference), dttl)
            elif domain.kind == "null_mx":
                zone.add(name, QTYPE.MX, MX(".", 0), dttl)
            elif domain.kind == "address":
                zone.add(name, QTYPE.A, A(domain.address), dttl)
            elif domain.kind == "servfail":
                zone.servfail.add(name)
            elif domain.kind == "timeout":
                zone.silent.add(name)
            # "nxdomain": nothing; being absent is the behaviour
        return zone

    def answer(self, data: bytes) -> bytes | None:
        """The reply to one DNS query in wire format (None: stay silent)."""
        self.queries += 1
        try:
            request = DNSRecord.parse(data)
        except (DNSError, IndexError, ValueError, struct.error):
            return None  # not a DNS message: nothing sensible to answer
        reply = request.reply()
        reply.header.ra = 0
        if not request.questions:
            reply.header.rcode = RCODE.FORMERR
            return bytes(reply.pack())
        question = request.q
        name = _name(str(question.qname))
        qtype = question.qtype
        if any(p in self.silent for p in _parents(name)):
            return None
        if any(p in self.servfail for p in _parents(name)):
            reply.header.rcode = RCODE.SERVFAIL
            reply.header.aa = 0
            return bytes(reply.pack())
        if name not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
            self._add_soa(reply, name)
            return bytes(reply.pack())
        found = self.records.get((name, qtype), [])
        for rr in found:
            reply.add_answer(rr)
        if not found:
            self._add_soa(reply, name)
        elif qtype == QTYPE.MX:
            for rr in found:
                exchange = _name(str(rr.rdata.label))
                for extra in self.records.get((exchange, QTYPE.A), []):
                    reply.add_ar(extra)
        return bytes(reply.pack())

    @staticmethod
    def _add_soa(reply: DNSRecord, name: str) -> None:
        apex = name.rsplit(".", 1)[-1] or name
        soa = SOA(
            "ns.sim.test.",
            "hostmaster.sim.test.",
            (1, 3600, 600, 86400, NEGATIVE_TTL),
        )
        reply.add_auth(RR(apex + ".", QTYPE.SOA, rdata=soa, ttl=NEGATIVE_TTL))


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = self.zone.answer(data)
        if reply is not None and self.transport is not None:
            if len(reply) > 512:  # no EDNS here: truncate, the client retries over TCP
                truncated = DNSRecord.parse(reply)
                truncated.rr, truncated.auth, truncated.ar = [], [], []
                truncated.header.tc = 1
                reply = bytes(truncated.pack())
            self.transport.sendto(reply, addr)


class StubDns:
    """The zone served on host:port (UDP and TCP on the same port)."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] = ("", 0)

    @classmethod
    async def start(cls, zone: Zone, host: str, port: int) -> StubDns:
        server = cls(zone)
        loop = asyncio.get_running_loop()
        last: OSError | None = None
        for _ in range(5):  # port 0: the UDP port may be taken for TCP; try another
            try:
                transport, _protocol = await loop.create_datagram_endpoint(
                    lambda: _Udp(zone), local_addr=(host, port)
                )
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise OSError(f"cannot listen for DNS on {host}:{port}: {reason}") from None
            bound = transport.get_extra_info("sockname")[1]
            try:
                tcp = await loop.create_server(server._serve_tcp_client, host, bound)
            except OSError as exc:
                transport.close()
                last = exc
                if port:
                    break
                continue
            server._udp, server._tcp = transport, tcp
            server.address = (host, int(bound))
            return server
        raise OSError(f"cannot listen for DNS on {host}:{port}: {last}")

    def _serve_tcp_client(self) -> asyncio.Protocol:
        reader = asyncio.StreamReader()

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._clients.add(w)
            try:
                for _ in range(TCP_MAX_QUERIES):
                    header = await asyncio.wait_for(r.readexactly(2), TCP_IDLE)
                    (length,) = struct.unpack("!H", header)
                    data = await asyncio.wait_for(r.readexactly(length), TCP_IDLE)
                    reply = self.zone.answer(data)
                    if reply is None:
                        continue  # silent domain: the client times out
                    w.write(struct.pack("!H", len(reply)) + reply)
                    await w.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                self._clients.discard(w)
                w.close()

        return asyncio.StreamReaderProtocol(reader, serve)

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
        for writer in list(self._clients):
            writer.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)
