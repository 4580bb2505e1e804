"""A small typed-config engine: frozen dataclasses filled from TOML, env vars and flags.

Each source is a mapping of dotted keys to values. Fields are checked against
their type hints (str, int, float, bool, tuples, dicts, nested dataclasses and
tuples of them); `metadata={"kind": "duration" | "rate" | "hostport"}` adds a
parser. Unknown keys and bad values raise `ConfigError` naming the source and
the key, e.g. ``config/mta.toml: smtp.listen: expected HOST:PORT, got 'x'``.
Precedence is the order of application: defaults < file < env < flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mta.core.durations import parse_duration, parse_rate

T = TypeVar("T")


class ConfigError(Exception):
    """A configuration problem; the message names the source and the key."""


def duration_field(default: str) -> Any:
    """A dataclass field holding seconds, written in config files as "30s", "5m", "3.5d"."""
    return dataclasses.field(default=parse_duration(default), metadata={"kind": "duration"})


def rate_field(default: float = 0.0) -> Any:
    """A dataclass field holding events per second, written as "100/m" (0: unlimited)."""
    return dataclasses.field(default=default, metadata={"kind": "rate"})


def hostport_field(default: str) -> Any:
    """A dataclass field holding "HOST:PORT" ("" allowed), checked when loaded."""
    return dataclasses.field(default=default, metadata={"kind": "hostport"})


def parse_hostport(value: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """ "HOST:PORT", "[v6]:PORT" or ":PORT" -> (host, port); raises ValueError."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [HOST]:PORT, got {value!r}")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT with a port 0-65535, got {value!r}")
    return (host or default_host), int(port)


def _check_hostport(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    if value:
        parse_hostport(value)
    return value


_KINDS: dict[str, Callable[[Any], Any]] = {
    "duration": parse_duration,
    "rate": parse_rate,
    "hostport": _check_hostport,
}


def _convert(value: Any, hint: Any, kind: str | None, from_text: bool) -> Any:
    """Check or coerce one value against a type hint; raise ValueError with a short reason."""
    if kind:
        if kind in ("duration", "rate") and from_text:
            return _KINDS[kind](value)
        if kind in ("duration", "rate") and not isinstance(value, str | int | float):
            raise ValueError(f"expected a {kind}, got {value!r}")
        return _KINDS[kind](value)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, None, from_text)
            except ValueError as exc:
                errors.append(str(exc))
        tail = f", got {value!r}"
        if all(e.startswith("expected ") and e.endswith(tail) for e in errors):
            # "expected an integer or one of 'auto', got 'x'"
            wanted = (e.removeprefix("expected ").removesuffix(tail) for e in errors)
            raise ValueError("expected " + " or ".join(wanted) + tail)
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if hint is bool:
        if from_text and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if from_text and isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if from_text and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if origin is tuple:
        item_hint = args[0]
        if from_text and isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list, got {value!r}")
        return tuple(_convert(item, item_hint, None, from_text) for item in value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"expected a table, got {value!r}")
        key_hint, value_hint = args
        return {
            _convert(k, key_hint, None, False): _convert(v, value_hint, None, from_text)
            for k, v in value.items()
        }
    raise ValueError(f"unsupported type {hint!r}")  # a programming error in a schema


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


def build(cls: type[T], data: Mapping[str, Any], source: str, prefix: str = "") -> T:
    """A dataclass instance from a nested mapping (a TOML document or part of one)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or '(top)'}: expected a table")
    hints = _hints(cls)
    # A field's key in the file is its name, or metadata "key" when the name cannot be
    # (TOML's `class` is a Python keyword).
    fields = {
        f.metadata.get("key", f.name): f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    }
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key '{prefix}{unknown[0]}'")
    values: dict[str, Any] = {}
    for file_key, value in data.items():
        name = fields[file_key].name
        hint = hints[name]
        key = f"{prefix}{file_key}"
        if _is_dataclass_type(hint):
            values[name] = build(hint, value, source, key + ".")
            continue
        item_hint = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None
        if item_hint is not None and _is_dataclass_type(item_hint):
            if not isinstance(value, list):
                raise ConfigError(f"{source}: {key}: expected a list of tables")
            values[name] = tuple(
                build(item_hint, item, source, f"{key}[{i}].") for i, item in enumerate(value)
            )
            continue
        try:
            values[name] = _convert(value, hint, fields[file_key].metadata.get("kind"), False)
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
    for file_key, f in fields.items():
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if missing and f.name not in values:
            raise ConfigError(f"{source}: missing key '{prefix}{file_key}'")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or '(top)'}: {exc}") from None


def scalar_keys(cls: type, prefix: str = "") -> dict[str, tuple[type, Any, str | None]]:
    """Every dotted key that env vars and flags may set: key -> (owner, hint, kind)."""
    keys: dict[str, tuple[type, Any, str | None]] = {}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if _is_dataclass_type(hint):
            keys.update(scalar_keys(hint, f"{prefix}{f.name}."))
            continue
        item_hint = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else None
        if item_hint is not None and _is_dataclass_type(item_hint):
            continue
        if typing.get_origin(hint) is dict:
            continue
        keys[f"{prefix}{f.name}"] = (cls, hint, f.metadata.get("kind"))
    return keys


def env_name(key: str, env_prefix: str) -> str:
    return env_prefix + key.replace(".", "_").upper()


def apply_overrides(
    instance: T,
    overrides: Mapping[str, Any],
    source: str,
    from_text: bool,
    display: Callable[[str], str] = str,
) -> T:
    """A copy of `instance` with dotted keys replaced (values checked like the file's).

    Keys of one table are applied together, so checks that tie fields to each other
    (e.g. "url and secret go together") see all of them. `display` names a key in
    error messages (e.g. as its environment variable).
    """
    keys = scalar_keys(type(instance))
    tables: dict[tuple[str, ...], dict[str, Any]] = {}
    for key, value in overrides.items():
        if key not in keys:
            raise ConfigError(f"{source}: unknown key '{display(key)}'")
        _, hint, kind = keys[key]
        try:
            converted = _convert(value, hint, kind, from_text)
        except ValueError as exc:
            raise ConfigError(f"{source}: {display(key)}: {exc}") from None
        *path, name = key.split(".")
        tables.setdefault(tuple(path), {})[name] = converted
    for table, values in tables.items():
        label = ", ".join(display(".".join((*table, field))) for field in values)
        instance = _replace_table(instance, list(table), values, source, label)
    return instance


def _replace_table(
    obj: Any, path: list[str], values: dict[str, Any], source: str, label: str
) -> Any:
    """`obj` with the fields `values` of the nested table at `path` replaced."""
    try:
        if not path:
            return dataclasses.replace(obj, **values)
        head = path[0]
        inner = _replace_table(getattr(obj, head), path[1:], values, source, label)
        return dataclasses.replace(obj, **{head: inner})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {label}: {exc}") from None


def env_overrides(
    cls: type,
    environ: Mapping[str, str],
    env_prefix: str,
    reserved: Iterable[str] = (),
    warn: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """The dotted keys set by `PREFIX_SECTION_KEY` variables.

    An unknown one is ignored with a warning naming the closest known variable:
    orchestrators set variables of their own under the same prefix (Kubernetes sets
    `MTA_SERVICE_HOST`, `MTA_PORT` ... for a Service named `mta`), so it cannot be an
    error.
    """
    by_env = {env_name(key, env_prefix): key for key in scalar_keys(cls)}
    skip = set(reserved)
    found: dict[str, str] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(env_prefix) or name in skip:
            continue
        if name not in by_env:
            if warn is not None:
                warn(unknown_variable(name, [*by_env, *skip]))
            continue
        found[by_env[name]] = value
    return found


def unknown_variable(name: str, known: Iterable[str]) -> str:
    """The warning for an unknown variable, naming the closest known one if any is close."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"environment: unknown variable {name} ignored{hint}"


def read_text(path: str | Path) -> str:
    """A config file's text; ConfigError names the file and what went wrong."""
    source = str(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """A TOML document; ConfigError names `source` when it is not valid TOML."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def load(
    cls: type[T],
    path: str | Path | None,
    *,
    env_prefix: str,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    reserved_env: Iterable[str] = (),
    warn: Callable[[str], None] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> T:
    """Defaults < TOML file < environment < flags, each checked, as one frozen instance.

    `warn` receives one line per unknown environment variable; `flag_names` names a
    dotted key as the command-line flag that set it, in error messages.
    """
    instance = cls()
    if path is not None:
        source = str(path)
        instance = build(cls, parse_toml(read_text(path), source), source)
    env = os.environ if environ is None else environ
    instance = apply_overrides(
        instance,
        env_overrides(cls, env, env_prefix, reserved_env, warn),
        "environment",
        True,
        lambda key: env_name(key, env_prefix),
    )
    if flags:
        names = dict(flag_names or {})
        instance = apply_overrides(
            instance, flags, "command line", False, lambda key: names.get(key, key)
        )
    return instance
