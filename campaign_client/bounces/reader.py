"""`parse_inbound(raw)`: one inbound message -> `Inbound` (pure, never raises).

Puts the other modules together: `mime` reads the message, `evidence` decides the kind (the
bounce test before the auto-reply test), `fields` reads RFC 3464 recipient blocks wherever they
are (a delivery-status part, or DSN fields written in a text part), `shapes` finds failed
recipients and reasons in the text of bounces without such blocks. Each notice gets the best
diagnostic available: the Diagnostic-Code, completed by the recipient's reason in the text when
the code alone says little ("554", "5.0.0"), else the reason lines of the text.
"""

from __future__ import annotations

import hashlib
import re
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Final

from campaign_client.bounces import evidence
from campaign_client.bounces.fields import (
    has_dsn_fields,
    parse_fields,
    recipient_groups,
    typed_value,
)
from campaign_client.bounces.mime import Reading, header_text, read_message
from campaign_client.bounces.model import Inbound, Notice, Original
from campaign_client.bounces.shapes import ADDRESS, find_failures

TEXT_LIMIT: Final = 4000
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_ENHANCED_FAILURE = re.compile(r"(?<![\d.])([45])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_CODE = re.compile(r"(?<![\d.])#?[45]\d\d(?:[ -]#?[45]\.\d{1,3}\.\d{1,3})?[ -]")
_EMBEDDED_HEADER = re.compile(
    r"^[ \t>]*(X-Campaign-Delivery-Id|X-Campaign-Log-Id|Message-ID|To)[ \t]*:[ \t]*"
    r"(\S[^\r\n]*?)[ \t]*\r?$",
    re.IGNORECASE | re.MULTILINE,
)
_SAID = re.compile(r"^(?:.{0,200}?\bsaid:|.{0,120}?\bremote (?:host|"
    r"server) (?:said|replied):)\s*", re.I)
_IN_REPLY = re.compile(r"\s*\(in reply to [^)]*\)\s*", re.I)
_REASON_WORDS = re.compile(
    r"\b[45]\d\d\b|\b[45]\.\d{1,3}\.\d{1,3}\b|unknown|no such|not? (?:exist|found|known|"
        r"valid|listed|recogni)"
    r"|doesn'?t (?:exist|have)|quota|full|storage|space|disabled|inactive|suspend|expired|"
        r"denied|reject|refus|spam"
    r"|block|relay|unrouteable|unroutable|invalid|unavailable|timed? ?out|loop|too (?:large|"
        r"big|many)|exceed"
    r"|black ?list|listed|policy|not allowed|permission|error|failed|failure|refused|"
        r"unreachable|dns|domain|host"
    r"|not accepting|attachment|inexist|desconocid|unbekannt|inconnu|sconosciut|"
        r"nie istnieje|не существует|не найден|lleno|voll|plein|pieno",
    re.I,
)
_BOILERPLATE = re.compile(
    r"^(?:this is (?:the|an?|only)|i'?m sorry|for further|if you do so|delete your own|"
        r"please|the mail system"
    r"|hi\. this is|i'?m afraid|unable to deliver (?:the )?message to the following|"
        r"delivery to the following"
    r"|this message was|this report relates|your message|the following|a message that you|"
        r"technical details"
    r"|portions of this|the original message|it will be retried|no action is required|"
        r"\*+\s*$|#+|the error that"
    r"|---|you can|learn more|this multi-part|if you can see|formatted messages|information and rfc"
    r"|delivery attempts will|this is a permanent error|reporting-mta|received|content-|"
        r"mime|charset"
    r"|subject|date|from|to:|sent:|message-id|return-path|for more information|if you have|"
        r"contact|http)",
    re.I,
)
_BOILER_ANYWHERE = re.compile(
    r"permanent error|following address|one or more (?:of its )?recipients|has been scanned|"
        r"disclaimer"
    r"|confidential|intended recipient|antivirus|virus(?:es)? (?:check|scan)|https?://|"
        r"^[\w-]+: .*;|=\?"
    r"|authentication-results|dkim|received: |message-id|x-[\w-]+:",
    re.I,
)
_DELAY = re.compile(
    r"warning: message|warning only|this is a warning|warning message|delivery warning|"
        r"delayed|delay\)|will be retried|still being retried|not yet been delivered|"
        r"will (?:continue|keep) (?:to )?try"
    r"|delivery attempts will continue|advisory-only|has been postponed|"
        r"message will be retried|still undelivered",
    re.I,
)
_FINAL = re.compile(r"failed permanently|permanent(?:ly)? (?:fatal )?error|"
    r"giving up|gave up|given up|"
    r"will not be retried"
                    r"|permanent failure", re.I)
_SENDMAIL_REASON = re.compile(r"^\s*\(reason: (.+?)\)\s*$", re.M)
_STATUS_COMMENT = re.compile(r"\(([^)]{3,80})\)")


def parse_inbound(raw: bytes) -> Inbound:
    """Parse one inbound message (malformed mail never raises: it becomes kind unknown)."""
    fingerprint = hashlib.sha256(raw).hexdigest()
    try:
        reading = read_message(raw)
    except (ValueError, TypeError, LookupError, AttributeError, IndexError, UnicodeError):
        return Inbound("unknown", None, fingerprint, Original(), (Notice(recipient=None),))
    return _inbound(reading, fingerprint)


def _inbound(reading: Reading, fingerprint: str) -> Inbound:
    own_id = _stripped(reading.header("Message-ID"))
    subject = reading.header("Subject")
    text = reading.text
    original = _original(reading)
    summary = _limit(f"{subject}\n{text}")

    if evidence.is_complaint(reading):
        return _complaint(reading, own_id, fingerprint, original, summary)

    blocks = reading.report_blocks if has_dsn_fields(reading.report_blocks) else []
    if not blocks:
        in_text = parse_fields(text)
        if has_dsn_fields(in_text):
            blocks = in_text
    groups = recipient_groups(blocks)
    # The text's layouts are read when no report says which recipients failed, or when a
    # recipient's Diagnostic-Code says too little on its own.
    needs_text = not groups or any(
        _weak(_clean_diagnostic(typed_value(group.get("diagnostic-code", ""))))
        for group in groups)
    failures = find_failures(text) if needs_text else []
    failed_header = [address for _, address in
                     getaddresses([reading.header("X-Failed-Recipients")]) if "@" in address]
    score = evidence.bounce_score(reading, bool(groups), len(failures) + len(failed_header))
    if groups or failed_header or score >= 2:
        notices = _notices(groups, failures, failed_header, reading, subject)
        return Inbound("dsn", own_id, fingerprint, original, tuple(notices), summary)
    if evidence.is_auto_reply(reading):
        sender = _address(reading.header("From")) or _address(reading.header("Reply-To"))
        refs = (reading.header("In-Reply-To") or reading.header("References")).split()
        auto_original = Original(original.delivery_id, original.log_id,
                                 _stripped(refs[0]) if refs else original.message_id,
                                 sender or original.recipient)
        return Inbound("auto_reply", own_id, fingerprint, auto_original,
                       (Notice(recipient=sender),), summary)
    return Inbound("unknown", own_id, fingerprint, original,
                   (Notice(recipient=None),), summary)


def _complaint(reading: Reading, own_id: str | None, fingerprint: str, original: Original,
               summary: str) -> Inbound:
    fields = [pair for block in reading.feedback_blocks for pair in block]
    if not fields:
        fields = [pair for block in parse_fields(reading.text) for pair in block]
    values = dict(reversed(fields))
    feedback_type = values.get("feedback-type") or "abuse"
    rcpt = _address(values.get("original-rcpt-to") or values.get("removal-recipient"))
    recipient = rcpt or original.recipient
    if original.recipient is None and recipient is not None:
        original = Original(original.delivery_id, original.log_id, original.message_id,
                            recipient)
    notice = Notice(recipient=recipient, action="complaint",
                    diagnostic=f"feedback-type {feedback_type}")
    return Inbound("complaint", own_id, fingerprint, original, (notice,), summary,
                   feedback_type)


def _notices(groups: list[dict[str, str]], failures: list[tuple[str, str]],
             failed_header: list[str], reading: Reading, subject: str) -> list[Notice]:
    text = reading.text
    reasons = {address.lower(): reason for address, reason in failures}
    remote = _SENDMAIL_REASON.findall(text)
    if len(remote) == 1 and len(groups or failures or failed_header or [None]) == 1:
        # Sendmail quotes the remote server's words as "(reason: ...)" and then writes its
        # own mapping of them ("User unknown"): the remote's words are the diagnostic.
        for key in list(reasons) or [""]:
            reasons[key] = remote[0]
        groups = [dict(group, **{"diagnostic-code": remote[0]}) for group in groups]
    fallback = _LazyReason(text)
    default_action = _action(subject, text)
    notices: list[Notice] = []
    for group in groups:
        recipient = (_address(typed_value(group.get("original-recipient", "")))
                     or _address(typed_value(group.get("final-recipient", ""))))
        action = (group.get("action", "").split() or [default_action])[0].lower().rstrip(";,")
        action = "failed" if action == "failure" else action
        raw_status = group.get("status", "")
        diagnostic = _clean_diagnostic(typed_value(group.get("diagnostic-code", "")))
        comment = _STATUS_COMMENT.search(raw_status)
        if not _ENHANCED.match(raw_status.strip()) and raw_status and not diagnostic:
            diagnostic = raw_status
        elif comment and not diagnostic:
            diagnostic = comment.group(1)
        if _weak(diagnostic):
            specific = _ENHANCED.match(raw_status.strip()) and not re.match(
                r"^\d\.0\.0", raw_status.strip())
            extra = (reasons.get(recipient.lower(), "") if recipient else "") or (
                reasons.get(failures[0][0].lower(), "") if len(failures) == 1 else "") or (
                "" if specific else str(fallback))
            diagnostic = _join(diagnostic, _clean_diagnostic(extra))
        notices.append(Notice(recipient=recipient, action=action,
                              status=_status(raw_status, diagnostic), diagnostic=diagnostic))
    if notices:
        return notices
    for address, reason in failures:
        diagnostic = _clean_diagnostic(reason) or str(fallback)
        notices.append(Notice(recipient=address, action=default_action,
                              status=_status("", diagnostic), diagnostic=diagnostic))
    known = {n.recipient.lower() for n in notices if n.recipient}
    for address in failed_header:
        if address.lower() not in known:
            notices.append(Notice(recipient=address, action=default_action,
                                  status=_status("", str(fallback)), diagnostic=str(fallback)))
    if not notices:
        notices.append(Notice(recipient=None, action=default_action,
                              status=_status("", str(fallback)), diagnostic=str(fallback)))
    return notices


class _LazyReason:
    """The reason lines of the text, computed the first time they are needed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.value: str | None = None

    def __str__(self) -> str:
        if self.value is None:
            self.value = _reason_lines(self.text)
        return self.value


def _action(subject: str, text: str) -> str:
    head = f"{subject}\n{text[:2500]}"
    if _DELAY.search(head) and not _FINAL.search(head):
        return "delayed"
    return "failed"


def _status(raw: str, diagnostic: str) -> str:
    """The enhanced status: the DSN's, made more precise by the diagnostic when it is X.0.0."""
    found = _ENHANCED.search(raw)
    status = found.group(0) if found and raw.strip().startswith(found.group(0)) else ""
    in_diagnostic = _ENHANCED_FAILURE.search(diagnostic)
    if in_diagnostic and (not status or (status.endswith(".0.0")
                                         and in_diagnostic.group(1) == status[0])):
        return in_diagnostic.group(0)
    return status


def _weak(diagnostic: str) -> bool:
    letters = re.sub(r"[^A-Za-z]", "", re.sub(r"\b(?:smtp|x-postfix|said|host)\b", "",
                                                diagnostic, flags=re.I))
    return len(letters) < 8


def _clean_diagnostic(value: str) -> str:
    value = " ".join(value.split())
    value = _SAID.sub("", value)
    code = _REPLY_CODE.search(value)
    if code and code.start() > 0 and not _REPLY_CODE.match(value):
        value = value[code.start():]
    value = _IN_REPLY.sub(" ", value).strip()
    return value[:600]


def _join(first: str, second: str) -> str:
    if not second or second in first:
        return first
    return f"{first} {second}".strip() if first else second


def _reason_lines(text: str) -> str:
    """The lines of a bounce's text that say why (up to three), boilerplate left out."""
    picked: list[str] = []
    for line in text[:8000].splitlines():
        stripped = line.strip(" \t>*-|")
        if len(stripped) < 6 or _BOILERPLATE.match(stripped) or _BOILER_ANYWHERE.search(stripped):
            continue
        if _REASON_WORDS.search(stripped):
            picked.append(stripped)
            if len(picked) == 3:
                break
    return _clean_diagnostic(" ".join(picked))


def _original(reading: Reading) -> Original:
    returned: Message | None = reading.returned
    if returned is not None:
        to = _address(header_text(returned, "To"))
        return Original(
            delivery_id=_stripped(header_text(returned, "X-Campaign-Delivery-Id")),
            log_id=_stripped(header_text(returned, "X-Campaign-Log-Id")),
            message_id=_stripped(header_text(returned, "Message-ID")),
            recipient=to,
        )
    found: dict[str, str] = {}
    for name, value in _EMBEDDED_HEADER.findall((reading.returned_text or reading.text)[:20_000]):
        found.setdefault(name.lower(), value.strip())
    return Original(
        delivery_id=found.get("x-campaign-delivery-id"),
        log_id=found.get("x-campaign-log-id"),
        message_id=_stripped(found.get("message-id")),
        recipient=_address(found.get("to")) if reading.returned_text else None,
    )


def _stripped(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


_ADDRESS_RE = re.compile(ADDRESS)


def _address(value: str | None) -> str | None:
    if not value:
        return None
    for _, address in getaddresses([value]):
        if "@" in address and _ADDRESS_RE.fullmatch(address.strip("<>")):
            return address.strip("<>")
    address = parseaddr(value)[1]
    if "@" in address:
        return address.strip("<>")
    found = _ADDRESS_RE.search(value)
    return found.group(0) if found else None


def _limit(text: str) -> str:
    text = text.strip()
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT]
