"""`/metrics` through prometheus_client: every family with HELP and TYPE, and three histograms.

- The counters and gauges the service keeps (`AdminSources.metrics`: `name{label="v"}` ->
  value) become families, each with its HELP text from `HELP`.
- `mta_delivery_latency_seconds`: from acceptance (the message's 250) to the remote 250,
  observed for every delivered recipient, read incrementally from the spool's attempts at
  each scrape; labelled by `isp`, the MX rule that matched the site (bounded by the rules
  configured; past MAX_ISPS distinct values the rest are "other").
- `mta_queue_age_seconds`: the age of every queued recipient now (recomputed per scrape, one
  grouped query).
- `mta_webhook_lag_seconds`: for each event a webhook endpoint acknowledged since the last
  scrape, the time from the event to that scrape (an upper bound at scrape resolution).

All ages use the service's clock (virtual time when it runs faster than real time).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

if TYPE_CHECKING:
    from mta.clock import Clock
    from mta.queue.spool import Spool

LATENCY_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3.5 * 86400.0)
AGE_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 2 * 86400.0, 3.5 * 86400.0)
LAG_BUCKETS = (0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 3600.0)
MAX_ISPS = 32
READ_BATCH = 50_000

HELP = {
    "mta_messages_accepted": "Messages accepted over SMTP (250 after commit).",
    "mta_messages_rejected": "Messages refused at submission.",
    "mta_recipients": "Recipients in the spool by state.",
    "mta_recipients_in_flight": "Recipients leased to a delivery attempt now.",
    "mta_attempts": "Delivery attempts by result.",
    "mta_connections_opened": "Outbound SMTP connections opened.",
    "mta_connections_reused": "Outbound transactions that reused an open connection.",
    "mta_connections_open": "Outbound SMTP connections open now.",
    "mta_spool_commits": "Group commits of the spool.",
    "mta_spool_operations": "Operations written by the spool.",
    "mta_fresh_content_bytes": "Bytes of just-accepted messages kept in memory for delivery.",
    "mta_events": "Feedback events recorded (the outbox's last id).",
    "mta_smtp_sessions_open": "Inbound SMTP sessions open now.",
    "mta_smtp_connections_refused": "Inbound connections refused, by limit.",
    "mta_smtp_auth_failures": "Failed AUTH attempts.",
    "mta_smtp_auth_refused": "AUTH refused (e.g. without TLS).",
    "mta_smtp_junk_closed": "Sessions closed for junk commands.",
    "mta_smtp_session_timeouts": "Inbound sessions closed on idle timeout.",
    "mta_smtp_long_lines": "Inbound lines over the length limit.",
    "mta_smtp_data_spilled": "Message bodies spilled to disk while read.",
}
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _families(values: dict[str, float]) -> list[Metric]:
    """Counter and gauge families from `name{k="v"}` keys (a `_total` name is a counter)."""
    grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
    for key, value in sorted(values.items()):
        match = _SAMPLE.match(key)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(2) or ""))
        grouped.setdefault(match.group(1), []).append((labels, float(value)))
    families: list[Metric] = []
    for name, samples in grouped.items():
        counter = name.endswith("_total")
        base = name[: -len("_total")] if counter else name
        text = HELP.get(base, f"mta-sim: {base.replace('_', ' ')}.")
        label_names = sorted({k for labels, _ in samples for k in labels})
        family: CounterMetricFamily | GaugeMetricFamily
        if counter:
            family = CounterMetricFamily(base, text, labels=label_names)
        else:
            family = GaugeMetricFamily(base, text, labels=label_names)
        for labels, value in samples:
            family.add_metric([labels.get(k, "") for k in label_names], value)
        families.append(family)
    return families


@dataclass
class Buckets:
    """A cumulative histogram kept here (prometheus_client's Histogram needs one process-wide
    registry; each admin API keeps its own)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1
        self.count += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        pairs = [(_bound(b), float(c)) for b, c in zip(self.bounds, self.counts, strict=True)]
        return [*pairs, ("+Inf", float(self.count))]


def _bound(value: float) -> str:
    return f"{value:g}" if value != math.inf else "+Inf"


class Histograms:
    """The three histograms, brought up to date by `refresh` before each scrape."""

    def __init__(self) -> None:
        self.latency: dict[str, Buckets] = {}
        self.last_attempt = 0
        self.lag = Buckets(LAG_BUCKETS)
        self.cursors: dict[str, int] = {}
        self.age: Buckets = Buckets(AGE_BUCKETS)
        self._lock = threading.Lock()

    def isp(self, label: str) -> Buckets:
        found = self.latency.get(label)
        if found is None:
            if len(self.latency) >= MAX_ISPS:
                label = "other"
                found = self.latency.get(label)
            if found is None:
                found = self.latency[label] = Buckets(LATENCY_BUCKETS)
        return found

    async def refresh(
        self,
        spool: Spool,
        now: float,
        isp_of: Callable[[str], str],
        cursors: Sequence[tuple[str, int]],
    ) -> None:
        """Read what happened since the last scrape (bounded per call) and the queue now."""
        rows = await spool.delivered_since(self.last_attempt, READ_BATCH)
        counts, count, total = await spool.queued_ages(now, AGE_BUCKETS)
        lags: list[float] = []
        for url, cursor in cursors:
            before = self.cursors.get(url)
            self.cursors[url] = cursor
            if before is not None and cursor > before:
                lags += [now - at for at in await spool.event_times(before, cursor, READ_BATCH)]
        with self._lock:
            for attempt_id, seconds, site in rows:
                self.isp(isp_of(site)).observe(max(0.0, seconds))
                self.last_attempt = attempt_id
            age = Buckets(AGE_BUCKETS)
            age.counts, age.count, age.total = counts, count, total
            self.age = age
            for lag in lags:
                self.lag.observe(max(0.0, lag))

    def families(self) -> Iterable[Metric]:
        with self._lock:
            latency = HistogramMetricFamily(
                "mta_delivery_latency_seconds",
                "From acceptance (the 250 to the sender) to the remote 250, per delivered"
                " recipient, by ISP (the MX rule of its site).",
                labels=["isp"],
            )
            for label, buckets in sorted(self.latency.items()):
                latency.add_metric([label], buckets.buckets(), buckets.total)
            yield latency
            age = HistogramMetricFamily(
                "mta_queue_age_seconds", "Age of each queued recipient now (since acceptance)."
            )
            age.add_metric([], self.age.buckets(), self.age.total)
            yield age
            lag = HistogramMetricFamily(
                "mta_webhook_lag_seconds",
                "From a feedback event to the scrape after its webhook acknowledged it"
                " (an upper bound at scrape resolution).",
            )
            lag.add_metric([], self.lag.buckets(), self.lag.total)
            yield lag


class _Collector:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def exposition(values: dict[str, float], histograms: Histograms | None) -> bytes:
    """The Prometheus text format of `values` and the histograms."""
    registry = CollectorRegistry(auto_describe=False)
    families = _families(values)
    if histograms is not None:
        families.extend(histograms.families())
    registry.register(_Collector(families))
    return generate_latest(registry)


@dataclass
class HistogramSource:
    """How the admin API refreshes the histograms before a scrape."""

    refresh: Callable[[], Awaitable[None]]
    histograms: Histograms


def spool_histograms(
    spool: Spool,
    clock: Clock,
    isp_of: Callable[[str], str],
    cursors: Callable[[], Sequence[Any]],
) -> HistogramSource:
    """The histograms over a running spool; `cursors()` gives each webhook endpoint's status."""
    histograms = Histograms()

    async def refresh() -> None:
        pairs = [(str(c.url), int(c.cursor)) for c in cursors()]
        await histograms.refresh(spool, clock.now(), isp_of, pairs)

    return HistogramSource(refresh, histograms)
