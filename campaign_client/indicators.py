"""Delivery KPIs (pure): counts by status, the indicators a Campaign user reads, failures by type
and reason over Failed lines, and what came back after delivery; the report's text.

`compute_kpis(delivery_id, rows, declared_total, excluded)` takes `Row`s (one per log line, or
grouped with a count) and returns `Kpis`. The indicators (the README defines them for users):

- Sent to the provider: lines whose message the MTA accepted (SMTP 250, or any MTA event about
  it): Taken into account, Sent, and Failed lines that carry an MTA queue id.
- Delivered: Sent lines (the receiving server accepted the message).
- Hard bounces / Soft bounces: Failed lines whose failure type is Hard / Soft (a Soft one is a
  recipient whose retries ended at the validity end). Failed lines of type Ignored count in
  neither; they show in "Failures by type".
- Excluded: recipients left out before submission (address in Quarantine or Denylisted); they
  are not lines of the delivery, so they count in no other figure.
- Success %: Delivered / recipients in the delivery (excluded ones not counted) x 100; it
  starts at 0 ("Taken into account" is not a success).

"Failures by type / by reason" count Failed lines only, so they add up to the Failed count.
What is recorded on other lines stands in its own section: Sent lines that drew later feedback
(a complaint: Hard "Denylisted"; an auto-reply: Ignored) are "After delivery"; lines still being
retried after a soft bounce are "Being retried".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from campaign_client.status import FINAL_STATUSES, Status

NOT_DEFINED = "Not defined"


@dataclass(frozen=True, slots=True)
class Row:
    status: str
    failure_type: str | None = None
    failure_reason: str | None = None
    count: int = 1
    accepted: bool = False          # the MTA has the message (a queue id is known)


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Lines counted by failure type and by failure reason (each sorted, largest first)."""

    by_type: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_type.values())

    def to_json(self) -> dict[str, Any]:
        return {"by_type": dict(self.by_type), "by_reason": dict(self.by_reason)}


@dataclass(frozen=True, slots=True)
class Indicators:
    sent_to_provider: int = 0
    delivered: int = 0
    hard_bounces: int = 0
    soft_bounces: int = 0
    excluded: int = 0
    success_pct: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"sent_to_provider": self.sent_to_provider, "delivered": self.delivered,
                "hard_bounces": self.hard_bounces, "soft_bounces": self.soft_bounces,
                "excluded": self.excluded, "success_pct": self.success_pct}


@dataclass(frozen=True, slots=True)
class Kpis:
    delivery_id: str
    total: int
    by_status: dict[str, int]
    success_pct: float
    by_failure_type: dict[str, int]          # Failed lines only
    by_failure_reason: dict[str, int]        # Failed lines only
    not_final: int = 0
    indicators: Indicators = field(default_factory=Indicators)
    after_delivery: Breakdown = field(default_factory=Breakdown)   # Sent lines with feedback
    being_retried: Breakdown = field(default_factory=Breakdown)    # Taken lines, soft bounced

    @property
    def final(self) -> bool:
        """True when every recipient is Sent or Failed (and there is at least one)."""
        return self.total > 0 and self.not_final == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "total": self.total,
            "by_status": dict(self.by_status),
            "success_pct": self.success_pct,
            "indicators": self.indicators.to_json(),
            "by_failure_type": dict(self.by_failure_type),
            "by_failure_reason": dict(self.by_failure_reason),
            "after_delivery": self.after_delivery.to_json(),
            "being_retried": self.being_retried.to_json(),
        }


def _sorted(counts: dict[str, int]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


class _Tally:
    def __init__(self) -> None:
        self.by_type: dict[str, int] = {}
        self.by_reason: dict[str, int] = {}

    def add(self, row: Row) -> None:
        kind = row.failure_type or NOT_DEFINED
        reason = row.failure_reason or NOT_DEFINED
        self.by_type[kind] = self.by_type.get(kind, 0) + row.count
        self.by_reason[reason] = self.by_reason.get(reason, 0) + row.count

    def done(self) -> Breakdown:
        return Breakdown(_sorted(self.by_type), _sorted(self.by_reason))


def compute_kpis(delivery_id: str, rows: Iterable[Row], declared_total: int = 0,
                 excluded: int = 0) -> Kpis:
    """KPIs of one delivery; `declared_total` counts recipients not yet in the log as Pending;
    `excluded` is the size of the delivery's exclusion log."""
    by_status: dict[str, int] = {str(status): 0 for status in Status}
    failed, after, retried = _Tally(), _Tally(), _Tally()
    lines = accepted = 0
    for row in rows:
        lines += row.count
        by_status[row.status] = by_status.get(row.status, 0) + row.count
        if row.accepted or row.status in (Status.TAKEN, Status.SENT):
            accepted += row.count
        if row.status == Status.FAILED:
            failed.add(row)
        elif row.failure_type is None and row.failure_reason is None:
            continue
        elif row.status == Status.SENT:
            after.add(row)
        elif row.status == Status.TAKEN:
            retried.add(row)
    total = max(lines, declared_total)
    by_status[str(Status.PENDING)] += total - lines
    sent = by_status[str(Status.SENT)]
    success = round(sent * 100.0 / total, 2) if total else 0.0
    final = sum(count for status, count in by_status.items() if status in FINAL_STATUSES)
    failures = failed.done()
    indicators = Indicators(
        sent_to_provider=accepted, delivered=sent,
        hard_bounces=failures.by_type.get("Hard", 0),
        soft_bounces=failures.by_type.get("Soft", 0),
        excluded=excluded, success_pct=success,
    )
    return Kpis(
        delivery_id=delivery_id, total=total, by_status=by_status, success_pct=success,
        by_failure_type=failures.by_type, by_failure_reason=failures.by_reason,
        not_final=total - final, indicators=indicators, after_delivery=after.done(),
        being_retried=retried.done(),
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


INDICATOR_LABELS = (
    ("Sent to the provider", "sent_to_provider"),
    ("Delivered", "delivered"),
    ("Hard bounces", "hard_bounces"),
    ("Soft bounces", "soft_bounces"),
    ("Excluded", "excluded"),
)


def render_table(kpis: Kpis) -> str:
    """The status table, the indicators, failures of Failed lines, then the other sections."""
    width = max(len(status) for status in kpis.by_status)
    excluded = kpis.indicators.excluded
    lines = [f"Delivery {kpis.delivery_id}: {kpis.total} recipients"
             + (f" ({excluded} more excluded before sending)" if excluded else "")]
    lines.append(f"  {'Status':<{width}}  {'Count':>7}  {'Share':>7}")
    for status, count in kpis.by_status.items():
        share = count * 100.0 / kpis.total if kpis.total else 0.0
        lines.append(f"  {status:<{width}}  {count:>7}  {share:>6.2f}%")
    lines.append(f"  {'Success':<{width}}  {'':>7}  {kpis.success_pct:>6.2f}%")
    lines.append("Indicators: " + ", ".join(
        f"{label} {getattr(kpis.indicators, name)}" for label, name in INDICATOR_LABELS)
        + f", Success {kpis.success_pct:.2f}%")
    if kpis.by_failure_type:
        lines.append("Failures by type (Failed lines): " + _counts(kpis.by_failure_type))
        lines.append("Failures by reason (Failed lines): " + _counts(kpis.by_failure_reason))
    if kpis.being_retried.by_type:
        lines.append("Being retried, last soft bounce: "
                     + _counts(kpis.being_retried.by_reason))
    if kpis.after_delivery.by_type:
        lines.append("After delivery (Sent lines: complaints, auto-replies): by type "
                     + _counts(kpis.after_delivery.by_type) + "; by reason "
                     + _counts(kpis.after_delivery.by_reason))
    return "\n".join(lines)
