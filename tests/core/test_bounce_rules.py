"""Bounce rules as data: loading errors, ordering, matching keys, traps, the built-in set."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from mta.config.bounce_rules import builtin_rules, load_bounce_rules, parse_rules_text
from mta.config.engine import ConfigError
from mta.core.bounce import (
    BOUNCE_CLASSES,
    FAILURE_REASONS,
    BounceRules,
    condition_reply,
    effective_enhanced,
    required_literals,
    split_alternatives,
)
from mta.core.reply import parse_reply
from mta.model import Condition, Outcome, Phase, Reply

BUILTIN = load_bounce_rules()

GOOD = """
name = "x"
match = 'foo'
class = 10
type = "Hard"
reason = "User unknown"
scope = "recipient"
"""


def _rules_file(tmp_path: Path, body: str, name: str = "my-rules.toml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def _rule(**changes: object) -> str:
    """A [[rule]] table: GOOD with keys replaced (None drops a key), as TOML."""
    lines: dict[str, str] = {}
    for line in GOOD.strip().splitlines():
        key, _, text = line.partition(" = ")
        lines[key] = text
    for key, change in changes.items():
        if change is None:
            lines.pop(key, None)
        else:
            lines[key] = str(change)
    return "[[rule]]\n" + "\n".join(f"{k} = {v}" for k, v in lines.items()) + "\n"


def _classify(rules: BounceRules, raw: str, phase: str = "rcpt",
              condition: str | None = None) -> tuple[str, int, str, str, str, bool]:
    verdict = rules.classify(
        Outcome(parse_reply(raw), Phase(phase), None, Condition(condition) if condition else None)
    )
    return (verdict.rule, verdict.bounce_class.code, verdict.failure_type,
            verdict.failure_reason, verdict.scope, verdict.permanent)


# ------------------------------------------------------------------------ loading errors

BROKEN = [
    ("bad-regex", _rule(name='"gmail-quota"', match="'over (quota'"),
     "rule 2 'gmail-quota': bad regex 'over (quota'"),
    ("empty-matching-regex", _rule(match="'(foo)?'"),
     "rule 2 'x': regex '(foo)?' matches an empty"),
    ("unknown-class", _rule(**{"class": 11}), "rule 2 'x': unknown bounce class 11"),
    ("class-not-int", _rule(**{"class": '"10"'}), "rule 2 'x': class: expected an integer"),
    ("unknown-reason", _rule(reason='"Gone"'), "rule 2 'x': unknown reason 'Gone'"),
    ("bad-type", _rule(type='"Permanent"'), "rule 2 'x': bad type 'Permanent'"),
    ("type-reason-mismatch", _rule(type='"Soft"'),
     "rule 2 'x': reason 'User unknown' is Hard in Campaign, not Soft"),
    ("hard-not-permanent", _rule(permanent="false"),
     "rule 2 'x': a Hard verdict is always permanent"),
    ("unknown-key", _rule(severity='"high"'), "rule 2 'x': unknown key 'severity'"),
    ("missing-class", _rule(**{"class": None}), "rule 2 'x': missing key 'class'"),
    ("bad-scope", _rule(scope='"domain"'), "rule 2 'x': bad scope 'domain'"),
    ("bad-phase", _rule(phase='"helo"'), "rule 2 'x': unknown phase 'helo'"),
    ("bad-condition", _rule(condition='"dns"'), "rule 2 'x': unknown condition 'dns'"),
    ("bad-code", _rule(codes='"5x"'), "rule 2 'x': bad code '5x'"),
    ("bad-code-range", _rule(codes='"559-550"'), "rule 2 'x': bad code range '559-550'"),
    ("bad-enhanced", _rule(enhanced='"5.1"'), "rule 2 'x': bad enhanced code '5.1'"),
    ("permanent-not-bool", _rule(permanent='"yes"'), "rule 2 'x': permanent: expected true or"),
    ("nameless", _rule(name=None), "rule 2: missing key 'name'"),
    ("duplicate-name", _rule(), "rule 2 'x': duplicate name (rule 1 has it too)"),
]


@pytest.mark.parametrize(("body", "message"), [pytest.param(b, m, id=i) for i, b, m in BROKEN])
def test_broken_rule_names_file_and_rule(tmp_path: Path, body: str, message: str) -> None:
    path = _rules_file(tmp_path, _rule() + "\n" + body)
    with pytest.raises(ConfigError) as caught:
        load_bounce_rules([path])
    text = str(caught.value)
    assert text.startswith(f"{path}: "), text
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param("[[rule]\n", "not valid TOML", id="bad-toml"),
        pytest.param("rules = []\n", "unknown key 'rules'", id="unknown-top-level-key"),
        pytest.param("rule = 3\n", "'rule' must be an array of tables", id="rule-not-tables"),
        pytest.param("rule = [1]\n", "rule 1: expected a table", id="rule-not-a-table"),
    ],
)
def test_broken_file(tmp_path: Path, body: str, message: str) -> None:
    path = _rules_file(tmp_path, body)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_bounce_rules([path])
    assert str(caught.value).startswith(str(path))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: no such file"):
        load_bounce_rules([tmp_path / "nope.toml"])
    binary = tmp_path / "latin1.toml"
    binary.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_bounce_rules([binary])


def test_second_file_error_names_that_file(tmp_path: Path) -> None:
    first = _rules_file(tmp_path, _rule(), "a.toml")
    second = _rules_file(tmp_path, _rule(type='"Softish"'), "b.toml")
    with pytest.raises(ConfigError, match=r"b\.toml: rule 1 'x': bad type"):
        load_bounce_rules([first, second])


def test_empty_user_file_is_fine(tmp_path: Path) -> None:
    rules = load_bounce_rules([_rules_file(tmp_path, "# nothing yet\n")])
    assert len(rules.rules) == len(builtin_rules())


def test_example_config_file_loads_and_its_examples_compile() -> None:
    example = Path(__file__).parents[2] / "config" / "bounce-rules.toml"
    assert len(load_bounce_rules([example]).rules) == len(builtin_rules())
    uncommented = "\n".join(
        line[2:] if line.startswith("# [[rule]]") or re.match(r"^# [a-z]+ = ", line) else line
        for line in example.read_text(encoding="utf-8").splitlines()
    )
    names = [rule.name for rule in parse_rules_text(uncommented, "example")]
    assert names == ["partner-quota", "throttle-example-isp"]


# ------------------------------------------------------------------------ ordering


def test_user_rules_come_before_builtins(tmp_path: Path) -> None:
    path = _rules_file(tmp_path, """
[[rule]]
name = "partner-unknown-is-soft"
match = 'user unknown'
class = 20
type = "Soft"
reason = "Unreachable"
scope = "recipient"
permanent = false
""")
    raw = "550 5.1.1 <a@example.com>: Recipient address rejected: User unknown"
    assert _classify(BUILTIN, raw)[0] == "user-unknown"
    rules = load_bounce_rules([path])
    assert _classify(rules, raw) == (
        "partner-unknown-is-soft", 20, "Soft", "Unreachable", "recipient", False
    )
    explained = rules.explain(Outcome(parse_reply(raw), Phase.RCPT))
    assert explained.rule.source == str(path)
    assert explained.rule.number == 1
    # replies the user's rule does not match still get the built-in verdicts
    assert _classify(rules, "552 5.2.2 Mailbox full")[0] == "mailbox-full"


def test_files_keep_their_order_and_first_match_wins(tmp_path: Path) -> None:
    first = _rules_file(tmp_path, _rule(name='"first"'), "a.toml")
    second = _rules_file(tmp_path, _rule(name='"second"'), "b.toml")
    assert _classify(load_bounce_rules([first, second]), "550 foo")[0] == "first"
    assert _classify(load_bounce_rules([second, first]), "550 foo")[0] == "second"


def test_without_builtins_the_fallback_answers() -> None:
    rules = BounceRules(parse_rules_text(_rule(), "only.toml"))
    assert _classify(rules, "550 foo")[0] == "x"
    assert _classify(rules, "550 bar") == (
        "fallback-undetermined", 1, "Ignored", "Not defined", "recipient", True
    )


# ------------------------------------------------------------------------ matching keys

KEYS = """
[[rule]]
name = "by-condition"
condition = ["timeout", "connection_lost"]
class = 24
type = "Soft"
reason = "Unreachable"
scope = "site"

[[rule]]
name = "by-phase-and-code"
phase = "mail"
codes = ["55x", 421]
class = 50
type = "Soft"
reason = "Refused"
scope = "message"

[[rule]]
name = "by-enhanced"
enhanced = ["x.2.2", "5.7.*"]
class = 22
type = "Soft"
reason = "Mailbox full"
scope = "recipient"

[[rule]]
name = "by-range-and-text"
codes = "540-549"
match = 'zz+top'
class = 40
type = "Soft"
reason = "Not defined"
scope = "by-phase"

[[rule]]
name = "anything"
class = 1
type = "Ignored"
reason = "Not defined"
scope = "by-phase"
"""

MATCHING = [
    ("condition-timeout", "421 4.4.2 x", "data", "timeout", "by-condition", "site", False),
    # no "permanent" key: the reply code decides
    ("condition-beats-text", "550 5.2.2 full", "rcpt", "connection_lost", "by-condition", "site",
     True),
    ("condition-other", "421 4.4.2 x", "data", "tls_failure", "anything", "message", False),
    ("phase-and-code", "553 5.1.8 bad sender", "mail", None, "by-phase-and-code", "message", True),
    ("phase-and-listed-code", "421 later", "mail", None, "by-phase-and-code", "message", False),
    ("code-outside", "560 x", "mail", None, "anything", "message", True),
    ("phase-other", "553 x", "rcpt", None, "anything", "recipient", True),
    ("enhanced-any-class", "452 4.2.2 full", "rcpt", None, "by-enhanced", "recipient", False),
    ("enhanced-wildcard", "550 5.7.26 dmarc", "dot", None, "by-enhanced", "recipient", True),
    ("enhanced-disagreeing-class", "452 5.2.2 full", "rcpt", None, "by-enhanced", "recipient",
     False),
    ("enhanced-no-match", "550 5.1.1 x", "rcpt", None, "anything", "recipient", True),
    ("range-and-text", "545 ZZZTop", "ehlo", None, "by-range-and-text", "site", True),
    ("range-not-text", "545 top", "ehlo", None, "anything", "site", True),
    ("text-not-range", "550 zztop", "ehlo", None, "anything", "site", True),
    ("no-code", "zztop", "dot", None, "anything", "message", False),
]


@pytest.mark.parametrize(
    ("raw", "phase", "condition", "rule", "scope", "permanent"),
    [pytest.param(*case[1:], id=case[0]) for case in MATCHING],
)
def test_matching_keys(raw: str, phase: str, condition: str | None, rule: str, scope: str,
                       permanent: bool) -> None:
    rules = BounceRules(parse_rules_text(KEYS, "keys.toml"))
    got = _classify(rules, raw, phase, condition)
    assert (got[0], got[4], got[5]) == (rule, scope, permanent)


def test_by_phase_scope_follows_the_phase() -> None:
    rules = BounceRules(parse_rules_text(KEYS, "keys.toml"))
    scopes = {phase.value: _classify(rules, "599 x", phase.value)[4] for phase in Phase}
    assert scopes == {"connect": "site", "ehlo": "site", "starttls": "site", "mail": "message",
                      "rcpt": "recipient", "data": "message", "dot": "message"}


# ------------------------------------------------------------------------ multiline

MULTILINE = [
    ("crlf-continuations",
     "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
     "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
     "550 5.1.1 unnecessary spaces.", "user-unknown"),
    ("words-split-across-lines", "550-5.2.1 The mailbox is\r\n550 5.2.1 disabled",
     "account-disabled"),
    ("lf-only", "554-mx.example.net ESMTP\n554-No SMTP service\n554 IP address is black listed.",
     "block-ip-reputation"),
    ("keyword-on-last-line", "421-4.7.0 [203.0.113.5] Messages from your IP\r\n"
     "421 4.7.0 temporarily deferred due to user complaints", "throttle-reputation"),
    ("flattened-in-a-log", "550-5.1.1 a 550-5.1.1 b 550 5.1.1 user unknown", "user-unknown"),
]


@pytest.mark.parametrize(("raw", "rule"), [pytest.param(r, n, id=i) for i, r, n in MULTILINE])
def test_multiline_replies(raw: str, rule: str) -> None:
    assert _classify(BUILTIN, raw, "connect" if "No SMTP" in raw else "rcpt")[0] == rule


# ------------------------------------------------------------------------ traps

TRAPS = [
    # (id, reply, phase, condition, rule-or-prefix, class, type, reason, scope, permanent)
    ("552-rcpt-too-many-recipients", "552 5.5.3 Too many recipients", "rcpt", None,
     "too-many-recipients", 70, "Soft", "Unreachable", "message", False),
    ("552-rcpt-storage", "552 Requested mail action aborted: exceeded storage allocation", "rcpt",
     None, "mailbox-full", 22, "Soft", "Mailbox full", "recipient", False),
    ("552-rcpt-no-text", "552", "rcpt", None, "rcpt-552-transient", 22, "Soft", "Mailbox full",
     "recipient", False),
    ("552-dot-no-text", "552", "dot", None, "default-5xx", 40, "Soft", "Not defined", "message",
     True),
    ("452-too-many-recipients", "452 4.5.3 Too many recipients", "rcpt", None,
     "too-many-recipients", 70, "Soft", "Unreachable", "message", False),
    ("4xx-permanent-ts03", "421 4.7.0 [TS03] All messages from 203.0.113.5 will be permanently "
     "deferred; Retrying will NOT succeed.", "connect", None, "block-permanent-deferral", 51,
     "Soft", "Refused", "site", True),
    ("codes-disagree-452-5.2.2", "452 5.2.2 mailbox full", "rcpt", None, "mailbox-full", 22,
     "Soft", "Mailbox full", "recipient", False),
    ("codes-disagree-451-5.1.1", "451 5.1.1 bad destination mailbox", "rcpt", None,
     "enhanced-address-transient", 20, "Soft", "Unreachable", "recipient", False),
    ("codes-disagree-550-4.1.1", "550 4.1.1 <a@b>", "rcpt", None, "enhanced-bad-mailbox", 10,
     "Hard", "User unknown", "recipient", True),
    ("no-enhanced-user-unknown", "550 User unknown", "rcpt", None, "user-unknown", 10, "Hard",
     "User unknown", "recipient", True),
    ("no-enhanced-4xx", "451 please try later", "rcpt", None, "default-4xx", 20, "Soft",
     "Unreachable", "recipient", False),
    ("disabled-not-unknown", "550 5.2.1 <a@b>: account disabled", "rcpt", None,
     "account-disabled", 10, "Hard", "Account disabled", "recipient", True),
    ("inactive-not-unknown", "550 5.1.1 invalid mailbox: account is inactive", "rcpt", None,
     "account-disabled", 10, "Hard", "Account disabled", "recipient", True),
    ("5.2.1-enhanced-only", "550 5.2.1 <a@b>", "rcpt", None, "enhanced-mailbox-disabled", 10,
     "Hard", "Account disabled", "recipient", True),
    ("4.2.1-enhanced-only", "450 4.2.1 <a@b>", "rcpt", None, "enhanced-mailbox-disabled-transient",
     20, "Soft", "Account disabled", "recipient", False),
    ("gmail-5.2.1-rate-is-not-disabled", "550 5.2.1 The user you are trying to contact is "
     "receiving mail at a rate that prevents additional messages from being delivered.", "rcpt",
     None, "gmail-recipient-rate", 20, "Soft", "Unreachable", "recipient", False),
    ("dmarc", "550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's "
     "DMARC policy.", "dot", None, "auth-dmarc", 50, "Soft", "Refused", "message", True),
    ("spamhaus-ip", "554 5.7.1 Service unavailable; Client host [203.0.113.5] blocked using "
     "zen.spamhaus.org", "rcpt", None, "block-ip-reputation", 51, "Soft", "Refused", "site", True),
    ("greylisted", "451 4.7.1 <a@b>: Recipient address rejected: greylisted", "rcpt", None,
     "greylist", 70, "Soft", "Unreachable", "recipient", False),
    ("throttle-unusual-rate", "421 4.7.28 Our system has detected an unusual rate of unsolicited "
     "mail originating from your IP address.", "dot", None, "throttle-", 70, "Soft",
     "Unreachable", "site", False),
    ("throttle-too-many-connections", "421 4.7.0 Too many connections from your IP", "connect",
     None, "throttle-", 70, "Soft", "Unreachable", "site", False),
    ("throttle-rate-limited", "451 4.7.1 You are being rate limited", "rcpt", None, "throttle-",
     70, "Soft", "Unreachable", "site", False),
    ("throttle-connections-as-5xx", "554 5.7.1 too many concurrent connections", "connect", None,
     "throttle-connections", 70, "Soft", "Unreachable", "site", False),
    ("mailbox-full-4.2.2", "452 4.2.2 <a@b>", "rcpt", None, "mailbox-full-enhanced", 22, "Soft",
     "Mailbox full", "recipient", False),
    ("mailbox-full-5.2.2", "552 5.2.2 <a@b>", "rcpt", None, "mailbox-full-enhanced", 22, "Soft",
     "Mailbox full", "recipient", False),
    ("too-large-5.3.4", "552 5.3.4 <a@b>", "dot", None, "message-too-large-enhanced", 23,
     "Ignored", "Error ignored", "message", True),
    ("french-full", "552 5.2.2 Boîte aux lettres pleine", "rcpt", None, "mailbox-full-fr", 22,
     "Soft", "Mailbox full", "recipient", False),
    ("german-unknown", "550 5.1.1 Benutzer unbekannt", "rcpt", None, "user-unknown-de", 10,
     "Hard", "User unknown", "recipient", True),
    ("german-full", "552 Postfach voll", "rcpt", None, "mailbox-full-de", 22, "Soft",
     "Mailbox full", "recipient", False),
    ("spanish-unknown", "550 usuario desconocido", "rcpt", None, "user-unknown-es-it-pt-nl", 10,
     "Hard", "User unknown", "recipient", True),
    ("unknown-user-at-mail-is-our-sender", "550 5.1.0 <b@ours>: Sender address rejected: User "
     "unknown in local recipient table", "mail", None, "sender-rejected", 50, "Soft", "Refused",
     "message", True),
    ("5xx-greeting", "554 mx.example.net ESMTP not accepting messages", "connect", None,
     "connect-rejected", 50, "Soft", "Refused", "site", True),
    ("unmatched-5xx-is-not-hard", "550 5.0.0 something new", "rcpt", None, "default-5xx", 40,
     "Soft", "Not defined", "recipient", True),
    ("nxdomain", "451 4.1.2 Host or domain name not found", "connect", "dns_nxdomain",
     "dns-nxdomain", 21, "Soft", "Invalid domain", "message", False),
    ("dns-temporary", "451 4.4.3 SERVFAIL", "connect", "dns_failure", "dns-failure", 21, "Soft",
     "Invalid domain", "message", False),
    ("null-mx", "556 5.1.10 Recipient address has null MX", "connect", "null_mx", "null-mx", 10,
     "Hard", "User unknown", "message", True),
    ("refused", "421 4.4.1 Connection refused", "connect", "connection_refused",
     "connection-refused", 20, "Soft", "Unreachable", "site", False),
    ("timeout", "421 4.4.2 timed out", "rcpt", "timeout", "connection-timeout", 24, "Soft",
     "Unreachable", "site", False),
    ("tls", "421 4.7.5 handshake failed", "starttls", "tls_failure", "tls-failure", 20, "Soft",
     "Unreachable", "site", False),
    ("lost", "421 4.4.2 lost", "dot", "connection_lost", "connection-lost", 20, "Soft",
     "Unreachable", "site", False),
]


@pytest.mark.parametrize(
    ("raw", "phase", "condition", "rule", "cls", "ftype", "reason", "scope", "permanent"),
    [pytest.param(*case[1:], id=case[0]) for case in TRAPS],
)
def test_traps(raw: str, phase: str, condition: str | None, rule: str, cls: int, ftype: str,
               reason: str, scope: str, permanent: bool) -> None:
    got = _classify(BUILTIN, raw, phase, condition)
    assert got[0] == rule or (rule.endswith("-") and got[0].startswith(rule)), got
    assert got[1:] == (cls, ftype, reason, scope, permanent)


def test_reason_codes_follow_campaign() -> None:
    expected = {"Not defined": 0, "User unknown": 1, "Invalid domain": 2, "Unreachable": 3,
                "Account disabled": 4, "Mailbox full": 5, "Not connected": 6,
                "Address not specified": 7, "Denylisted": 8, "Address in quarantine": 9,
                "Refused": 20, "Error ignored": 25, "Control address": 127}
    assert {label: code for label, (code, _) in FAILURE_REASONS.items()} == expected
    verdict = BUILTIN.classify(Outcome(parse_reply("552 5.2.2 full"), Phase.RCPT))
    assert (verdict.failure_reason, verdict.reason_code) == ("Mailbox full", 5)


# ------------------------------------------------------------------------ the built-in set


def test_builtin_set_is_consistent() -> None:
    rules = builtin_rules()
    names = [rule.name for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule.bounce_class.name == BOUNCE_CLASSES[rule.bounce_class.code]
        if rule.name.startswith("throttle-"):
            assert rule.scope == "site" and rule.permanent is False, rule.name
            assert rule.failure_type == "Soft", rule.name
    # the set ends with catch-alls, so the engine's own fallback is never reached
    last = rules[-1]
    assert (last.pattern, last.codes, last.phases, last.conditions, last.enhanced) == (
        None, None, None, None, None
    )
    for condition in Condition:
        rule = BUILTIN.explain(Outcome(condition_reply(condition), Phase.CONNECT, None,
                                       condition)).rule
        assert rule.conditions == frozenset({condition}), condition


def test_condition_reply() -> None:
    assert condition_reply(Condition.NULL_MX) == Reply(556, "5.1.10",
                                                       "Recipient address has null MX")
    detailed = condition_reply(Condition.DNS_NXDOMAIN, "example.invalid")
    assert detailed.code == 451 and detailed.text.endswith(": example.invalid")


def test_effective_enhanced() -> None:
    assert effective_enhanced(Reply(550, "5.1.1", "x")) == "5.1.1"
    assert effective_enhanced(parse_reply("452 5.2.2 full")) == "5.2.2"
    assert effective_enhanced(Reply(550, None, "mailbox 5.2.2")) is None


# ------------------------------------------------------------------------ the pre-filter

LITERALS = [
    ("plain", "user unknown", {"user unknown"}),
    ("alternation", "user unknown|no such user", {"user unknown", "no such user"}),
    ("optional-breaks-run", "user ?unknown", {"unknown"}),
    ("group", "(mailbox|inbox) is full", {" is full"}),
    ("anchors-are-transparent", r"^550 \buser\b", {"550 user"}),
    ("non-ascii-breaks-run", "boîte pleine", {"te pleine"}),
    ("short-alternative-gives-up", "ab|user unknown", None),
    ("classes-only", r"[a-z]+\d", None),
    ("repeat-min-one", "(spam)+ found", {" found"}),
    ("lower-cased", "DMARC", {"dmarc"}),
]


@pytest.mark.parametrize(("pattern", "want"), [pytest.param(p, w, id=i) for i, p, w in LITERALS])
def test_required_literals(pattern: str, want: set[str] | None) -> None:
    got = required_literals(pattern)
    assert (set(got) if got is not None else None) == want


SPLITS = [
    ("top-level", "a|b(c|d)", ["a", "b(c|d)"]),
    ("class-bar", "[|]x|y", ["[|]x", "y"]),
    ("escaped-bar", r"\|x|y", [r"\|x", "y"]),
    ("class-with-bracket", r"[]|]x|y", ["[]|]x", "y"]),
    ("no-bar", "abc", ["abc"]),
    ("backreference", r"(a)|b\1", [r"(a)|b\1"]),
    ("inline-flags", "(?x)a | b", ["(?x)a | b"]),
]


@pytest.mark.parametrize(("pattern", "want"), [pytest.param(p, w, id=i) for i, p, w in SPLITS])
def test_split_alternatives(pattern: str, want: list[str]) -> None:
    assert split_alternatives(pattern) == want


def test_fold_covers_every_character_matching_ascii_case_insensitively() -> None:
    """The pre-filter lower-cases ASCII; these are the only other characters an
    IGNORECASE regex matches with an ASCII letter, and the engine maps them."""
    letter = re.compile("[a-z]", re.IGNORECASE)
    odd = {chr(c) for c in range(128, sys.maxunicode + 1) if letter.fullmatch(chr(c))}
    assert odd == {"\u0130", "\u0131", "\u017f", "\u212a"}
    rules = BounceRules(parse_rules_text(_rule(match="'user unknown'"), "f.toml"))
    assert _classify(rules, "550 u\u017fer un\u212anown")[0] == "x"


# ------------------------------------------------------------------------ cache


def test_cache_is_bounded_and_transparent() -> None:
    rules = load_bounce_rules(cache_size=8)
    outcomes = [Outcome(parse_reply(f"550 5.1.1 user {n} unknown"), Phase.RCPT) for n in range(50)]
    first = [rules.classify(o) for o in outcomes]
    info = rules._lookup.cache_info()
    assert info.currsize == 8 and info.maxsize == 8
    assert [rules.classify(o) for o in outcomes] == first
    # the same text in another phase is another key
    assert rules.classify(Outcome(parse_reply("550 5.1.1 x"), Phase.MAIL)).scope == "message"
    assert rules.classify(Outcome(parse_reply("550 5.1.1 x"), Phase.RCPT)).scope == "recipient"
    rules.cache_clear()
    assert rules._lookup.cache_info().currsize == 0
    with pytest.raises(ValueError):
        BounceRules([], cache_size=-1)


# --- "this reply means slow down" is a rule field, not a name --------------------------------

SLOW = Outcome(Reply(421, "4.7.0", "mx.partner.test says slow down"), Phase.CONNECT, "mx")
SLOW_RULE = """
[[rule]]
name = "{name}"
{extra}
match = 'slow down'
class = 70
type = "Soft"
reason = "Unreachable"
scope = "site"
"""


def test_throttle_true_marks_the_verdict_and_the_schedule_and_throttle_act_on_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mta.config.mx_rules import load_mx_data, load_retry_schedule
    from mta.core.bounce import BounceRules

    text = SLOW_RULE.format(name="partner-busy", extra="throttle = true")
    rules = BounceRules(parse_rules_text(text, "mine.toml"))
    verdict = rules.classify(SLOW)
    assert (verdict.rule, verdict.throttle) == ("partner-busy", True)
    assert not caplog.records  # nothing deprecated here
    assert load_retry_schedule().policy_for(verdict).name == "throttle"
    backoff = next(a for a in load_mx_data().global_adaptive if a.name == "throttle-backoff")
    assert backoff.throttle is True and backoff.matches(verdict, str(SLOW.reply))
    plain = BounceRules(parse_rules_text(SLOW_RULE.format(name="busy", extra=""), "m.toml"))
    assert plain.classify(SLOW).throttle is False
    assert not backoff.matches(plain.classify(SLOW), str(SLOW.reply))


def test_the_old_name_prefix_still_marks_a_throttle_with_a_deprecation_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = SLOW_RULE.format(name="throttle-partner", extra="")
    with caplog.at_level("WARNING", logger="mta.config"):
        (rule,) = parse_rules_text(text, "mine.toml")
    assert rule.throttle is True
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("mine.toml: rule 1 'throttle-partner': a name starting 'throttle-'")
    assert message.endswith("add throttle = true to the rule")
    caplog.clear()
    explicit = SLOW_RULE.format(name="throttle-partner", extra="throttle = false")
    (rule,) = parse_rules_text(explicit, "mine.toml")
    assert rule.throttle is False and not caplog.records  # the key decides when given


def test_throttle_must_be_a_boolean() -> None:
    text = SLOW_RULE.format(name="busy", extra='throttle = "yes"')
    expected = r"^mine.toml: rule 1 'busy': throttle: expected true or false"
    with pytest.raises(ConfigError, match=expected):
        parse_rules_text(text, "mine.toml")


def test_every_builtin_throttling_rule_says_so_and_warns_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mta.config.bounce_rules import BUILTIN_SOURCE
    from mta.config.engine import parse_toml

    resource = Path(__file__).resolve().parents[2] / BUILTIN_SOURCE
    with caplog.at_level("WARNING", logger="mta.config"):
        parse_rules_text(resource.read_text(), BUILTIN_SOURCE)
    assert not caplog.records
    tables = parse_toml(resource.read_text(), BUILTIN_SOURCE)["rule"]
    marked = [t["name"] for t in tables if t.get("throttle")]
    assert marked and all(name.startswith("throttle-") for name in marked)
