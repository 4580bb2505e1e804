"""The inbound-email rules: load them, match them, qualify a parsed message (pure but for
`load_rules`, which reads the TOML file).

Rules are data (campaign_client/inbound-rules.toml or the user's own file): an ordered list,
the first rule whose conditions all match wins, each condition a case-insensitive regular
expression searched in one field of a notice: kind, action, status, diagnostic, text. The
result is a Campaign failure type (Hard / Soft / Ignored) and reason; a final catch-all is
implied (Ignored, "Not defined").
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from campaign_client.bounces.model import (
    FAILURE_TYPES,
    KINDS,
    REASON_CODES,
    Inbound,
    Notice,
    Qualified,
)
from campaign_client.events import Smtp

CONDITIONS: Final = ("kind", "action", "status", "diagnostic", "text")
DEFAULT_RULES_RESOURCE: Final = "inbound-rules.toml"

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_REPLY_START = re.compile(r"^\s*#?([245]\d\d)(?:[ -]#?([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)$", re.S)


class RulesError(ValueError):
    """Bad inbound-email rules; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    failure_type: str
    reason: str
    reason_code: int
    conditions: tuple[tuple[str, re.Pattern[str]], ...]

    def matches(self, fields: dict[str, str]) -> bool:
        return all(pattern.search(fields.get(name, "")) for name, pattern in self.conditions)


def parse_rules(text: str, source: str = "inbound-rules.toml") -> tuple[Rule, ...]:
    """Rules from TOML text; raises RulesError naming the source and the rule."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"rule"}
    if unknown_top:
        raise RulesError(f"{source}: unknown key {sorted(unknown_top)[0]!r} (expected [[rule]])")
    items = data.get("rule", [])
    if not isinstance(items, list) or not items:
        raise RulesError(f"{source}: no [[rule]] entries")
    return tuple(_rule(item, f"{source}: rule[{index}]") for index, item in enumerate(items))


def _rule(item: Any, where: str) -> Rule:
    if not isinstance(item, dict):
        raise RulesError(f"{where}: expected a table")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise RulesError(f"{where}: name: missing")
    where = f"{where} ({name})"
    extra = set(item) - {"name", "type", "reason", *CONDITIONS}
    if extra:
        raise RulesError(f"{where}: unknown key {sorted(extra)[0]!r}")
    failure_type = item.get("type")
    if failure_type not in FAILURE_TYPES:
        raise RulesError(f"{where}: type: expected Hard, Soft or Ignored, got {failure_type!r}")
    reason = item.get("reason")
    if not isinstance(reason, str) or reason not in REASON_CODES:
        raise RulesError(f"{where}: reason: unknown Campaign reason {reason!r}")
    conditions: list[tuple[str, re.Pattern[str]]] = []
    for field_name in CONDITIONS:
        if field_name not in item:
            continue
        pattern = item[field_name]
        if not isinstance(pattern, str):
            raise RulesError(f"{where}: {field_name}: expected a regex string")
        try:
            conditions.append((field_name, re.compile(pattern, re.IGNORECASE)))
        except re.error as exc:
            raise RulesError(f"{where}: {field_name}: bad regex: {exc}") from None
    if "kind" in item and not any(dict(conditions)["kind"].search(kind) for kind in KINDS):
        raise RulesError(f"{where}: kind: matches none of {', '.join(KINDS)}")
    return Rule(name, str(failure_type), reason, REASON_CODES[reason], tuple(conditions))


def load_rules(path: str | Path | None = None) -> tuple[Rule, ...]:
    """The rules in `path`, or the package's default inbound-rules.toml."""
    if path is None:
        text = resources.files("campaign_client").joinpath(DEFAULT_RULES_RESOURCE).read_text(
            encoding="utf-8"
        )
        return parse_rules(text, DEFAULT_RULES_RESOURCE)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules: {exc.strerror or exc}") from None
    return parse_rules(text, str(path))


def qualify(inbound: Inbound, rules: tuple[Rule, ...]) -> list[Qualified]:
    """One qualification per notice; the first matching rule wins (a final catch-all is
    implied: Ignored, "Not defined")."""
    results: list[Qualified] = []
    for notice in inbound.notices:
        fields = {
            "kind": inbound.kind,
            "action": notice.action,
            "status": notice.status,
            "diagnostic": notice.diagnostic,
            "text": inbound.text,
        }
        smtp = smtp_of(notice)
        for rule in rules:
            if rule.matches(fields):
                results.append(Qualified(notice, rule.failure_type, rule.reason,
                                         rule.reason_code, rule.name, smtp))
                break
        else:
            results.append(Qualified(notice, "Ignored", "Not defined", 0, "(none)", smtp))
    return results


def smtp_of(notice: Notice) -> Smtp | None:
    """The SMTP reply a notice carries, as the client's events record it."""
    match = _REPLY_START.match(notice.diagnostic) if notice.diagnostic else None
    if match:
        enhanced = match.group(2) or (notice.status if _ENHANCED.match(notice.status) else None)
        return Smtp(code=int(match.group(1)), enhanced=enhanced, text=match.group(3).strip(),
                    phase="async")
    if notice.diagnostic or notice.status:
        return Smtp(code=None, enhanced=notice.status or None,
                    text=notice.diagnostic or notice.status, phase="async")
    return None
