"""`campaign-client report D1 --recipients [--status S]`: each recipient of a delivery with its
status, failure type and reason, and its history: every event applied to its line (attempts,
the replies, the MTA's verdicts), and what the bounce mailbox made of mail about it (kind, rule).
Recipients the send left out (exclusion log) are listed with the status "Excluded" and
Campaign's reason. `recipients(log, delivery_id, status)` gives JSON-ready dicts;
`render(items)` the text.
"""

from __future__ import annotations

from typing import Any

from campaign_client.cli_common import when
from campaign_client.log import DeliveryLog
from campaign_client.status import Status

EXCLUDED = "Excluded"
STATUSES = (*(str(status) for status in Status), EXCLUDED)


def match_status(text: str) -> str:
    """A status from what a user types: any case, any unambiguous start ("taken", "fail")."""
    wanted = text.strip().lower()
    found = [status for status in STATUSES if status.lower().startswith(wanted)] if wanted else []
    if len(found) != 1:
        names = ", ".join(STATUSES)
        raise ValueError(f"--status: expected one of {names}, got {text!r}")
    return found[0]


def recipients(log: DeliveryLog, delivery_id: str, status: str | None = None) -> list[dict[str,
                                                                                          Any]]:
    """Each recipient of the delivery (lines, then exclusions), oldest event first."""
    histories = log.histories(delivery_id)
    inbound: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in log.inbound_records():
        if record.get("delivery_id") == delivery_id:
            key = (str(record["log_id"]), str(record["recipient"]).lower())
            inbound.setdefault(key, []).append({
                "received_at": record["received_at"], "kind": record["kind"],
                "failure_type": record["failure_type"], "reason": record["reason"],
                "rule": record["rule"], "detail": record["detail"]})
    items: list[dict[str, Any]] = []
    for line in log.lines(delivery_id):
        items.append({
            "log_id": line.log_id, "recipient": line.recipient, "status": line.status,
            "failure_type": line.failure_type, "reason": line.failure_reason,
            "reason_code": line.reason_code, "attempts": line.attempts,
            "last_reply": line.last_reply, "queue_id": line.queue_id,
            "history": histories.get((line.log_id, line.recipient), []),
            "inbound": inbound.get((line.log_id, line.recipient.lower()), []),
        })
    for exclusion in log.exclusions(delivery_id):
        cause = exclusion.cause or "-"
        items.append({
            "log_id": exclusion.log_id, "recipient": exclusion.recipient, "status": EXCLUDED,
            "failure_type": "Hard", "reason": exclusion.reason,
            "reason_code": exclusion.reason_code, "attempts": 0, "last_reply": None,
            "queue_id": None,
            "history": [{"at": exclusion.at, "kind": "excluded", "seq": None, "attempt": None,
                         "reply": None, "failure_type": "Hard", "reason": exclusion.reason,
                         "status": EXCLUDED,
                         "detail": f"address {exclusion.status}: {cause}, delivery "
                                   f"{exclusion.cause_delivery_id or '-'}"}],
            "inbound": [],
        })
    if status is not None:
        items = [item for item in items if item["status"] == status]
    return sorted(items, key=_order)


def _order(item: dict[str, Any]) -> tuple[int, str, str]:
    """Log ids in number order when they are numbers ("2" before "10")."""
    log_id = str(item["log_id"])
    return (int(log_id) if log_id.isdigit() else 1 << 62, log_id, str(item["recipient"]))


def render(items: list[dict[str, Any]]) -> str:
    """One block per recipient: its line, then its history indented."""
    out: list[str] = []
    for item in items:
        verdict = (f"{item['failure_type']} / {item['reason']}" if item["reason"]
                   else "-")
        out.append(f"{item['log_id']:>6}  {item['recipient']:<34} {item['status']:<42} "
                   f"{verdict}  attempts {item['attempts']}")
        for step in item["history"]:
            reply = f"  {step['reply']}" if step.get("reply") else ""
            found = (f"  -> {step['failure_type']} / {step['reason']}" if step.get("reason")
                     else "")
            detail = f"  ({step['detail']})" if step.get("detail") else ""
            attempt = f" #{step['attempt']}" if step.get("attempt") else ""
            out.append(f"          {when(step['at'])}  {step['kind']}{attempt}{reply}{found}"
                       f"{detail}")
        for record in item["inbound"]:
            out.append(f"          {when(record['received_at'])}  inbound {record['kind']}"
                       f"  -> {record['failure_type']} / {record['reason']}"
                       f"  (rule {record['rule']})")
    out.append(f"{len(items)} recipients")
    return "\n".join(out)
