"""Feedback events as the client sees them: frozen records parsed from the MTA's JSON
(docs/design.md, "Feedback events").

`Event.from_json(obj)` validates one JSON object and raises `EventError` naming the field;
`parse_batch(body)` does the same for a webhook body (a JSON array) or a pull answer's list.
Besides the MTA's kinds, the client makes two local kinds of its own: `submit_failed` (the MTA
refused the message at submission) and inbound `out_of_band` / `complaint` events built from the
bounce mailbox. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class EventError(ValueError):
    """A feedback event or batch that breaks the contract; the message names the field."""


class Kind(StrEnum):
    RELAYED = "relayed"
    DELIVERED = "delivered"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    EXPIRED = "expired"
    OUT_OF_BAND = "out_of_band"
    COMPLAINT = "complaint"
    SUBMIT_FAILED = "submit_failed"   # local only: never accepted from the MTA


MTA_KINDS = frozenset(kind for kind in Kind if kind is not Kind.SUBMIT_FAILED)
FAILURE_TYPES = frozenset({"Hard", "Soft", "Ignored"})
INT_LIMIT = 2**63  # integers are stored in SQLite: 64-bit signed


@dataclass(frozen=True, slots=True)
class Smtp:
    """The SMTP reply an event carries (remote, or the MTA's wording of a local condition)."""

    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    phase: str | None = None
    mx: str | None = None

    def line(self) -> str | None:
        """"550 5.1.1 text", the form kept in the delivery log; None when there is no code."""
        if self.code is None:
            return self.text or None
        parts = [str(self.code), self.enhanced or "", self.text or ""]
        return " ".join(part for part in parts if part)


@dataclass(frozen=True, slots=True)
class Failure:
    """Campaign failure type (Hard, Soft, Ignored), reason and reason code."""

    type: str | None = None
    reason: str | None = None
    reason_code: int | None = None


@dataclass(frozen=True, slots=True)
class BounceClass:
    code: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One recipient event. `seq` is None for the client's local events (never held)."""

    event_id: str
    kind: Kind
    delivery_id: str | None
    log_id: str | None
    recipient: str | None
    seq: int | None = None
    at: float | None = None
    queue_id: str | None = None
    attempt: int | None = None
    smtp: Smtp | None = None
    bounce_class: BounceClass | None = None
    failure: Failure | None = None
    next_attempt_at: float | None = None
    possible_duplicate: bool = False

    @property
    def key(self) -> tuple[str, str, str] | None:
        """The delivery-log line this event belongs to, or None if a part is missing."""
        if self.delivery_id and self.log_id and self.recipient:
            return (self.delivery_id, self.log_id, self.recipient)
        return None

    @classmethod
    def from_json(cls, obj: Any, where: str = "event") -> Event:
        """Validate one JSON object from the MTA; raises EventError naming the bad field."""
        if not isinstance(obj, Mapping):
            raise EventError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        event_id = _str(obj, "event_id", where, required=True)
        assert event_id is not None
        kind_text = _str(obj, "kind", where, required=True)
        if kind_text not in MTA_KINDS:
            known = ", ".join(sorted(MTA_KINDS))
            raise EventError(f"{where}: kind: unknown kind {kind_text!r} (expected one of {known})")
        seq = _int(obj, "seq", where)
        if seq is not None and seq < 1:
            raise EventError(f"{where}: seq: expected an integer >= 1, got {seq}")
        attempt = _int(obj, "attempt", where)
        possible_duplicate = obj.get("possible_duplicate")
        if possible_duplicate is not None and not isinstance(possible_duplicate, bool):
            raise EventError(f"{where}: possible_duplicate: expected true/false")
        return cls(
            event_id=event_id,
            kind=Kind(kind_text),
            delivery_id=_str(obj, "delivery_id", where),
            log_id=_str(obj, "log_id", where),
            recipient=_str(obj, "recipient", where),
            seq=seq,
            at=_float(obj, "at", where),
            queue_id=_str(obj, "queue_id", where),
            attempt=attempt,
            smtp=_smtp(obj.get("smtp"), f"{where}: smtp"),
            bounce_class=_bounce_class(obj.get("bounce_class"), f"{where}: bounce_class"),
            failure=_failure(obj.get("failure"), f"{where}: failure"),
            next_attempt_at=_float(obj, "next_attempt_at", where),
            possible_duplicate=bool(possible_duplicate),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON form (same field names as the MTA's); `from_json(to_json())` round-trips."""
        return {
            "event_id": self.event_id,
            "kind": str(self.kind),
            "seq": self.seq,
            "at": self.at,
            "queue_id": self.queue_id,
            "delivery_id": self.delivery_id,
            "log_id": self.log_id,
            "recipient": self.recipient,
            "attempt": self.attempt,
            "smtp": None if self.smtp is None else {
                "code": self.smtp.code, "enhanced": self.smtp.enhanced, "text": self.smtp.text,
                "phase": self.smtp.phase, "mx": self.smtp.mx,
            },
            "bounce_class": None if self.bounce_class is None else {
                "code": self.bounce_class.code, "name": self.bounce_class.name,
            },
            "failure": None if self.failure is None else {
                "type": self.failure.type, "reason": self.failure.reason,
                "reason_code": self.failure.reason_code,
            },
            "next_attempt_at": self.next_attempt_at,
            "possible_duplicate": self.possible_duplicate,
        }


def parse_batch(body: bytes | str | Sequence[Any]) -> list[Event]:
    """A webhook body (JSON array of events, or one object) -> events; raises EventError."""
    if isinstance(body, bytes | str):
        try:
            data: Any = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EventError(f"body is not JSON: {exc}") from None
        except RecursionError:
            raise EventError("body: JSON nested too deeply") from None
    else:
        data = body
    if isinstance(data, Mapping):
        data = [data]
    if not isinstance(data, list):
        raise EventError(f"body: expected a JSON array of events, got {type(data).__name__}")
    return [Event.from_json(item, f"event[{index}]") for index, item in enumerate(data)]


def _str(obj: Mapping[str, Any], name: str, where: str, required: bool = False) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise EventError(f"{where}: {name}: missing")
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError(f"{where}: {name}: expected a string, got {type(value).__name__}")
    text = str(value)
    if required and not text:
        raise EventError(f"{where}: {name}: empty")
    return text


def _int(obj: Mapping[str, Any], name: str, where: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"{where}: {name}: expected an integer, got {value!r}")
    if not -INT_LIMIT <= value < INT_LIMIT:
        raise EventError(f"{where}: {name}: out of range (a 64-bit integer), got {value}")
    return value


def _float(obj: Mapping[str, Any], name: str, where: str) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise EventError(f"{where}: {name}: expected a number, got {value!r}")
    return float(value)


def _object(value: Any, where: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise EventError(f"{where}: expected an object or null, got {type(value).__name__}")
    return value


def _smtp(value: Any, where: str) -> Smtp | None:
    obj = _object(value, where)
    if obj is None:
        return None
    return Smtp(
        code=_int(obj, "code", where),
        enhanced=_str(obj, "enhanced", where),
        text=_str(obj, "text", where),
        phase=_str(obj, "phase", where),
        mx=_str(obj, "mx", where),
    )


def _bounce_class(value: Any, where: str) -> BounceClass | None:
    obj = _object(value, where)
    if obj is None:
        return None
    return BounceClass(code=_int(obj, "code", where), name=_str(obj, "name", where))


def _failure(value: Any, where: str) -> Failure | None:
    obj = _object(value, where)
    if obj is None:
        return None
    failure_type = _str(obj, "type", where)
    if failure_type is not None:
        if failure_type.capitalize() not in FAILURE_TYPES:
            raise EventError(f"{where}: type: expected Hard, Soft or Ignored, got {failure_type!r}")
        failure_type = failure_type.capitalize()
    return Failure(
        type=failure_type,
        reason=_str(obj, "reason", where),
        reason_code=_int(obj, "reason_code", where),
    )
