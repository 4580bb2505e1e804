"""The MTA's configuration: typed, frozen, from TOML + `MTA_*` env vars + flags.

Precedence: flag > env > file > default. Every key has a working default, so
`mta serve` runs with no file at all. Env names are `MTA_` + the dotted key in
upper case with dots as underscores: `smtp.listen` -> `MTA_SMTP_LISTEN`.
Durations accept "30s", "5m", "84h", "3.5d"; they are stored as seconds.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mta.config import engine
from mta.config.engine import ConfigError, duration_field, hostport_field
from mta.config.mx_rules import BindingConfig, load_retry_schedule
from mta.core.retry import RetryPolicy, RetrySchedule
from mta.core.standard_webhooks import secret_key

__all__ = ["ConfigError", "MtaConfig", "load_config"]

DAY = 86400.0


def check_relay_networks(networks: Sequence[str], allow_open_relay: bool) -> None:
    """Each value must be an IP network; all of IPv4 or IPv6 needs `allow_open_relay`."""
    parsed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for text in networks:
        try:
            parsed.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(
                f"relay_networks: {text!r} is not an IP network (e.g. 10.0.0.0/8 or ::1/128)"
            ) from None
    v4 = [n for n in parsed if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in parsed if isinstance(n, ipaddress.IPv6Network)]
    for version, covered, everything in (
        (4, sum(n.num_addresses for n in ipaddress.collapse_addresses(v4)), 1 << 32),
        (6, sum(n.num_addresses for n in ipaddress.collapse_addresses(v6)), 1 << 128),
    ):
        if covered == everything and not allow_open_relay:
            raise ValueError(
                f"relay_networks covers every IPv{version} address: that is an open relay; "
                "set allow_open_relay = true if you mean it"
            )


@dataclass(frozen=True)
class SmtpConfig:
    """The submission side (ingress)."""

    listen: str = hostport_field("127.0.0.1:2525")
    hostname: str = "mta.localhost"
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 1000
    relay_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    tls_cert: str = ""
    tls_key: str = ""
    auth_users: dict[str, str] = field(default_factory=dict)
    idle_timeout: float = duration_field("5m")
    allow_open_relay: bool = False
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    session_timeout: float = duration_field("30m")
    junk_command_limit: int = 100
    line_length_hard_limit: int = 998
    auth_failures_per_session: int = 3
    auth_failures_per_ip: int = 10
    auth_lockout: float = duration_field("10m")
    auth_failure_delay: float = duration_field("1s")
    data_memory_limit: int = 32 * 1024 * 1024
    workers: int | Literal["auto"] = "auto"  # "auto": see ingress.workers.worker_count

    def __post_init__(self) -> None:
        if self.max_message_size < 1024:
            raise ValueError("max_message_size must be at least 1024")
        if isinstance(self.workers, int) and self.workers < 0:
            raise ValueError('workers must be "auto", 0 (SMTP in the main process) or more')
        for name in (
            "max_connections",
            "max_connections_per_ip",
            "session_timeout",
            "junk_command_limit",
            "line_length_hard_limit",
            "auth_failures_per_session",
            "auth_failures_per_ip",
            "auth_lockout",
            "auth_failure_delay",
            "data_memory_limit",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no limit) or more")
        check_relay_networks(self.relay_networks, self.allow_open_relay)
        if self.max_recipients < 1:
            raise ValueError("max_recipients must be at least 1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together")


@dataclass(frozen=True)
class TimeoutsConfig:
    """Per-stage client timeouts in real seconds; defaults from RFC 5321 4.5.3.2."""

    connect: float = duration_field("30s")
    greeting: float = duration_field("5m")
    ehlo: float = duration_field("5m")
    starttls: float = duration_field("2m")
    mail: float = duration_field("5m")
    rcpt: float = duration_field("5m")
    data: float = duration_field("2m")
    dot: float = duration_field("10m")
    idle: float = duration_field("30s")  # how long an unused pooled connection is kept


@dataclass(frozen=True)
class DeliveryConfig:
    """The outbound side."""

    port: int = 25
    relayhost: str = hostport_field("")
    helo_name: str = ""  # default: smtp.hostname
    tls: Literal["opportunistic", "required", "none"] = "opportunistic"
    bindings: tuple[BindingConfig, ...] = ()  # source addresses; none: the system's choice
    mx_rules_files: tuple[str, ...] = ()  # your MX rules, merged over the built-in ones
    max_connections: int = 500
    max_connections_per_host: int = 20
    max_messages_per_connection: int = 100
    max_recipients_per_transaction: int = 100
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_connections_per_host",
            "max_messages_per_connection",
            "max_recipients_per_transaction",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.port < 65536:
            raise ValueError("port must be 1-65535")


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = ()  # empty: the system's resolv.conf
    port: int = 53
    timeout: float = duration_field("5s")
    cache_size: int = 10000

    def __post_init__(self) -> None:
        for server in self.nameservers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(
                    f"nameservers: expected IP addresses, got {server!r}"
                ) from None
        if not 0 < self.port < 65536:
            raise ValueError("port must be 1-65535")
        if self.timeout <= 0:
            raise ValueError("timeout must be more than 0")
        if self.cache_size < 0:
            raise ValueError("cache_size must not be negative")


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key_file: str


@dataclass(frozen=True)
class DkimConfig:
    keys: tuple[DkimKey, ...] = ()
    signed_headers: tuple[str, ...] = (
        "From",
        "Reply-To",
        "Subject",
        "Date",
        "To",
        "Cc",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Feedback-ID",
    )
    oversign: tuple[str, ...] = ("From", "Subject", "Date", "To", "Reply-To", "Message-ID")


@dataclass(frozen=True)
class RetryConfig:
    """The first retry schedule: exponential with jitter, capped, inside the validity."""

    first: float = duration_field("10m")
    factor: float = 2.0
    max_interval: float = duration_field("4h")
    jitter: float = 0.2
    validity: float = duration_field("3.5d")  # the default and the cap of X-Campaign-Validity
    schedule_files: tuple[str, ...] = ()  # your retry policies, tried before the built-in ones

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.validity <= 0 or self.validity > 3.5 * DAY:
            raise ValueError("validity must be more than 0 and at most 3.5d")


@dataclass(frozen=True)
class ClockConfig:
    time_scale: float = 1.0
    anchor: str = ""  # REAL:VIRTUAL:SCALE, shared with the simulation by `mta up`

    def __post_init__(self) -> None:
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ValueError(f"must be a positive number, got {self.time_scale!r}")


@dataclass(frozen=True)
class SpoolConfig:
    batch_max: int = 512  # operations in one group commit at most
    pick_batch: int = 256  # recipients picked per scheduler round
    max_inflight: int = 2000  # recipients being delivered at once, at most
    shutdown_grace: float = duration_field("10s")  # real seconds SIGTERM waits for deliveries

    def __post_init__(self) -> None:
        for name in ("batch_max", "pick_batch", "max_inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass(frozen=True)
class BounceConfig:
    """User rule files, tried in order before the built-in rules."""

    rules_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str  # "whsec_<base64>" (Standard Webhooks) or any string used as the key

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        secret_key(self.secret)


@dataclass(frozen=True)
class FeedbackConfig:
    """Where feedback events go: webhooks (push), and always the pull API.

    `url` and `secret` name one more webhook as plain keys, so that it can come from
    the environment (MTA_FEEDBACK_URL, MTA_FEEDBACK_SECRET), as containers prefer.
    """

    webhooks: tuple[WebhookConfig, ...] = ()
    url: str = ""
    secret: str = ""
    batch_max: int = 100
    window: float = duration_field("8h")  # real time a failing batch is retried
    timeout: float = duration_field("10s")
    # Events every webhook has taken are deleted from the outbox once this old (real time);
    # the pull API serves them until then.
    retention: float = duration_field("7d")
    # A soft bounce repeating the last one reported for a recipient (same class, code and
    # enhanced code) is reported again only after this long (clock time); "0s": every attempt.
    coalesce_repeats: float = duration_field("6h")

    def __post_init__(self) -> None:
        if not 1 <= self.batch_max <= 10000:
            raise ValueError("batch_max must be 1-10000")
        if bool(self.url) != bool(self.secret):
            raise ValueError("url and secret go together")
        if self.url:
            WebhookConfig(self.url, self.secret)

    @property
    def endpoints(self) -> tuple[WebhookConfig, ...]:
        extra = (WebhookConfig(self.url, self.secret),) if self.url else ()
        return self.webhooks + extra


@dataclass(frozen=True)
class AdminConfig:
    listen: str = hostport_field("127.0.0.1:8080")  # "" disables the HTTP API
    # The token (env MTA_ADMIN_TOKEN) every write needs, and every request from another host
    # ("Authorization: Bearer ..."); "": writes are refused and other hosts get 403.
    token: str = ""
    allowed_hosts: tuple[str, ...] = ()  # Host header names served besides the bound address
    inbox_url: str = ""  # the simulation's inbox page, linked from the console
    client_url: str = ""  # the Campaign client's receiver (its /deliveries feeds the console)


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes sharing limits through Redis (`mta serve --cluster URL --node NAME`)."""

    url: str = ""  # redis://HOST:PORT/DB; "" runs the node alone
    node: str = ""  # this node's name, unique in the cluster (default: the host's name)
    prefix: str = "mta"  # of every Redis key
    poll: float = duration_field("250ms")  # real time between heartbeats and state polls
    lease_ttl: float = duration_field("5s")  # a connection lease lives this long unrenewed
    timeout: float = duration_field("500ms")  # Redis slower than this counts as unreachable
    batch: float = duration_field("1s")  # tokens asked for at once: this much of the rate

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"url must start with redis://, rediss:// or unix://, got {self.url!r}"
            )
        for name in ("poll", "lease_ttl", "timeout", "batch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be more than 0")
        if self.lease_ttl < 2 * self.poll:
            raise ValueError("lease_ttl must be at least twice poll (leases are renewed each poll)")
        if not self.prefix:
            raise ValueError("prefix must not be empty")


@dataclass(frozen=True)
class MtaConfig:
    data_dir: str = "var/mta"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    bounce: BounceConfig = field(default_factory=BounceConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def load_config(
    path: str | Path | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> MtaConfig:
    """The effective config; `path=None` means defaults (plus env and flags).

    Unknown `MTA_*` variables go to `warn` (default: a warning on the `mta.config` log).
    """
    return engine.load(
        MtaConfig,
        path,
        env_prefix="MTA_",
        flags=flags,
        environ=environ,
        reserved_env=("MTA_CONFIG",),
        warn=warn or logging.getLogger("mta.config").warning,
        flag_names=flag_names,
    )


def retry_schedule(config: MtaConfig) -> RetrySchedule:
    """The retry schedule the running MTA uses: `retry.schedule_files` in front of the built-in
    schedule, with the `[retry]` section as the default policy. `mta classify` and the API's
    classify explain retries with this same schedule."""
    r = config.retry
    default = RetryPolicy(
        first=r.first, factor=r.factor, max_interval=r.max_interval, jitter=r.jitter
    )
    return load_retry_schedule(r.schedule_files).with_default(default)
