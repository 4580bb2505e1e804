"""The client's configuration: one small TOML file, every key optional (defaults below).

    log = "var/campaign-log.sqlite"      # the delivery log every command reads and writes

    [quarantine]                         # Campaign's documented defaults
    soft_error_limit = 5                 # the 5th counted soft error quarantines the address
    soft_error_interval = "24h"          # a soft error counts only this long after the last one
    reset_after = "10d"                  # last counted error older than this: Valid again

Where it comes from: `--config FILE`, else `$CAMPAIGN_CLIENT_CONFIG`, else none (defaults).
The log's path: `--log FILE` > `$CAMPAIGN_CLIENT_LOG` > the file's `log` > the default.
Durations: "90s", "30m", "24h", "10d", "1w", or a number of seconds. An unknown key or a bad
value raises `ConfigError` naming the file and the key. `config/campaign-client.toml` in the
repository documents the same keys with their defaults.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from campaign_client.quarantine import Policy

DEFAULT_LOG: Final = "var/campaign-log.sqlite"
CONFIG_ENV: Final = "CAMPAIGN_CLIENT_CONFIG"
LOG_ENV: Final = "CAMPAIGN_CLIENT_LOG"

_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_DURATION: Final = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw]?)$")


class ConfigError(ValueError):
    """A bad config file or value; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class ClientConfig:
    log: str = DEFAULT_LOG
    quarantine: Policy = field(default_factory=Policy)
    source: str | None = None            # the file it came from, if any


def parse_duration(value: Any, where: str) -> float:
    """"24h" / "10d" / 3600 -> seconds; ConfigError naming `where` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{where}: expected a duration like \"24h\" or \"10d\", got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(value.strip())
        if match is None:
            raise ConfigError(f"{where}: expected a duration like \"24h\" or \"10d\", "
                              f"got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise ConfigError(f"{where}: must be more than 0, got {value!r}")
    return seconds


def _check_keys(table: dict[str, Any], known: set[str], source: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            names = ", ".join(sorted(known))
            raise ConfigError(f"{source}: {prefix}{key}: unknown key (known: {names})")


def parse_config(text: str, source: str) -> ClientConfig:
    """A ClientConfig from TOML text; errors name `source` and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _check_keys(data, {"log", "quarantine"}, source, "")
    log = data.get("log", DEFAULT_LOG)
    if not isinstance(log, str) or not log.strip():
        raise ConfigError(f"{source}: log: expected a file path, got {log!r}")
    section = data.get("quarantine", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: quarantine: expected a table ([quarantine])")
    _check_keys(section, {"soft_error_limit", "soft_error_interval", "reset_after"}, source,
                "quarantine.")
    defaults = Policy()
    limit = section.get("soft_error_limit", defaults.soft_error_limit)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{source}: quarantine.soft_error_limit: expected an integer >= 1, "
                          f"got {limit!r}")
    policy = Policy(
        soft_error_limit=limit,
        soft_error_interval=parse_duration(
            section.get("soft_error_interval", defaults.soft_error_interval),
            f"{source}: quarantine.soft_error_interval"),
        reset_after=parse_duration(section.get("reset_after", defaults.reset_after),
                                   f"{source}: quarantine.reset_after"),
    )
    return ClientConfig(log=log, quarantine=policy, source=source)


def load_config(path: str | None = None, env: dict[str, str] | None = None) -> ClientConfig:
    """The config from `path`, else from $CAMPAIGN_CLIENT_CONFIG, else the defaults."""
    environ = os.environ if env is None else env
    chosen = path or environ.get(CONFIG_ENV) or None
    if chosen is None:
        return ClientConfig()
    where = chosen if path else f"{chosen} (${CONFIG_ENV})"
    try:
        text = Path(chosen).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read the config file: {exc}") from None
    return parse_config(text, chosen)


def log_path(flag: str | None, config: ClientConfig, env: dict[str, str] | None = None) -> str:
    """The delivery log's path: flag > $CAMPAIGN_CLIENT_LOG > the config's `log` > default."""
    environ = os.environ if env is None else env
    return flag or environ.get(LOG_ENV) or config.log
