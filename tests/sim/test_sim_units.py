"""The pure parts: script grammar, chance, buckets, greylisting, reputation, tables, replies."""

from __future__ import annotations

import pytest

from mta.sim.config import MailboxesConfig, ReputationConfig
from mta.sim.dns_server import Zone
from mta.sim.reply_text import one_line, render
from mta.sim.rules import Greylist, IpRecord, MailboxTable, bucket_for, reputation_blocked
from mta.sim.scripts import Script, Stage, Step, chance, parse_local_part

R: Stage = "rcpt"


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (
            "alice+452-452-250",
            Script((Step(R, "reply", 452), Step(R, "reply", 452), Step(R, "reply", 250))),
        ),
        (
            '"alice+452,452,250"',
            Script((Step(R, "reply", 452), Step(R, "reply", 452), Step(R, "reply", 250))),
        ),
        ("bob+mail=451-250", Script((Step("mail", "reply", 451), Step("mail", "reply", 250)))),
        ('"bob+mail:451,250"', Script((Step("mail", "reply", 451), Step("mail", "reply", 250)))),
        ("x+data=554", Script((Step("data", "reply", 554),))),
        ("x+dot=452-250", Script((Step("dot", "reply", 452), Step("dot", "reply", 250)))),
        ("x+drop", Script((Step("dot", "drop", 0),))),
        ("x+452-drop", Script((Step(R, "reply", 452), Step("dot", "drop", 0)))),
        ("x+rcpt=stall-250", Script((Step(R, "stall", 0), Step(R, "reply", 250)))),
        ("carol+async", Script(async_code=550)),
        ("carol+async=552", Script(async_code=552)),
        ("x+ooto+complaint", Script(autoreply=True, complaint=True)),
        ("success", Script(simulator="success")),
        ("Bounce", Script(simulator="bounce")),
        ("ooto+label", Script(simulator="ooto")),
        ("suppressionlist", Script(simulator="suppressionlist")),
        ("john", None),
        ("john+news", None),
        ("john+123", None),  # not an SMTP code
        ("john+999", None),
        ("john+lunch=250", None),  # not a stage
        ("john+async=abc", None),
    ],
)
def test_grammar(local: str, expected: Script | None) -> None:
    assert parse_local_part(local) == expected


def test_steps_repeat_the_last() -> None:
    script = parse_local_part("a+452-250")
    assert script is not None
    assert [script.step(n) for n in (1, 2, 3, 9)] == [
        Step(R, "reply", 452),
        Step(R, "reply", 250),
        Step(R, "reply", 250),
        Step(R, "reply", 250),
    ]
    assert Script().step(1) is None


def test_chance_is_a_pure_function_of_its_parts() -> None:
    assert chance(1, "isp", "a@x", 1) == chance(1, "isp", "a@x", 1)
    assert chance(1, "isp", "a@x", 1) != chance(2, "isp", "a@x", 1)
    assert chance(1, "isp", "a@x", 1) != chance(1, "isp", "a@x", 2)
    values = [chance(7, i) for i in range(2000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55


def test_token_bucket_refuses_only_above_the_rate_and_refills() -> None:
    bucket = bucket_for(1.0, 3, now=100.0)
    assert bucket is not None
    assert [bucket.try_take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.try_take(100.5) is False
    assert bucket.try_take(101.0) is True  # one second, one token
    assert [bucket.try_take(200.0) for _ in range(4)] == [True, True, True, False]  # capped
    assert bucket_for(0.0, 3, now=100.0) is None  # no rate: unlimited
    default = bucket_for(2.0, 0, now=0.0)  # burst 0: one minute's worth
    assert default is not None and default.burst == 120.0


def test_greylist_window_and_expiry() -> None:
    grey = Greylist(window=300.0, expiry=3600.0)
    key = Greylist.key("s@x", "r@y", "1.2.3.4")
    assert grey.check(key, 1000.0) == 300.0
    assert grey.check(key, 1100.0) == 200.0
    assert grey.check(key, 1300.0) == 0.0
    assert grey.check(Greylist.key("s@x", "r@y", "1.2.3.5"), 1300.0) == 300.0  # another IP
    assert grey.check(key, 1000.0 + 300 + 3600 + 1) == 300.0  # forgotten after the expiry


def test_reputation_rules() -> None:
    rule = ReputationConfig(new_ip_age=30 * 86400.0, new_ip_daily_limit=2)
    record = IpRecord(first_seen=0.0)
    record.count_message(10.0)
    assert not reputation_blocked(record, 10.0, rule)
    record.count_message(20.0)
    assert reputation_blocked(record, 30.0, rule)
    assert not reputation_blocked(record, 86400.0 + 1, rule)  # a new day
    assert not reputation_blocked(record, 31 * 86400.0, rule)  # no longer young
    complaints = ReputationConfig(complaint_rate=0.1, complaint_min_messages=10)
    busy = IpRecord(first_seen=0.0, messages=10, complaints=1)
    assert not reputation_blocked(busy, 0.0, complaints)
    busy.complaints = 2
    assert reputation_blocked(busy, 0.0, complaints)


def test_mailbox_table() -> None:
    table = MailboxTable.from_config(
        MailboxesConfig(unknown=("nobody", "ghost@isp.test", "re:^gone\\d+@"), full=("re:^full",)),
        "t",
    )
    assert table.lookup("nobody", "nobody@isp.test") == "unknown"
    assert table.lookup("ghost", "ghost@isp.test") == "unknown"
    assert table.lookup("ghost", "ghost@other.test") is None
    assert table.lookup("gone12", "gone12@isp.test") == "unknown"
    assert table.lookup("full-ish", "full-ish@isp.test") == "full"
    assert table.lookup("alice", "alice@isp.test") is None
    with pytest.raises(ValueError, match=r"t.unknown: bad pattern"):
        MailboxTable.from_config(MailboxesConfig(unknown=("re:(",)), "t")


def test_render_multiline_and_one_line() -> None:
    text = render("421 4.7.28 [{ip}] first\nsecond\nthird", {"ip": "10.0.0.1"})
    assert text == "421-4.7.28 [10.0.0.1] first\r\n421-4.7.28 second\r\n421 4.7.28 third"
    assert one_line(text) == "421 4.7.28 [10.0.0.1] first second third"
    assert render("250 ok {id}", {"id": "7"}) == "250 ok 7"
    assert one_line("550 no\r\n550 enhanced") == "550 no enhanced"


def test_zone_ignores_garbage() -> None:
    zone = Zone()
    assert zone.answer(b"\x00\x01garbage") is None
