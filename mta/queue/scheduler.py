"""The queue manager: per-site queues, adaptive limits, ramp-up, delivery, settlement.

Recipients wait in the spool, indexed by (domain, next attempt). In memory the
scheduler keeps one small record per domain with work (when its next recipient
is due, how many are queued) and one per site: the set of MX hosts a domain
resolves to, so that domains hosted by one provider share a site, with a
throttle state per source binding (`mta.core.throttle`). Each round, for every
domain with due work whose site admits more now (token bucket, connection
limit, suspension, cohort "down") from a binding under its ramp-up cap for
that ISP (`mta.core.rampup`), it leases just that many recipients (an index
seek per domain, whatever the size of the queue) and starts one job per
message; a message the ingress has just committed goes out with the content it
handed over in memory, older ones are read from the spool and their checksum
checked. Outcomes are settled by the pure `mta.core.settle`, recorded in one
group commit, and fed back to the site's throttle; every change of a site's
limits is logged, kept in the spool and shown by `mta queue sites`. Validity
ends are swept from their own index, so recipients waiting behind a suspended
or capped site still expire on time.

The scheduler needs of delivery only the `Deliverer` protocol and of DNS only
`MxLookup`, so it runs in tests with functions in their place. Its memory of
sites and domains is `mta.queue.sites`; leased rows become jobs and updates
in `mta.queue.jobs`; the operator's actions (suspend, resume, retry now, bounce) are
`mta.queue.operator_actions`, which the scheduler inherits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mta import ids
from mta.clock import Clock
from mta.config.service import MtaConfig
from mta.core import rampup, shares, site_results, throttle
from mta.core.limits import MxRules
from mta.core.rampup import Binding, RampUp, VolumeLedger
from mta.core.retry import RetryPolicy, RetrySchedule
from mta.core.routing import site_key
from mta.core.settle import (
    Classifier,
    Settlement,
    expire_unattempted,
    hold,
    settle,
)
from mta.core.throttle import Change, SiteThrottle
from mta.delivery.deliverer import Deliverer, Job, JobResult
from mta.delivery.dns import MxLookup
from mta.model import Condition, Outcome, Phase, Reply, Result
from mta.queue import sites
from mta.queue.jobs import attempted, default_bindings, group_jobs, last_outcome, update_of
from mta.queue.operator_actions import OperatorActions
from mta.queue.records import DueRecipient, NewMessage, Release, Update
from mta.queue.shared import Key, LocalState, SharedState
from mta.queue.sites import DomainWork, Site
from mta.queue.spool import Spool, SpoolError

log = logging.getLogger("mta.scheduler")

RECORD_RETRIES = 5
FRESH_BYTES = 16 * 1024 * 1024  # contents of newly committed messages kept for their pick
SITE_REFRESH = 60.0  # real seconds before a domain's MX hosts are looked up again
EXPIRY_BATCH = 500
# What a recipient of a message whose content failed its checksum records (and its
# sender hears): a local error, held until the validity ends, never sent.
DAMAGED = Outcome(
    Reply(451, "4.3.0", "Message content damaged in the spool (checksum mismatch); held, not sent"),
    Phase.CONNECT,
    None,
    Condition.LOCAL_ERROR,
)


# Per domain planned this round: its site, and how many transactions from which binding.
Plan = tuple[Site, list[tuple[Binding, int]]]


class Scheduler(OperatorActions):
    """See the module docstring."""

    def __init__(
        self,
        spool: Spool,
        delivery: Deliverer,
        resolver: MxLookup,
        rules: Classifier,
        clock: Clock,
        policy: RetryPolicy | RetrySchedule,
        mx_rules: MxRules,
        ramp: RampUp,
        bindings: Sequence[Binding] | None = None,
        config: MtaConfig | None = None,
        rng: random.Random | None = None,
        shared: SharedState | None = None,
    ) -> None:
        self.spool = spool
        self.delivery = delivery
        self.resolver = resolver
        self.rules = rules
        self.clock = clock
        self.policy = policy
        self.mx_rules = mx_rules
        self.ramp = ramp
        self.bindings = list(bindings or default_bindings())
        # Read here: spool.max_inflight and pick_batch, delivery.relayhost (every domain goes
        # to one site) and max_recipients_per_transaction, feedback.coalesce_repeats.
        self.config = config or MtaConfig()
        self.rng = rng or random.Random()
        self.shared: SharedState = shared or LocalState()
        self.shared.on_wake = self._site_wake
        self.shared.trim = self._trim
        self.shared.connections = self._connections
        self.ledger: VolumeLedger = self.shared.ledger
        self.domains: dict[str, DomainWork] = {}
        self.sites: dict[str, Site] = {}
        self._wake = asyncio.Event()
        self._inflight = 0
        self._jobs: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_expiry = -math.inf
        self._turn = 0
        self.rounds = 0  # turns of the loop (each plans, and may pick)
        # Recipients per result: DELIVERED, RETRY, THROTTLED, BOUNCE, EXPIRE.
        self.counts: Counter[Result] = Counter()
        self.coalesced = 0  # soft bounces not reported: repeats (mta.core.coalesce)
        # Queue id -> content of messages just committed, oldest first, until picked (then
        # the spool's writer need not read and check them again: these bytes never left
        # memory); the oldest go past FRESH_BYTES, and are read from the spool instead.
        # A pick reads this dict itself, not a copy: one committed while the pick runs may
        # be leased by it, and must then be taken from here (a copy made before would miss
        # it, and its content would stay until pushed out). While a pick is out, entries
        # are only added, never dropped.
        self._fresh: dict[str, bytes] = {}
        self._fresh_bytes = 0
        self._picking = False

    # -- control --------------------------------------------------------------

    @property
    def fresh_held(self) -> int:
        """Bytes of just-committed contents kept in memory for their pick."""
        return self._fresh_bytes

    def wake(self) -> None:
        self._wake.set()

    def queued(self, message: NewMessage) -> None:
        """The ingress committed a message: its recipients are due now."""
        for recipient in message.recipients:
            work = self._work(recipient.domain)
            work.queued += 1
            if work.next_due is None or message.received_at < work.next_due:
                work.next_due = message.received_at
        self._next_expiry = min(self._next_expiry, message.expires_at)
        self._fresh[message.queue_id] = message.content
        self._fresh_bytes += len(message.content)
        self._trim_fresh()
        self._wake.set()

    def _trim_fresh(self) -> None:
        """Drop the oldest fresh contents past FRESH_BYTES (not while a pick reads them)."""
        while self._fresh_bytes > FRESH_BYTES and not self._picking:
            self._fresh_bytes -= len(self._fresh.pop(next(iter(self._fresh))))

    async def start(self) -> None:
        """Load the queue's shape from the spool (a scan, once), today's volumes per binding
        and ISP (for the ramp-up caps), and start the loop."""
        for queue in await self.spool.queues():
            work = self._work(queue.domain)
            work.next_due, work.queued = queue.next_due, queue.queued
        today = rampup.day_index(self.clock.now())
        volumes = await self.spool.volume_since(today * rampup.DAY)
        self.ledger.restore(
            (binding, self.mx_rules.match(tuple(site.split(","))).name, today, count)
            for binding, site, count in volumes
        )
        self._task = asyncio.get_running_loop().create_task(self.run(), name="scheduler")

    async def stop(self, grace: float = 10.0) -> None:
        """Stop picking; let in-flight jobs finish for `grace` real seconds, then cancel them."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._background):
            task.cancel()
        if self._jobs:
            _, pending = await asyncio.wait(set(self._jobs), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    @property
    def inflight(self) -> int:
        return self._inflight

    def _site_wake(self, site_key: str) -> None:
        """The shared state knows more about a site (tokens, leases, a change): plan it."""
        site = self.sites.get(site_key)
        if site is not None:
            now = self.clock.now()
            for binding, state in site.states.items():
                self._adopt(site, Key(site.key, binding), state, now)
            for domain in site.domains:
                self._work(domain).not_before = -math.inf
        self._wake.set()

    def _adopt(self, site: Site, key: Key, state: SiteThrottle, now: float) -> None:
        """Bring the shared adaptive state (another node's cut or suspension) in."""
        for change in self.shared.adopt(key, state, now):
            log.info("site %s via %s: %s", site.key, key.binding, change.describe())
            site.changes.append(change)

    async def _trim(self, key: Key, count: int) -> None:
        await self.delivery.limit_connections((key.site, key.binding), count)

    def _connections(self, key: Key) -> int:
        return self.delivery.open_connections((key.site, key.binding))

    def _work(self, domain: str) -> DomainWork:
        work = self.domains.get(domain)
        if work is None:
            work = self.domains[domain] = DomainWork(domain)
        return work

    # -- the loop -------------------------------------------------------------

    async def run(self) -> None:
        while not self._stopping:
            self.rounds += 1
            self._wake.clear()
            now = self.clock.now()
            try:
                # Dispatch before the expiry sweep: a last attempt clamped to the validity end
                # is due at that very time and must be tried, not swept away untried.
                requests, plans = self.plan(now)
                if requests:
                    await self._dispatch(requests, plans, now)
                if now >= self._next_expiry:
                    await self._expire(now)
                if requests:
                    continue
            except SpoolError as exc:
                log.error("cannot read the queue: %s", exc)
                await asyncio.sleep(1.0)
                continue
            await self._idle(self._next_wake())

    def _next_wake(self) -> float | None:
        """When the loop must look again by itself (job ends and new mail wake it anyway)."""
        if self._inflight >= self.config.spool.max_inflight:
            times = []  # full: only a job's end makes room
        else:
            times = [
                max(w.next_due, w.not_before)
                for w in self.domains.values()
                if w.next_due is not None and w.site is not None
            ]
        if self._next_expiry > -math.inf:
            times.append(self._next_expiry)
        return min(times) if times else None

    async def _idle(self, until: float | None) -> None:
        if until is not None and until <= self.clock.now():
            await asyncio.sleep(0)
            return
        waits: list[asyncio.Task[Any]] = [asyncio.ensure_future(self._wake.wait())]
        if until is not None and math.isfinite(until):
            waits.append(asyncio.ensure_future(self.clock.sleep_until(until)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()

    # -- planning -------------------------------------------------------------

    def plan(self, now: float) -> tuple[list[tuple[str, int]], dict[str, Plan]]:
        """How many recipients to lease per domain now, and from which bindings."""
        room = self.config.spool.max_inflight - self._inflight
        requests: list[tuple[str, int]] = []
        plans: dict[str, Plan] = {}
        works = list(self.domains.values())
        if not works:
            return requests, plans
        self._turn = (self._turn + 1) % len(works)
        for work in works[self._turn :] + works[: self._turn]:
            if room <= 0:
                break
            if work.next_due is None or work.next_due > now or work.not_before > now:
                continue
            self._refresh_site(work)
            site = work.site
            if site is None:
                continue
            plan, wake = self._admit(site, now, min(room, self.config.spool.pick_batch))
            if plan:
                total = sum(n for _, n in plan)
                requests.append((work.name, total))
                plans[work.name] = (site, plan)
                room -= total
            else:
                work.not_before = wake
        return requests, plans

    def _admit(self, site: Site, now: float, room: int) -> tuple[list[tuple[Binding, int]], float]:
        """Per binding, how many transactions the site takes now; else when to look again
        (+inf: when one of the site's transactions in flight ends)."""
        isp = site.rule.name
        plan: list[tuple[Binding, int]] = []
        wake = math.inf
        waits_for_a_job = False
        for binding in rampup.preference_order(self.ramp, self.ledger, self.bindings, isp, now):
            if room <= 0:
                break
            ramp = rampup.admit(self.ramp, self.ledger, binding, isp, now)
            if not ramp.allowed:
                wake = min(wake, ramp.next_day_at or math.inf)
                continue
            state = site.state(binding.name, now)
            key = Key(site.key, binding.name)
            self._adopt(site, key, state, now)
            in_flight = site.in_flight.get(binding.name, 0)
            admission = throttle.admit(state, now, in_flight)
            if admission.allowed <= 0:
                if admission.next_check_at is None:
                    waits_for_a_job = True
                else:
                    wake = min(wake, admission.next_check_at)
                continue
            count = min(admission.allowed, room)
            if ramp.remaining is not None:
                count = min(count, ramp.remaining)
            grant = self.shared.grant(key, state, count, in_flight, now)
            if grant.allowed <= 0:
                if grant.retry_at is None:
                    waits_for_a_job = True  # or until the shared state wakes the site
                else:
                    wake = min(wake, grant.retry_at)
                continue
            count = grant.allowed
            plan.append((binding, count))
            room -= count
        if plan:
            return plan, -math.inf
        if waits_for_a_job:
            return plan, math.inf
        return plan, wake

    # -- sites ------------------------------------------------------------------

    def _refresh_site(self, work: DomainWork) -> None:
        if work.resolving:
            return
        if work.site is not None and time.monotonic() - work.resolved_at < SITE_REFRESH:
            return
        work.resolving = True
        task = asyncio.get_running_loop().create_task(self._resolve(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _resolve(self, work: DomainWork) -> None:
        try:
            hosts: tuple[str, ...]
            if self.config.delivery.relayhost:
                hosts, key = (), f"relayhost {self.config.delivery.relayhost}"
            else:
                answer = await self.resolver.mx(work.name)
                hosts = tuple(sorted({r.host for r in answer.records if r.host}))
                key = site_key(hosts) if answer.kind in ("records", "implicit") else ""
                key = key or f"{work.name} ({answer.kind})"
            site = self.sites.get(key)
            if site is None:
                rule = self.mx_rules.match(hosts) if hosts else self.mx_rules.default
                site = self.sites[key] = Site(key, hosts, rule)
            if work.site is not None and work.site is not site:
                work.site.domains.discard(work.name)
            site.domains.add(work.name)
            work.site = site
            work.resolved_at = time.monotonic()
        except Exception:
            log.exception("cannot find the site of %s", work.name)
        finally:
            work.resolving = False
            self._wake.set()

    # -- dispatch ---------------------------------------------------------------

    async def _dispatch(
        self,
        requests: list[tuple[str, int]],
        plans: dict[str, Plan],
        now: float,
    ) -> None:
        self._picking = True
        try:  # the writer thread checks queue ids against the dict (each check under the GIL)
            pick = await self.spool.pick(requests, now, self._fresh)
        finally:
            self._picking = False
        contents = dict(pick.contents)
        for r in pick.recipients:
            content = self._fresh.pop(r.queue_id, None)
            if content is not None:
                contents[r.message_id] = content
                self._fresh_bytes -= len(content)
        self._trim_fresh()
        for domain, next_due in pick.next_due.items():
            self._work(domain).next_due = next_due
        by_domain: dict[str, list[DueRecipient]] = {}
        damaged: list[DueRecipient] = []
        for r in pick.recipients:
            if r.message_id in pick.damaged:
                damaged.append(r)
            else:
                by_domain.setdefault(r.domain, []).append(r)
        if damaged:
            await self._hold_damaged(damaged, now)
        per_transaction = self.config.delivery.max_recipients_per_transaction
        for domain, due in by_domain.items():
            site, shares = plans[domain]
            slots = [binding for binding, count in shares for _ in range(count)]
            for index, (job, members) in enumerate(group_jobs(due, contents, per_transaction)):
                binding = slots[min(index, len(slots) - 1)]
                self._start_job(job, members, site, binding, now)

    async def _hold_damaged(self, damaged: list[DueRecipient], now: float) -> None:
        """Recipients of a message whose content failed its checksum: never sent; held (queued,
        no attempt) until their validity ends, with an event and a log line now."""
        for queue_id in sorted({r.queue_id for r in damaged}):
            count = sum(1 for r in damaged if r.queue_id == queue_id)
            log.error(
                "message %s: content damaged in the spool (checksum mismatch or unreadable);"
                " %d recipients held, never sent (mta spool check DIR lists them)",
                queue_id,
                count,
            )
        settlements = [
            hold(
                attempted(r),
                DAMAGED,
                now=now,
                rules=self.rules,
                until=r.expires_at,
                event_id=ids.new_event_id(),
            )
            for r in damaged
        ]
        updates = [update_of(r, s, now) for r, s in zip(damaged, settlements, strict=True)]
        await self._record(updates)
        self._count(settlements)
        self._requeue(damaged, settlements)

    def _start_job(
        self, job: Job, members: list[DueRecipient], site: Site, binding: Binding, now: float
    ) -> None:
        state = site.state(binding.name, now)
        key = Key(site.key, binding.name)
        throttle.on_attempt(state, now)
        self.shared.started(key, 1, now)
        site.first_attempt_at.setdefault(binding.name, now)
        self.ledger.record(binding.name, site.rule.name, now, len(members))
        job = Job(
            queue_id=job.queue_id,
            mail_from=job.mail_from,
            content=job.content,
            domain=job.domain,
            recipients=job.recipients,
            smtputf8=job.smtputf8,
            source=binding.address or None,
            group=(site.key, binding.name),
            group_limit=lambda: self.shared.connection_limit(key, state),
            max_messages_per_connection=site.rule.max_messages_per_connection,
        )
        site.in_flight[binding.name] = site.in_flight.get(binding.name, 0) + 1
        self._inflight += len(members)
        task = asyncio.get_running_loop().create_task(
            self._run_job(job, members, site, binding, now)
        )
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _run_job(
        self,
        job: Job,
        members: list[DueRecipient],
        site: Site,
        binding: Binding,
        started: float,
    ) -> None:
        recorded = False
        connection_free = False

        def free_connection() -> None:
            """The site's connection slot is free once the remote reply is in: another job
            may use it while this one's outcome is being committed (its recipients stay
            leased until then, so none is picked twice)."""
            nonlocal connection_free
            if connection_free:
                return
            connection_free = True
            site.in_flight[binding.name] -= 1
            self.shared.ended(Key(site.key, binding.name))
            for domain in site.domains:  # a connection is free: look at the site again
                self._work(domain).not_before = -math.inf
            self._wake.set()

        try:
            try:
                result = await self.delivery.deliver(job)
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
                result = JobResult.session(local, len(members))
            now = self.clock.now()
            settlements = [
                settle(
                    attempted(r),
                    outcome,
                    now=now,
                    rules=self.rules,
                    policy=self.policy,
                    rand=self.rng.random(),
                    event_id=ids.new_event_id(),
                )
                for r, outcome in zip(members, result.outcomes, strict=True)
            ]
            coalesce = self.config.feedback.coalesce_repeats
            updates = [
                update_of(r, s, now, site.key, binding.name, coalesce, self.shared.node)
                for r, s in zip(members, settlements, strict=True)
            ]
            recorded = True
            changes, before = self._learn(
                site, binding, settlements, started, result.session_failed
            )
            site.changes.extend(changes)  # the timeline shows a change with the state it made
            free_connection()
            await self._record(updates)
            self.coalesced += sum(1 for u in updates if u.event is None)
            if any(s.result is Result.DELIVERED for s in settlements):
                site.last_delivery_at[binding.name] = now
            self._count(settlements)
            self._requeue(members, settlements)
            await self._keep(site, binding, changes, before)
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
            free_connection()
            self._inflight -= len(members)
            self._wake.set()

    def _requeue(self, members: list[DueRecipient], settlements: list[Settlement]) -> None:
        for r, s in zip(members, settlements, strict=True):
            work = self._work(r.domain)
            if s.next_attempt_at is None:
                work.queued -= 1
                # Nothing of the domain left to deliver: its next_due (possibly the time of a
                # recipient the expiry sweep just ended) means nothing any more.
                if work.queued <= 0:
                    self._forget(work)
            elif work.next_due is None or s.next_attempt_at < work.next_due:
                work.next_due = s.next_attempt_at

    def _forget(self, work: DomainWork) -> None:
        """A domain with nothing queued leaves memory (and the rounds): new mail brings it back."""
        del self.domains[work.name]
        if work.site is not None:
            work.site.domains.discard(work.name)

    def _learn(
        self,
        site: Site,
        binding: Binding,
        settlements: list[Settlement],
        started: float,
        session_failed: bool,
    ) -> tuple[list[Change], int]:
        """Feed the results to the site's throttle (before its connection slot is given
        back); the changes it made and the concurrency before them, for `_keep`."""
        state = site.states[binding.name]
        before = state.concurrency
        now = self.clock.now()
        changes: list[Change] = []
        pairs = [(s.outcome, s.verdict) for s in settlements]
        for result in site_results.job_results(pairs, started, session_failed):
            changes += throttle.on_result(state, now, result)
        if changes:  # the other nodes hear of it before anything is written
            op = shares.rate_op(changes, started)
            self.shared.publish(Key(site.key, binding.name), state, now, op)
        return changes, before

    async def _keep(
        self, site: Site, binding: Binding, changes: list[Change], before: int
    ) -> None:
        """Log and store each change the throttle made (already in the site's timeline); close
        connections over a lower limit."""
        state = site.states[binding.name]
        for change in changes:
            log.info("site %s via %s: %s", site.key, binding.name, change.describe())
            await self.spool.site_event(
                change.at, site.key, binding.name, json.dumps(change.as_dict())
            )
        if state.concurrency < before:
            await self.delivery.limit_connections((site.key, binding.name), state.concurrency)

    async def _expire(self, now: float) -> None:
        """Expire recipients whose validity ended while they waited (never attempted since)."""
        while True:
            due, next_expiry = await self.spool.pick_expired(now, EXPIRY_BATCH)
            self._next_expiry = math.inf if next_expiry is None else next_expiry
            if not due:
                return
            settlements = [
                expire_unattempted(
                    attempted(r),
                    last_outcome(r),
                    now=now,
                    rules=self.rules,
                    event_id=ids.new_event_id(),
                    held=self._held_reason(r.domain, now),
                )
                for r in due
            ]
            node = self.shared.node
            updates = [
                update_of(r, s, now, node=node) for r, s in zip(due, settlements, strict=True)
            ]
            await self._record(updates)
            self._count(settlements)
            self._requeue(due, settlements)
            if len(due) < EXPIRY_BATCH:
                return

    def _held_reason(self, domain: str, now: float) -> str:
        """What kept a domain's recipients from being tried, in words a sender understands."""
        work = self.domains.get(domain)
        site = work.site if work else None
        if site is None:
            return "its MX hosts could not be resolved"
        isp = site.rule.name
        held: list[str] = []
        for binding in self.bindings:
            if not rampup.admit(self.ramp, self.ledger, binding, isp, now).allowed:
                held.append(f"the daily volume cap of {binding.name} for {isp} (IP ramp-up)")
                continue
            state = site.states.get(binding.name)
            if state is not None and now < state.suspended_until:
                held.append(f"a suspension of the site {site.key}")
            elif state is not None and now < state.down_until:
                held.append(f"the site {site.key} being down")
        if not held and self._inflight >= self.config.spool.max_inflight:
            held.append("a full delivery pipeline (spool.max_inflight)")
        if not held:
            held.append(f"the rate and connection limits of the site {site.key}")
        return "held back by " + " and ".join(dict.fromkeys(held))

    def _count(self, settlements: Sequence[Settlement]) -> None:
        for s in settlements:
            self.counts[site_results.counted_as(s.result, s.verdict, s.attempted)] += 1

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

    # -- reporting --------------------------------------------------------------

    def site_report(self) -> list[dict[str, Any]]:
        """Per site and binding: queue depth, limits, state, last change, throughput."""
        rows = sites.report(self.sites, self.domains, self.clock.now())
        for row in rows:
            shared = self.shared.report(Key(row["site"], row["binding"]))
            if shared is not None:
                row["cluster"] = shared
        return rows
