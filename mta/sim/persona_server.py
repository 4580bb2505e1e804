"""How a persona is served: `PersonaSMTP`, the SMTP server with the persona's greeting
decisions (session caps, connection bucket, latency) and its DATA-stage hook, and `Blackhole`,
a listener that accepts the connection and never says a word.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiosmtpd.smtp import Envelope

from mta.sim.persona import Persona, PersonaEnvelope, peer_ip
from mta.smtp.server import FastSMTP


class PersonaSMTP(FastSMTP):
    """FastSMTP with the persona's greeting decisions and a DATA-stage hook."""

    def __init__(self, persona: Persona) -> None:
        limits = persona.config.limits
        super().__init__(
            persona,
            hostname=persona.hostname,
            data_size_limit=limits.max_message_size,
            max_recipients=limits.max_recipients,
            timeout=max(300.0, persona.stall_max + 10.0),
            ident=persona.config.banner,
        )
        self.persona = persona
        self._peer_ip = ""
        self._refusal: str | None = None
        self._counted = False
        self._socket_transport: asyncio.BaseTransport | None = None

    def _create_envelope(self) -> Envelope:
        return PersonaEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first and not self._counted:
            self._counted = True
            self._socket_transport = transport
            self.persona.transports.add(transport)
            self._peer_ip = peer_ip(self.session)
            self._refusal = self.persona.session_opened(self._peer_ip)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.persona.session_closed(self._peer_ip)
            if self._socket_transport is not None:
                self.persona.transports.discard(self._socket_transport)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        if self.persona.latency.connect:
            await self.persona.wait(self.persona.latency.connect)
        refusal = self._refusal
        if refusal is not None:
            with contextlib.suppress(ConnectionError):
                await self.push(refusal)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str | None) -> None:
        envelope = self.envelope
        if not arg and envelope is not None and envelope.rcpt_tos:
            injected = self.persona._chaos("data", envelope.rcpt_tos[0])
            if injected is not None:
                self._reset_envelope()
                await self.push(injected)
                return
        if (
            not arg
            and isinstance(envelope, PersonaEnvelope)
            and envelope.rcpt_tos
            and any(p.step is not None and p.step.stage == "data" for p in envelope.plans)
        ):
            reply = await self.persona.before_data(self, envelope)
            if reply is not None:
                self._reset_envelope()
                await self.push(reply)
                return
        elif self.persona.latency.data and envelope is not None and envelope.rcpt_tos:
            await self.persona.wait(self.persona.latency.data)
        await super().smtp_DATA(arg)


class Blackhole(asyncio.Protocol):
    """Accepts the TCP connection and never says a word; closes it after `stall_max`."""

    def __init__(self, persona: Persona) -> None:
        self.persona = persona
        self.transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.persona.transports.add(transport)
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        self.persona.session_opened(self._ip)
        self.persona.counters.stalls += 1
        self._timer = asyncio.get_running_loop().call_later(self.persona.stall_max, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # swallowed

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.persona.transports.discard(self.transport)
        self.persona.session_closed(self._ip)
