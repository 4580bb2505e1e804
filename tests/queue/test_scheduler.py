"""The scheduler on its own: planning, admission, round-robin, requeue and the expiry sweep.

A real spool (an SQLite file in tmp_path), the manual clock and a function in place of
delivery (`FunctionDeliverer`) and of DNS; no sockets. Waits are for conditions, bounded
in count, never for a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from mta.clock import ManualClock
from mta.config.bounce_rules import load_bounce_rules
from mta.config.mx_rules import load_retry_schedule
from mta.config.service import FeedbackConfig, MtaConfig, SpoolConfig
from mta.core import throttle
from mta.core.limits import AdaptiveRule, MxRule, MxRules
from mta.core.rampup import RampUp
from mta.core.retry import RetryPolicy
from mta.core.routing import MxRecord
from mta.delivery.deliverer import FunctionDeliverer, Job, JobResult
from mta.delivery.dns import MxAnswer
from mta.model import Condition, Outcome, Phase, Reply, Result
from mta.queue.records import NewMessage, NewRecipient, Pick, Update
from mta.queue.scheduler import Scheduler
from mta.queue.spool import Spool

OK = Reply(250, "2.0.0", "queued as 1")
LATER = Reply(451, "4.3.0", "try again later")
SLOW_DOWN = Reply(421, "4.7.0", "[TSS04] Messages from 127.0.0.2 temporarily deferred")
POLICY = RetryPolicy(first=600.0, factor=2.0, jitter=0.0)
SITES = {"a.test": "mx.a.test", "b.test": "mx.b.test", "c.test": "mx.c.test"}


class FixedMx:
    """DNS as a table: each domain has one MX host."""

    async def mx(self, domain: str) -> MxAnswer:
        return MxAnswer("records", (MxRecord(10, SITES[domain]),))


def answering(*replies: Reply) -> Callable[[Job], Awaitable[JobResult]]:
    """A delivery that answers each job's recipients with the next reply (the last repeats):
    a success after the dot, a failure at RCPT for each recipient."""
    queue = list(replies)

    async def deliver(job: Job) -> JobResult:
        reply = queue.pop(0) if len(queue) > 1 else queue[0]
        if reply.is_success:
            ok = Outcome(reply, Phase.DOT, SITES[job.domain])
            return JobResult.message(ok, len(job.recipients))
        outcome = Outcome(reply, Phase.RCPT, SITES[job.domain])
        return JobResult((outcome,) * len(job.recipients), ("recipient",) * len(job.recipients))

    return deliver


@dataclass
class Harness:
    clock: ManualClock
    spool: Spool
    deliverer: FunctionDeliverer
    scheduler: Scheduler
    ids: itertools.count[int]

    async def submit(
        self, domain: str, count: int = 1, validity: float = 86400.0, recipients: int = 1
    ) -> None:
        """`count` messages of `recipients` each, as the ingress would queue them."""
        for _ in range(count):
            n = next(self.ids)
            now = self.clock.now()
            message = NewMessage(
                queue_id=f"Q{n:04d}",
                mail_from="sender@example.test",
                delivery_id=None,
                received_at=now,
                expires_at=now + validity,
                content=b"Subject: test\r\n\r\nhello\r\n",
                smtputf8=False,
                recipients=tuple(
                    NewRecipient(f"user{n}.{i}@{domain}", domain, None) for i in range(recipients)
                ),
            )
            await self.spool.ingest(message)
            self.scheduler.queued(message)

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        for _ in range(2000):  # at most about 10 s of real time
            if condition():
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"never happened: {what}")

    def n(self, result: Result) -> int:
        """Recipients the scheduler counted with `result`."""
        return self.scheduler.counts[result]

    def domains(self) -> list[str]:
        return [job.domain for job in self.deliverer.jobs]


def rules(*extra: MxRule) -> MxRules:
    return MxRules(extra, MxRule("default", max_connections=20))


@contextlib.asynccontextmanager
async def make(
    tmp_path: Path,
    deliver: Callable[[Job], Awaitable[JobResult]],
    mx_rules: MxRules | None = None,
    spool_config: SpoolConfig | None = None,
) -> AsyncIterator[Harness]:
    clock = ManualClock()
    spool = await Spool.open(tmp_path / "spool.sqlite3")
    deliverer = FunctionDeliverer(deliver)
    scheduler = Scheduler(
        spool,
        deliverer,
        FixedMx(),
        load_bounce_rules(),
        clock,
        load_retry_schedule().with_default(POLICY),
        mx_rules or rules(),
        RampUp(),
        # Every soft bounce reported (the service's default coalesces repeats for 6h).
        config=MtaConfig(
            spool=spool_config or SpoolConfig(),
            feedback=FeedbackConfig(coalesce_repeats=0.0),
        ),
        rng=random.Random(7),
    )
    try:
        yield Harness(clock, spool, deliverer, scheduler, itertools.count(1))
    finally:
        await scheduler.stop(grace=1.0)
        await spool.close()


@pytest.fixture
def harness_for(tmp_path: Path) -> Callable[..., AbstractAsyncContextManager[Harness]]:
    def build(
        deliver: Callable[[Job], Awaitable[JobResult]],
        mx_rules: MxRules | None = None,
        spool_config: SpoolConfig | None = None,
    ) -> AbstractAsyncContextManager[Harness]:
        return make(tmp_path, deliver, mx_rules, spool_config)

    return build


async def test_the_token_bucket_admits_a_burst_then_paces_by_the_clock(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    paced = MxRule("paced", ("mx.a.test",), rate=2.0, burst=2.0)
    async with harness_for(answering(OK), rules(paced)) as h:
        await h.scheduler.start()
        await h.submit("a.test", 5)
        await h.until(lambda: h.n(Result.DELIVERED) == 2, "the burst of two delivered")
        site = h.scheduler.sites["mx.a.test"]
        state = site.states["default"]
        assert throttle.admit(state, h.clock.now(), 0).reason == "rate"
        assert len(h.deliverer.jobs) == 2  # the clock has not moved: no third start
        h.clock.advance(0.5)  # one token
        await h.until(lambda: h.n(Result.DELIVERED) == 3, "one more after half a second")
        h.clock.advance(1.0)  # two tokens
        await h.until(lambda: h.n(Result.DELIVERED) == 5, "the rest")
        assert len(h.deliverer.jobs) == 5
        stats = await h.spool.stats()
        assert (stats.delivered, stats.queued) == (5, 0)
        assert h.scheduler.domains == {}  # nothing queued: the domain leaves memory


async def test_the_connection_limit_holds_jobs_until_one_ends(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    gate = asyncio.Event()
    running = 0
    most = 0

    async def slow(job: Job) -> list[Outcome]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await gate.wait()
        running -= 1
        return JobResult.message(Outcome(OK, Phase.DOT, "mx.a.test"), len(job.recipients))

    one = MxRule("one", ("mx.a.test",), max_connections=1)
    async with harness_for(slow, rules(one)) as h:
        await h.scheduler.start()
        await h.submit("a.test", 3)
        await h.until(lambda: len(h.deliverer.jobs) == 1, "the first job started")
        site = h.scheduler.sites["mx.a.test"]
        assert site.in_flight["default"] == 1
        assert throttle.admit(site.states["default"], h.clock.now(), 1).reason == "connections"
        gate.set()
        await h.until(lambda: h.n(Result.DELIVERED) == 3, "all three delivered one by one")
        assert most == 1


async def test_a_connection_slot_is_free_once_the_remote_reply_is_in(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    """With one connection allowed, the second job starts while the first one's outcome
    is still being committed; its recipient stays leased (not picked twice) until then."""
    one = MxRule("one", ("mx.a.test",), max_connections=1)
    async with harness_for(answering(OK), rules(one)) as h:
        commit = asyncio.Event()
        held: list[int] = []
        record = h.spool.record

        async def held_record(updates: Sequence[Update]) -> None:
            held.append(len(updates))
            await commit.wait()
            await record(updates)

        h.spool.record = held_record  # type: ignore[method-assign]
        await h.scheduler.start()
        await h.submit("a.test", 2)
        await h.until(lambda: len(h.deliverer.jobs) == 2, "the second job started")
        assert len(held) == 2 and h.n(Result.DELIVERED) == 0  # neither outcome committed
        assert len({job.recipients for job in h.deliverer.jobs}) == 2  # two recipients, each once
        commit.set()
        await h.until(lambda: h.n(Result.DELIVERED) == 2, "both outcomes committed")
        assert len(h.deliverer.jobs) == 2


async def test_planning_takes_the_domains_in_turn(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    limits = SpoolConfig(max_inflight=1, pick_batch=1)
    async with harness_for(answering(OK), spool_config=limits) as h:
        # The loop is not started: each call of plan() is one round.
        await h.submit("a.test", 3)
        await h.submit("b.test", 3)
        await h.submit("c.test", 3)
        now = h.clock.now()
        h.scheduler.plan(now)  # the first round looks the sites up
        await h.until(
            lambda: all(w.site is not None for w in h.scheduler.domains.values()), "sites known"
        )
        firsts = []
        for _ in range(6):
            requests, plans = h.scheduler.plan(now)
            assert len(requests) == 1 and requests[0][1] == 1  # room for one recipient
            domain = requests[0][0]
            assert plans[domain][0].key == SITES[domain]
            firsts.append(domain)
        assert sorted(firsts[:3]) == ["a.test", "b.test", "c.test"]
        assert firsts[3:] == firsts[:3]  # the same turn again, no domain served twice in a row


async def test_a_deferred_recipient_is_requeued_and_tried_again_when_due(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    async with harness_for(answering(LATER, OK)) as h:
        await h.scheduler.start()
        start = h.clock.now()
        await h.submit("a.test")
        await h.until(lambda: h.n(Result.RETRY) == 1, "the first attempt deferred")
        work = h.scheduler.domains["a.test"]
        assert work.next_due == pytest.approx(start + POLICY.first)
        assert work.queued == 1
        h.clock.advance(POLICY.first - 1)
        await asyncio.sleep(0.05)
        assert len(h.deliverer.jobs) == 1  # not due yet
        h.clock.advance(1)
        await h.until(lambda: h.n(Result.DELIVERED) == 1, "delivered at the second attempt")
        history = await h.spool.recipient_history("Q0001")
        assert [(e["result"], e["code"]) for e in history] == [("retry", 451), ("delivered", 250)]


async def test_a_throttling_reply_slows_the_site_and_trims_its_connections(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    halve = AdaptiveRule(
        "halve", "halve_concurrency", rule=re.compile("^throttle-"), duration=60.0
    )
    site_rule = MxRule("halving", ("mx.a.test",), max_connections=8, adaptive=(halve,))
    async with harness_for(answering(SLOW_DOWN, OK), rules(site_rule)) as h:
        await h.scheduler.start()
        await h.submit("a.test")
        await h.until(lambda: bool(h.deliverer.limits), "the site's connections trimmed")
        assert h.n(Result.THROTTLED) == 1
        site = h.scheduler.sites["mx.a.test"]
        assert site.states["default"].concurrency == 4
        assert h.deliverer.limits == [(("mx.a.test", "default"), 4)]
        assert [c.what for c in site.changes] == ["concurrency"]
        work = h.scheduler.domains["a.test"]
        assert work.next_due is not None and work.next_due < h.clock.now() + POLICY.first


async def test_the_expiry_sweep_ends_recipients_that_wait_behind_a_suspended_site(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    suspend = AdaptiveRule("pause", "suspend", rule=re.compile("^throttle-"), duration=3600.0)
    site_rule = MxRule("pausing", ("mx.a.test",), adaptive=(suspend,))
    async with harness_for(answering(SLOW_DOWN), rules(site_rule)) as h:
        await h.scheduler.start()
        await h.submit("a.test", validity=300.0)
        await h.until(lambda: h.n(Result.THROTTLED) == 1, "the throttling reply counted")
        await h.until(lambda: bool(h.scheduler.sites["mx.a.test"].changes), "suspended")
        state = h.scheduler.sites["mx.a.test"].states["default"]
        assert throttle.admit(state, h.clock.now(), 0).reason == "suspended"
        h.clock.advance(120)  # due again (the site's backoff), but the site is suspended
        await asyncio.sleep(0.05)
        assert len(h.deliverer.jobs) == 1
        h.clock.advance(181)  # validity over
        await h.until(lambda: h.n(Result.EXPIRE) == 1, "expired by the sweep")
        assert len(h.deliverer.jobs) == 1  # never attempted again
        stats = await h.spool.stats()
        assert (stats.expired, stats.queued) == (1, 0)
        assert "a.test" not in h.scheduler.domains  # nothing queued: it leaves memory


async def test_a_failed_session_is_one_signal_for_the_site_whatever_its_recipients(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    refused = Outcome(
        Reply(421, "4.4.1", "Connection refused"),
        Phase.CONNECT,
        "mx.a.test",
        Condition.CONNECTION_REFUSED,
    )

    async def refuse(job: Job) -> JobResult:
        return JobResult.session(refused, len(job.recipients))

    async with harness_for(refuse) as h:
        await h.scheduler.start()
        await h.submit("a.test", recipients=3)
        await h.until(lambda: h.n(Result.RETRY) == 3, "three recipients deferred")
        await h.until(lambda: "mx.a.test" in h.scheduler.sites, "site known")
        state = h.scheduler.sites["mx.a.test"].states["default"]
        await h.until(lambda: state.counts[Result.CONNECT_FAILED] == 3, "the site learned")
        assert state.connect_failures == 1  # one session, one failure in the cohort's streak
        assert len(h.deliverer.jobs) == 1


async def test_a_message_committed_while_a_pick_is_out_leaves_no_content_held(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    """A session commits while a pick is on its way to the spool's writer, and that pick
    leases the new message too: its content is taken from memory then, so once both are
    delivered nothing is held (a content left behind would stay until pushed out by
    16 MiB of newer ones)."""
    async with harness_for(answering(OK)) as h:
        real_pick = h.spool.pick
        commit_during_pick = True

        async def pick(
            requests: Sequence[tuple[str, int]], now: float, have: Collection[str] = ()
        ) -> Pick:
            nonlocal commit_during_pick
            if commit_during_pick:
                commit_during_pick = False
                await h.submit("a.test")  # Q0002: committed and queued while this pick is out
            return await real_pick(requests, now, have)

        h.spool.pick = pick  # type: ignore[method-assign]
        await h.scheduler.start()
        await h.submit("a.test")  # Q0001: its pick is the one above
        await h.until(lambda: h.n(Result.DELIVERED) == 2, "both delivered")
        assert sorted(job.queue_id for job in h.deliverer.jobs) == ["Q0001", "Q0002"]
        assert h.scheduler.fresh_held == 0


async def test_a_message_just_committed_goes_out_from_memory_older_ones_are_read_and_checked(
    harness_for: Callable[..., AbstractAsyncContextManager[Harness]],
) -> None:
    """The content of a message the ingress just committed is handed to its delivery from
    memory (those bytes never left it); an older one is read from the spool and checked.
    Both stored contents are spoiled on disk: only the older one is held as damaged."""
    async with harness_for(answering(OK)) as h:
        now = h.clock.now()
        recipient = NewRecipient("old@a.test", "a.test", None)
        content = b"Subject: old\r\n\r\nx\r\n"
        old = NewMessage("QOLD", "s@x.test", None, now, now + 86400, content, False, (recipient,))
        await h.spool.ingest(old)  # as if from before a restart: the scheduler never saw it
        await h.submit("a.test")  # Q0001, through the scheduler's `queued`
        conn = sqlite3.connect(h.spool.path)
        conn.execute("UPDATE messages SET content = CAST('spoiled' AS BLOB)")
        conn.commit()
        conn.close()
        await h.scheduler.start()
        await h.until(lambda: h.n(Result.DELIVERED) == 1, "the fresh one delivered")
        await h.until(lambda: h.n(Result.RETRY) == 1, "the old one held")
        [job] = h.deliverer.jobs
        assert (job.queue_id, job.content) == ("Q0001", b"Subject: test\r\n\r\nhello\r\n")
        conn = sqlite3.connect(h.spool.path)
        damaged = conn.execute("SELECT queue_id, damaged FROM messages ORDER BY id").fetchall()
        conn.close()
        assert damaged == [("QOLD", 1), ("Q0001", 0)]
