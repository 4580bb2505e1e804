"""Load the adaptive-delivery data: MX rules, ramp-up and the retry schedule.

The files are TOML; the built-in ones ship in the `mta.defaults` package
(``mx-rules.toml``, ``retry-schedule.toml``) and users' files come in front of
them: their rules are tried first; a rule with the same name as one in a later
file (a built-in one) is merged with it, its keys winning, so ``name = "gmail"``
and ``rate = "600/m"`` change only Gmail's rate; their ``[default]`` and
``[rampup]`` keys override key by key.
Tables are checked with the config engine (`mta.config.engine`), then turned into
the pure types of `mta.core.limits`, `mta.core.rampup` and `mta.core.retry`.
Every problem is a `ConfigError` naming the file and the rule, e.g.
``config/mx-rules.toml: mx 2 'gmail': rate: not a rate: 'fast' (use e.g. ...)``.

Inheritance: a ``[[mx]]`` rule takes every limit it does not give from
``[default]``, and the global ``[[adaptive]]`` rules after its own
``[[mx.adaptive]]`` ones (unless ``inherit_adaptive = false``); a
``[[policy]]`` entry takes the timing keys it does not give from the schedule's
``[default]``.
"""

from __future__ import annotations

import datetime as dt
import functools
import importlib.resources
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mta.config.engine import (
    ConfigError,
    build,
    duration_field,
    parse_toml,
    rate_field,
    read_text,
)
from mta.core.bounce import BOUNCE_CLASSES
from mta.core.limits import AdaptiveRule, MxRule, MxRules, effective_rules, parse_trigger
from mta.core.rampup import Binding, RampStep, RampUp, day_index
from mta.core.retry import RetryPolicy, RetrySchedule, ScheduleEntry

__all__ = [
    "BUILTIN_MX_SOURCE",
    "BUILTIN_RETRY_SOURCE",
    "BindingConfig",
    "MxData",
    "load_mx_data",
    "load_mx_rules",
    "load_rampup",
    "load_retry_schedule",
    "parse_mx_texts",
    "parse_retry_texts",
]

BUILTIN_MX_SOURCE = "mta/defaults/mx-rules.toml"
BUILTIN_RETRY_SOURCE = "mta/defaults/retry-schedule.toml"


# --- the tables, as the config engine checks them ----------------------------------------


@dataclass(frozen=True)
class LimitsTable:
    """[default] and the limits of an [[mx]] rule."""

    max_connections: int = 20
    min_connections: int = 1
    max_messages_per_connection: int = 100
    rate: float = rate_field()
    min_rate: float = rate_field(1 / 60)
    max_rate: float = rate_field()
    burst: float = 0.0
    recover_after: int = 10
    increase: float = 0.05
    down_after: int = 5
    down_for: float = duration_field("5m")
    rampup_scale: float = 1.0


@dataclass(frozen=True)
class AdaptiveTable:
    name: str
    action: Literal["suspend", "set_rate", "halve_concurrency"]
    rule: str = ""
    classes: tuple[int, ...] = ()
    match: str = ""
    throttle: bool = False  # match throttling replies (only when given)
    trigger: str = "immediate"
    duration: float = duration_field("0s")
    rate: float = rate_field()  # 0: not given
    factor: float = 0.0  # 0: not given
    comment: str = ""


@dataclass(frozen=True)
class RampupTable:
    strategy: Literal["spread", "oldest"] = "spread"
    caps: dict[str, int | str] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyTable:
    name: str = "default"
    classes: tuple[int, ...] = ()
    rule: str = ""
    scope: tuple[Literal["recipient", "message", "site"], ...] = ()
    throttle: bool = False  # match throttling replies (only when given)
    first: float = duration_field("10m")
    factor: float = 2.0
    max_interval: float = duration_field("4h")
    jitter: float = 0.2
    waits_for_site: bool = False
    site_backoff: float = duration_field("1m")
    comment: str = ""


_MATCH_KEYS = ("classes", "rule", "scope", "throttle")
_MX_OWN_KEYS = ("name", "hosts", "adaptive", "inherit_adaptive", "comment")


# --- reading ---------------------------------------------------------------------------


def _read(path: str | Path) -> tuple[str, dict[str, Any]]:
    source = str(path)
    return source, parse_toml(read_text(path), source)


@functools.lru_cache(maxsize=4)
def _builtin_text(name: str) -> str:
    return importlib.resources.files("mta.defaults").joinpath(name).read_text(encoding="utf-8")


def _check_top(document: Mapping[str, Any], source: str, allowed: Sequence[str]) -> None:
    unknown = sorted(set(document) - set(allowed))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (expected {', '.join(allowed)})")


def _tables(document: Mapping[str, Any], key: str, source: str) -> list[Any]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{source}: '{key}' must be an array of tables ([[{key}]])")
    return value


def _table(document: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: '{key}' must be a table ([{key}])")
    return value


def _label(source: str, kind: str, number: int, table: Any) -> str:
    name = table.get("name") if isinstance(table, Mapping) else None
    return f"{source}: {kind} {number}" + (f" {name!r}" if isinstance(name, str) else "")


def _regex(text: str, label: str, key: str) -> re.Pattern[str] | None:
    if not text:
        return None
    try:
        pattern = re.compile(text, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{label}: {key}: bad regex {text!r}: {exc}") from None
    if pattern.search("") is not None:
        raise ConfigError(f"{label}: {key}: regex {text!r} matches an empty text")
    return pattern


def _classes(codes: tuple[int, ...], label: str) -> frozenset[int] | None:
    for code in codes:
        if code not in BOUNCE_CLASSES:
            known = ", ".join(str(c) for c in BOUNCE_CLASSES)
            raise ConfigError(f"{label}: classes: unknown bounce class {code} (expected {known})")
    return frozenset(codes) if codes else None


def _unique(items: list[tuple[str, Any]], label_of: Any) -> None:
    seen: dict[str, Any] = {}
    for name, where in items:
        if name in seen:
            raise ConfigError(f"{label_of(where)}: duplicate name (also {seen[name]})")
        seen[name] = where


Labelled = tuple[str, dict[str, Any]]  # ("file: mx 2 'gmail'", its table)


def _named(documents: Sequence[tuple[str, Mapping[str, Any]]], key: str) -> list[Labelled]:
    """The named tables of `key` ([[key]]) of every document, most important first.

    A name used by a more important document too is merged under it: its keys
    fill only what the more important table leaves out (nested ``adaptive`` lists
    merge by name the same way). The label is the most important table's."""
    found: dict[str, Labelled] = {}
    for source, document in documents:
        here: list[tuple[str, str]] = []
        for number, table in enumerate(_tables(document, key, source), start=1):
            label = _label(source, key, number, table)
            if not isinstance(table, Mapping):
                raise ConfigError(f"{label}: expected a table")
            name = table.get("name")
            if not isinstance(name, str) or not name.strip():
                raise ConfigError(f"{label}: missing key 'name'")
            name = name.strip()
            here.append((name, label))
            table = dict(table, name=name)
            if "adaptive" in table:
                table["adaptive"] = _labelled_list(table["adaptive"], label)
            if name in found:
                first_label, first = found[name]
                found[name] = (first_label, _merge(first, table))
            else:
                found[name] = (label, table)
        _unique(here, str)
    return list(found.values())


def _labelled_list(value: Any, label: str) -> list[Labelled]:
    if not isinstance(value, list):
        raise ConfigError(f"{label}: 'adaptive' must be an array of tables ([[mx.adaptive]])")
    items: list[Labelled] = []
    for number, table in enumerate(value, start=1):
        where = _label(label, "adaptive", number, table)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table")
        items.append((where, dict(table)))
    names = [(str(t.get("name")), where) for where, t in items if "name" in t]
    _unique(names, str)
    return items


def _merge(important: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    merged = {**other, **important}
    if "adaptive" in important and "adaptive" in other:
        theirs: dict[Any, dict[str, Any]] = {t.get("name"): t for _, t in other["adaptive"]}
        mine: list[Labelled] = [
            (where, {**theirs.get(t.get("name"), {}), **t}) for where, t in important["adaptive"]
        ]
        names = {t.get("name") for _, t in mine}
        rest = [(w, t) for w, t in other["adaptive"] if t.get("name") not in names]
        merged["adaptive"] = [*mine, *rest]
    return merged


# --- MX rules and ramp-up ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MxData:
    """Everything mx-rules files say: the rules (with the default) and the ramp-up."""

    rules: MxRules
    rampup: RampUp
    global_adaptive: tuple[AdaptiveRule, ...]


def _adaptive(table: Any, label: str) -> AdaptiveRule:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{label}: expected a table")
    checked = build(AdaptiveTable, table, label)
    try:
        trigger = parse_trigger(checked.trigger)
    except ValueError as exc:
        raise ConfigError(f"{label}: trigger: {exc}") from None
    try:
        return AdaptiveRule(
            name=checked.name,
            action=checked.action,
            trigger=trigger,
            duration=checked.duration,
            rule=_regex(checked.rule, label, "rule"),
            classes=_classes(checked.classes, label),
            match=_regex(checked.match, label, "match"),
            throttle=checked.throttle if "throttle" in table else None,
            rate=checked.rate or None,
            factor=checked.factor or None,
            where=label,
        )
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _hosts(value: Any, label: str) -> tuple[str, ...]:
    items = value if isinstance(value, list) else None
    if not items or not all(isinstance(item, str) and item.strip() for item in items):
        raise ConfigError(f"{label}: hosts: expected a non-empty list of host patterns")
    return tuple(item.strip().rstrip(".").lower() for item in items)


def _mx_rule(
    table: Mapping[str, Any],
    label: str,
    default: Mapping[str, Any],
    global_adaptive: Sequence[AdaptiveRule],
) -> MxRule:
    name = str(table["name"])
    if "hosts" not in table:
        raise ConfigError(f"{label}: missing key 'hosts'")
    hosts = _hosts(table["hosts"], label)
    inherit = table.get("inherit_adaptive", True)
    if not isinstance(inherit, bool):
        raise ConfigError(f"{label}: inherit_adaptive: expected true or false, got {inherit!r}")
    if not isinstance(table.get("comment", ""), str):
        raise ConfigError(f"{label}: comment: expected a string")
    own_tables: list[Labelled] = table.get("adaptive", [])
    own = [_adaptive(item, where) for where, item in own_tables]
    limits = {k: v for k, v in table.items() if k not in _MX_OWN_KEYS}
    return _rule_from_limits(
        name, hosts, {**default, **limits}, label, tuple(own), global_adaptive if inherit else ()
    )


def _rule_from_limits(
    name: str,
    hosts: tuple[str, ...],
    limits: Mapping[str, Any],
    label: str,
    own: tuple[AdaptiveRule, ...],
    global_adaptive: Sequence[AdaptiveRule],
) -> MxRule:
    checked = build(LimitsTable, limits, label)
    try:
        return MxRule(
            name,
            hosts,
            adaptive=effective_rules(own, global_adaptive),
            where=label,
            **_limit_values(checked),
        )
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _limit_values(checked: LimitsTable) -> dict[str, Any]:
    return {
        "max_connections": checked.max_connections,
        "min_connections": checked.min_connections,
        "max_messages_per_connection": checked.max_messages_per_connection,
        "rate": checked.rate,
        "min_rate": checked.min_rate,
        "max_rate": checked.max_rate,
        "burst": checked.burst,
        "recover_after": checked.recover_after,
        "increase": checked.increase,
        "down_after": checked.down_after,
        "down_for": checked.down_for,
        "rampup_scale": checked.rampup_scale,
    }


def _caps(caps: Mapping[str, int | str], label: str) -> tuple[RampStep, ...]:
    steps: list[RampStep] = []
    for key, value in caps.items():
        if not key.strip().isdigit() or int(key) < 1:
            raise ConfigError(f"{label}: caps: bad day {key!r} (expected a day number from 1)")
        if isinstance(value, str):
            if value.strip().lower() != "unlimited":
                raise ConfigError(
                    f"{label}: caps.{key}: expected a number or 'unlimited', got {value!r}"
                )
            cap: int | None = None
        elif value < 0:
            raise ConfigError(f"{label}: caps.{key}: a cap must not be negative")
        else:
            cap = value
        steps.append(RampStep(int(key), cap))
    steps.sort(key=lambda step: step.day)
    if steps and steps[0].day != 1:
        raise ConfigError(f"{label}: caps: the schedule must start at day 1")
    return tuple(steps)


def parse_mx_texts(texts: Sequence[tuple[str, str]]) -> MxData:
    """MX data from (source, TOML text) pairs, most important first."""
    documents = [(source, parse_toml(text, source)) for source, text in texts]
    return _mx_data(documents)


def _mx_data(documents: Sequence[tuple[str, dict[str, Any]]]) -> MxData:
    allowed = ("default", "adaptive", "mx", "rampup")
    default: dict[str, Any] = {}
    rampup: dict[str, Any] = {}
    rampup_label: dict[str, str] = {}
    for source, document in reversed(documents):  # the first file has the last word
        _check_top(document, source, allowed)
        table = _table(document, "default", source)
        build(LimitsTable, table, f"{source}: [default]")
        default.update(table)
        section = _table(document, "rampup", source)
        checked = build(RampupTable, section, f"{source}: [rampup]")
        if checked.caps:
            _caps(checked.caps, f"{source}: [rampup]")
        rampup.update(section)
        rampup_label.update({key: f"{source}: [rampup]" for key in section})
    default_label = " + ".join(source for source, _ in documents) + ": [default]"
    build(LimitsTable, default, default_label)

    global_adaptive = tuple(_adaptive(t, where) for where, t in _named(documents, "adaptive"))
    mx_rules = [
        _mx_rule(table, label, default, global_adaptive) for label, table in _named(documents, "mx")
    ]
    if any(rule.name == "default" for rule in mx_rules):
        raise ConfigError("mx rules: the name 'default' is reserved for the [default] rule")
    default_rule = _rule_from_limits("default", (), default, default_label, (), global_adaptive)

    ramp_table = build(RampupTable, rampup, "mx rules: [rampup]")
    steps = _caps(ramp_table.caps, rampup_label["caps"]) if ramp_table.caps else RampUp().steps
    scales = {r.name: r.rampup_scale for r in mx_rules}
    ramp = RampUp(steps, scales, default_rule.rampup_scale, ramp_table.strategy)
    return MxData(MxRules(tuple(mx_rules), default_rule), ramp, global_adaptive)


def load_mx_data(extra_files: Sequence[str | Path] = (), *, builtin: bool = True) -> MxData:
    """Users' files (in the order given) in front of the built-in mx-rules.toml."""
    documents = [_read(path) for path in extra_files]
    if builtin:
        documents.append(
            (BUILTIN_MX_SOURCE, parse_toml(_builtin_text("mx-rules.toml"), BUILTIN_MX_SOURCE))
        )
    return _mx_data(documents)


def load_mx_rules(extra_files: Sequence[str | Path] = ()) -> MxRules:
    """The MX rules: users' files in front of the built-in ones."""
    return load_mx_data(extra_files).rules


def load_rampup(extra_files: Sequence[str | Path] = ()) -> RampUp:
    """The ramp-up schedule and per-ISP scales from the same files."""
    return load_mx_data(extra_files).rampup


# --- the retry schedule --------------------------------------------------------------------


def _policy(table: Mapping[str, Any], label: str) -> RetryPolicy:
    checked = build(PolicyTable, table, label)
    try:
        return RetryPolicy(
            first=checked.first,
            factor=checked.factor,
            max_interval=checked.max_interval,
            jitter=checked.jitter,
            name=checked.name,
            waits_for_site=checked.waits_for_site,
            site_backoff=checked.site_backoff,
        )
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def parse_retry_texts(texts: Sequence[tuple[str, str]]) -> RetrySchedule:
    """A retry schedule from (source, TOML text) pairs, most important first."""
    return _schedule([(source, parse_toml(text, source)) for source, text in texts])


def _schedule(documents: Sequence[tuple[str, dict[str, Any]]]) -> RetrySchedule:
    default: dict[str, Any] = {}
    for source, document in reversed(documents):
        _check_top(document, source, ("policy", "default"))
        table = _table(document, "default", source)
        for key in (*_MATCH_KEYS, "waits_for_site", "site_backoff"):
            if key in table:
                raise ConfigError(f"{source}: [default]: {key!r} belongs to [[policy]] entries")
        build(PolicyTable, table, f"{source}: [default]")
        default.update(table)
    default_label = " + ".join(source for source, _ in documents) + ": [default]"
    default_policy = _policy(default, default_label)
    timing = {
        k: v for k, v in default.items() if k in ("first", "factor", "max_interval", "jitter")
    }
    entries: list[ScheduleEntry] = []
    for label, table in _named(documents, "policy"):
        if not any(key in table for key in _MATCH_KEYS):
            raise ConfigError(f"{label}: needs classes, rule, scope or throttle to match verdicts")
        policy = _policy({**timing, **table}, label)
        checked = build(PolicyTable, table, label)
        entries.append(
            ScheduleEntry(
                policy=policy,
                classes=_classes(checked.classes, label),
                rule=_regex(checked.rule, label, "rule"),
                scopes=frozenset(checked.scope) if checked.scope else None,
                throttle=checked.throttle if "throttle" in table else None,
                where=label,
            )
        )
    return RetrySchedule(tuple(entries), default_policy)


def load_retry_schedule(
    extra_files: Sequence[str | Path] = (), *, builtin: bool = True
) -> RetrySchedule:
    """Users' files (in the order given) in front of the built-in retry-schedule.toml."""
    documents = [_read(path) for path in extra_files]
    if builtin:
        documents.append(
            (
                BUILTIN_RETRY_SOURCE,
                parse_toml(_builtin_text("retry-schedule.toml"), BUILTIN_RETRY_SOURCE),
            )
        )
    return _schedule(documents)


# --- source bindings -----------------------------------------------------------------------


@dataclass(frozen=True)
class BindingConfig:
    """A source address to send from (for `[[delivery.bindings]]` in mta.toml).

    `first_use` is the (UTC) date of its first day of sending, "2025-01-31";
    without it, `age` is how many days it had already sent when the MTA started
    (0: a new address, on day 1 of its ramp-up).
    """

    address: str
    name: str = ""
    first_use: str = ""
    age: int = 0

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"address: expected an IP address, got {self.address!r}") from None
        if self.age < 0:
            raise ValueError("age must not be negative")
        if self.first_use:
            try:
                dt.date.fromisoformat(self.first_use)
            except ValueError:
                raise ValueError(
                    f"first_use: expected a date like 2025-01-31, got {self.first_use!r}"
                ) from None

    def binding(self, now: float) -> Binding:
        """The binding as the ramp-up sees it, `now` being the MTA's start."""
        if self.first_use:
            day = dt.date.fromisoformat(self.first_use)
            first = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
        else:
            first = (day_index(now) - self.age) * 86400.0
        return Binding(self.name or self.address, self.address, first)
