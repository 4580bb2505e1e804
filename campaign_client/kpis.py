"""Delivery KPIs (pure): counts by status, Success %, failures by type and reason; the table text.

`compute_kpis(delivery_id, rows, declared_total)` takes `Row`s (one per log line, or grouped
with a count) and returns `Kpis`. Success % = Sent / total recipients * 100 (0 while nothing is
Sent; "Taken into account by the service provider" is not a success). Failures by type and reason
count every line that carries a failure reason now: Failed lines, lines whose soft bounces are
still being retried, and Sent lines that later drew a complaint or an ignored auto-reply.
`render_table(kpis)` is the seed's status table as text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from campaign_client.status import FINAL_STATUSES, Status


@dataclass(frozen=True, slots=True)
class Row:
    status: str
    failure_type: str | None = None
    failure_reason: str | None = None
    count: int = 1


@dataclass(frozen=True, slots=True)
class Kpis:
    delivery_id: str
    total: int
    by_status: dict[str, int]
    success_pct: float
    by_failure_type: dict[str, int]
    by_failure_reason: dict[str, int]
    not_final: int = field(default=0)

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
            "by_failure_type": dict(self.by_failure_type),
            "by_failure_reason": dict(self.by_failure_reason),
        }


def compute_kpis(delivery_id: str, rows: Iterable[Row], declared_total: int = 0) -> Kpis:
    """KPIs of one delivery; `declared_total` counts recipients not yet in the log as Pending."""
    by_status: dict[str, int] = {str(status): 0 for status in Status}
    by_type: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    lines = 0
    for row in rows:
        lines += row.count
        by_status[row.status] = by_status.get(row.status, 0) + row.count
        if row.failure_reason is not None or row.failure_type is not None:
            kind = row.failure_type or "Not defined"
            reason = row.failure_reason or "Not defined"
            by_type[kind] = by_type.get(kind, 0) + row.count
            by_reason[reason] = by_reason.get(reason, 0) + row.count
    total = max(lines, declared_total)
    by_status[str(Status.PENDING)] += total - lines
    sent = by_status[str(Status.SENT)]
    success = round(sent * 100.0 / total, 2) if total else 0.0
    final = sum(count for status, count in by_status.items() if status in FINAL_STATUSES)
    return Kpis(
        delivery_id=delivery_id,
        total=total,
        by_status=by_status,
        success_pct=success,
        by_failure_type=dict(sorted(by_type.items(), key=lambda item: (-item[1], item[0]))),
        by_failure_reason=dict(sorted(by_reason.items(), key=lambda item: (-item[1], item[0]))),
        not_final=total - final,
    )


def render_table(kpis: Kpis) -> str:
    """The seed's status table, Success %, then failures by type and by reason."""
    width = max(len(status) for status in kpis.by_status)
    lines = [f"Delivery {kpis.delivery_id}: {kpis.total} recipients"]
    lines.append(f"  {'Status':<{width}}  {'Count':>7}  {'Share':>7}")
    for status, count in kpis.by_status.items():
        share = count * 100.0 / kpis.total if kpis.total else 0.0
        lines.append(f"  {status:<{width}}  {count:>7}  {share:>6.2f}%")
    lines.append(f"  {'Success':<{width}}  {'':>7}  {kpis.success_pct:>6.2f}%")
    if kpis.by_failure_type:
        lines.append("Failures by type: " + ", ".join(
            f"{name} {count}" for name, count in kpis.by_failure_type.items()))
        lines.append("Failures by reason: " + ", ".join(
            f"{name} {count}" for name, count in kpis.by_failure_reason.items()))
    return "\n".join(lines)
