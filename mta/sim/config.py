"""The simulated internet's configuration (`isps.toml`): typed, frozen, checked.

Loaded with the project's config engine (`mta.config.engine`): unknown keys and bad
values are errors naming the file and the key. With no file, the built-in
defaults (`mta/defaults/isps.toml`, the same content as `config/isps.toml`)
are used. Command-line flags override file values through dotted keys
(`sim.seed`, `sim.smtp_port`, ...). The sim reads no environment variables:
the MTA treats every `MTA_*` variable as its own.

Durations are virtual seconds (they shrink with the time scale) except
`sim.stall_max` and the per-stage `latency`, which are real-world seconds
(latency is divided by the clock's scale, see `mta.sim.persona`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from mta.config import engine
from mta.config.engine import (
    ConfigError,
    duration_field,
    hostport_field,
    parse_hostport,
    rate_field,
)

__all__ = [
    "AsyncConfig",
    "ConfigError",
    "DomainConfig",
    "FaultsConfig",
    "GreylistConfig",
    "HostConfig",
    "LatencyConfig",
    "LimitsConfig",
    "MailboxesConfig",
    "PersonaConfig",
    "RepliesConfig",
    "ReputationConfig",
    "SimConfig",
    "SimSection",
    "default_config_text",
    "load_sim_config",
]


def _check_address(value: str, what: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what}: not an IP address: {value!r}") from None


def _check_fraction(owner: object, *names: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value!r}")


@dataclass(frozen=True)
class HostConfig:
    """A host name and its address: an A record (and, in a persona, a listening address)."""

    name: str
    address: str
    preference: int = 10  # the MX preference when it is one of a persona's MX hosts

    def __post_init__(self) -> None:
        _check_address(self.address, self.name)
        if not 0 <= self.preference <= 65535:
            raise ValueError("preference must be 0-65535")


@dataclass(frozen=True)
class DomainConfig:
    """A domain's DNS behaviour, beyond "MX to the persona that lists it".

    kind: "mx" (MX records to `mx` host names), "null_mx" (RFC 7505 `MX 0 .`),
    "address" (no MX, an A record: the implicit MX), "servfail", "timeout" (the
    stub DNS never answers), "nxdomain" (absent, like any name not in the zone).
    An entry here overrides the records a persona would give the same domain.
    """

    name: str
    kind: Literal["mx", "null_mx", "address", "servfail", "timeout", "nxdomain"] = "mx"
    mx: tuple[str, ...] = ()
    address: str = ""
    ttl: float = field(default=-1.0, metadata={"kind": "duration"})  # -1: the zone's ttl

    def __post_init__(self) -> None:
        if self.kind == "mx" and not self.mx:
            raise ValueError(f"domain {self.name}: kind 'mx' needs mx host names")
        if self.kind == "address":
            _check_address(self.address, self.name)


# Default texts said for more than one reason (Postfix's words).
TEMPORARY_PROBLEM = "451 4.3.0 Temporary local problem, please try again later"
USER_UNKNOWN = "550 5.1.1 <{recipient}>: Recipient address rejected: User unknown"


@dataclass(frozen=True)
class RepliesConfig:
    """A persona's reply texts. `{ip}`, `{recipient}`, `{seconds}`, `{id}` and
    `{hostname}` are filled in; a newline makes a multiline reply."""

    mail_ok: str = "250 2.1.0 OK"
    rcpt_ok: str = "250 2.1.5 OK"
    accepted: str = "250 2.0.0 OK {id}"
    throttle: str = "450 4.7.1 Client host [{ip}] rejected: too many messages, slow down"
    throttle_connections: str = ""  # greeting refusal over the connection limits; "": throttle
    unknown: str = USER_UNKNOWN
    full: str = "452 4.2.2 <{recipient}>: Mailbox full"
    disabled: str = "550 5.2.1 <{recipient}>: Mailbox disabled"
    suppressed: str = "550 5.1.1 <{recipient}>: Address on suppression list"
    greylisted: str = (
        "451 4.7.1 <{recipient}>: Recipient address rejected: Greylisted, "
        "try again in {seconds} seconds"
    )
    relay_denied: str = "550 5.7.1 <{recipient}>: Relay access denied"
    reputation: str = "554 5.7.1 Service unavailable; client host [{ip}] blocked"
    soft: str = TEMPORARY_PROBLEM
    hard: str = USER_UNKNOWN
    async_bounce: str = "550 5.1.1 <{recipient}>: User unknown in virtual mailbox table"
    codes: dict[str, str] = field(default_factory=dict)  # "452" -> text, for scripts

    def __post_init__(self) -> None:
        for name, value in [*self.named().items(), *self.codes.items()]:
            if name == "throttle_connections" and not value:
                continue
            text = value.split("\n", 1)[0]
            if len(text) < 3 or not text[:3].isdigit() or text[0] not in "2345":
                raise ValueError(f"replies.{name}: must start with an SMTP code, got {value!r}")
        for key, value in self.codes.items():
            if not key.isdigit() or value[:3] != key:
                raise ValueError(f"replies.codes.{key}: key and reply code must agree")

    def named(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in _REPLY_NAMES}


_REPLY_NAMES = (
    "mail_ok",
    "rcpt_ok",
    "accepted",
    "throttle",
    "throttle_connections",
    "unknown",
    "full",
    "disabled",
    "suppressed",
    "greylisted",
    "relay_denied",
    "reputation",
    "soft",
    "hard",
    "async_bounce",
)


@dataclass(frozen=True)
class LimitsConfig:
    """Per sending IP. Rates are token buckets ("100/m"; 0 = unlimited) whose burst
    defaults to one minute's worth; `sessions` caps concurrent sessions (0 = no cap)."""

    connections: float = rate_field()
    connection_burst: int = 0
    sessions: int = 0
    messages: float = rate_field()
    message_burst: int = 0
    max_recipients: int = 100
    max_message_size: int = 50 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("connection_burst", "sessions", "message_burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_recipients < 1:
            raise ValueError("max_recipients must be at least 1")


@dataclass(frozen=True)
class MailboxesConfig:
    """Users by list: a local part ("nobody"), a full address ("x@isp.test"), or
    "re:PATTERN" searched in the whole lower-case address."""

    unknown: tuple[str, ...] = ()
    full: tuple[str, ...] = ()
    disabled: tuple[str, ...] = ()
    suppressed: tuple[str, ...] = ()


@dataclass(frozen=True)
class GreylistConfig:
    enabled: bool = False
    window: float = duration_field("5m")  # virtual: a retry after this is accepted
    expiry: float = duration_field("36h")  # virtual: how long a passed triple stays known
    fraction: float = 1.0  # of new triples that are greylisted (by hash, deterministic)

    def __post_init__(self) -> None:
        _check_fraction(self, "fraction")


@dataclass(frozen=True)
class LatencyConfig:
    """Real-world seconds before each reply; the persona waits latency / time scale."""

    connect: float = duration_field("0s")
    mail: float = duration_field("0s")
    rcpt: float = duration_field("0s")
    data: float = duration_field("0s")
    dot: float = duration_field("0s")


@dataclass(frozen=True)
class FaultsConfig:
    """Seeded random faults, by hash of (seed, recipient, attempt)."""

    soft: float = 0.0  # RCPT answered with replies.soft
    hard: float = 0.0  # RCPT answered with replies.hard
    disconnect: float = 0.0  # connection dropped after the final dot, no reply

    def __post_init__(self) -> None:
        _check_fraction(self, "soft", "hard", "disconnect")
        if self.soft + self.hard > 1.0:
            raise ValueError("soft + hard must be at most 1")


@dataclass(frozen=True)
class AsyncConfig:
    """Artefacts sent later (virtual `delay`) to the envelope sender, through the MTA."""

    delay: float = duration_field("10m")
    dsn_fraction: float = 0.0  # accepted recipients bounced later (RFC 3464)
    autoreply_fraction: float = 0.0  # RFC 3834 auto-replies
    complaint_fraction: float = 0.0  # RFC 5965 ARF reports

    def __post_init__(self) -> None:
        _check_fraction(self, "dsn_fraction", "autoreply_fraction", "complaint_fraction")


@dataclass(frozen=True)
class ReputationConfig:
    """Per sending IP: a young IP sending too much, or many complaints -> `replies.reputation`."""

    new_ip_age: float = duration_field("30d")  # virtual age below which an IP is "new"
    new_ip_daily_limit: int = 0  # messages per virtual day from a new IP; 0: no rule
    complaint_rate: float = 0.0  # complaints / messages above which an IP is blocked; 0: off
    complaint_min_messages: int = 100  # the complaint rule needs at least this many messages

    def __post_init__(self) -> None:
        _check_fraction(self, "complaint_rate")
        if self.new_ip_daily_limit < 0 or self.complaint_min_messages < 0:
            raise ValueError("limits must not be negative")


@dataclass(frozen=True)
class PersonaConfig:
    name: str
    kind: Literal["smtp", "blackhole"] = "smtp"
    domains: tuple[str, ...] = ()
    mx: tuple[HostConfig, ...] = ()
    hostname: str = ""  # default: the first MX host name
    banner: str = "ESMTP"
    replies: RepliesConfig = field(default_factory=RepliesConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    mailboxes: MailboxesConfig = field(default_factory=MailboxesConfig)
    greylist: GreylistConfig = field(default_factory=GreylistConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    async_: AsyncConfig = field(default_factory=AsyncConfig, metadata={"key": "async"})
    reputation: ReputationConfig = field(default_factory=ReputationConfig)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"persona name must be letters, digits, - or _: {self.name!r}")
        if not self.mx:
            raise ValueError(f"persona {self.name}: needs at least one mx host")

    @property
    def smtp_hostname(self) -> str:
        return self.hostname or self.mx[0].name


@dataclass(frozen=True)
class SimSection:
    data_dir: str = "var/sim"
    seed: int = 1
    smtp_port: int = 2525  # every persona listens on this port, each on its own address
    dns_listen: str = hostport_field("127.0.0.1:5300")
    http_listen: str = hostport_field("127.0.0.1:8025")  # "" : no HTTP endpoint
    mta_submit: str = hostport_field("127.0.0.1:2525")  # where artefacts are sent ("" : nowhere)
    dns_ttl: float = duration_field("5m")
    stall_max: float = duration_field("60s")  # real seconds a stall or black hole lasts at most
    store: Literal["sqlite", "maildir"] = "sqlite"  # where accepted messages go (mta.sim.store)
    store_fsync: bool = False  # true: SQLite synchronous=FULL / fsync each Maildir file
    random_faults: bool = True  # false: no seeded faults nor random artefacts (exact runs)
    token: str = ""  # the write token of the HTTP API (env MTA_ADMIN_TOKEN wins); "": no writes
    dkim_keys: str = ""  # a directory of <selector>._domainkey.<domain>.pem keys the sim publishes
    mta_admin: str = ""  # the MTA's admin URL, for the inbox's link to the operator console

    def __post_init__(self) -> None:
        if not 0 <= self.smtp_port <= 65535:
            raise ValueError("smtp_port must be 0-65535")
        if self.stall_max <= 0:
            raise ValueError("stall_max must be positive")


@dataclass(frozen=True)
class SimConfig:
    sim: SimSection = field(default_factory=SimSection)
    hosts: tuple[HostConfig, ...] = ()
    domains: tuple[DomainConfig, ...] = ()
    personas: tuple[PersonaConfig, ...] = ()

    def __post_init__(self) -> None:
        names = [p.name for p in self.personas]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"persona {duplicates[0]} is defined twice")
        addresses = [h.address for p in self.personas for h in p.mx]
        taken = sorted({a for a in addresses if addresses.count(a) > 1})
        if taken:
            raise ValueError(f"address {taken[0]} is used by two persona hosts")

    def persona(self, name: str) -> PersonaConfig:
        for persona in self.personas:
            if persona.name == name:
                return persona
        raise KeyError(name)


DEFAULTS_PACKAGE = "mta.defaults"
DEFAULTS_FILE = "isps.toml"


def default_config_text() -> str:
    return resources.files(DEFAULTS_PACKAGE).joinpath(DEFAULTS_FILE).read_text(encoding="utf-8")


def parse_sim_config(text: str, source: str) -> SimConfig:
    document = engine.parse_toml(text, source)
    # `[personas.async]` fills the field async_ (a Python keyword): its metadata "key" says so.
    config = engine.build(SimConfig, document, source)
    return check_sim_config(config, source)


def check_sim_config(config: SimConfig, source: str) -> SimConfig:
    """Cross-field checks the dataclasses cannot do alone."""
    for key in ("dns_listen", "http_listen", "mta_submit"):
        value = getattr(config.sim, key)
        if value:
            parse_hostport(value)
        elif key == "dns_listen":
            raise ConfigError(f"{source}: sim.dns_listen: must not be empty")
    return config


def load_sim_config(
    path: str | Path | None = None, flags: Mapping[str, Any] | None = None
) -> SimConfig:
    """The effective config: the file (or the built-in defaults), then flags (`sim.*` keys)."""
    if path is None:
        config = parse_sim_config(default_config_text(), f"(built-in {DEFAULTS_FILE})")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read: {exc}") from None
        config = parse_sim_config(text, source)
    if flags:
        config = engine.apply_overrides(config, flags, "command line", False)
        config = check_sim_config(config, "command line")
    return config
