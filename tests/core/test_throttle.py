"""The per-site throttle: token bucket, adaptive actions and triggers, cohort rule, recovery,
and a virtual-time simulation of a 100/min receiver against the controller and a naive sender."""

from __future__ import annotations

import heapq
import json
import math
import random
import re
from collections import deque
from dataclasses import dataclass, replace

import pytest

from mta.config.mx_rules import load_mx_data, load_retry_schedule
from mta.core import site_report
from mta.core import throttle as th
from mta.core.bucket import TokenBucket
from mta.core.durations import rate_text
from mta.core.limits import AdaptiveRule, MxRule, Trigger
from mta.core.retry import decide
from mta.core.site_results import SiteResult, job_results, result_of
from mta.core.throttle import SiteThrottle
from mta.model import BounceClass, Condition, Outcome, Phase, Reply, Result, Scope, Verdict

T0 = 1_800_000_000.0
THROTTLE_TEXT = "421 4.7.0 [TSS04] Messages from 127.0.0.2 temporarily deferred"


def verdict(rule: str, code: int = 70, scope: Scope = "site", permanent: bool = False) -> Verdict:
    throttle = rule.startswith("throttle-")  # as the built-in rules mark them
    return Verdict(
        BounceClass(code, "x"), "Soft", "Unreachable", 3, scope, permanent, rule, throttle
    )


THROTTLED = verdict("throttle-rate")


def throttled(started_at: float = T0, text: str = THROTTLE_TEXT) -> SiteResult:
    return SiteResult(Result.THROTTLED, started_at, THROTTLED, text)


def delivered(started_at: float = T0, recipients: int = 1) -> SiteResult:
    return SiteResult(Result.DELIVERED, started_at, None, "250 2.0.0 ok", recipients)


def connect_failed(started_at: float = T0) -> SiteResult:
    v = verdict("connection-refused", 20)
    return SiteResult(Result.CONNECT_FAILED, started_at, v, "421 4.4.1 Connection refused")


def rule_with(*adaptive: AdaptiveRule, **limits: float) -> MxRule:
    values: dict[str, float] = {"rate": 10.0, "max_connections": 8, "min_rate": 0.1}
    values.update(limits)
    return MxRule(
        "test",
        ("*.test",),
        max_connections=int(values.pop("max_connections")),
        adaptive=adaptive,
        **values,  # type: ignore[arg-type]
    )


def state_for(*adaptive: AdaptiveRule, **limits: float) -> SiteThrottle:
    return th.new_state("mx.test", "127.0.0.2", rule_with(*adaptive, **limits), T0)


BACKOFF = AdaptiveRule("backoff", "set_rate", rule=re.compile("^throttle-"), factor=0.5)


# --- admission --------------------------------------------------------------------------


def test_tokens_pace_the_starts() -> None:
    state = state_for(rate=2.0)
    first = th.admit(state, T0, 0)
    assert (first.allowed, first.reason) == (2, "ok")  # one second's worth
    th.on_attempt(state, T0, 2)
    empty = th.admit(state, T0, 2)
    assert (empty.allowed, empty.next_check_at, empty.reason) == (0, T0 + 0.5, "rate")
    assert th.admit(state, T0 + 0.5, 2).allowed == 1
    assert th.admit(state, T0 + 10, 2).allowed == 2  # the bucket holds one second's worth


def test_connections_cap_the_starts() -> None:
    state = state_for(rate=0.0, max_connections=3)  # unlimited rate
    assert th.admit(state, T0, 1).allowed == 2
    full = th.admit(state, T0, 3)
    assert (full.allowed, full.next_check_at, full.reason) == (0, None, "connections")
    assert th.admit(state, T0, 7).allowed == 0


def test_a_configured_burst_sizes_the_bucket() -> None:
    state = state_for(rate=1.0, burst=5.0)
    assert th.admit(state, T0, 0).allowed == 5
    th.on_attempt(state, T0, 5)
    assert th.admit(state, T0 + 3, 0).allowed == 3


# --- adaptive actions and triggers ------------------------------------------------------

NOW = T0 + 100


@pytest.mark.parametrize(
    ("rule", "what", "new"),
    [
        (AdaptiveRule("s", "suspend", rule=re.compile("^throttle-"), duration=600.0),
         "suspended_until", NOW + 600),
        (AdaptiveRule("f", "set_rate", rule=re.compile("^throttle-"), factor=0.5), "rate", 5.0),
        (AdaptiveRule("v", "set_rate", rule=re.compile("^throttle-"), rate=0.5), "rate", 0.5),
        (AdaptiveRule("low", "set_rate", rule=re.compile("^throttle-"), rate=0.001), "rate", 0.1),
        (AdaptiveRule("h", "halve_concurrency", rule=re.compile("^throttle-")), "concurrency", 4),
    ],
)
def test_each_action(rule: AdaptiveRule, what: str, new: float) -> None:
    state = state_for(rule)
    changes = th.on_result(state, NOW, throttled(NOW))
    assert [(c.what, c.new, c.rule) for c in changes] == [(what, new, rule.name)]
    assert changes[0].site == "mx.test" and changes[0].binding == "127.0.0.2"
    assert changes[0].at == NOW and "TSS04" in changes[0].reason
    assert state.last_reason == changes[0].describe()
    assert state.counts[Result.THROTTLED] == 1


def test_suspend_stops_admission_until_its_end() -> None:
    state = state_for(AdaptiveRule("s", "suspend", match=re.compile(r"\[TSS04\]"), duration=60.0))
    th.on_result(state, NOW, throttled(NOW))
    assert th.admit(state, NOW + 1, 0) == th.Admission(0, NOW + 60, "suspended")
    assert site_report.status(state, NOW + 1).state == "suspended"
    assert th.admit(state, NOW + 60, 0).allowed > 0


def test_halving_stops_at_the_minimum() -> None:
    halve = AdaptiveRule("h", "halve_concurrency", classes=frozenset({70}))
    state = state_for(halve, max_connections=8)
    state.rule = replace(state.rule, min_connections=3)
    seen = []
    for i in range(4):
        th.on_result(state, NOW + i, throttled(NOW + i))
        seen.append(state.concurrency)
    assert seen == [4, 3, 3, 3]


@pytest.mark.parametrize(
    ("trigger", "times", "fires_at"),
    [
        (Trigger(), [0], [0]),
        (Trigger(3, 300.0), [0, 10, 20], [20]),
        (Trigger(3, 300.0), [0, 200, 400, 450], [450]),  # 0 left the window before 400
        (Trigger(3, 300.0), [0, 200, 400], []),
        (Trigger(2, 60.0), [0, 1, 2, 3], [1, 3]),  # the history restarts after firing
    ],
)
def test_triggers(trigger: Trigger, times: list[float], fires_at: list[float]) -> None:
    rule = AdaptiveRule("s", "suspend", rule=re.compile("^throttle-"), trigger=trigger,
                        duration=0.5)
    state = state_for(rule)
    fired = []
    for t in times:
        if th.on_result(state, NOW + t, throttled(NOW + t)):
            fired.append(t)
    assert fired == fires_at


@pytest.mark.parametrize(
    ("rule", "result", "matches"),
    [
        (AdaptiveRule("a", "suspend", rule=re.compile("^throttle-"), duration=1), throttled(),
         True),
        (AdaptiveRule("a", "suspend", rule=re.compile("^block-"), duration=1), throttled(), False),
        (AdaptiveRule("a", "suspend", classes=frozenset({51}), duration=1), throttled(), False),
        (AdaptiveRule("a", "suspend", classes=frozenset({70}), duration=1), throttled(), True),
        (AdaptiveRule("a", "suspend", match=re.compile(r"\[TSS04\]"), duration=1), throttled(),
         True),
        (AdaptiveRule("a", "suspend", match=re.compile(r"\[TS03\]"), duration=1), throttled(),
         False),
        # every matcher given must match
        (AdaptiveRule("a", "suspend", classes=frozenset({70}), match=re.compile("TS03"),
                      duration=1), throttled(), False),
        # a rule on the verdict's name cannot match a result without a verdict
        (AdaptiveRule("a", "suspend", rule=re.compile("refused"), duration=1),
         SiteResult(Result.CONNECT_FAILED, T0, None, "421 refused"), False),
        (AdaptiveRule("a", "suspend", match=re.compile("refused"), duration=1),
         SiteResult(Result.CONNECT_FAILED, T0, None, "421 refused"), True),
        # deliveries never trigger anything
        (AdaptiveRule("a", "suspend", match=re.compile("ok"), duration=1), delivered(), False),
    ],
)
def test_matchers(rule: AdaptiveRule, result: SiteResult, matches: bool) -> None:
    state = state_for(rule, down_after=0)
    changes = th.on_result(state, NOW, replace(result, started_at=NOW))
    assert bool(changes) is matches


def test_replies_to_sends_before_the_last_decrease_count_for_nothing() -> None:
    state = state_for(BACKOFF)
    assert th.on_result(state, NOW, throttled(started_at=NOW - 1))[0].new == 5.0
    # Three more replies to transactions started before the decrease: no further cut.
    for i in range(3):
        assert th.on_result(state, NOW + i, throttled(started_at=NOW - 0.5)) == []
    assert state.rate == 5.0 and state.counts[Result.THROTTLED] == 4
    # A reply to a transaction started after it: the rate is still too high.
    assert th.on_result(state, NOW + 5, throttled(started_at=NOW + 2))[0].new == 2.5


def test_the_decrease_starts_from_the_measured_send_rate() -> None:
    state = state_for(BACKOFF, rate=10.0)
    for i in range(20):  # 2 per second for 10 s, well under the 10/s allowed
        th.on_attempt(state, NOW + i / 2)
    change = th.on_result(state, NOW + 10, throttled(NOW + 9))[0]
    assert change.old == 10.0
    assert change.new == pytest.approx(0.5 * 20 / 10)  # 20 sent in the last 10 s


def test_a_set_rate_above_the_ceiling_is_clamped() -> None:
    up = AdaptiveRule("up", "set_rate", match=re.compile("go faster"), rate=99.0)
    state = state_for(BACKOFF, up, rate=10.0)
    th.on_result(state, NOW, throttled(NOW))
    assert state.rate == 5.0
    change = th.on_result(state, NOW + 1, SiteResult(Result.RETRY, NOW + 1, None, "451 go faster"))
    assert [(c.old, c.new) for c in change] == [(5.0, 10.0)]


def test_every_matching_rule_acts() -> None:
    suspend = AdaptiveRule("tss", "suspend", match=re.compile("TSS04"), duration=60.0)
    state = state_for(suspend, BACKOFF)
    assert [c.rule for c in th.on_result(state, NOW, throttled(NOW))] == ["tss", "backoff"]


# --- cohort rule ------------------------------------------------------------------------


def test_a_run_of_connection_failures_marks_the_site_down() -> None:
    state = state_for(down_after=3, down_for=300.0, max_connections=8)
    assert th.on_result(state, NOW, connect_failed()) == []
    assert th.on_result(state, NOW + 1, connect_failed()) == []
    changes = th.on_result(state, NOW + 2, connect_failed())
    assert [(c.what, c.new, c.rule) for c in changes] == [
        ("down_until", NOW + 302, "cohort"), ("concurrency", 1, "cohort")
    ]
    assert "3 connection failures in a row" in changes[0].reason
    assert th.admit(state, NOW + 3, 0) == th.Admission(0, NOW + 302, "down")
    assert site_report.status(state, NOW + 3).state == "down"
    # Back from down, the first failure marks it down again at once...
    again = th.on_result(state, NOW + 310, connect_failed())
    assert [c.what for c in again] == ["down_until"]
    assert "after being down" in again[0].reason
    # ... and an answer from the server ends the probing.
    assert th.on_result(state, NOW + 620, delivered()) == []
    assert th.on_result(state, NOW + 621, connect_failed()) == []
    assert state.counts[Result.CONNECT_FAILED] == 5 and state.counts[Result.DELIVERED] == 1


def test_any_answer_breaks_the_streak() -> None:
    state = state_for(down_after=3)
    for i, result in enumerate([connect_failed(), connect_failed(), throttled(),
                                connect_failed(), connect_failed()]):
        assert not any(c.rule == "cohort" for c in th.on_result(state, NOW + i, result))


def test_down_after_zero_never_marks_down() -> None:
    state = state_for(down_after=0)
    for i in range(50):
        assert th.on_result(state, NOW + i, connect_failed()) == []


# --- recovery ---------------------------------------------------------------------------


def test_successes_recover_step_by_step_up_to_the_configured_limits() -> None:
    halve = AdaptiveRule("h", "halve_concurrency", classes=frozenset({51}))
    state = state_for(BACKOFF, halve, rate=10.0, max_connections=4, recover_after=5,
                      increase=0.1)
    th.on_result(state, NOW, throttled(NOW))
    th.on_result(state, NOW, SiteResult(Result.RETRY, NOW, verdict("block-ip", 51), "451 blocked"))
    assert (state.rate, state.concurrency) == (5.0, 2)
    rates, conns, t = [], [], NOW
    for _ in range(100):
        t += 1
        for change in th.on_result(state, t, delivered(t)):
            assert change.rule == "recovery" and change.reason == "recovery after 5 successes"
        rates.append(state.rate)
        conns.append(state.concurrency)
    # +10% of the rate the site pushed back at (10/s) per 5 successes, +1 connection.
    assert rates[3:6] == [5.0, pytest.approx(6.0), pytest.approx(6.0)]
    assert conns[3:6] == [2, 3, 3] and max(conns) == 4
    assert max(rates) == 10.0 and rates[-1] == 10.0
    assert site_report.status(state, t).state == "ok"


def test_no_recovery_during_a_hold() -> None:
    hold = AdaptiveRule("hold", "set_rate", rule=re.compile("^throttle-"), factor=0.5,
                        duration=60.0)
    state = state_for(hold, recover_after=2)
    th.on_result(state, NOW, throttled(NOW))
    for i in range(1, 30):
        assert th.on_result(state, NOW + i, delivered(NOW + i)) == []
    assert site_report.status(state, NOW + 30).state == "slowed"
    th.on_result(state, NOW + 61, delivered(NOW + 61))
    assert th.on_result(state, NOW + 62, delivered(NOW + 62))[0].what == "rate"


@pytest.mark.parametrize(
    ("result", "positive"),
    [
        (delivered(), True),
        (SiteResult(Result.BOUNCE, T0, verdict("user-unknown", 10, "recipient", True), "550"),
         True),
        (SiteResult(Result.RETRY, T0, verdict("mailbox-full", 22, "recipient"), "452"), True),
        (SiteResult(Result.RETRY, T0, verdict("greylist", 70, "recipient"), "451"), True),
        (SiteResult(Result.RETRY, T0, verdict("content-spam", 52, "message"), "451"), False),
        (throttled(), False),
        (connect_failed(), False),
    ],
)
def test_what_counts_as_a_success_for_recovery(result: SiteResult, positive: bool) -> None:
    state = state_for(BACKOFF, recover_after=1, down_after=0)
    th.on_result(state, NOW, throttled(NOW))
    changes = th.on_result(state, NOW + 1, replace(result, started_at=NOW + 1))
    assert any(c.rule == "recovery" for c in changes) is positive


# --- results, status, changes -----------------------------------------------------------

OK = Outcome(Reply(250, "2.0.0", "ok"), Phase.DOT, "mx.test")
REFUSED = Outcome(Reply(421, "4.4.1", "Connection refused"), Phase.CONNECT, "mx.test",
                  Condition.CONNECTION_REFUSED)


@pytest.mark.parametrize(
    ("outcome", "v", "kind"),
    [
        (OK, None, "delivered"),
        (REFUSED, verdict("connection-refused", 20), "connect_failed"),
        (Outcome(Reply(421, "4.4.2", "timed out"), Phase.CONNECT, None, Condition.TIMEOUT),
         verdict("connection-timeout", 24), "connect_failed"),
        # a timeout after the dot is not a connection failure
        (Outcome(Reply(421, "4.4.2", "timed out"), Phase.DOT, None, Condition.TIMEOUT),
         verdict("connection-timeout", 24, "message"), Result.RETRY),
        (Outcome(Reply(421, "4.7.0", "[TSS04]"), Phase.CONNECT, "mx.test"), THROTTLED,
         "throttled"),
        (Outcome(Reply(550, "5.1.1", "unknown"), Phase.RCPT, "mx.test"),
         verdict("user-unknown", 10, "recipient", True), Result.BOUNCE),
        (Outcome(Reply(452, "4.2.2", "full"), Phase.RCPT, "mx.test"),
         verdict("mailbox-full", 22, "recipient"), Result.RETRY),
    ],
)
def test_result_of(outcome: Outcome, v: Verdict | None, kind: str) -> None:
    result = result_of(outcome, v, T0)
    assert (result.kind, result.verdict, result.reply_text) == (kind, v, str(outcome.reply))


def test_a_failed_session_is_one_result_for_the_whole_job() -> None:
    refused = verdict("connection-refused", 20)
    results = job_results([(REFUSED, refused)] * 3, T0, session_failed=True)
    assert [(r.kind, r.recipients) for r in results] == [(Result.CONNECT_FAILED, 3)]
    unknown = Outcome(Reply(550, "5.1.1", "unknown"), Phase.RCPT, "mx.test")
    mixed = job_results(
        [(OK, None), (unknown, verdict("u", 10, "recipient", True))], T0, session_failed=False
    )
    assert [(r.kind, r.recipients) for r in mixed] == [(Result.DELIVERED, 1), (Result.BOUNCE, 1)]
    assert job_results([], T0, session_failed=True) == []
    state = state_for(down_after=2)
    for r in results:
        th.on_result(state, NOW, r)
    # counted once for the cohort rule
    assert (state.counts[Result.CONNECT_FAILED], state.connect_failures) == (3, 1)


def test_status_and_change_records_are_json_ready() -> None:
    state = th.new_state("mx.test", "b", MxRule("open", ("*.test",)), T0)  # unlimited
    for i in range(30):
        th.on_result(state, T0 + i, delivered(T0 + i, recipients=2))
    status = site_report.status(state, T0 + 30)
    assert (status.state, status.delivered, status.rule) == ("ok", 60, "open")
    assert status.effective_rate == pytest.approx(2.0, rel=0.05)
    as_json = json.loads(json.dumps(status.as_dict()))
    assert as_json["rate"] is None and as_json["configured_rate"] is None
    change = th.Change("s", "b", T0, "rate", math.inf, 2.5, "backoff", "why")
    assert json.loads(json.dumps(change.as_dict()))["old"] is None
    assert change.describe() == "rate unlimited -> 2.5/s: why"
    assert th.Change("s", "b", T0, "rate", 1.0, 0.5, "r", "w").describe() == "rate 1/s -> 30/m: w"
    assert th.Change("s", "b", T0, "suspended_until", -math.inf, T0 + 1800, "r", "w").describe(
    ) == "suspended for 30m: w"
    assert rate_text(1 / 3600) == "1/h"


# --- simulation: a 100 messages/minute receiver, 2,000 messages ---------------------------

LIMIT = 100 / 60  # the receiver's rate, messages per second
LATENCY = 0.5  # virtual seconds from the start of a transaction to its result
GMAIL_TEXT = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"
GMAIL_VERDICT = verdict("throttle-unusual-rate")


@dataclass
class Run:
    delivered: int
    throttled: int
    throttled_first_half: int  # while the first 1,000 were being delivered
    throttled_second_half: int
    duration: float
    samples: list[tuple[float, float, int]]  # (time, controller rate, delivered so far)
    max_in_flight: int


def simulate(rule: MxRule, messages: int = 2000, seed: int = 7) -> Run:
    """Event-driven virtual time: the controller admits, the receiver answers after
    LATENCY, throttled messages wait for the site (the retry schedule's throttle policy)."""
    schedule = load_retry_schedule()
    rng = random.Random(seed)
    receiver = TokenBucket.full(LIMIT, 100.0, 0.0)  # 100/min per IP, a minute's burst
    state = th.new_state("google.test", "127.0.0.2", rule, 0.0)
    ready = deque(range(messages))
    waiting: list[tuple[float, int]] = []
    in_flight: list[tuple[float, int, bool, float]] = []
    done = throttles = first_half = 0
    samples: list[tuple[float, float, int]] = []
    t = 0.0
    max_in_flight = 0
    for _ in range(200_000):
        while in_flight and in_flight[0][0] <= t:
            _, mid, accepted, started = heapq.heappop(in_flight)
            if accepted:
                done += 1
                th.on_result(state, t, SiteResult(Result.DELIVERED, started, None, "250 ok"))
                continue
            throttles += 1
            first_half += done < messages // 2
            th.on_result(state, t, SiteResult(Result.THROTTLED, started, GMAIL_VERDICT, GMAIL_TEXT))
            decision = decide(GMAIL_VERDICT, 1, t, math.inf, schedule, rng.random())
            assert decision.waits_for_site and decision.at is not None
            heapq.heappush(waiting, (decision.at, mid))
        while waiting and waiting[0][0] <= t:
            ready.append(heapq.heappop(waiting)[1])
        admission = th.admit(state, t, len(in_flight))
        for _ in range(min(admission.allowed, len(ready))):
            th.on_attempt(state, t)
            accepted = receiver.try_take(t + LATENCY / 2)
            heapq.heappush(in_flight, (t + LATENCY, ready.popleft(), accepted, t))
        max_in_flight = max(max_in_flight, len(in_flight))
        samples.append((t, state.rate, done))
        after = th.admit(state, t, len(in_flight))
        wake = [in_flight[0][0]] if in_flight else []
        wake += [waiting[0][0]] if waiting else []
        if ready and after.next_check_at is not None:
            wake.append(after.next_check_at)
        if not wake:
            break
        assert min(wake) > t
        t = min(wake)
    assert done == messages, "the simulation did not finish"
    return Run(done, throttles, first_half, throttles - first_half, t, samples, max_in_flight)


def delivered_between(run: Run, start: float, end: float) -> int:
    before = [d for t, _, d in run.samples if t <= start]
    upto = [d for t, _, d in run.samples if t <= end]
    return upto[-1] - (before[-1] if before else 0)


def test_the_controller_converges_under_the_receivers_limit_and_learns() -> None:
    gmail = load_mx_data().rules.by_name("gmail")  # the built-in rule: 6000/m, AIMD x0.7
    adaptive = simulate(gmail)
    # The naive sender: a fixed 10 messages/s, the same connections, no adaptive rules.
    naive = simulate(
        MxRule("naive", ("*.google.test",), max_connections=gmail.max_connections, rate=10.0)
    )
    per_1000 = {
        "adaptive": (adaptive.throttled_first_half, adaptive.throttled_second_half),
        "naive": (naive.throttled_first_half, naive.throttled_second_half),
    }
    print(f"\nthrottling replies per 1,000 messages (first half, second half): {per_1000}")
    print(f"durations: adaptive {adaptive.duration:.0f}s, naive {naive.duration:.0f}s")
    # Everything is delivered in about the time the receiver's limit allows.
    ideal = (2000 - 100) / LIMIT  # the first 100 ride the receiver's burst
    assert adaptive.duration < ideal * 1.1
    # Converged: after two minutes, every 5-minute window delivers 80-100% of the limit
    # (up to 110%: what the receiver's burst refilled while the controller was under it).
    start = 120.0
    windows = []
    while start + 300 <= adaptive.duration - 60:
        windows.append(delivered_between(adaptive, start, start + 300) / 300 / LIMIT)
        start += 60
    assert windows and min(windows) >= 0.8 and max(windows) <= 1.12, windows
    # The controller's rate in the second half of the run averages about the limit.
    half = adaptive.duration / 2
    steps = [(t1 - t0, r) for (t0, r, _), (t1, _, _) in zip(adaptive.samples,
                                                             adaptive.samples[1:], strict=False)
             if t0 >= half]
    mean = sum(span * rate for span, rate in steps) / sum(span for span, _ in steps)
    assert 0.85 * LIMIT <= mean <= 1.15 * LIMIT
    # It learned: the second thousand provoked far fewer throttling replies than the first,
    assert adaptive.throttled_second_half * 4 <= adaptive.throttled_first_half
    assert adaptive.throttled_second_half <= 20
    # and the whole run far fewer than the naive fixed-rate sender in the same conditions.
    assert adaptive.throttled * 20 <= naive.throttled
    assert naive.throttled_second_half > 1000  # the naive sender never learns
    assert adaptive.max_in_flight <= gmail.max_connections
