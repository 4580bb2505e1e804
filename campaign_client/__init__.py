"""campaign_client: the sender side (Adobe Campaign's role). Never imports `mta`: the contract
with the MTA is SMTP in one direction and signed JSON webhooks (or the pull API) in the other.

Library API (all names importable from `campaign_client`; heavy modules load on first use):

    log = DeliveryLog(path)                           # SQLite (WAL) delivery log, thread-safe
    receiver = Receiver(log, "whsec_...", "127.0.0.1", 0,
                        bounce_host="127.0.0.1", bounce_port=0)
    await receiver.start()                            # receiver.port, .bounce_port, .webhook_url
    delivery = Delivery("D1", [Recipient("a@gmail.test", "1", {"first_name": "Ann"})],
                        from_addr="news@sender.test", validity="5d")
    result = await submit(delivery, "127.0.0.1", 2525, log=log, sessions=10,
                          progress=lambda done, total: ...)   # -> SubmitResult
    final = await wait_for(log, "D1", "final", timeout=60)  # -> Kpis, or raises WaitTimeout
    print(render_table(kpis(log, "D1")))
    await pull_events("http://127.0.0.1:8080", log, stop=stop_event)   # instead of webhooks
    await receiver.stop()

    log = DeliveryLog(path, policy=load_config("client.toml").quarantine)
    log.quarantined("a@x.test")                       # QuarantineEntry or None
    state = decide(AddressState(), notice, notice.at, Policy())   # the quarantine table

Modules: status (the status table, pure), quarantine (the address quarantine table, pure),
events (event records, pure), indicators (the KPIs, pure), webhook (Standard Webhooks
signatures, pure), inbound (the bounce mailbox's API; the reading itself is the `bounces`
package: DSNs and plain-text bounces, ARF, auto-replies, inbound rules, pure), config (the
client's TOML config), log (SQLite delivery log) with line_events (applying events to its lines)
and address_store (its quarantine, history and exclusion tables), mailbox (bounce mailbox),
receiver (HTTP + SMTP listeners), submission (SMTP submission, exclusions first), pull (pull
API), wait (wait_for, watch_idle), recipient_report (the per-recipient report), cli, cli_common,
quarantine_cmd and qualify_cmd (the `campaign-client` command). No function or class is named
like a module (the test says so).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from campaign_client.config import ClientConfig, ConfigError, load_config
    from campaign_client.events import Event, EventError, Kind, parse_batch
    from campaign_client.inbound import load_rules, parse_inbound, qualify
    from campaign_client.indicators import Kpis, compute_kpis, render_table
    from campaign_client.log import DeliveryLog, Line, LogError
    from campaign_client.mailbox import process_inbound
    from campaign_client.pull import fetch_events, pull_events
    from campaign_client.quarantine import AddressState, AddressStatus, Policy, decide
    from campaign_client.receiver import Receiver
    from campaign_client.status import LineState, Status, apply
    from campaign_client.submission import (
        Delivery,
        Recipient,
        SubmitError,
        SubmitResult,
        build_message,
        submit,
    )
    from campaign_client.wait import WaitTimeout, wait_for
    from campaign_client.webhook import parse_secret, sign, signed_headers, verify

_EXPORTS = {
    "Event": "events", "EventError": "events", "Kind": "events", "parse_batch": "events",
    "load_rules": "inbound", "parse_inbound": "inbound", "qualify": "inbound",
    "Kpis": "indicators", "compute_kpis": "indicators", "render_table": "indicators",
    "DeliveryLog": "log", "Line": "log", "LogError": "log",
    "process_inbound": "mailbox",
    "fetch_events": "pull", "pull_events": "pull",
    "Receiver": "receiver",
    "LineState": "status", "Status": "status", "apply": "status",
    "ClientConfig": "config", "ConfigError": "config", "load_config": "config",
    "AddressState": "quarantine", "AddressStatus": "quarantine", "Policy": "quarantine",
    "decide": "quarantine",
    "Delivery": "submission", "Recipient": "submission", "SubmitError": "submission",
    "SubmitResult": "submission", "build_message": "submission", "submit": "submission",
    "WaitTimeout": "wait", "wait_for": "wait",
    "parse_secret": "webhook", "sign": "webhook", "signed_headers": "webhook",
    "verify": "webhook",
}

__all__ = [
    "AddressState",
    "AddressStatus",
    "ClientConfig",
    "ConfigError",
    "Delivery",
    "DeliveryLog",
    "Event",
    "EventError",
    "Kind",
    "Kpis",
    "Line",
    "LineState",
    "LogError",
    "Policy",
    "Receiver",
    "Recipient",
    "Status",
    "SubmitError",
    "SubmitResult",
    "WaitTimeout",
    "apply",
    "build_message",
    "compute_kpis",
    "decide",
    "fetch_events",
    "kpis",
    "load_config",
    "load_rules",
    "parse_batch",
    "parse_inbound",
    "parse_secret",
    "process_inbound",
    "pull_events",
    "qualify",
    "render_table",
    "sign",
    "signed_headers",
    "submit",
    "verify",
    "wait_for",
]


def kpis(log: DeliveryLog, delivery_id: str) -> Kpis:
    """KPIs of one delivery in `log` (counts by status, Success %, failures by type/reason)."""
    return log.kpis(delivery_id)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'campaign_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"campaign_client.{module}"), name)
    globals()[name] = value
    return value
