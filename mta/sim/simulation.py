"""The running simulated internet: personas on their addresses, the stub DNS, the outbox, HTTP.

    sim = await Simulation.start(config, clock, data_dir)
    sim.dns_address     # (host, port): point the MTA's resolver here
    sim.smtp_port       # the one port every persona listens on (point delivery.port here)
    sim.http_address    # (host, port) or None
    sim.mta_submit = app.smtp_address   # where artefacts go (if not known from the config)
    sim.stats()         # per persona counters, outbox, DNS, the store
    sim.store           # where accepted messages go (`mta.sim.store`: SQLite or Maildirs)
    await sim.stop()

With `sim.smtp_port = 0` the first persona address gets any free port and the
others bind the same number (retried with a new port if one is taken).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from mta.clock import Clock
from mta.config.engine import parse_hostport
from mta.sim import mailview, store
from mta.sim.artefacts import Outbox
from mta.sim.config import SimConfig
from mta.sim.dns_server import StubDns, Zone
from mta.sim.http import HttpServer, build_app
from mta.sim.inbox_http import Inbox
from mta.sim.persona import Persona
from mta.sim.persona_server import Blackhole, PersonaSMTP
from mta.smtp.server import close_server, start_server

log = logging.getLogger("mta.sim")

BIND_TRIES = 8


class Simulation:
    """See the module docstring."""

    def __init__(
        self,
        config: SimConfig,
        clock: Clock,
        data_dir: Path,
        personas: dict[str, Persona],
        outbox: Outbox,
        zone: Zone,
    ) -> None:
        self.config = config
        self.clock = clock
        self.data_dir = data_dir
        self.personas = personas
        self.outbox = outbox
        self.zone = zone
        self.dns: StubDns | None = None
        self.http: HttpServer | None = None
        self.smtp_port = 0
        self.store: store.Store | None = None
        self.writer: store.StoreWriter | None = None
        self.inbox: Inbox | None = None
        self._servers: list[asyncio.Server] = []

    @property
    def dns_address(self) -> tuple[str, int]:
        assert self.dns is not None
        return self.dns.address

    @property
    def http_address(self) -> tuple[str, int] | None:
        return self.http.address if self.http is not None else None

    @property
    def mta_submit(self) -> tuple[str, int] | None:
        return self.outbox.submit

    @mta_submit.setter
    def mta_submit(self, address: tuple[str, int] | None) -> None:
        self.outbox.submit = address

    @classmethod
    async def start(
        cls,
        config: SimConfig,
        clock: Clock,
        data_dir: Path | None = None,
        *,
        http: bool = True,
    ) -> Simulation:
        """Start everything the config describes; `data_dir` overrides `sim.data_dir`."""
        root = Path(data_dir) if data_dir is not None else Path(config.sim.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        submit = parse_hostport(config.sim.mta_submit) if config.sim.mta_submit else None
        outbox = Outbox(clock, submit)
        kept = store.open_store(config.sim.store, root, config.sim.store_fsync)
        keys = mailview.load_keys(Path(config.sim.dkim_keys)) if config.sim.dkim_keys else {}
        if keys:
            kept.dkim_check = mailview.checker(keys)
        writer = store.StoreWriter(kept)
        try:
            personas = {
                p.name: Persona(
                    p,
                    config.sim,
                    clock,
                    outbox,
                    store.persona_root(root, p.name),
                    writer=writer,
                    store=kept,
                )
                for p in config.personas
            }
        except BaseException:
            kept.close()
            raise
        for persona in personas.values():
            persona.load_state()
        zone = Zone.from_config(config)
        sim = cls(config, clock, root, personas, outbox, zone)
        sim.store = kept
        sim.writer = writer
        writer.start()
        try:
            await sim._bind_personas(config.sim.smtp_port)
            host, port = parse_hostport(config.sim.dns_listen)
            sim.dns = await StubDns.start(zone, host, port)
            if http and config.sim.http_listen:
                host, port = parse_hostport(config.sim.http_listen)
                sim.inbox = Inbox(root, keys, config.sim.token, config.sim.mta_admin)
                sim.inbox.forget = kept.forget
                writer.listeners.append(sim.inbox.changed)
                app = build_app(root, sim.stats, lambda: list(personas), sim.inbox, personas)
                sim.http = await HttpServer.start(app, host, port)
        except BaseException:
            await sim.stop()
            raise
        outbox.start()
        log.info(
            "sim: %d personas on port %d, DNS on %s:%d",
            len(personas),
            sim.smtp_port,
            *sim.dns_address,
        )
        return sim

    async def _bind_personas(self, wanted: int) -> None:
        last: OSError | None = None
        for _ in range(BIND_TRIES if wanted == 0 else 1):
            port = wanted
            servers: list[asyncio.Server] = []
            try:
                for persona in self.personas.values():
                    for address in persona.addresses:
                        server = await self._listen(persona, address, port)
                        servers.append(server)
                        persona.servers.append(server)
                        if port == 0:
                            port = int(server.sockets[0].getsockname()[1])
            except OSError as exc:
                last = exc
                for persona in self.personas.values():
                    persona.servers.clear()
                for server in servers:
                    await close_server(server)
                if wanted:
                    raise OSError(f"cannot listen on port {wanted}: {exc.strerror}") from None
                continue
            self._servers = servers
            self.smtp_port = port
            return
        raise OSError(f"cannot bind the personas on a common port: {last}")

    async def _listen(self, persona: Persona, address: str, port: int) -> asyncio.Server:
        if persona.config.kind == "blackhole":
            loop = asyncio.get_running_loop()
            return await loop.create_server(
                lambda: Blackhole(persona), address, port, reuse_address=True, backlog=1024
            )
        return await start_server(lambda: PersonaSMTP(persona), address, port)

    def stats(self) -> dict[str, Any]:
        outbox = self.outbox
        return {
            "personas": {name: p.stats() for name, p in self.personas.items()},
            "outbox": {
                "pending": outbox.pending,
                "scheduled": dict(outbox.scheduled),
                "sent": dict(outbox.sent),
                "failed": dict(outbox.failed),
            },
            "dns": {"queries": self.zone.queries},
            "store": {
                "kind": self.config.sim.store,
                "path": str(self.store.location) if self.store is not None else "",
            },
        }

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for persona in self.personas.values():
            for transport in list(persona.transports):
                transport.close()
        for server in self._servers:
            await close_server(server)
        self._servers = []
        await self.outbox.stop()
        if self.writer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.writer.stop)
            self.writer = None
        if self.store is not None:
            self.store.close()
        if self.dns is not None:
            await self.dns.stop()
        if self.http is not None:
            await self.http.stop()
        self.dns = self.http = None
        for persona in self.personas.values():
            persona.save_state()
        await asyncio.sleep(0)  # let closed sessions run their connection_lost
