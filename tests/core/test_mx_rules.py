"""MX rules: matching sites by MX host, inheritance, users' files, and loading errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mta.config.engine import ConfigError
from mta.config.mx_rules import BindingConfig, MxData, load_mx_data, load_mx_rules, parse_mx_texts
from mta.core.limits import MxRule, MxRules, Trigger, parse_trigger

ROOT = Path(__file__).parents[2]
BUILTIN = (ROOT / "mta/defaults/mx-rules.toml").read_text()


@pytest.fixture(scope="module")
def data() -> MxData:
    return load_mx_data()


@pytest.mark.parametrize(
    ("hosts", "name"),
    [
        (["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"], "gmail"),
        (["aspmx.l.google.com"], "gmail"),
        (["mx1.google.test", "mx2.google.test"], "gmail"),
        (["MX1.GOOGLE.TEST."], "gmail"),
        (["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net"], "yahoo"),
        (["mx.yahoo.test"], "yahoo"),
        (["example-com.mail.protection.outlook.com"], "outlook"),
        (["mx.outlook.test"], "outlook"),
        (["mx01.mail.icloud.com"], "icloud"),
        (["mx.isp.test"], "isp"),
        (["mail.example.org", "mx.outlook.test"], "outlook"),  # any host of the site
        (["mx.example.org"], "default"),
        (["google.com.evil.example"], "default"),
        ([], "default"),
    ],
)
def test_a_site_gets_the_first_rule_matching_one_of_its_hosts(
    data: MxData, hosts: list[str], name: str
) -> None:
    assert data.rules.match(hosts).name == name
    assert data.rules.match(hosts).name == name  # cached answer is the same


def test_first_match_wins_in_file_order() -> None:
    wide = MxRule("wide", ("*.test",))
    narrow = MxRule("narrow", ("mx.isp.test",))
    assert MxRules((wide, narrow), MxRule("default")).match(["mx.isp.test"]).name == "wide"
    assert MxRules((narrow, wide), MxRule("default")).match(["mx.isp.test"]).name == "narrow"


def test_builtin_limits_and_inheritance(data: MxData) -> None:
    gmail = data.rules.by_name("gmail")
    assert (gmail.max_connections, gmail.max_messages_per_connection) == (20, 100)
    assert gmail.rate == pytest.approx(100.0)  # "6000/m"
    assert gmail.min_rate == pytest.approx(10 / 60)
    assert gmail.ceiling == gmail.start_rate == pytest.approx(100.0)
    # Keys a rule leaves out come from [default].
    assert (gmail.recover_after, gmail.down_after, gmail.down_for) == (10, 5, 300.0)
    default = data.rules.default
    assert default.name == "default" and math.isinf(default.start_rate)
    assert default.rampup_scale == 0.0
    # Global adaptive rules follow a rule's own; the simulated personas' sizes stay under
    # the personas' session caps (gmail 30, yahoo 20, outlook 20, isp 10).
    yahoo = data.rules.by_name("yahoo")
    assert [a.name for a in yahoo.adaptive] == [
        "yahoo-tss", "throttle-backoff", "connection-limit", "ip-block"
    ]
    assert yahoo.max_connections <= 20 and data.rules.by_name("isp").max_connections <= 10
    tss = yahoo.adaptive[0]
    assert (tss.action, tss.duration, tss.trigger) == ("suspend", 1800.0, Trigger())
    busy = data.rules.by_name("outlook").adaptive[0]
    assert (busy.action, busy.trigger) == ("halve_concurrency", Trigger(3, 60.0))
    assert data.rampup.cap(1, "gmail") == 50 and data.rampup.cap(1, "outlook") == 25
    assert data.rampup.cap(1, "default") is None  # no ramp-up for unknown sites


def test_the_documented_example_loads_in_front_of_the_builtin_rules() -> None:
    data = load_mx_data([ROOT / "config/mx-rules.toml"])
    corp = data.rules.match(["mx1.corp.example"])
    assert corp.name == "corp-example"
    assert corp.max_connections == 4
    assert data.rules.match(["mx1.google.test"]).name == "gmail"
    assert data.rules.rules[0].where.startswith(str(ROOT / "config/mx-rules.toml"))


USER = """
[default]
max_connections = 8

[[adaptive]]
name = "throttle-backoff"
rule = "^throttle-"
action = "set_rate"
factor = 0.5

[[mx]]
name = "gmail"
hosts = ["*.google.test"]
rate = "600/m"
inherit_adaptive = false

  [[mx.adaptive]]
  name = "mine"
  match = "slow down"
  trigger = "2/30s"
  action = "set_rate"
  rate = "60/m"
  duration = "10m"

[[mx]]
name = "tiny"
hosts = ["mx.tiny.test"]

[rampup]
strategy = "oldest"

[rampup.caps]
1 = 10
10 = "unlimited"
"""


def test_users_files_come_first_replace_by_name_and_override_defaults() -> None:
    data = parse_mx_texts([("user.toml", USER), ("builtin.toml", BUILTIN)])
    names = [r.name for r in data.rules.rules]
    assert names[:2] == ["gmail", "tiny"] and names.count("gmail") == 1
    gmail = data.rules.by_name("gmail")
    # Merged with the built-in gmail rule: the user's keys win, the others stay.
    assert gmail.patterns == ("*.google.test",)
    assert gmail.rate == pytest.approx(10.0)
    assert (gmail.max_connections, gmail.rampup_scale) == (20, 1.0)
    assert [a.name for a in gmail.adaptive] == ["mine"]  # inherit_adaptive = false
    mine = gmail.adaptive[0]
    assert (mine.rate, mine.trigger, mine.duration) == (1.0, Trigger(2, 30.0), 600.0)
    tiny = data.rules.by_name("tiny")
    backoff = next(a for a in tiny.adaptive if a.name == "throttle-backoff")
    assert backoff.factor == 0.5  # the user's global rule replaced the built-in one
    assert [a.name for a in data.global_adaptive].count("throttle-backoff") == 1
    assert tiny.max_connections == 8  # the user's [default] wins over the built-in one
    assert tiny.max_messages_per_connection == 100  # from the built-in [default]
    assert data.rampup.strategy == "oldest"
    assert data.rampup.cap(9, "gmail") == 10 and data.rampup.cap(10, "gmail") is None
    # The built-in yahoo rule is still there, behind the user's.
    assert data.rules.match(["mx.yahoo.test"]).name == "yahoo"


def test_a_rule_named_like_a_builtin_one_needs_only_the_keys_it_changes() -> None:
    user = """
[[mx]]
name = "yahoo"
rate = "600/m"

  [[mx.adaptive]]
  name = "yahoo-tss"
  duration = "2h"

  [[mx.adaptive]]
  name = "yahoo-extra"
  classes = [51]
  action = "halve_concurrency"
"""
    data = parse_mx_texts([("user.toml", user), ("builtin.toml", BUILTIN)])
    yahoo = data.rules.match(["mta7.am0.yahoodns.net"])
    assert yahoo.name == "yahoo" and yahoo.rate == pytest.approx(10.0)
    assert yahoo.max_connections == 10 and yahoo.where == "user.toml: mx 1 'yahoo'"
    tss = yahoo.adaptive[0]
    assert (tss.name, tss.action, tss.duration) == ("yahoo-tss", "suspend", 7200.0)
    assert tss.match is not None and tss.match.search("421 4.7.0 [TSS04] Messages from")
    assert [a.name for a in yahoo.adaptive][:3] == ["yahoo-tss", "yahoo-extra", "throttle-backoff"]


@pytest.mark.parametrize(
    ("text", "trigger"),
    [("immediate", Trigger()), ("Immediate", Trigger()), ("3/5m", Trigger(3, 300.0)),
     ("10 / 1h", Trigger(10, 3600.0)), ("2/m", Trigger(2, 60.0)), ("1/10s", Trigger(1, 10.0))],
)
def test_trigger_forms(text: str, trigger: Trigger) -> None:
    assert parse_trigger(text) == trigger


MX = '[[mx]]\nname = "a"\nhosts = ["*.a.test"]\n'
BAD = [
    (MX + 'rat = "1/s"\n', "user.toml: mx 1 'a': unknown key 'rat'"),
    ('[[mx]]\nname = "a"\nhosts = ["*.a.test"]\nrate = "fast"\n',
     "user.toml: mx 1 'a': rate: not a rate: 'fast'"),
    ('[[mx]]\nname = "a"\n', "user.toml: mx 1 'a': missing key 'hosts'"),
    ('[[mx]]\nname = "a"\nhosts = []\n', "user.toml: mx 1 'a': hosts: expected a non-empty list"),
    ('[[mx]]\nhosts = ["x"]\n', "user.toml: mx 1: missing key 'name'"),
    (MX + 'min_connections = 30\n',
     "user.toml: mx 1 'a': min_connections must be between 1 and max_connections"),
    (MX + 'rate = "1/m"\nmin_rate = "1/s"\n', "user.toml: mx 1 'a': min_rate must not be above"),
    (MX + 'rate = "10/s"\nmax_rate = "1/s"\n', "user.toml: mx 1 'a': max_rate must not be below"),
    (MX + 'increase = 2\n', "user.toml: mx 1 'a': increase must be more than 0 and at most 1"),
    (MX + MX, "user.toml: mx 2 'a': duplicate name (also user.toml: mx 1 'a')"),
    (MX + '[[mx.adaptive]]\nname = "s"\nmatch = "x"\naction = "suspend"\n',
     "user.toml: mx 1 'a': adaptive 1 's': suspend needs a duration"),
    (MX + '[[mx.adaptive]]\nname = "s"\nmatch = "(x"\naction = "suspend"\nduration = "1m"\n',
     "user.toml: mx 1 'a': adaptive 1 's': match: bad regex '(x'"),
    (MX + '[[mx.adaptive]]\nname = "s"\naction = "suspend"\nduration = "1m"\n',
     "user.toml: mx 1 'a': adaptive 1 's': an adaptive rule needs rule, classes, match or"),
    (MX + '[[mx.adaptive]]\nname = "s"\nrule = "x"\naction = "pause"\n',
     "user.toml: mx 1 'a': adaptive 1 's': action: expected one of 'suspend'"),
    (MX + '[[mx.adaptive]]\nname = "s"\nrule = "x"\naction = "set_rate"\n',
     "user.toml: mx 1 'a': adaptive 1 's': set_rate needs either rate or factor"),
    (MX + '[[mx.adaptive]]\nname = "s"\nrule = "x"\naction = "halve_concurrency"\nfactor = 0.5\n',
     "user.toml: mx 1 'a': adaptive 1 's': rate and factor belong to set_rate"),
    (MX + '[[mx.adaptive]]\nname = "s"\nrule = "x"\naction = "halve_concurrency"\n'
     'trigger = "often"\n', "user.toml: mx 1 'a': adaptive 1 's': trigger: bad trigger 'often'"),
    (MX + '[[mx.adaptive]]\nname = "s"\nrule = "x"\naction = "halve_concurrency"\n'
     'trigger = "0/5m"\n', "user.toml: mx 1 'a': adaptive 1 's': trigger: a trigger needs a count"),
    (MX + '[[mx.adaptive]]\nname = "s"\nclasses = [7]\naction = "halve_concurrency"\n',
     "user.toml: mx 1 'a': adaptive 1 's': classes: unknown bounce class 7"),
    ('[[adaptive]]\nname = "g"\nrule = "x"\naction = "suspend"\nduration = "-1m"\n',
     "user.toml: adaptive 1 'g': duration: not a duration: '-1m'"),
    ('[default]\nmax_connections = "many"\n',
     "user.toml: [default]: max_connections: expected an integer, got 'many'"),
    ('[default]\nspeed = 1\n', "user.toml: [default]: unknown key 'speed'"),
    ('[mx]\nname = "a"\n', "user.toml: 'mx' must be an array of tables ([[mx]])"),
    ('[rules]\n', "user.toml: unknown key 'rules' (expected default, adaptive, mx, rampup)"),
    ('[rampup.caps]\n0 = 5\n', "user.toml: [rampup]: caps: bad day '0'"),
    ('[rampup.caps]\n2 = 5\n', "user.toml: [rampup]: caps: the schedule must start at day 1"),
    ('[rampup.caps]\n1 = "lots"\n',
     "user.toml: [rampup]: caps.1: expected a number or 'unlimited'"),
    ('[rampup.caps]\n1 = -4\n', "user.toml: [rampup]: caps.1: a cap must not be negative"),
    ('[rampup]\nstrategy = "random"\n', "user.toml: [rampup]: strategy: expected one of"),
    ('[[mx]]\nname = "default"\nhosts = ["x"]\n', "mx rules: the name 'default' is reserved"),
    ('[[mx]\n', "user.toml: not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_loading_errors_name_the_file_and_the_rule(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_mx_texts([("user.toml", text), ("builtin.toml", BUILTIN)])
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_files_on_disk(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: no such file$"):
        load_mx_rules([tmp_path / "missing.toml"])
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"bad\.toml: not UTF-8 text$"):
        load_mx_rules([bad])
    good = tmp_path / "good.toml"
    good.write_text('[[mx]]\nname = "lab"\nhosts = ["*.lab.test"]\nmax_connections = 2\n')
    rules = load_mx_rules([good])
    assert rules.match(["mx.lab.test"]).max_connections == 2


@pytest.mark.parametrize(
    ("config", "now", "age"),
    [
        (BindingConfig("127.0.0.2"), 1_800_000_000.0, 1),
        (BindingConfig("127.0.0.2", age=6), 1_800_000_000.0, 7),
        (BindingConfig("127.0.0.2", first_use="2027-01-14"), 1_800_000_000.0, 2),  # 2027-01-15
    ],
)
def test_binding_config_gives_the_age(config: BindingConfig, now: float, age: int) -> None:
    binding = config.binding(now)
    assert binding.name == "127.0.0.2" and binding.address == "127.0.0.2"
    assert binding.age_days(now) == age
    assert binding.age_days(now + 86400.0) == age + 1


def test_a_binding_not_used_yet_is_on_its_first_day() -> None:
    binding = BindingConfig("127.0.0.9", name="fresh", first_use="2030-01-01").binding(0.0)
    assert binding.name == "fresh"
    assert binding.age_days(1_800_000_000.0) == 1


def test_binding_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="first_use: expected a date like 2025-01-31"):
        BindingConfig("127.0.0.2", first_use="yesterday")
    with pytest.raises(ValueError, match="age must not be negative"):
        BindingConfig("127.0.0.2", age=-1)
