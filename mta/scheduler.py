"""The queue manager: due recipients -> delivery jobs -> outcomes -> spool.

It leases due recipients from the spool (earliest first, as many as there is
room for in flight), groups them by message and domain into jobs, runs each job
through `Delivery`, settles every outcome with the pure `mta.core.settle` and
records the results (state, attempt, event) in one group commit. It sleeps
until the next due time on the shared clock, or until the ingress wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mta.clock import Clock
from mta.core import events
from mta.core.retry import RetryPolicy
from mta.core.settle import Attempted, Classifier, Settlement, expire_unattempted, settle
from mta.delivery import Delivery, Job
from mta.model import Condition, Outcome, Phase, Reply
from mta.spool import DueRecipient, Pick, Release, Spool, SpoolError, Update

log = logging.getLogger("mta.scheduler")

RECORD_RETRIES = 5


@dataclass(frozen=True)
class SchedulerSettings:
    max_inflight: int = 2000  # recipients leased and not yet recorded
    pick_batch: int = 256
    max_recipients_per_transaction: int = 100


def _before(r: DueRecipient) -> Attempted:
    return Attempted(
        subject=events.Subject(r.queue_id, r.delivery_id, r.log_id, r.address),
        attempts=r.attempts,
        seq=r.seq,
        expires_at=r.expires_at,
        possible_duplicate=r.possible_duplicate,
    )


def _last_outcome(r: DueRecipient) -> Outcome | None:
    if r.last_code is None:
        return None
    phase = Phase(r.last_phase) if r.last_phase in set(Phase) else Phase.CONNECT
    return Outcome(Reply(r.last_code, r.last_enhanced, r.last_text or ""), phase, r.last_mx)


def _update(r: DueRecipient, s: Settlement, now: float) -> Update:
    outcome = s.outcome
    reply = outcome.reply
    return Update(
        recipient_id=r.recipient_id,
        message_id=r.message_id,
        state=s.state.value,
        attempts=s.attempts,
        next_attempt_at=s.next_attempt_at,
        seq=s.seq,
        at=now,
        code=reply.code,
        enhanced=reply.enhanced,
        text=reply.text,
        phase=outcome.phase.value,
        mx=outcome.mx,
        result=s.result,
        attempted=s.attempted,
        possible_duplicate=s.possible_duplicate,
        event=(str(s.event["event_id"]), str(s.event["kind"]), events.dumps(s.event)),
    )


def group_jobs(
    due: Sequence[DueRecipient], contents: dict[int, bytes], per_transaction: int
) -> Iterator[tuple[Job, list[DueRecipient]]]:
    """One job per (message, domain), split at the per-transaction recipient limit."""
    groups: dict[tuple[int, str], list[DueRecipient]] = {}
    for r in due:
        groups.setdefault((r.message_id, r.domain), []).append(r)
    for (message_id, domain), members in groups.items():
        first = members[0]
        for start in range(0, len(members), per_transaction):
            chunk = members[start : start + per_transaction]
            yield (
                Job(
                    queue_id=first.queue_id,
                    mail_from=first.mail_from,
                    content=contents[message_id],
                    domain=domain,
                    recipients=tuple(r.address for r in chunk),
                    smtputf8=first.smtputf8,
                ),
                chunk,
            )


class Scheduler:
    """See the module docstring."""

    def __init__(
        self,
        spool: Spool,
        delivery: Delivery,
        rules: Classifier,
        clock: Clock,
        policy: RetryPolicy,
        settings: SchedulerSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.spool = spool
        self.delivery = delivery
        self.rules = rules
        self.clock = clock
        self.policy = policy
        self.settings = settings or SchedulerSettings()
        self.rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._capacity = asyncio.Event()
        self._inflight = 0
        self._jobs: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # While idle: the due time the loop sleeps until (inf: until woken); None: busy.
        self._sleeping_until: float | None = None
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0
        self.expired = 0

    # -- control --------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="scheduler")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop picking; let in-flight jobs finish for `grace` real seconds, then cancel them."""
        self._stopping = True
        self._wake.set()
        self._capacity.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._jobs:
            _, pending = await asyncio.wait(set(self._jobs), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    @property
    def inflight(self) -> int:
        return self._inflight

    # -- the loop -------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            room = self.settings.max_inflight - self._inflight
            if room <= 0:
                self._capacity.clear()
                await self._capacity.wait()
                continue
            self._wake.clear()
            now = self.clock.now()
            try:
                pick = await self.spool.pick(now, min(room, self.settings.pick_batch))
            except SpoolError as exc:
                log.error("cannot pick due recipients: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if pick.recipients:
                await self._dispatch(pick, now)
                continue
            await self._idle(pick.next_due)

    async def _idle(self, next_due: float | None) -> None:
        waits: list[asyncio.Task[object]] = [asyncio.ensure_future(self._wake.wait())]
        if next_due is not None:
            waits.append(asyncio.ensure_future(self.clock.sleep_until(next_due)))
        self._sleeping_until = math.inf if next_due is None else next_due
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._sleeping_until = None
            for task in waits:
                task.cancel()

    def _due_at(self, when: float) -> None:
        """A recipient became due at `when`: wake the loop if it sleeps past that."""
        if self._sleeping_until is not None and when < self._sleeping_until:
            self._wake.set()

    async def _dispatch(self, pick: Pick, now: float) -> None:
        expired = [r for r in pick.recipients if r.expires_at <= now]
        if expired:
            updates = []
            for r in expired:
                s = expire_unattempted(
                    _before(r),
                    _last_outcome(r),
                    now=now,
                    rules=self.rules,
                    event_id=events.new_event_id(),
                )
                updates.append(_update(r, s, now))
            self.expired += len(updates)
            await self._record(updates)
        live = [r for r in pick.recipients if r.expires_at > now]
        for job, members in group_jobs(
            live, pick.contents, self.settings.max_recipients_per_transaction
        ):
            self._inflight += len(members)
            task = asyncio.get_running_loop().create_task(self._run_job(job, members))
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _run_job(self, job: Job, members: list[DueRecipient]) -> None:
        recorded = False
        try:
            try:
                outcomes = await self.delivery.deliver(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery of %s to %s failed", job.queue_id, job.domain)
                local = Outcome(
                    Reply(451, "4.3.0", "Local error in delivery"),
                    Phase.CONNECT,
                    None,
                    Condition.LOCAL_ERROR,
                )
                outcomes = [local] * len(members)
            now = self.clock.now()
            updates = []
            for r, outcome in zip(members, outcomes, strict=True):
                s = settle(
                    _before(r),
                    outcome,
                    now=now,
                    rules=self.rules,
                    policy=self.policy,
                    rand=self.rng.random(),
                    event_id=events.new_event_id(),
                )
                self._count(s)
                updates.append(_update(r, s, now))
            recorded = True
            await self._record(updates)
            retries = [u.next_attempt_at for u in updates if u.next_attempt_at is not None]
            if retries:
                self._due_at(min(retries))
        except asyncio.CancelledError:
            if not recorded:
                # Stopped mid-attempt: give the recipients back; the outcome is unknown.
                releases = [
                    Release(r.recipient_id, self.clock.now(), possible_duplicate=True)
                    for r in members
                ]
                with contextlib.suppress(SpoolError):
                    await asyncio.shield(self.spool.release(releases))
            raise
        finally:
            self._inflight -= len(members)
            self._capacity.set()

    def _count(self, s: Settlement) -> None:
        if s.result == "delivered":
            self.delivered += 1
        elif s.result == "retry":
            self.deferred += 1
        elif s.result == "bounce":
            self.bounced += 1
        else:
            self.expired += 1

    async def _record(self, updates: list[Update]) -> None:
        delay = 0.1
        for attempt in range(RECORD_RETRIES):
            try:
                await self.spool.record(updates)
                return
            except SpoolError as exc:
                if attempt == RECORD_RETRIES - 1:
                    log.critical(
                        "cannot record %d results (they stay leased until restart): %s",
                        len(updates),
                        exc,
                    )
                    return
                log.error("cannot record results, retrying: %s", exc)
                await asyncio.sleep(delay)
                delay *= 2
