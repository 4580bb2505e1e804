"""The bounce rule files: read, checked and compiled into `mta.core.bounce.Rule`s.

Each [[rule]] table goes through the one typed config engine (`RuleTable`: unknown and
missing keys, value types), as the MX rules and retry schedule do; its values are then
checked against core's tables (classes, Campaign reasons, scopes) and compiled.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from mta.config.engine import ConfigError, build, parse_toml, read_text
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


@dataclass(frozen=True)
class RuleTable:
    """One [[rule]] table as written, checked by the config engine (keys and types); the
    values are then checked against the tables of `mta.core.bounce` and compiled."""

    name: str
    bounce_class: int = field(metadata={"key": "class"})
    type: str = field()
    reason: str = field()
    scope: str = field()
    match: str | None = None
    phase: str | tuple[str, ...] | None = None
    condition: str | tuple[str, ...] | None = None
    codes: int | str | tuple[int | str, ...] | None = None
    enhanced: str | tuple[str, ...] | None = None
    permanent: bool | None = None
    throttle: bool | None = None
    comment: str = ""


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
    table = build(RuleTable, data, label)  # unknown keys, missing keys, types
    try:
        return _compile_rule(table, source, number)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _compile_rule(table: RuleTable, source: str, number: int) -> Rule:
    name = table.name
    if not name.strip():
        raise ValueError("name must be a non-empty string")
    class_code = table.bounce_class
    if class_code not in BOUNCE_CLASSES:
        known = ", ".join(str(code) for code in BOUNCE_CLASSES)
        raise ValueError(f"unknown bounce class {class_code} (expected one of {known})")
    failure_type = _TYPES.get(table.type.strip().lower())
    if failure_type is None:
        raise ValueError(f"bad type {table.type!r} (expected Hard, Soft or Ignored)")
    reasons = {label.lower(): label for label in FAILURE_REASONS}
    reason = reasons.get(table.reason.strip().lower())
    if reason is None:
        raise ValueError(
            f"unknown reason {table.reason!r} (expected one of {', '.join(FAILURE_REASONS)})"
        )
    reason_code, allowed = FAILURE_REASONS[reason]
    if failure_type not in allowed:
        raise ValueError(
            f"reason {reason!r} is {'/'.join(sorted(allowed))} in Campaign, not {failure_type}"
        )
    scope = table.scope
    if scope not in _SCOPES:
        raise ValueError(f"bad scope {scope!r} (expected one of {', '.join(_SCOPES)})")
    permanent = table.permanent
    if failure_type == "Hard" and permanent is False:
        raise ValueError("a Hard verdict is always permanent (permanent = false contradicts it)")
    throttle = table.throttle
    if throttle is None:
        throttle = name.strip().startswith(DEPRECATED_THROTTLE_PREFIX)
        if throttle:
            log.warning(
                "%s: rule %d '%s': a name starting %r marks a throttling reply only until this"
                " is removed; add throttle = true to the rule",
                source, number, name.strip(), DEPRECATED_THROTTLE_PREFIX,
            )

    pattern: re.Pattern[str] | None = None
    alternatives: tuple[tuple[re.Pattern[str], frozenset[str] | None], ...] = ()
    if table.match is not None:
        text = table.match
        if not text:
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
        _parse_enum(table.phase, "phase", {p.value: p for p in Phase})
        if table.phase is not None
        else None
    )
    conditions = (
        _parse_enum(table.condition, "condition", {c.value: c for c in Condition})
        if table.condition is not None
        else None
    )
    codes = _parse_codes(table.codes) if table.codes is not None else None
    enhanced = _parse_enhanced(table.enhanced) if table.enhanced is not None else None
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
        comment=table.comment.strip(),
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
