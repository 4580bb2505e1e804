"""The bounce rule files: read, checked and compiled into `mta.core.bounce.Rule`s.

Users' files (``bounce.rules_files``) come in front of the built-in set shipped in
``mta/defaults/bounce-rules.toml``. Every problem is a `ConfigError` naming the file and the
rule, e.g. ``my-rules.toml: rule 3 'dmarc': unknown reason 'Spam'``. The matcher itself is
pure and lives in `mta.core.bounce`.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from mta.config.engine import ConfigError, parse_toml, read_text
from mta.core.bounce import (
    BOUNCE_CLASSES,
    DEFAULT_CACHE_SIZE,
    FAILURE_REASONS,
    SCOPE_BY_PHASE,
    BounceRules,
    Rule,
    required_literals,
    split_alternatives,
)
from mta.model import BounceClass, Condition, FailureType, Phase

_RULE_KEYS: Final = (
    "name",
    "match",
    "phase",
    "condition",
    "codes",
    "enhanced",
    "class",
    "type",
    "reason",
    "scope",
    "permanent",
    "throttle",
    "comment",
)
_TYPES: Final[Mapping[str, FailureType]] = {"hard": "Hard", "soft": "Soft", "ignored": "Ignored"}
_SCOPES: Final = ("recipient", "message", "site", SCOPE_BY_PHASE)
_CODE_RANGE = re.compile(r"(\d{3})-(\d{3})")
_CODE_MASK = re.compile(r"(\d)([\dx])([\dx])")
BUILTIN_SOURCE: Final = "mta/defaults/bounce-rules.toml"
# Before `throttle = true`, a rule's name starting with this marked a throttling reply. A
# user's rule named so without the key still is one, with a warning saying what to write.
DEPRECATED_THROTTLE_PREFIX: Final = "throttle-"

log = logging.getLogger("mta.config")


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _parse_codes(value: Any) -> frozenset[int]:
    codes: set[int] = set()
    for item in _as_list(value):
        if isinstance(item, bool):
            raise ValueError(f"bad code {item!r}")
        if isinstance(item, int):
            if not 0 <= item <= 999:
                raise ValueError(f"bad code {item!r} (expected 000-999)")
            codes.add(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"bad code {item!r}")
        text = item.strip().lower()
        span = _CODE_RANGE.fullmatch(text)
        if span:
            low, high = int(span.group(1)), int(span.group(2))
            if low > high:
                raise ValueError(f"bad code range {item!r}")
            codes.update(range(low, high + 1))
            continue
        mask = _CODE_MASK.fullmatch(text)
        if not mask:
            raise ValueError(f"bad code {item!r} (expected 550, '55x', '5xx' or '550-559')")
        tens = range(10) if mask.group(2) == "x" else [int(mask.group(2))]
        units = range(10) if mask.group(3) == "x" else [int(mask.group(3))]
        codes.update(int(mask.group(1)) * 100 + t * 10 + u for t in tens for u in units)
    if not codes:
        raise ValueError("codes is empty")
    return frozenset(codes)


def _parse_enhanced(value: Any) -> tuple[tuple[str, str, str], ...]:
    out: list[tuple[str, str, str]] = []
    for item in _as_list(value):
        parts = item.strip().lower().split(".") if isinstance(item, str) else []
        ok = len(parts) == 3 and all(p == "*" or p == "x" or p.isdigit() for p in parts)
        if not ok or parts[0] not in ("2", "4", "5", "x", "*"):
            raise ValueError(f"bad enhanced code {item!r} (expected '5.1.1', 'x.2.2' or '5.7.*')")
        a, b, c = ("*" if p == "x" else str(int(p)) if p.isdigit() else p for p in parts)
        out.append((a, b, c))
    if not out:
        raise ValueError("enhanced is empty")
    return tuple(out)


def _parse_enum(value: Any, kind: str, choices: Mapping[str, Any]) -> frozenset[Any]:
    found = set()
    for item in _as_list(value):
        key = item.strip().lower() if isinstance(item, str) else ""
        if key not in choices:
            raise ValueError(f"unknown {kind} {item!r} (expected one of {', '.join(choices)})")
        found.add(choices[key])
    if not found:
        raise ValueError(f"{kind} is empty")
    return frozenset(found)


def compile_rule(data: Any, source: str, number: int) -> Rule:
    """One rule from its TOML table; a problem is a ConfigError naming source and rule."""
    name = data.get("name") if isinstance(data, Mapping) else None
    label = f"{source}: rule {number}" + (f" {name!r}" if isinstance(name, str) else "")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a table")
    try:
        return _compile_rule(data, source, number)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _compile_rule(data: Mapping[str, Any], source: str, number: int) -> Rule:
    unknown = sorted(set(data) - set(_RULE_KEYS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (expected {', '.join(_RULE_KEYS)})")
    for key in ("name", "class", "type", "reason", "scope"):
        if key not in data:
            raise ValueError(f"missing key {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name must be a non-empty string")
    class_code = data["class"]
    if isinstance(class_code, bool) or not isinstance(class_code, int):
        raise ValueError(f"class must be a Momentum class number, got {class_code!r}")
    if class_code not in BOUNCE_CLASSES:
        known = ", ".join(str(code) for code in BOUNCE_CLASSES)
        raise ValueError(f"unknown bounce class {class_code} (expected one of {known})")
    type_text = data["type"]
    failure_type = _TYPES.get(type_text.strip().lower()) if isinstance(type_text, str) else None
    if failure_type is None:
        raise ValueError(f"bad type {type_text!r} (expected Hard, Soft or Ignored)")
    reason_text = data["reason"]
    reasons = {label.lower(): label for label in FAILURE_REASONS}
    reason = reasons.get(reason_text.strip().lower()) if isinstance(reason_text, str) else None
    if reason is None:
        raise ValueError(
            f"unknown reason {reason_text!r} (expected one of {', '.join(FAILURE_REASONS)})"
        )
    reason_code, allowed = FAILURE_REASONS[reason]
    if failure_type not in allowed:
        raise ValueError(
            f"reason {reason!r} is {'/'.join(sorted(allowed))} in Campaign, not {failure_type}"
        )
    scope = data["scope"]
    if scope not in _SCOPES:
        raise ValueError(f"bad scope {scope!r} (expected one of {', '.join(_SCOPES)})")
    permanent = data.get("permanent")
    if permanent is not None and not isinstance(permanent, bool):
        raise ValueError(f"permanent must be true or false, got {permanent!r}")
    if failure_type == "Hard" and permanent is False:
        raise ValueError("a Hard verdict is always permanent (permanent = false contradicts it)")
    comment = data.get("comment", "")
    if not isinstance(comment, str):
        raise ValueError("comment must be a string")
    throttle = data.get("throttle", False)
    if not isinstance(throttle, bool):
        raise ValueError(f"throttle must be true or false, got {throttle!r}")
    if "throttle" not in data and name.strip().startswith(DEPRECATED_THROTTLE_PREFIX):
        throttle = True
        log.warning(
            "%s: rule %d '%s': a name starting %r marks a throttling reply only until this"
            " is removed; add throttle = true to the rule",
            source, number, name.strip(), DEPRECATED_THROTTLE_PREFIX,
        )

    pattern: re.Pattern[str] | None = None
    alternatives: tuple[tuple[re.Pattern[str], frozenset[str] | None], ...] = ()
    if "match" in data:
        text = data["match"]
        if not isinstance(text, str) or not text:
            raise ValueError("match must be a non-empty regex string")
        try:
            pattern = re.compile(text, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"bad regex {text!r}: {exc}") from None
        if pattern.search("") is not None:
            raise ValueError(f"regex {text!r} matches an empty text (it would match every reply)")
        alternatives = tuple(
            (re.compile(piece, re.IGNORECASE), required_literals(piece))
            for piece in split_alternatives(text)
        )
    phases = (
        _parse_enum(data["phase"], "phase", {p.value: p for p in Phase})
        if "phase" in data
        else None
    )
    conditions = (
        _parse_enum(data["condition"], "condition", {c.value: c for c in Condition})
        if "condition" in data
        else None
    )
    codes = _parse_codes(data["codes"]) if "codes" in data else None
    enhanced = _parse_enhanced(data["enhanced"]) if "enhanced" in data else None
    return Rule(
        name=name.strip(),
        source=source,
        number=number,
        bounce_class=BounceClass(class_code, BOUNCE_CLASSES[class_code]),
        failure_type=failure_type,
        failure_reason=reason,
        reason_code=reason_code,
        scope=scope,
        permanent=permanent,
        pattern=pattern,
        alternatives=alternatives,
        phases=phases,
        conditions=conditions,
        codes=codes,
        enhanced=enhanced,
        comment=comment.strip(),
        throttle=throttle,
    )


def parse_rules(document: Mapping[str, Any], source: str) -> list[Rule]:
    """The rules of one parsed TOML document (``[[rule]]`` tables, in order)."""
    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (rules go in [[rule]] tables)")
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for number, table in enumerate(tables, start=1):
        rule = compile_rule(table, source, number)
        if rule.name in seen:
            raise ConfigError(f"{rule.where}: duplicate name (rule {seen[rule.name]} has it too)")
        seen[rule.name] = number
        rules.append(rule)
    return rules


def parse_rules_text(text: str, source: str) -> list[Rule]:
    """The rules of a TOML text (for tests and the admin API)."""
    return parse_rules(parse_toml(text, source), source)


@functools.lru_cache(maxsize=1)
def builtin_rules() -> tuple[Rule, ...]:
    """The built-in rule set shipped in the `mta.defaults` package (parsed once)."""
    resource = importlib.resources.files("mta.defaults").joinpath("bounce-rules.toml")
    return tuple(parse_rules_text(resource.read_text(encoding="utf-8"), BUILTIN_SOURCE))


def read_rules_file(path: str | Path) -> list[Rule]:
    """The rules of a user's file (the only I/O of this module)."""
    return parse_rules_text(read_text(path), str(path))


def load_bounce_rules(
    extra_files: Sequence[str | Path] = (),
    *,
    cache_size: int = DEFAULT_CACHE_SIZE,
    builtin: bool = True,
) -> BounceRules:
    """Users' files (in the order given) in front of the built-in rules."""
    rules: list[Rule] = []
    for path in extra_files:
        rules.extend(read_rules_file(path))
    if builtin:
        rules.extend(builtin_rules())
    return BounceRules(rules, cache_size=cache_size)
