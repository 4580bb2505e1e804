"""Inbound mail at the bounce mailbox (pure): parse DSNs, auto-replies and complaints, qualify them.

`parse_inbound(raw)` reads one message with the stdlib `email` package into an `Inbound`:
- RFC 3464 DSN (multipart/report; report-type=delivery-status): one `Notice` per recipient block
  (Final-/Original-Recipient, Action, Status, Diagnostic-Code);
- RFC 5965 complaint (multipart/report; report-type=feedback-report): Feedback-Type,
  Original-Rcpt-To;
- RFC 3834 auto-reply (Auto-Submitted: auto-replied, or the usual vacation markers): the replier
  is the original recipient, In-Reply-To names the original message;
- anything else ("unknown"): the first SMTP reply found in the text stands in for a diagnostic.
The original message is identified by the returned headers (text/rfc822-headers or
message/rfc822 part: X-Campaign-Delivery-Id, X-Campaign-Log-Id, Message-ID, To) or, failing
those, by In-Reply-To / References and by the recipient.

`qualify(inbound, rules)` applies the inbound-email rules (ordered, first match wins; data in
campaign_client/inbound-rules.toml, loaded by `load_rules`) and returns one `Qualified` per
recipient: Hard / Soft / Ignored with a Campaign reason and its code. `to_event(...)` turns one
into the client's local `out_of_band` or `complaint` event for the delivery log.
"""

from __future__ import annotations

import email
import email.parser
import email.policy
import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.utils import getaddresses, parseaddr
from importlib import resources
from pathlib import Path
from typing import Any, Final

from campaign_client.events import Event, Failure, Kind, Smtp

# Campaign failure reasons and their codes (DESIGN 4.4).
REASON_CODES: Final[dict[str, int]] = {
    "Not defined": 0,
    "User unknown": 1,
    "Invalid domain": 2,
    "Unreachable": 3,
    "Account disabled": 4,
    "Mailbox full": 5,
    "Not connected": 6,
    "Address not specified": 7,
    "Denylisted": 8,
    "Address in quarantine": 9,
    "Refused": 20,
    "Error ignored": 25,
}
FAILURE_TYPES: Final = ("Hard", "Soft", "Ignored")
KINDS: Final = ("dsn", "auto_reply", "complaint", "unknown")
CONDITIONS: Final = ("kind", "action", "status", "diagnostic", "text")
DEFAULT_RULES_RESOURCE: Final = "inbound-rules.toml"

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_REPLY_IN_TEXT = re.compile(r"\b([245]\d\d)[ -]([245]\.\d{1,3}\.\d{1,3})\b([^\r\n]*)")
_REPLY_START = re.compile(r"^\s*([245]\d\d)(?:[ -]([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)$", re.S)
_EMBEDDED_HEADER = re.compile(
    r"^(X-Campaign-Delivery-Id|X-Campaign-Log-Id|Message-ID)[ \t]*:[ \t]*"
    r"(\S[^\r\n]*?)[ \t]*\r?$",
    re.IGNORECASE | re.MULTILINE,
)
_AUTO_SUBJECT = re.compile(
    r"^(auto(matic)?[ -]?(reply|response)|out of (the )?office|vacation|away)\b|^auto:",
    re.IGNORECASE,
)
_TEXT_LIMIT = 4000


class RulesError(ValueError):
    """Bad inbound-email rules; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    failure_type: str
    reason: str
    reason_code: int
    conditions: tuple[tuple[str, re.Pattern[str]], ...]

    def matches(self, fields: dict[str, str]) -> bool:
        return all(pattern.search(fields.get(name, "")) for name, pattern in self.conditions)


@dataclass(frozen=True, slots=True)
class Original:
    """What the inbound message tells of the message it is about."""

    delivery_id: str | None = None
    log_id: str | None = None
    message_id: str | None = None
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """One recipient's report inside an inbound message."""

    recipient: str | None
    action: str = ""
    status: str = ""
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class Inbound:
    kind: str                                   # one of KINDS
    message_id: str | None                      # the inbound message's own Message-ID
    fingerprint: str                            # sha256 of the raw bytes (idempotency)
    original: Original
    notices: tuple[Notice, ...]
    text: str = ""
    feedback_type: str | None = None


@dataclass(frozen=True, slots=True)
class Qualified:
    notice: Notice
    failure_type: str
    reason: str
    reason_code: int
    rule: str
    smtp: Smtp | None = field(default=None)


# -- rules --------------------------------------------------------------------------------


def parse_rules(text: str, source: str = "inbound-rules.toml") -> tuple[Rule, ...]:
    """Rules from TOML text; raises RulesError naming the source and the rule."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesError(f"{source}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"rule"}
    if unknown_top:
        raise RulesError(f"{source}: unknown key {sorted(unknown_top)[0]!r} (expected [[rule]])")
    items = data.get("rule", [])
    if not isinstance(items, list) or not items:
        raise RulesError(f"{source}: no [[rule]] entries")
    rules: list[Rule] = []
    for index, item in enumerate(items):
        rules.append(_rule(item, f"{source}: rule[{index}]"))
    return tuple(rules)


def _rule(item: Any, where: str) -> Rule:
    if not isinstance(item, dict):
        raise RulesError(f"{where}: expected a table")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise RulesError(f"{where}: name: missing")
    where = f"{where} ({name})"
    allowed = {"name", "type", "reason", *CONDITIONS}
    extra = set(item) - allowed
    if extra:
        raise RulesError(f"{where}: unknown key {sorted(extra)[0]!r}")
    failure_type = item.get("type")
    if failure_type not in FAILURE_TYPES:
        raise RulesError(f"{where}: type: expected Hard, Soft or Ignored, got {failure_type!r}")
    reason = item.get("reason")
    if not isinstance(reason, str) or reason not in REASON_CODES:
        raise RulesError(f"{where}: reason: unknown Campaign reason {reason!r}")
    conditions: list[tuple[str, re.Pattern[str]]] = []
    for name_ in CONDITIONS:
        if name_ not in item:
            continue
        pattern = item[name_]
        if not isinstance(pattern, str):
            raise RulesError(f"{where}: {name_}: expected a regex string")
        try:
            conditions.append((name_, re.compile(pattern, re.IGNORECASE)))
        except re.error as exc:
            raise RulesError(f"{where}: {name_}: bad regex: {exc}") from None
    if "kind" in item and not any(
        dict(conditions)["kind"].search(kind) for kind in KINDS
    ):
        raise RulesError(f"{where}: kind: matches none of {', '.join(KINDS)}")
    return Rule(name, failure_type, reason, REASON_CODES[reason], tuple(conditions))


def load_rules(path: str | Path | None = None) -> tuple[Rule, ...]:
    """The rules in `path`, or the package's default inbound-rules.toml."""
    if path is None:
        text = resources.files("campaign_client").joinpath(DEFAULT_RULES_RESOURCE).read_text(
            encoding="utf-8"
        )
        return parse_rules(text, DEFAULT_RULES_RESOURCE)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"{path}: cannot read rules: {exc.strerror or exc}") from None
    return parse_rules(text, str(path))


# -- parsing ------------------------------------------------------------------------------


def parse_inbound(raw: bytes) -> Inbound:
    """Parse one inbound message (never raises on malformed mail: it becomes kind unknown)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    fingerprint = hashlib.sha256(raw).hexdigest()
    own_id = _clean_id(_header(message, "Message-ID"))
    content_type = message.get_content_type()
    report_type = str(message.get_param("report-type", "") or "").lower()
    subject = _header(message, "Subject") or ""
    if content_type == "multipart/report" and report_type == "delivery-status":
        return _parse_dsn(message, own_id, fingerprint, subject)
    if content_type == "multipart/report" and report_type == "feedback-report":
        return _parse_arf(message, own_id, fingerprint, subject)
    text = _first_text(message)
    if _is_auto_reply(message, subject):
        sender = _address(_header(message, "From"))
        references = _header(message, "In-Reply-To") or _header(message, "References") or ""
        first_ref = references.split()[0] if references.split() else None
        original = Original(message_id=_clean_id(first_ref), recipient=sender)
        return Inbound("auto_reply", own_id, fingerprint, original,
                       (Notice(recipient=sender),), _limit(f"{subject}\n{text}"))
    embedded = _embedded_headers(text)
    reply = _REPLY_IN_TEXT.search(text)
    diagnostic = " ".join(reply.group(0).split()) if reply else ""
    status = reply.group(2) if reply else ""
    original = Original(
        delivery_id=embedded.get("x-campaign-delivery-id"),
        log_id=embedded.get("x-campaign-log-id"),
        message_id=_clean_id(embedded.get("message-id")),
    )
    notice = Notice(recipient=None, action="failed" if reply else "", status=status,
                    diagnostic=diagnostic)
    return Inbound("unknown", own_id, fingerprint, original, (notice,),
                   _limit(f"{subject}\n{text}"))


def _parse_dsn(message: EmailMessage, own_id: str | None, fingerprint: str,
               subject: str) -> Inbound:
    notices: list[Notice] = []
    text = ""
    returned: Message | None = None
    for part in message.iter_parts():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            blocks = part.get_payload()
            if isinstance(blocks, list):
                for block in blocks[1:]:   # the first block is per-message
                    notices.append(_notice(block))
        elif ctype in ("text/rfc822-headers", "message/rfc822"):
            returned = _returned(part)
        elif ctype.startswith("text/") and not text:
            text = _text_of(part)
    original = _original_from(returned)
    if not notices:
        notices.append(Notice(recipient=original.recipient))
    return Inbound("dsn", own_id, fingerprint, original, tuple(notices),
                   _limit(f"{subject}\n{text}"))


def _parse_arf(message: EmailMessage, own_id: str | None, fingerprint: str,
               subject: str) -> Inbound:
    text = ""
    feedback_type: str | None = None
    rcpt: str | None = None
    returned: Message | None = None
    for part in message.iter_parts():
        ctype = part.get_content_type()
        if ctype == "message/feedback-report":
            fields = _report_fields(part)
            if fields is not None:
                feedback_type = _header(fields, "Feedback-Type")
                rcpt = _address(_header(fields, "Original-Rcpt-To"))
        elif ctype in ("text/rfc822-headers", "message/rfc822"):
            returned = _returned(part)
        elif ctype.startswith("text/") and not text:
            text = _text_of(part)
    original = _original_from(returned)
    recipient = rcpt or original.recipient
    if original.recipient is None and recipient is not None:
        original = Original(original.delivery_id, original.log_id, original.message_id,
                            recipient)
    notice = Notice(recipient=recipient, action="complaint",
                    diagnostic=f"feedback-type {feedback_type or 'unknown'}")
    return Inbound("complaint", own_id, fingerprint, original, (notice,),
                   _limit(f"{subject}\n{text}"), feedback_type)


def _notice(block: Any) -> Notice:
    if not isinstance(block, Message):
        return Notice(recipient=None)
    final = _typed_address(_header(block, "Final-Recipient"))
    original = _typed_address(_header(block, "Original-Recipient"))
    action = (_header(block, "Action") or "").strip().lower()
    status = (_header(block, "Status") or "").strip().split(" ")[0]
    diagnostic = _header(block, "Diagnostic-Code") or ""
    kind, sep, rest = diagnostic.partition(";")
    if sep and kind.strip().lower() in ("smtp", "x-unix", "x-postfix", "x-local"):
        diagnostic = rest
    return Notice(recipient=original or final, action=action, status=status,
                  diagnostic=" ".join(diagnostic.split()))


def _report_fields(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        return email.parser.HeaderParser(policy=email.policy.default).parsestr(payload)
    return None


def _returned(part: Message) -> Message | None:
    """The returned original (headers only, or the whole message)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        return email.parser.HeaderParser(policy=email.policy.default).parsestr(
            payload.lstrip("\r\n")
        )
    if isinstance(payload, bytes):
        return email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(payload)
    return None


def _original_from(returned: Message | None) -> Original:
    if returned is None:
        return Original()
    return Original(
        delivery_id=_stripped(_header(returned, "X-Campaign-Delivery-Id")),
        log_id=_stripped(_header(returned, "X-Campaign-Log-Id")),
        message_id=_clean_id(_header(returned, "Message-ID")),
        recipient=_address(_header(returned, "To")),
    )


def _is_auto_reply(message: Message, subject: str) -> bool:
    auto = (_header(message, "Auto-Submitted") or "").strip().lower()
    if auto.startswith("auto-replied"):
        return True
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    precedence = (_header(message, "Precedence") or "").strip().lower()
    return precedence == "auto_reply" or bool(_AUTO_SUBJECT.search(subject))


def _header(message: Message, name: str) -> str | None:
    try:
        value = message.get(name)
    except (ValueError, TypeError, IndexError):   # malformed header the parser gave up on
        return None
    return None if value is None else str(value)


def _stripped(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _clean_id(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value if value else None


def _address(value: str | None) -> str | None:
    if not value:
        return None
    pairs = getaddresses([value])
    for _, address in pairs:
        if "@" in address:
            return address
    address = parseaddr(value)[1]
    return address or None


def _typed_address(value: str | None) -> str | None:
    """"rfc822; bob@example.test" -> "bob@example.test"."""
    if not value:
        return None
    _, sep, rest = value.partition(";")
    return _address(rest if sep else value)


def _text_of(part: Message) -> str:
    try:
        content = part.get_content() if isinstance(part, EmailMessage) else part.get_payload()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content if isinstance(content, str) else ""


def _first_text(message: EmailMessage) -> str:
    for part in message.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            return _text_of(part)
    return ""


def _embedded_headers(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in _EMBEDDED_HEADER.findall(text):
        found.setdefault(name.lower(), value.strip())
    return found


def _limit(text: str) -> str:
    text = text.strip()
    return text if len(text) <= _TEXT_LIMIT else text[:_TEXT_LIMIT]


# -- qualification --------------------------------------------------------------------------


def qualify(inbound: Inbound, rules: tuple[Rule, ...]) -> list[Qualified]:
    """One qualification per notice; the first matching rule wins (a final catch-all is
    implied: Ignored, "Not defined")."""
    results: list[Qualified] = []
    for notice in inbound.notices:
        fields = {
            "kind": inbound.kind,
            "action": notice.action,
            "status": notice.status,
            "diagnostic": notice.diagnostic,
            "text": inbound.text,
        }
        smtp = _smtp_of(notice)
        for rule in rules:
            if rule.matches(fields):
                results.append(Qualified(notice, rule.failure_type, rule.reason,
                                         rule.reason_code, rule.name, smtp))
                break
        else:
            results.append(Qualified(notice, "Ignored", "Not defined", 0, "(none)", smtp))
    return results


def _smtp_of(notice: Notice) -> Smtp | None:
    match = _REPLY_START.match(notice.diagnostic) if notice.diagnostic else None
    if match:
        enhanced = match.group(2) or (notice.status if _ENHANCED.match(notice.status) else None)
        return Smtp(code=int(match.group(1)), enhanced=enhanced, text=match.group(3).strip(),
                    phase="async")
    if notice.diagnostic or notice.status:
        return Smtp(code=None, enhanced=notice.status or None,
                    text=notice.diagnostic or notice.status, phase="async")
    return None


def to_event(inbound: Inbound, qualified: Qualified, line_key: tuple[str, str, str],
             now: float) -> Event:
    """The local event that applies a qualified inbound message to a log line."""
    delivery_id, log_id, recipient = line_key
    kind = Kind.COMPLAINT if inbound.kind == "complaint" else Kind.OUT_OF_BAND
    identity = f"{inbound.message_id or inbound.fingerprint}|{delivery_id}|{log_id}|{recipient}"
    event_id = "inbound:" + hashlib.sha256(identity.encode()).hexdigest()[:32]
    return Event(
        event_id=event_id,
        kind=kind,
        delivery_id=delivery_id,
        log_id=log_id,
        recipient=recipient,
        seq=None,
        at=now,
        smtp=qualified.smtp,
        failure=Failure(qualified.failure_type, qualified.reason, qualified.reason_code),
    )
