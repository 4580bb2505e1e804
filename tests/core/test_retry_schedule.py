"""Retry timing by class and severity: the built-in schedule, table-driven, and its loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta.config.bounce_rules import builtin_rules
from mta.config.engine import ConfigError
from mta.config.mx_rules import load_retry_schedule, parse_retry_texts
from mta.core.retry import (
    RetryPolicy,
    RetrySchedule,
    decide,
    describe,
    interval,
    jittered,
)
from mta.model import BounceClass, Scope, Verdict

NOW = 1_800_000_000.0
DAY = 86400.0
VALID = NOW + 3.5 * DAY


def verdict(code: int, rule: str, scope: Scope = "recipient", permanent: bool = False) -> Verdict:
    throttle = rule.startswith("throttle-")  # as the built-in rules mark them
    return Verdict(
        BounceClass(code, "x"), "Soft", "Unreachable", 3, scope, permanent, rule, throttle
    )


@pytest.fixture(scope="module")
def schedule() -> RetrySchedule:
    return load_retry_schedule()


# class, bounce rule name, scope -> policy, first interval, cap
CASES = [
    (70, "greylist", "recipient", "greylist", 360.0, 1800.0),
    (70, "greylist-postgrey", "recipient", "greylist", 360.0, 1800.0),
    (70, "too-many-recipients", "message", "too-many-recipients", 60.0, 600.0),
    (70, "too-many-recipients-enhanced", "message", "too-many-recipients", 60.0, 600.0),
    (22, "mailbox-full", "recipient", "mailbox-full", 3600.0, 8 * 3600.0),
    (21, "dns-nxdomain", "message", "dns", 1800.0, 6 * 3600.0),
    (21, "dns-failure", "message", "dns", 1800.0, 6 * 3600.0),
    (51, "block-ip-reputation", "site", "block-ip", 3600.0, 8 * 3600.0),
    (50, "block-reverse-dns", "site", "block-identity", 7200.0, 12 * 3600.0),
    (52, "content-spam", "message", "block-content", 3600.0, 6 * 3600.0),
    (53, "content-virus", "message", "block-content", 3600.0, 6 * 3600.0),
    (50, "auth-dmarc", "message", "block", 1800.0, 4 * 3600.0),
    (54, "relay-denied", "recipient", "block", 1800.0, 4 * 3600.0),
    (20, "connection-refused", "site", "default", 600.0, 4 * 3600.0),
    (24, "connection-timeout", "site", "default", 600.0, 4 * 3600.0),
    (40, "generic-soft", "recipient", "default", 600.0, 4 * 3600.0),
    (70, "transient", "message", "default", 600.0, 4 * 3600.0),
    (1, "fallback-undetermined", "message", "default", 600.0, 4 * 3600.0),
]


@pytest.mark.parametrize(("code", "rule", "scope", "name", "first", "cap"), CASES)
def test_each_class_gets_its_policy(
    schedule: RetrySchedule,
    code: int,
    rule: str,
    scope: Scope,
    name: str,
    first: float,
    cap: float,
) -> None:
    v = verdict(code, rule, scope)
    policy = schedule.policy_for(v)
    assert policy.name == name
    assert not policy.waits_for_site
    assert interval(1, policy) == first
    assert interval(2, policy) == min(first * 2, cap)
    assert interval(40, policy) == cap
    for rand in (0.0, 0.5, 0.999999):
        decision = decide(v, 1, NOW, VALID, schedule, rand)
        assert (decision.action, decision.policy, decision.waits_for_site) == ("retry", name, False)
        assert decision.at is not None
        assert NOW + first * (1 - policy.jitter) <= decision.at <= NOW + first * (1 + policy.jitter)


@pytest.mark.parametrize(
    ("code", "rule"),
    [(70, "throttle-rate"), (70, "throttle-unusual-rate"), (51, "throttle-reputation"),
     (70, "throttle-connections"), (70, "throttle-sending-quota")],
)
def test_throttling_waits_for_the_site_without_growing(
    schedule: RetrySchedule, code: int, rule: str
) -> None:
    v = verdict(code, rule, "site")
    policy = schedule.policy_for(v)
    assert (policy.name, policy.waits_for_site, policy.site_backoff) == ("throttle", True, 60.0)
    first = decide(v, 1, NOW, VALID, schedule, 0.25)
    later = decide(v, 30, NOW, VALID, schedule, 0.25)
    assert first == later
    assert (first.action, first.waits_for_site, first.policy) == ("retry", True, "throttle")
    for rand in (0.0, 0.999999):
        at = decide(v, 3, NOW, VALID, schedule, rand).at
        assert at is not None and NOW + 30 <= at <= NOW + 90


def test_every_builtin_throttle_and_greylist_rule_is_scheduled_so(
    schedule: RetrySchedule,
) -> None:
    seen = set()
    for rule in builtin_rules():
        scope: Scope = "site" if rule.scope == "by-phase" else rule.scope  # type: ignore[assignment]
        v = Verdict(
            rule.bounce_class, "Soft", "Unreachable", 3, scope, False, rule.name, rule.throttle
        )
        assert rule.throttle == rule.name.startswith("throttle-"), rule.name
        if rule.throttle:
            assert schedule.policy_for(v).name == "throttle", rule.name
            seen.add("throttle")
        if "greylist" in rule.name:
            assert schedule.policy_for(v).name == "greylist", rule.name
            seen.add("greylist")
    assert seen == {"throttle", "greylist"}


@pytest.mark.parametrize(("code", "rule"), [(10, "user-unknown"), (70, "throttle-x"), (22, "m")])
def test_permanent_verdicts_bounce_at_once(schedule: RetrySchedule, code: int, rule: str) -> None:
    decision = decide(verdict(code, rule, permanent=True), 1, NOW, VALID, schedule, 0.5)
    assert decision.action == "bounce"
    assert decision.at is None


@pytest.mark.parametrize(("code", "rule", "scope"), [(c[0], c[1], c[2]) for c in CASES])
@pytest.mark.parametrize("attempts", [1, 3, 8, 20])
@pytest.mark.parametrize("rand", [0.0, 0.999999])
def test_a_retry_always_falls_inside_the_validity(
    schedule: RetrySchedule, code: int, rule: str, scope: Scope, attempts: int, rand: float
) -> None:
    v = verdict(code, rule, scope)
    policy = schedule.policy_for(v)
    base = interval(attempts, policy)
    at = NOW + jittered(base, policy.jitter, rand)
    for remaining in (base * 0.5, base * (1 - policy.jitter) - 1, base, base * 1.5, DAY):
        expires = NOW + remaining
        decision = decide(v, attempts, NOW, expires, schedule, rand)
        # The next attempt on the schedule, or the validity end itself when that comes first.
        assert (decision.action, decision.at) == ("retry", min(at, expires))
        assert NOW < decision.at <= expires
    # No time left: expire now, whatever the jitter.
    assert decide(v, attempts, NOW, NOW, schedule, rand).action == "expire"


def test_a_throttled_recipient_waits_for_the_site_until_the_validity_end(
    schedule: RetrySchedule,
) -> None:
    v = verdict(70, "throttle-rate", "site")
    decision = decide(v, 1, NOW, NOW + 20, schedule, 0.5)
    assert (decision.action, decision.at, decision.waits_for_site) == ("retry", NOW + 20, True)
    at_the_end = decide(v, 1, NOW + 20, NOW + 20, schedule, 0.5)
    assert (at_the_end.action, at_the_end.waits_for_site) == ("expire", True)


def test_a_single_policy_still_works_for_old_callers() -> None:
    policy = RetryPolicy(first=600, factor=2, max_interval=3600, jitter=0.0)
    decision = decide(verdict(70, "throttle-rate", "site"), 2, NOW, VALID, policy, 0.5)
    assert decision == decide(verdict(20, "x"), 2, NOW, VALID, policy, 0.5)
    assert (decision.action, decision.at, decision.policy) == ("retry", NOW + 1200, "default")


def test_describe_explains_the_chosen_policy(schedule: RetrySchedule) -> None:
    assert describe(verdict(10, "u", permanent=True), schedule) == (
        "no retry: the failure is permanent"
    )
    grey = describe(verdict(70, "greylist"), schedule)
    assert grey.startswith("policy 'greylist': retry after 6m, 12m, 24m, 30m, ...")
    assert "+-15% jitter" in grey
    throttled = describe(verdict(70, "throttle-rate", "site"), schedule)
    assert "policy 'throttle'" in throttled and "without using an attempt" in throttled
    assert "1m" in throttled
    full = describe(verdict(22, "mailbox-full"), schedule)
    assert "retry after 1h, 2h, 4h, 8h" in full and "at most 8h" in full
    single = describe(verdict(20, "x"), RetryPolicy())
    assert single.startswith("policy 'default': retry after 10m, 20m, 40m, 1.33h")


def test_with_default_replaces_only_the_default(schedule: RetrySchedule) -> None:
    mine = schedule.with_default(RetryPolicy(first=90, factor=3, max_interval=3600, jitter=0.1))
    assert mine.policy_for(verdict(20, "x")).first == 90
    assert mine.policy_for(verdict(22, "mailbox-full")).name == "mailbox-full"
    assert schedule.policy_for(verdict(20, "x")).first == 600


def test_user_entries_come_first_and_merge_by_name() -> None:
    user = """
[[policy]]
name = "mailbox-full"
classes = [22]
first = "3h"

[[policy]]
name = "our-relay"
rule = "^relay-"
scope = ["recipient"]
first = "2m"

[default]
first = "5m"
"""
    builtin = (Path(__file__).parents[2] / "mta/defaults/retry-schedule.toml").read_text()
    schedule = parse_retry_texts([("user.toml", user), ("builtin.toml", builtin)])
    full = schedule.policy_for(verdict(22, "mailbox-full"))
    # Merged with the built-in entry of that name: the user's keys win, the others stay.
    assert (full.first, full.max_interval, full.factor) == (3 * 3600, 8 * 3600, 2.0)
    assert [e.policy.name for e in schedule.entries].count("mailbox-full") == 1
    assert schedule.policy_for(verdict(54, "relay-denied", "recipient")).name == "our-relay"
    assert schedule.policy_for(verdict(54, "relay-denied", "site")).name == "block"
    assert schedule.default.first == 300
    assert schedule.default.max_interval == 4 * 3600


def test_an_entry_named_like_a_builtin_one_needs_only_the_keys_it_changes() -> None:
    builtin = (Path(__file__).parents[2] / "mta/defaults/retry-schedule.toml").read_text()
    user = '[[policy]]\nname = "greylist"\nfirst = "2m"\n'
    schedule = parse_retry_texts([("user.toml", user), ("builtin.toml", builtin)])
    grey = schedule.policy_for(verdict(70, "greylist"))
    assert (grey.name, grey.first, grey.max_interval, grey.jitter) == ("greylist", 120, 1800, 0.15)
    assert schedule.policy_for(verdict(70, "transient")).name == "default"


BAD_FILES = [
    ('[[policy]]\nname = "x"\nclasses = [22]\nfrist = "1h"\n',
     "user.toml: policy 1 'x': unknown key 'frist'"),
    ('[[policy]]\nname = "x"\nrule = "(unclosed"\n',
     "user.toml: policy 1 'x': rule: bad regex '(unclosed'"),
    ('[[policy]]\nname = "x"\nrule = ".*"\n',
     "user.toml: policy 1 'x': rule: regex '.*' matches an empty text"),
    ('[[policy]]\nname = "x"\nclasses = [99]\n',
     "user.toml: policy 1 'x': classes: unknown bounce class 99"),
    ('[[policy]]\nname = "x"\nfirst = "1h"\n',
     "user.toml: policy 1 'x': needs classes, rule, scope or throttle to match verdicts"),
    ('[[policy]]\nname = "x"\nclasses = [22]\n\n[[policy]]\nname = "y"\nclasses = [21]\n'
     'first = "soon"\n',
     "user.toml: policy 2 'y': first: not a duration: 'soon'"),
    ('[[policy]]\nname = "x"\nclasses = [22]\nfactor = 0.5\n',
     "user.toml: policy 1 'x': factor must be >= 1"),
    ('[[policy]]\nname = "x"\nclasses = [22]\njitter = 1.5\n',
     "user.toml: policy 1 'x': jitter must be in [0, 1)"),
    ('[[policy]]\nname = "x"\nclasses = [22]\n\n[[policy]]\nname = "x"\nclasses = [21]\n',
     "user.toml: policy 2 'x': duplicate name (also user.toml: policy 1 'x')"),
    ('[[policy]]\nname = "x"\nscope = ["planet"]\n',
     "user.toml: policy 1 'x': scope: expected one of 'recipient', 'message', 'site'"),
    ('[[policy]]\nclasses = [22]\n', "user.toml: policy 1: missing key 'name'"),
    ('[default]\nclasses = [22]\n', "user.toml: [default]: 'classes' belongs to [[policy]]"),
    ('[default]\nfirst = -5\n', "user.toml: [default]: first: negative duration"),
    ('[polcy]\n', "user.toml: unknown key 'polcy' (expected policy, default)"),
    ('policy = 3\n', "user.toml: 'policy' must be an array of tables ([[policy]])"),
    ('[[policy]\n', "user.toml: not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_loading_errors_name_the_file_and_the_entry(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_retry_texts([("user.toml", text)])
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_user_file_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^.*nope\.toml: no such file$"):
        load_retry_schedule([tmp_path / "nope.toml"])


def test_a_user_file_on_disk_comes_in_front(tmp_path: Path) -> None:
    path = tmp_path / "retry.toml"
    path.write_text('[[policy]]\nname = "fast-dns"\nclasses = [21]\nfirst = "1m"\n')
    schedule = load_retry_schedule([path])
    assert schedule.policy_for(verdict(21, "dns-failure", "message")).name == "fast-dns"
    assert schedule.entries[0].where == f"{path}: policy 1 'fast-dns'"
