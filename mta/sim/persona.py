"""An ISP persona: an SMTP server (FastSMTP subclass + handler) that behaves like a real receiver.

Per session, in order (everything configurable in `isps.toml`, see
`mta.sim.config`):
- connect: the per-IP concurrent session cap and connection token bucket;
  over either, the greeting is the persona's throttling reply (as a 421) and
  the connection is closed. Sockets are counted per IP (open now, most at
  once, total), refused ones included.
- MAIL: a MAIL-stage script on the sender's local part; the per-IP message
  token bucket (the throttling reply, only when exceeded: the bucket refills
  while the sender slows down); the reputation rule (a young IP over its daily
  volume, or too many complaints).
- RCPT: the recipient's domain must be one of the persona's (else relay
  denied); the attempt counter of the address goes up; a script in the local
  part (`mta.sim.scripts`) decides alone; otherwise the mailbox table
  (unknown, full, disabled, suppressed), greylisting of the (sender,
  recipient, IP) triple, then seeded random soft/hard failures.
- DATA and after the final dot: scripted answers, a seeded random disconnect
  after the dot, then the message is stored (`mta.sim.store`: SQLite or a
  Maildir; the write is awaited) and the 250 is sent; asynchronous artefacts
  (DSN, auto-reply, complaint) are handed to the outbox with their due time.

Randomness comes from `chance(seed, persona, recipient, attempt, what)`: the
same seed and the same arrivals give the same outcomes, whatever the
concurrency. Time windows (buckets, greylisting, reputation days, artefact
delays) are virtual, on the shared clock. Latency is configured in real-world
seconds and waited as latency / clock scale real seconds, so a sped-up run
keeps the relative slowness of stages without waiting for it. A stall or a
black hole lasts at most `sim.stall_max` real seconds, then the connection is
closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import Envelope, Session

from mta.clock import Clock
from mta.core.bucket import TokenBucket
from mta.sim.artefacts import (
    Original,
    Outbox,
    build_autoreply,
    build_complaint,
    build_dsn,
)
from mta.sim.chaos import StageReply, applies
from mta.sim.chaos import Update as ChaosUpdate
from mta.sim.config import TEMPORARY_PROBLEM, PersonaConfig, SimSection
from mta.sim.reply_text import (
    GENERIC_REPLIES,
    basic_code,
    enhanced_code,
    one_line,
    render,
)
from mta.sim.rules import (
    Greylist,
    IpRecord,
    MailboxTable,
    bucket_for,
    reputation_blocked,
)
from mta.sim.scripts import Script, Step, chance, parse_local_part
from mta.sim.store import Received, Store, StoreWriter
from mta.sim.store_reader import stored_messages
from mta.smtp import replies
from mta.smtp.server import FastSMTP, content_of

log = logging.getLogger("mta.sim.persona")

SCRIPT_CACHE_SIZE = 65536

# Which named reply speaks for a scripted code, first match wins.
_CODE_PRIORITY = (
    "unknown",
    "full",
    "disabled",
    "throttle",
    "greylisted",
    "soft",
    "hard",
    "reputation",
    "suppressed",
    "relay_denied",
    "async_bounce",
)


@dataclass(slots=True)
class RcptPlan:
    """What was decided at RCPT for one accepted recipient of the transaction."""

    address: str
    attempt: int
    step: Step | None = None  # a DATA- or DOT-stage scripted step
    async_code: int | None = None
    autoreply: bool = False
    complaint: bool = False
    scripted: bool = False


class PersonaEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.plans: list[RcptPlan] = []
        self.transcript: list[tuple[str, str]] = []  # (stage, reply), kept with the message


def _note(envelope: Envelope, stage: str, reply: str) -> str:
    """Remember the persona's answer at a stage (the inbox shows it), and return it."""
    if isinstance(envelope, PersonaEnvelope):
        envelope.transcript.append((stage, reply))
    return reply


@dataclass
class Counters:
    accepted: int = 0  # messages
    recipients_accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)  # by basic code
    throttled: int = 0
    greylisted: int = 0
    reputation_blocked: int = 0
    drops: int = 0
    stalls: int = 0
    sessions_now: int = 0
    sessions_max: int = 0
    sessions_total: int = 0
    sessions_refused: int = 0


class Persona:
    """One ISP: its state, rules and aiosmtpd hooks. Serve it with
    `mta.sim.persona_server.PersonaSMTP` (or `Blackhole`)."""

    def __init__(
        self,
        config: PersonaConfig,
        sim: SimSection,
        clock: Clock,
        outbox: Outbox | None,
        root: Path,
        seed: int | None = None,
        writer: StoreWriter | None = None,
        *,
        store: Store,
    ) -> None:
        self.config = config
        self.name = config.name
        self.sim = sim
        self.clock = clock
        self.outbox = outbox
        self.root = root
        self.seed = sim.seed if seed is None else seed
        self.hostname = config.smtp_hostname
        self.domains = frozenset(d.lower() for d in config.domains)
        self.store = store
        self.writer = writer
        root.mkdir(parents=True, exist_ok=True)  # state.json lives here, whatever the store
        store.open(self.name)
        self.mailboxes = MailboxTable.from_config(
            config.mailboxes, f"personas.{config.name}.mailboxes"
        )
        self.replies = config.replies.named()
        self.code_replies = self._code_replies()
        g = config.greylist
        self.greylist = Greylist(g.window, g.expiry) if g.enabled else None
        self.ips: dict[str, IpRecord] = {}
        self._connection_buckets: dict[str, TokenBucket] = {}
        self._message_buckets: dict[str, TokenBucket] = {}
        self.attempts: dict[str, int] = {}
        self.sender_attempts: dict[str, int] = {}
        self._scripts: dict[str, Script | None] = {}
        self._ids = itertools.count(1)
        self.counters = Counters()
        self.servers: list[asyncio.Server] = []
        self.transports: set[asyncio.BaseTransport] = set()
        self.addresses = tuple(h.address for h in config.mx)
        self.latency = config.latency
        self.stall_max = sim.stall_max
        self.chaos_reply: StageReply | None = None  # set at run time (`mta.sim.chaos`)

    # -- replies --------------------------------------------------------------

    def _code_replies(self) -> dict[int, str]:
        found: dict[int, str] = {}
        for name in reversed(_CODE_PRIORITY):
            text = self.replies[name]
            found[basic_code(text)] = text
        for key, text in self.config.replies.codes.items():
            found[int(key)] = text
        return found

    def _fill(self, template: str, ip: str, recipient: str, seconds: int) -> str:
        values = {
            "ip": ip,
            "recipient": recipient,
            "seconds": str(seconds),
            "hostname": self.hostname,
            "id": "",
        }
        return render(template, values)

    def reply(self, name: str, ip: str, recipient: str = "", seconds: int = 0) -> str:
        """The persona's named reply (`replies.<name>`), filled in."""
        return self._fill(self.replies[name], ip, recipient, seconds)

    def reply_for_code(self, code: int, ip: str, recipient: str) -> str:
        """A scripted code in the persona's words: `replies.codes`, a named reply with
        that code, or a generic text."""
        template = self.code_replies.get(code)
        if template is None:
            template = GENERIC_REPLIES.get(code) or f"{code} {str(code)[0]}.0.0 Scripted reply"
        return self._fill(template, ip, recipient, int(self.config.greylist.window))

    def _refuse(self, reply: str) -> str:
        self.counters.rejected[reply[:3]] = self.counters.rejected.get(reply[:3], 0) + 1
        return reply

    # -- state ----------------------------------------------------------------

    def ip_record(self, ip: str, now: float) -> IpRecord:
        record = self.ips.get(ip)
        if record is None:
            record = self.ips[ip] = IpRecord(first_seen=now)
        return record

    def script(self, local: str) -> Script | None:
        try:
            return self._scripts[local]
        except KeyError:
            pass
        script = parse_local_part(local)
        if len(self._scripts) >= SCRIPT_CACHE_SIZE:
            self._scripts.clear()
        self._scripts[local] = script
        return script

    def chance(self, *parts: object) -> float:
        return chance(self.seed, self.name, *parts)

    def stored(self) -> list[bytes]:
        """What this persona stored (earlier runs included), oldest first, trace included."""
        return stored_messages(self.store.data_dir, self.name)

    def state_path(self) -> Path:
        return self.root / "state.json"

    def load_state(self) -> None:
        """Attempt counters and greylisting memory from a previous run, if any."""
        try:
            data = json.loads(self.state_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        try:
            attempts = {str(k): int(v) for k, v in dict(data.get("attempts", {})).items()}
            senders = {str(k): int(v) for k, v in dict(data.get("sender_attempts", {})).items()}
            grey = {str(k): float(v) for k, v in dict(data.get("greylist", {})).items()}
        except (TypeError, ValueError):
            log.warning("persona %s: ignoring an unreadable %s", self.name, self.state_path())
            return
        self.attempts.update(attempts)
        self.sender_attempts.update(senders)
        if self.greylist is not None:
            self.greylist.first_seen.update(grey)

    def save_state(self) -> None:
        data = {
            "attempts": self.attempts,
            "sender_attempts": self.sender_attempts,
            "greylist": self.greylist.first_seen if self.greylist is not None else {},
        }
        tmp = self.root / "state.json.tmp"
        try:
            tmp.write_text(json.dumps(data), encoding="utf-8")
            os.replace(tmp, self.state_path())
        except OSError as exc:
            log.warning("persona %s: cannot save state: %s", self.name, exc)

    # -- sessions -------------------------------------------------------------

    def session_opened(self, ip: str) -> str | None:
        """Count the socket; the refusal greeting if over the limits, else None."""
        now = self.clock.now()
        record = self.ip_record(ip, now)
        record.sessions += 1
        record.sessions_total += 1
        record.sessions_max = max(record.sessions_max, record.sessions)
        c = self.counters
        c.sessions_now += 1
        c.sessions_total += 1
        c.sessions_max = max(c.sessions_max, c.sessions_now)
        limits = self.config.limits
        refused = bool(limits.sessions) and record.sessions > limits.sessions
        if not refused:
            bucket = self._connection_buckets.get(ip)
            if bucket is None:
                bucket = bucket_for(limits.connections, limits.connection_burst, now)
                if bucket is not None:
                    self._connection_buckets[ip] = bucket
            refused = bucket is not None and not bucket.try_take(now)
        if not refused:
            return None
        record.refused_sessions += 1
        c.sessions_refused += 1
        c.throttled += 1
        reply = self.reply(
            "throttle_connections" if self.replies["throttle_connections"] else "throttle", ip
        )
        if reply[:3] not in ("421", "554"):  # a greeting refusal is 421 or 554
            reply = "421" + reply[3:].replace(f"\r\n{reply[:3]}", "\r\n421")
        return self._refuse(reply)

    def session_closed(self, ip: str) -> None:
        record = self.ips.get(ip)
        if record is not None:
            record.sessions -= 1
        self.counters.sessions_now -= 1

    async def wait(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds / self.clock.scale)

    async def hang(self, server: FastSMTP, seconds: float) -> str:
        """Stall for `seconds` (real, bounded), then close the connection without a reply."""
        if seconds > 0:
            self.counters.stalls += 1
            await asyncio.sleep(min(seconds, self.stall_max))
        else:
            self.counters.drops += 1
        transport = server.transport
        if transport is not None:
            transport.close()
        await asyncio.sleep(5.0)  # connection_lost cancels this session's task first
        return "421 4.4.2 Closing connection"

    async def act(self, server: FastSMTP, step: Step, ip: str, recipient: str) -> str:
        """The reply of a scripted step that does not pass (or no reply at all)."""
        if step.action == "drop":
            return await self.hang(server, 0)
        if step.action == "stall":
            return await self.hang(server, self.stall_max)
        return self._refuse(self.reply_for_code(step.code, ip, recipient))

    # -- chaos (runtime changes, `mta.sim.chaos`) -------------------------------

    def apply_chaos(self, update: ChaosUpdate) -> dict[str, Any]:
        """Change the persona now; its chaos state afterwards."""
        if update.clear_reply:
            self.chaos_reply = None
        if update.reply is not None:
            self.chaos_reply = update.reply
        if update.rate is not None:
            limits = dataclasses.replace(self.config.limits, messages=update.rate)
            self.config = dataclasses.replace(self.config, limits=limits)
            self._message_buckets.clear()
        if update.latency:
            self.latency = dataclasses.replace(self.latency, **update.latency)
        if update.greylisting is not None:
            g = self.config.greylist
            if not update.greylisting:
                self.greylist = None
            elif self.greylist is None:
                self.greylist = Greylist(g.window, g.expiry)
            self.config = dataclasses.replace(
                self.config, greylist=dataclasses.replace(g, enabled=update.greylisting)
            )
        return self.chaos_state()

    def chaos_state(self) -> dict[str, Any]:
        return {
            "reply": self.chaos_reply.as_dict() if self.chaos_reply is not None else None,
            "rate": self.config.limits.messages,
            "latency": dataclasses.asdict(self.latency),
            "greylisting": self.greylist is not None,
        }

    def _chaos(self, stage: str, address: str) -> str | None:
        """The injected reply for this stage and address, if chaos says so."""
        reply = self.chaos_reply
        if reply is None or reply.stage != stage:
            return None
        found = applies(reply, stage, self.chance("chaos", stage, address.lower()))
        return self._refuse(found) if found is not None else None

    # -- hooks ----------------------------------------------------------------

    async def handle_MAIL(
        self,
        server: FastSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.latency.mail:
            await self.wait(self.latency.mail)
        ip = peer_ip(session)
        now = self.clock.now()
        injected = self._chaos("mail", address or "")
        if injected is not None:
            return injected
        if address and "+" in address:
            script = self.script(address.rpartition("@")[0])
            if script is not None and script.steps and script.steps[0].stage == "mail":
                key = address.lower()
                attempt = self.sender_attempts[key] = self.sender_attempts.get(key, 0) + 1
                step = script.step(attempt)
                if step is not None and not step.passes:
                    return await self.act(server, step, ip, "")
        limits = self.config.limits
        if limits.messages > 0:
            bucket = self._message_buckets.get(ip)
            if bucket is None:
                bucket = bucket_for(limits.messages, limits.message_burst, now)
                assert bucket is not None
                self._message_buckets[ip] = bucket
            if not bucket.try_take(now):
                self.counters.throttled += 1
                return self._refuse(self.reply("throttle", ip))
        record = self.ip_record(ip, now)
        if reputation_blocked(record, now, self.config.reputation):
            self.counters.reputation_blocked += 1
            return self._refuse(self.reply("reputation", ip))
        return _note(envelope, f"MAIL FROM:<{address}>", self.replies["mail_ok"])

    async def handle_RCPT(
        self,
        server: FastSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        ip = peer_ip(session)
        local, _, domain = address.rpartition("@")
        if domain.lower() not in self.domains:
            return self._refuse(self.reply("relay_denied", ip, address))
        if self.latency.rcpt:
            await self.wait(self.latency.rcpt)
        injected = self._chaos("rcpt", address)
        if injected is not None:
            return _note(envelope, f"RCPT TO:<{address}>", injected)
        key = address.lower()
        attempt = self.attempts[key] = self.attempts.get(key, 0) + 1
        plan = RcptPlan(address, attempt)
        script = self.script(local)
        if script is not None:
            reply = await self._scripted_rcpt(server, script, plan, ip)
        else:
            reply = self._rcpt_rules(envelope, plan, local.lower(), key, ip)
        if reply is None:
            assert isinstance(envelope, PersonaEnvelope)
            envelope.plans.append(plan)
            reply = self.replies["rcpt_ok"]
        return _note(envelope, f"RCPT TO:<{address}>", reply)

    async def _scripted_rcpt(
        self, server: FastSMTP, script: Script, plan: RcptPlan, ip: str
    ) -> str | None:
        plan.scripted = True
        step = script.step(plan.attempt)
        if step is not None and not step.passes:
            if step.stage in ("mail", "rcpt"):
                return await self.act(server, step, ip, plan.address)
            plan.step = step
        elif step is None or step.stage in ("data", "dot"):
            # no RCPT-stage step decides: the mailbox simulator does
            if script.simulator == "bounce":
                return self._refuse(self.reply("unknown", ip, plan.address))
            if script.simulator == "suppressionlist":
                return self._refuse(self.reply("suppressed", ip, plan.address))
        plan.async_code = script.async_code
        plan.autoreply = script.autoreply or script.simulator == "ooto"
        plan.complaint = script.complaint or script.simulator == "complaint"
        return None

    def _rcpt_rules(
        self, envelope: Envelope, plan: RcptPlan, local: str, key: str, ip: str
    ) -> str | None:
        table = self.mailboxes.lookup(local, key) if self.mailboxes.tables else None
        if table is not None:
            return self._refuse(self.reply(table, ip, plan.address))
        if self.greylist is not None:
            triple = Greylist.key((envelope.mail_from or "").lower(), key, ip)
            fraction = self.config.greylist.fraction
            if fraction >= 1.0 or self.chance("greylist", triple) < fraction:
                wait = self.greylist.check(triple, self.clock.now())
                if wait > 0:
                    self.counters.greylisted += 1
                    return self._refuse(self.reply("greylisted", ip, plan.address, math.ceil(wait)))
        if not self.sim.random_faults:
            return None
        faults = self.config.faults
        if faults.soft or faults.hard:
            roll = self.chance(key, plan.attempt, "rcpt")
            if roll < faults.hard:
                return self._refuse(self.reply("hard", ip, plan.address))
            if roll < faults.hard + faults.soft:
                return self._refuse(self.reply("soft", ip, plan.address))
        artefacts = self.config.async_
        if artefacts.dsn_fraction and self.chance(key, plan.attempt, "dsn") < (
            artefacts.dsn_fraction
        ):
            plan.async_code = basic_code(self.replies["async_bounce"])
        if artefacts.autoreply_fraction and self.chance(key, plan.attempt, "ooto") < (
            artefacts.autoreply_fraction
        ):
            plan.autoreply = True
        if artefacts.complaint_fraction and self.chance(key, plan.attempt, "arf") < (
            artefacts.complaint_fraction
        ):
            plan.complaint = True
        return None

    async def before_data(self, server: FastSMTP, envelope: PersonaEnvelope) -> str | None:
        """A reply instead of 354 (a DATA-stage script), or None to go on."""
        await self.wait(self.latency.data)
        for plan in envelope.plans:
            if plan.step is not None and plan.step.stage == "data":
                return await self.act(server, plan.step, peer_ip(server.session), plan.address)
        return None

    async def handle_DATA(self, server: FastSMTP, session: Session, envelope: Envelope) -> str:
        if self.latency.dot:
            await self.wait(self.latency.dot)
        assert isinstance(envelope, PersonaEnvelope)
        ip = peer_ip(session)
        plans = envelope.plans
        injected = self._chaos("dot", envelope.rcpt_tos[0] if envelope.rcpt_tos else "")
        if injected is not None:
            return injected
        for plan in plans:
            if plan.step is not None and plan.step.stage == "dot":
                return await self.act(server, plan.step, ip, plan.address)
        faults = self.config.faults
        if self.sim.random_faults and faults.disconnect and plans and not plans[0].scripted:
            first = plans[0]
            if self.chance(first.address.lower(), first.attempt, "dot") < faults.disconnect:
                return await self.hang(server, 0)
        content = content_of(envelope)
        mail_from = envelope.mail_from or ""
        message_id = f"{next(self._ids):x}.{self.name}"
        accepted = render(self.replies["accepted"], {"id": message_id, "ip": ip})
        transcript = [*envelope.transcript, ("DATA", replies.START_DATA)]
        transcript.append(("end of data", accepted))
        item = Received(
            self.name, mail_from, envelope.rcpt_tos, content, self.clock.now(), transcript
        )
        try:
            if self.writer is not None:
                await self.writer.write(item)
            else:
                error = self.store.write([item])[0]
                if error is not None:
                    raise error
        except OSError as exc:
            log.error("persona %s cannot store a message: %s", self.name, exc)
            return self._refuse(TEMPORARY_PROBLEM)
        now = self.clock.now()
        self.ip_record(ip, now).count_message(now)
        c = self.counters
        c.accepted += 1
        c.recipients_accepted += len(envelope.rcpt_tos)
        if self.outbox is not None and mail_from:
            for plan in plans:
                if plan.async_code or plan.autoreply or plan.complaint:
                    self._artefacts(plan, mail_from, content, ip, now)
        return accepted

    def _artefacts(
        self, plan: RcptPlan, mail_from: str, content: bytes, ip: str, now: float
    ) -> None:
        outbox = self.outbox
        assert outbox is not None
        original = Original(mail_from, plan.address, content, ip, now)
        due = now + self.config.async_.delay
        serial = f"{next(self._ids):x}"
        domain = self.config.domains[0] if self.config.domains else self.hostname
        if plan.async_code:
            if plan.async_code == basic_code(self.replies["async_bounce"]):
                diagnostic = one_line(self.reply("async_bounce", ip, plan.address))
            else:
                diagnostic = one_line(self.reply_for_code(plan.async_code, ip, plan.address))
            status = enhanced_code(diagnostic) or f"{str(plan.async_code)[0]}.0.0"
            dsn = build_dsn(
                original,
                self.hostname,
                status,
                diagnostic,
                due,
                f"=_dsn_{serial}",
                f"<dsn.{serial}.{self.name}@{self.hostname}>",
            )
            outbox.schedule(due, "dsn", mail_from, dsn, self.name)
        if plan.autoreply:
            reply = build_autoreply(original, due, f"<ooto.{serial}.{self.name}@{self.hostname}>")
            outbox.schedule(due, "autoreply", mail_from, reply, self.name)
        if plan.complaint:
            self.ip_record(ip, now).complaints += 1
            report = build_complaint(
                original,
                self.hostname,
                f"feedback@{domain}",
                due,
                f"=_arf_{serial}",
                f"<arf.{serial}.{self.name}@{self.hostname}>",
            )
            outbox.schedule(due, "complaint", mail_from, report, self.name)

    # -- serving --------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "kind": self.config.kind,
            "domains": list(self.config.domains),
            "addresses": list(self.addresses),
            "accepted": c.accepted,
            "recipients_accepted": c.recipients_accepted,
            "stored": self.store.count(self.name),
            "rejected": dict(sorted(c.rejected.items())),
            "throttled": c.throttled,
            "greylisted": c.greylisted,
            "reputation_blocked": c.reputation_blocked,
            "drops": c.drops,
            "stalls": c.stalls,
            "sessions": {
                "now": c.sessions_now,
                "max": c.sessions_max,
                "total": c.sessions_total,
                "refused": c.sessions_refused,
            },
            "ips": {
                ip: {
                    "sessions_now": r.sessions,
                    "sessions_max": r.sessions_max,
                    "sessions_total": r.sessions_total,
                    "sessions_refused": r.refused_sessions,
                    "messages": r.messages,
                    "messages_today": r.sent_today(self.clock.now()),
                    "complaints": r.complaints,
                    "first_seen": r.first_seen,
                }
                for ip, r in sorted(self.ips.items())
            },
        }


def peer_ip(session: Session | None) -> str:
    peer: Any = session.peer if session is not None else None
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")
