"""Qualify a failed outcome: Reply + phase + local condition -> Verdict (pure).

The judgement is data: an ordered list of rules, first match wins. A rule
matches on any combination of

- ``match``: a regex (always case-insensitive) over the joined reply
  ``"code enhanced text"`` (multiline replies are already joined by the parser),
- ``phase``: SMTP phases (`mta.model.Phase`),
- ``condition``: local conditions (`mta.model.Condition`),
- ``codes``: basic reply codes (``550``, ``"55x"``, ``"5xx"``, ``"550-559"``),
- ``enhanced``: RFC 3463 codes (``"5.1.1"``; ``x`` or ``*`` is a wildcard part,
  ``"x.2.2"`` is 4.2.2 or 5.2.2),

and gives a Momentum bounce class, a Campaign failure type and reason, a scope
(``recipient``, ``message``, ``site`` or ``by-phase``) and whether the failure
is permanent (default: a Hard verdict is permanent, otherwise the reply's basic
code decides: >= 500). Users' rule files come in front of the built-in set
(``mta/defaults/bounce-rules.toml``); `mta.config.bounce_rules` reads and checks them
(a broken rule is a `ConfigError` naming the file and the rule).

When the basic and the enhanced code disagree ("452 5.2.2 ..."), the basic code
decides transient versus permanent (it is what RFC 5321 clients act on) and the
enhanced code still says what kind of failure it is: ``enhanced`` matching uses
an enhanced code found at the start of the text whatever its class.

Speed (a Python `re` call costs 1-100 us, so most must not run):
- rules are bucketed by (basic code, phase, condition) on first use;
- each regex is split at its top-level ``|``; each alternative carries the
  ASCII literals one of which any match must contain (read from the parsed
  pattern with the stdlib's own parser);
- one scan of the lower-cased reply with a trie of every literal of every rule
  (a single compiled regex) says which alternatives can match; only those run;
- verdicts are cached by (reply, phase, condition) in a bounded LRU.
"""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from mta.model import BounceClass, Condition, FailureType, Outcome, Phase, Reply, Scope, Verdict

# Momentum's bounce classes (SparkPost's public table).
BOUNCE_CLASSES: Final[Mapping[int, str]] = {
    1: "Undetermined",
    10: "Invalid Recipient",
    20: "Soft Bounce",
    21: "DNS Failure",
    22: "Mailbox Full",
    23: "Too Large",
    24: "Timeout",
    25: "Admin Failure",
    30: "Generic Bounce: No RCPT",
    40: "Generic Bounce",
    50: "Mail Block",
    51: "Spam Block",
    52: "Spam Content",
    53: "Prohibited Attachment",
    54: "Relaying Denied",
    60: "Auto-Reply",
    70: "Transient Failure",
    80: "Subscribe",
    90: "Unsubscribe",
    100: "Challenge-Response",
}

_ANY_TYPE: Final = frozenset({"Hard", "Soft", "Ignored"})

# Campaign's failure reasons: label -> (numeric code, failure types Campaign documents for it).
FAILURE_REASONS: Final[Mapping[str, tuple[int, frozenset[str]]]] = {
    "Not defined": (0, _ANY_TYPE),
    "User unknown": (1, frozenset({"Hard"})),
    "Invalid domain": (2, frozenset({"Soft"})),
    "Unreachable": (3, frozenset({"Soft", "Hard"})),
    "Account disabled": (4, frozenset({"Soft", "Hard"})),
    "Mailbox full": (5, frozenset({"Soft"})),
    "Not connected": (6, frozenset({"Ignored"})),
    "Address not specified": (7, frozenset({"Hard"})),
    "Denylisted": (8, frozenset({"Hard"})),
    "Address in quarantine": (9, frozenset({"Hard"})),
    "Refused": (20, frozenset({"Soft", "Hard"})),
    "Error ignored": (25, frozenset({"Ignored"})),
    "Control address": (127, _ANY_TYPE),
}

SCOPE_BY_PHASE: Final = "by-phase"

# The scope a "by-phase" rule gives: a failure before MAIL is about the site, at MAIL
# about the message (its sender), at RCPT about the recipient, after it about the message.
_PHASE_SCOPE: Final[Mapping[Phase, Scope]] = {
    Phase.CONNECT: "site",
    Phase.EHLO: "site",
    Phase.STARTTLS: "site",
    Phase.MAIL: "message",
    Phase.RCPT: "recipient",
    Phase.DATA: "message",
    Phase.DOT: "message",
}


_ENHANCED_AT_START = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")

# Characters outside ASCII that a case-insensitive regex matches with an ASCII
# letter (or whose lower case contains one); mapped before the literal pre-filter.
_FOLD: Final = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})

DEFAULT_CACHE_SIZE: Final = 4096


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. `number` is its 1-based position in `source`."""

    name: str
    source: str
    number: int
    bounce_class: BounceClass
    failure_type: FailureType
    failure_reason: str
    reason_code: int
    scope: str  # a Scope or "by-phase"
    permanent: bool | None  # None: Hard -> True, else the reply code decides
    pattern: re.Pattern[str] | None = None
    # The pattern split at its top-level "|": (regex, literals one of which any match
    # contains, or None when none could be read).
    alternatives: tuple[tuple[re.Pattern[str], frozenset[str] | None], ...] = ()
    phases: frozenset[Phase] | None = None
    conditions: frozenset[Condition] | None = None
    codes: frozenset[int] | None = None
    enhanced: tuple[tuple[str, str, str], ...] | None = None
    comment: str = ""
    throttle: bool = False  # a reply asking us to slow down (the verdict says so)

    @property
    def where(self) -> str:
        return f"{self.source}: rule {self.number} '{self.name}'"

    def verdict(self, reply: Reply, phase: Phase) -> Verdict:
        if self.permanent is not None:
            permanent = self.permanent
        else:
            permanent = self.failure_type == "Hard" or reply.code >= 500
        scope = _PHASE_SCOPE[phase] if self.scope == SCOPE_BY_PHASE else cast(Scope, self.scope)
        return Verdict(
            bounce_class=self.bounce_class,
            failure_type=self.failure_type,
            failure_reason=self.failure_reason,
            reason_code=self.reason_code,
            scope=scope,
            permanent=permanent,
            rule=self.name,
            throttle=self.throttle,
        )


@dataclass(frozen=True, slots=True)
class Explanation:
    """A verdict with the rule that gave it and the text the rules saw."""

    verdict: Verdict
    rule: Rule
    joined: str


# A last resort if no rule matches (the built-in set ends with catch-alls, so only
# a hand-built BounceRules without them can reach it).
FALLBACK_RULE: Final = Rule(
    name="fallback-undetermined",
    source="mta.core.bounce",
    number=1,
    bounce_class=BounceClass(1, BOUNCE_CLASSES[1]),
    failure_type="Ignored",
    failure_reason="Not defined",
    reason_code=0,
    scope=SCOPE_BY_PHASE,
    permanent=None,
    comment="no rule matched",
)


def effective_enhanced(reply: Reply) -> str | None:
    """The reply's enhanced code, or one at the start of its text whose class disagrees."""
    if reply.enhanced:
        return reply.enhanced
    match = _ENHANCED_AT_START.match(reply.text)
    return match.group(0) if match else None


def joined_text(reply: Reply) -> str:
    """What `match` regexes see: "code enhanced text" ("550 5.1.1 ...")."""
    return str(reply)


# --- condition replies ------------------------------------------------------------

_CONDITION_REPLIES: Final[Mapping[Condition, Reply]] = {
    Condition.DNS_NXDOMAIN: Reply(451, "4.4.4", "Host or domain name not found (NXDOMAIN)"),
    Condition.DNS_FAILURE: Reply(451, "4.4.3", "Temporary DNS failure"),
    Condition.NULL_MX: Reply(556, "5.1.10", "Recipient address has null MX"),
    Condition.NO_ADDRESS: Reply(451, "4.4.4", "No usable address for the MX hosts"),
    Condition.CONNECTION_REFUSED: Reply(421, "4.4.1", "Connection refused"),
    Condition.TIMEOUT: Reply(421, "4.4.2", "Connection timed out"),
    Condition.TLS_FAILURE: Reply(421, "4.7.5", "TLS handshake failed"),
    Condition.CONNECTION_LOST: Reply(421, "4.4.2", "Connection lost"),
    Condition.PROTOCOL_ERROR: Reply(421, "4.5.0", "Protocol error: malformed reply"),
    Condition.LOCAL_ERROR: Reply(451, "4.3.0", "Local error in processing"),
    Condition.VALIDITY_EXPIRED: Reply(
        451, "4.4.7", "Delivery time expired: the validity period ended before delivery"
    ),
}


def condition_reply(condition: Condition, detail: str = "") -> Reply:
    """The reply the MTA records for a local condition (RFC 7505's 556 5.1.10 for null MX)."""
    base = _CONDITION_REPLIES[condition]
    if not detail:
        return base
    return Reply(base.code, base.enhanced, f"{base.text}: {detail}")


# --- the engine -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Bucket:
    """The rules that can match one (code, phase, condition), as indexes in rule order."""

    head: tuple[Rule, ...]  # leading rules without a regex: tried before any scan
    members: frozenset[int]  # the rest
    always: frozenset[int]  # members to try whatever the scan finds


class BounceRules:
    """An ordered rule list, first match wins; `classify` is cached by reply and context."""

    def __init__(self, rules: Sequence[Rule], cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.cache_size = cache_size
        self._buckets: dict[tuple[int, Phase, Condition | None], _Bucket] = {}
        # Every alternative of every rule gets an id; literals map to the ids they admit.
        self._alt_regex: list[re.Pattern[str]] = []
        self._rule_alts: list[frozenset[int]] = []  # per rule, its filtered ids
        self._rule_always: list[tuple[re.Pattern[str], ...]] = []  # per rule, unfiltered regexes
        self._always_rules: set[int] = set()
        owners: dict[str, set[int]] = {}
        alt_rule: list[int] = []
        for index, rule in enumerate(self.rules):
            filtered: set[int] = set()
            always: list[re.Pattern[str]] = []
            for regex, literals in rule.alternatives:
                if literals is None:
                    always.append(regex)
                    continue
                alt_id = len(alt_rule)
                alt_rule.append(index)
                self._alt_regex.append(regex)
                filtered.add(alt_id)
                for literal in literals:
                    owners.setdefault(literal, set()).add(alt_id)
            if rule.pattern is None or always:
                self._always_rules.add(index)
            self._rule_alts.append(frozenset(filtered))
            self._rule_always.append(tuple(always))
        # A scan reports the longest literal starting at each position; every literal that
        # is a prefix of it is there too, so each literal expands to its prefixes' owners.
        self._expand_alts: dict[str, frozenset[int]] = {}
        self._expand_rules: dict[str, frozenset[int]] = {}
        for literal in owners:
            ids: set[int] = set()
            for size in range(1, len(literal) + 1):
                ids.update(owners.get(literal[:size], ()))
            self._expand_alts[literal] = frozenset(ids)
            self._expand_rules[literal] = frozenset(alt_rule[i] for i in ids)
        self._scan = re.compile(f"(?=({_trie_pattern(owners)}))") if owners else None
        self._lookup: Any
        if cache_size:
            self._lookup = functools.lru_cache(maxsize=cache_size)(self._evaluate)
        else:
            self._lookup = self._evaluate

    def classify(self, outcome: Outcome) -> Verdict:
        """The verdict for a failed outcome."""
        found: tuple[Rule, Verdict] = self._lookup(outcome.reply, outcome.phase, outcome.condition)
        return found[1]

    def explain(self, outcome: Outcome) -> Explanation:
        """The verdict with the rule that matched (for `mta classify` and the admin API)."""
        rule, verdict = self._lookup(outcome.reply, outcome.phase, outcome.condition)
        return Explanation(verdict, rule, joined_text(outcome.reply))

    def cache_clear(self) -> None:
        if self.cache_size:
            self._lookup.cache_clear()

    def _bucket(self, code: int, phase: Phase, condition: Condition | None) -> _Bucket:
        # Codes outside 0-999 share one key so the dict stays bounded (1000 x 7 x 10 at most).
        key = (code if 0 <= code <= 999 else -1, phase, condition)
        found = self._buckets.get(key)
        if found is None:
            indexes = [
                index
                for index, rule in enumerate(self.rules)
                if (rule.codes is None or code in rule.codes)
                and (rule.phases is None or phase in rule.phases)
                and (rule.conditions is None or condition in rule.conditions)
            ]
            head: list[Rule] = []
            while indexes and self.rules[indexes[0]].pattern is None:
                head.append(self.rules[indexes.pop(0)])
            members = frozenset(indexes)
            found = _Bucket(tuple(head), members, members & self._always_rules)
            self._buckets[key] = found
        return found

    def _evaluate(
        self, reply: Reply, phase: Phase, condition: Condition | None
    ) -> tuple[Rule, Verdict]:
        rule = self._first_match(reply, phase, condition)
        return rule, rule.verdict(reply, phase)

    def _first_match(self, reply: Reply, phase: Phase, condition: Condition | None) -> Rule:
        bucket = self._bucket(reply.code, phase, condition)
        enhanced_parts: list[str] | None = None
        for rule in bucket.head:
            if rule.enhanced is not None:
                if enhanced_parts is None:
                    enhanced_parts = _enhanced_parts(reply)
                if not _enhanced_matches(rule.enhanced, enhanced_parts):
                    continue
            return rule
        if not bucket.members:
            return FALLBACK_RULE
        joined = joined_text(reply)
        present: set[int] = set()
        candidates: set[int] = set(bucket.always)
        if self._scan is not None:
            folded = (joined if joined.isascii() else joined.translate(_FOLD)).lower()
            for literal in set(self._scan.findall(folded)):
                present.update(self._expand_alts[literal])
                candidates.update(self._expand_rules[literal])
            candidates &= bucket.members
        for index in sorted(candidates):
            rule = self.rules[index]
            if rule.enhanced is not None:
                if enhanced_parts is None:
                    enhanced_parts = _enhanced_parts(reply)
                if not _enhanced_matches(rule.enhanced, enhanced_parts):
                    continue
            if rule.pattern is not None and not self._pattern_matches(index, joined, present):
                continue
            return rule
        return FALLBACK_RULE

    def _pattern_matches(self, index: int, joined: str, present: set[int]) -> bool:
        for regex in self._rule_always[index]:
            if regex.search(joined) is not None:
                return True
        alt_regex = self._alt_regex
        for alt_id in self._rule_alts[index] & present:
            if alt_regex[alt_id].search(joined) is not None:
                return True
        return False


def _enhanced_parts(reply: Reply) -> list[str]:
    enhanced = effective_enhanced(reply)
    return enhanced.split(".") if enhanced else []


def _enhanced_matches(patterns: tuple[tuple[str, str, str], ...], parts: list[str]) -> bool:
    if not parts:
        return False
    for a, b, c in patterns:
        if (
            (a == "*" or a == parts[0])
            and (b == "*" or b == parts[1])
            and (c == "*" or c == parts[2])
        ):
            return True
    return False


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex matching the longest of `words` at a position (a trie, so it scans fast)."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [re.escape(char) + build(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:  # a word ends here; longer ones are tried first
            return f"(?:{body})?"
        return body

    return build(root)


# --- required literals of a regex (the pre-filter) -----------------------------------


def required_literals(pattern: str, flags: int = re.IGNORECASE) -> frozenset[str] | None:
    """Lower-case ASCII strings one of which every match of `pattern` contains, or None.

    Read from the parsed pattern (the stdlib's own parser); anything it cannot
    prove gives None, which only costs speed: the regex then always runs.
    """
    try:
        parser = importlib.import_module("re._parser")
        constants = importlib.import_module("re._constants")
        tree = parser.parse(pattern, flags)
        found = _required(tree, constants)
    except Exception:  # an internal API: never let it break loading
        return None
    if found is None or min(len(item) for item in found) < 3:
        return None
    return found


def split_alternatives(pattern: str) -> list[str]:
    """`pattern` split at its top-level "|" (a search for A|B matches iff A or B matches).

    The whole pattern comes back unsplit when splitting could change its meaning:
    inline flags, back references, conditionals, or a piece that does not compile.
    """
    whole = [pattern]
    if re.search(r"\\\d|\(\?P=|\(\?\(|\(\?[aiLmsux-]+[):]", pattern):
        return whole
    pieces: list[str] = []
    depth = 0
    start = 0
    index = 0
    in_class = False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            # a "]" first in the class (after an optional "^") is a literal
            if pattern[index + 1 : index + 2] == "^":
                index += 1
            if pattern[index + 1 : index + 2] == "]":
                index += 1
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            pieces.append(pattern[start:index])
            start = index + 1
        index += 1
    pieces.append(pattern[start:])
    if len(pieces) == 1 or depth != 0 or in_class:
        return whole
    for piece in pieces:
        try:
            compiled = re.compile(piece, re.IGNORECASE)
        except re.error:
            return whole
        if not piece or compiled.search("") is not None:
            return whole
    return pieces


def _score(found: frozenset[str] | None) -> tuple[int, int]:
    if not found:
        return (-1, 0)
    return (min(len(item) for item in found), -len(found))


def _required(items: Iterable[tuple[Any, Any]], c: Any) -> frozenset[str] | None:
    best: frozenset[str] | None = None
    run: list[str] = []

    def better(candidate: frozenset[str] | None) -> None:
        nonlocal best
        if candidate and _score(candidate) > _score(best):
            best = candidate

    for op, av in items:
        if op == c.LITERAL and av < 128:
            run.append(chr(av).lower())
            continue
        if op == c.AT:  # zero width: the literals around stay adjacent
            continue
        if run:
            better(frozenset({"".join(run)}))
            run = []
        if op == c.SUBPATTERN:
            better(_required(av[-1], c))
        elif op == c.ATOMIC_GROUP:
            better(_required(av, c))
        elif op == c.BRANCH:
            alternatives = [_required(branch, c) for branch in av[1]]
            if all(alternatives):
                better(frozenset().union(*cast(list[frozenset[str]], alternatives)))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT) and av[0] >= 1:
            better(_required(av[2], c))
    if run:
        better(frozenset({"".join(run)}))
    return best
