"""The built-in rules against a corpus of real-world replies (tests/data/bounce_corpus.jsonl).

Each row is its own test: the reply (as a server sent it, multiline with CRLF), the
phase and local condition, the expected verdict and the source of the text. A second
table checks that the fast engine (bucketed, literal pre-filter, split regexes) gives
exactly what a plain first-match walk over the rules gives, on the corpus and on
deterministic variations of it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from mta.config.bounce_rules import load_bounce_rules
from mta.core.bounce import BounceRules, Rule, effective_enhanced, joined_text
from mta.core.reply import parse_reply
from mta.model import Condition, Outcome, Phase

CORPUS = Path(__file__).parents[1] / "data" / "bounce_corpus.jsonl"


def _rows() -> list[dict[str, Any]]:
    with CORPUS.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


ROWS = _rows()
RULES = load_bounce_rules(cache_size=0)


def _outcome(row: dict[str, Any]) -> Outcome:
    condition = row.get("condition")
    return Outcome(
        parse_reply(row["reply"]),
        Phase(row.get("phase", "rcpt")),
        None,
        Condition(condition) if condition else None,
    )


def test_corpus_is_large_and_sourced() -> None:
    assert len(ROWS) >= 150
    ids = [row["id"] for row in ROWS]
    assert len(ids) == len(set(ids))
    for row in ROWS:
        assert row["source"].strip(), row["id"]
        assert set(row["expect"]) >= {"class", "type", "reason", "scope", "permanent"}, row["id"]


@pytest.mark.parametrize("row", [pytest.param(row, id=row["id"]) for row in ROWS])
def test_corpus_row(row: dict[str, Any]) -> None:
    verdict = RULES.classify(_outcome(row))
    expect = row["expect"]
    got = {
        "class": verdict.bounce_class.code,
        "type": verdict.failure_type,
        "reason": verdict.failure_reason,
        "scope": verdict.scope,
        "permanent": verdict.permanent,
    }
    wanted = {key: expect[key] for key in got}
    assert got == wanted, f"rule {verdict.rule!r} for {row['reply']!r} ({row['source']})"
    if "rule" in expect:
        assert verdict.rule == expect["rule"]
    if "rule_prefix" in expect:
        assert verdict.rule.startswith(expect["rule_prefix"]), verdict.rule


# ------------------------------------------------------------------ engine equivalence


def _plain_first_match(rules: BounceRules, outcome: Outcome) -> Rule | None:
    """The rules' meaning, without any of the engine's shortcuts."""
    reply = outcome.reply
    for rule in rules.rules:
        if rule.conditions is not None and outcome.condition not in rule.conditions:
            continue
        if rule.phases is not None and outcome.phase not in rule.phases:
            continue
        if rule.codes is not None and reply.code not in rule.codes:
            continue
        if rule.enhanced is not None:
            enhanced = effective_enhanced(reply)
            if enhanced is None:
                continue
            parts = enhanced.split(".")
            if not any(
                all(want in ("*", have) for want, have in zip(pattern, parts, strict=True))
                for pattern in rule.enhanced
            ):
                continue
        if rule.pattern is not None and rule.pattern.search(joined_text(reply)) is None:
            continue
        return rule
    return None


def _variants() -> list[tuple[str, str, Outcome]]:
    """Corpus replies as sent, upper-cased, with the odd case-folding characters, and
    deterministic word salads of the corpus vocabulary with random codes and phases."""
    cases: list[tuple[str, str, Outcome]] = []
    for row in ROWS:
        outcome = _outcome(row)
        cases.append((row["id"], "as-is", outcome))
        for label, text in (
            ("upper", row["reply"].upper()),
            ("swapcase", row["reply"].swapcase()),
            # "ſ" matches "s" and "K" (Kelvin) matches "k" in a case-insensitive regex
            ("fold", row["reply"].replace("s", "\u017f").replace("k", "\u212a")),
        ):
            cases.append((row["id"], label, Outcome(parse_reply(text), outcome.phase, None,
                                                    outcome.condition)))
    rng = random.Random(20240607)
    words = sorted({word for row in ROWS for word in parse_reply(row["reply"]).text.split()})
    codes = ["421", "450", "451", "452", "550", "552", "553", "554", "0"]
    enhanced = ["", "4.2.2", "5.1.1", "5.7.1", "4.7.0", "5.2.1", "5.3.4", "4.5.3", "5.1.10"]
    phases = list(Phase)
    for number in range(1500):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        raw = f"{rng.choice(codes)} {rng.choice(enhanced)} {text}".strip()
        cases.append((f"salad-{number}", "salad", Outcome(parse_reply(raw), rng.choice(phases))))
    return cases


def test_engine_matches_plain_walk() -> None:
    mismatches = []
    for ident, label, outcome in _variants():
        fast = RULES.explain(outcome).rule
        plain = _plain_first_match(RULES, outcome)
        if plain is None or fast.name != plain.name:
            mismatches.append((ident, label, str(outcome.reply), fast.name, plain and plain.name))
    assert mismatches == []


def test_cached_and_uncached_agree() -> None:
    cached = load_bounce_rules(cache_size=64)
    for ident, label, outcome in _variants()[:600]:
        assert cached.classify(outcome) == RULES.classify(outcome), (ident, label)
