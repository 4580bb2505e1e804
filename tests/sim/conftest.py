"""Harness for the simulated internet's tests: a sim + a real MTA on a manual clock, real sockets.

Each test gets its own loopback network 127.3.N.0/24: personas bind 127.3.N.x on
one port picked by the first bind (port 0), the stub DNS and HTTP on port 0.
The MTA resolves through the stub DNS and delivers to the personas' port; its
classifier here is deliberately simple (5xx permanent, the rest retried) and an
MX rule for `*.test` turns off its pacing, ramp-up and adaptive rules, so the
assertions are about what the personas answered, not about the MTA's shaping.

Store-facing tests take the `store_kind` fixture: they run once per store
("sqlite", the default, and "maildir").
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiosmtplib
import pytest

from mta.app import MtaApp
from mta.cli.sink import Sink
from mta.clock import ManualClock
from mta.config.service import DkimKey, load_config
from mta.model import BounceClass, Outcome, Verdict
from mta.sim.config import SimConfig
from mta.sim.simulation import Simulation
from mta.sim.store import STORES
from tests.simnet import ISP, MX_RULE, new_net, sim_config, toml_table


class SimpleRules:
    """5xx: permanent; anything else: retry. Enough to watch what the personas said."""

    def classify(self, outcome: Outcome) -> Verdict:
        permanent = outcome.reply.code >= 500
        return Verdict(
            bounce_class=BounceClass(10 if permanent else 20, "test"),
            failure_type="Hard" if permanent else "Soft",
            failure_reason="test",
            reason_code=1 if permanent else 3,
            scope="recipient",
            permanent=permanent,
            rule="tests",
        )


@dataclass
class Row:
    address: str
    state: str
    attempts: int
    code: int | None
    enhanced: str | None
    text: str
    phase: str | None
    possible_duplicate: bool
    history: list[tuple[int | None, str | None, str]]  # (code, phase, text) per attempt


class Stack:
    """A sim and an MTA wired together, on one manual clock."""

    def __init__(self, net: str, root: Path, clock: ManualClock) -> None:
        self.net = net
        self.root = root
        self.clock = clock
        self.sim: Simulation | None = None
        self.app: MtaApp | None = None
        self.sink: Sink | None = None

    def config(self, personas: str = ISP, seed: int = 1) -> SimConfig:
        return sim_config(self.net, personas, seed)

    async def start(
        self,
        personas: str = ISP,
        *,
        seed: int = 1,
        mta_flags: dict[str, Any] | None = None,
        sink: bool = False,
        config: SimConfig | None = None,
        mx_rule: dict[str, Any] | None = None,
        store: str | None = None,
        dkim: tuple[DkimKey, ...] = (),
    ) -> Stack:
        """Start the sim (`personas` TOML with {net}; `store` over `sim.store`), the MTA
        (flags over the test defaults, `mx_rule` keys over the test MX rule, `dkim` keys to
        sign with) and optionally a sender mailbox."""
        config = config or self.config(personas, seed)
        if store is not None:
            config = dataclasses.replace(config, sim=dataclasses.replace(config.sim, store=store))
        self.sim = await Simulation.start(config, self.clock, self.root / "sim")
        dns_host, dns_port = self.sim.dns_address
        rules_file = self.root / "mx-rules.toml"
        rules_file.write_text("[[mx]]\n" + toml_table({**MX_RULE, **(mx_rule or {})}))
        flags: dict[str, Any] = {
            "delivery.mx_rules_files": (str(rules_file),),
            "smtp.listen": "127.0.0.1:0",
            "admin.listen": "127.0.0.1:0",  # other processes may hold 8080
            "data_dir": str(self.root / "mta"),
            "dns.nameservers": (dns_host,),
            "dns.port": dns_port,
            "dns.timeout": 0.5,
            "delivery.port": self.sim.smtp_port,
            "delivery.tls": "none",
            "delivery.timeouts.connect": 2.0,
            "delivery.timeouts.greeting": 1.0,
            "delivery.timeouts.dot": 1.0,
            "retry.first": 60.0,
            "retry.factor": 1.0,
            "retry.jitter": 0.0,
            "spool.shutdown_grace": 1.0,
        }
        flags.update(mta_flags or {})
        mta_config = load_config(None, flags=flags, environ={})
        if dkim:
            mta_config = dataclasses.replace(
                mta_config, dkim=dataclasses.replace(mta_config.dkim, keys=dkim)
            )
        rules = cast(Any, SimpleRules())  # MtaApp's hint says BounceRules; any classifier works
        self.app = MtaApp(mta_config, self.clock, rules=rules)
        await self.app.start()
        self.sim.mta_submit = self.app.smtp_address
        if sink:
            self.sink = await Sink.start(
                f"{self.net}.20", self.sim.smtp_port, self.root / "sender-mailbox"
            )
        return self

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
        if self.sink is not None:
            await self.sink.close()
        if self.sim is not None:
            await self.sim.stop()

    # -- sending --------------------------------------------------------------

    async def submit(
        self,
        recipients: list[str],
        sender: str = "bounces@campaign.test",
        subject: str = "Hello",
        message_id: str | None = None,
    ) -> str:
        """Submit one message to the MTA; returns its Message-ID."""
        assert self.app is not None
        host, port = self.app.smtp_address
        mid = message_id or f"<{uuid.uuid4().hex}@campaign.test>"
        content = (
            f"From: Sender <{sender}>\r\nTo: <{recipients[0]}>\r\nSubject: {subject}\r\n"
            f"Message-ID: {mid}\r\nX-Campaign-Delivery-Id: d1\r\n\r\nHello there.\r\n"
        ).encode()
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, timeout=10)
        await smtp.connect()
        await smtp.ehlo()
        reply = await smtp.execute_command(b"MAIL", f"FROM:<{sender}>".encode())
        assert reply.code == 250, reply
        for rcpt in recipients:
            reply = await smtp.execute_command(b"RCPT", f"TO:<{rcpt}>".encode())
            assert reply.code == 250, (rcpt, reply)
        reply = await smtp.data(content)
        assert reply.code == 250, reply
        await smtp.quit()
        return mid

    # -- watching -------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self.app is not None
        path = Path(self.app.config.data_dir) / "spool.sqlite3"
        conn = sqlite3.connect(path, timeout=5)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def rows(self) -> dict[str, Row]:
        found: dict[str, Row] = {}
        for rid, address, state, attempts, code, enhanced, text, phase, dup in self._query(
            "SELECT id, address, state, attempts, last_code, last_enhanced, last_text,"
            " last_phase, possible_duplicate FROM recipients ORDER BY id"
        ):
            history = [
                (c, p, t or "")
                for c, p, t in self._query(
                    "SELECT code, phase, text FROM attempts WHERE recipient_id = ? ORDER BY id",
                    (rid,),
                )
            ]
            found[address] = Row(
                address, state, attempts, code, enhanced, text or "", phase, bool(dup), history
            )
        return found

    @staticmethod
    def all_final(rows: dict[str, Row]) -> bool:
        return all(r.state != "queued" for r in rows.values())

    def events(self) -> list[tuple[str, str]]:
        return [(k, b) for k, b in self._query("SELECT kind, body FROM events ORDER BY id")]

    async def quiet(self, timeout: float = 10.0) -> None:
        """Until nothing is in flight and nothing is due now (real-time bounded)."""
        assert self.app is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            now = self.clock.now()
            busy = self._query(
                "SELECT count(*) FROM recipients WHERE state = 'queued'"
                " AND (leased = 1 OR next_attempt_at <= ?)",
                (now,),
            )[0][0]
            if busy == 0 and self.app.running.scheduler.inflight == 0:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the MTA was not quiet within {timeout}s")

    async def run_until(
        self, done: Callable[[dict[str, Row]], bool], step: float = 60.0, max_steps: int = 12
    ) -> dict[str, Row]:
        """Let attempts happen, moving the clock by `step` between rounds, until `done`."""
        for _ in range(max_steps):
            await self.quiet()
            rows = self.rows()
            if rows and done(rows):
                return rows
            self.clock.advance(step)
            await asyncio.sleep(0)
        rows = self.rows()
        raise AssertionError(f"not done after {max_steps} steps: {rows}")


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    """Each store in turn, for the tests that read back what the personas stored."""
    return str(request.param)


@pytest.fixture
def make_config() -> Callable[..., SimConfig]:
    return sim_config


@pytest.fixture
def net() -> str:
    return new_net()


@pytest.fixture
async def stack(net: str, tmp_path: Path) -> AsyncIterator[Stack]:
    s = Stack(net, tmp_path, ManualClock())
    try:
        yield s
    finally:
        await s.stop()
