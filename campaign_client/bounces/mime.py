"""Reading one raw message into the parts a bounce reader needs (pure, never raises).

`read_message(raw)` parses with the stdlib `email` package (compat32: lenient and fast) and
returns a `Reading`: the decoded top-level headers it asks for, the report fields of every
delivery-status / feedback-report / disposition-notification part (decoded first when the part
is base64 or quoted-printable, as some servers send it), the human-readable text written before
the returned original (text/plain parts, else text/html with the tags stripped; a single-part
bounce is cut at the usual "original message follows" markers), and the returned original's
headers (message/rfc822, text/rfc822-headers, or the header lines found after the marker).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email
import email.parser
import quopri
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from typing import Final

from campaign_client.bounces.fields import Fields, parse_fields

TEXT_LIMIT: Final = 16_000
RAW_LIMIT: Final = 96_000

REPORT_TYPES: Final = ("message/delivery-status", "message/global-delivery-status",
                       "text/delivery-status")
FEEDBACK_TYPES: Final = ("message/feedback-report",)
RETURNED_TYPES: Final = ("message/rfc822", "text/rfc822-headers", "message/global",
                         "message/global-headers", "text/rfc822")

# Where the returned original starts inside a text bounce (Exim, qmail, Sendmail, SMTP32, ...).
_RETURNED_MARKER = re.compile(
    r"^[ \t>]*(?:-{2,}[ \t]*)?(?:"
    r"this is a copy of the message|below this line is a copy of the message"
    r"|original message follows|the original message (?:headers? )?(?:is|are|"
        r"was) (?:attached|included|below)"
    r"|original message headers?|headers of the original message|start of returned message"
    r"|returned message|original message|message text follows|a copy of the original message below"
    r"|included is a copy of the message header|the first \d+ lines of your original message"
    r"|your message reads \(in part\)|unsent message below|copy of the first part of the message"
    r"|forwarded message|original message body|message headers follow|"
        r"the header of the original message"
    r")\b.*$",
    re.IGNORECASE | re.MULTILINE,
)
_TAGS = re.compile(r"<(?:style|script)\b.*?</(?:style|script)>|<[^>]{0,2000}>", re.I | re.S)
_SURROGATE = re.compile("[\udc80-\udcff]")
_BR = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d)\s*/?>", re.I)
_ENTITIES = {"&nbsp;": " ", "&lt;": "<", "&gt;": ">", "&amp;": "&", "&quot;": '"', "&#39;": "'"}


@dataclass(slots=True)
class Reading:
    message: Message
    report_blocks: list[Fields] = field(default_factory=list)
    feedback_blocks: list[Fields] = field(default_factory=list)
    has_report_part: bool = False
    text: str = ""
    returned: Message | None = None
    returned_text: str = ""

    def header(self, name: str) -> str:
        return header_text(self.message, name)


def header_text(message: Message, name: str) -> str:
    """The decoded value of a header ("" when absent or unreadable)."""
    wanted = name.lower()
    value = next((raw for key, raw in message.raw_items() if key.lower() == wanted), None)
    if value is None:
        return ""
    text = str(value)
    if not text.isascii() and _SURROGATE.search(text):
        text = _unescape(text)                     # raw 8-bit (UTF-8) bytes in the header
    if "=?" in text:
        with contextlib.suppress(UnicodeError, LookupError, ValueError, binascii.Error):
            text = str(make_header(decode_header(text)))
    return " ".join(text.split())


def read_message(raw: bytes) -> Reading:
    # What a bounce says is at its start; a returned original with large attachments only
    # costs parsing time, and the parser copes with the missing end of a cut message.
    message = email.message_from_bytes(raw[:RAW_LIMIT], policy=compat32)
    reading = Reading(message)
    plain: list[str] = []
    html: list[str] = []
    _walk(message, reading, plain, html, top=True)
    text = "\n".join(plain) if any(t.strip() for t in plain) else "\n".join(html)
    if reading.returned is None:
        text, rest = _cut_returned(text)
        reading.returned_text = rest
    reading.text = text[:TEXT_LIMIT]
    return reading


def _walk(part: Message, reading: Reading, plain: list[str], html: list[str],
          top: bool = False) -> None:
    ctype = part.get_content_type()
    if ctype in REPORT_TYPES or ctype == "message/disposition-notification":
        reading.has_report_part = reading.has_report_part or ctype in REPORT_TYPES
        reading.report_blocks.extend(parse_fields(_report_text(part)))
        return
    if ctype in FEEDBACK_TYPES:
        reading.feedback_blocks.extend(parse_fields(_report_text(part)))
        return
    if ctype == "message/rfc822" and not top and not reading.report_blocks and _is_report(part):
        inner = part.get_payload()
        if isinstance(inner, list) and inner and isinstance(inner[0], Message):
            _walk(inner[0], reading, plain, html)    # a bounce forwarded as an attachment
            return
    if ctype in RETURNED_TYPES and not top:
        if reading.returned is None:
            reading.returned = _returned(part)
        return
    if part.is_multipart():
        payload = part.get_payload()
        if isinstance(payload, list):
            for sub in payload:
                if isinstance(sub, Message):
                    _walk(sub, reading, plain, html)
        return
    if reading.returned is not None:
        return                                   # text after the returned original is not ours
    if ctype == "text/plain" or (top and part.get_content_maintype() != "text"
                                 and ctype not in RETURNED_TYPES):
        plain.append(_BR.sub("\n", _text(part)) if "<br" in _text(part)[:4000].lower()
                     else _text(part))
    elif ctype == "text/html":
        html.append(_strip_html(_text(part)))
    elif top and ctype in RETURNED_TYPES:
        plain.append(_text(part))


def _unescape(text: str) -> str:
    """Header bytes the parser kept as surrogate escapes, read as UTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return text


def _is_report(part: Message) -> bool:
    inner = part.get_payload()
    return (isinstance(inner, list) and bool(inner) and isinstance(inner[0], Message)
            and inner[0].get_content_type() == "multipart/report")


def _charset(part: Message) -> str:
    charset = part.get_content_charset() or "utf-8"
    return "utf-8" if charset.lower() in ("us-ascii", "ascii", "none", "unknown-8bit") else charset


def _decode(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset, "replace")
    except LookupError:
        return data.decode("utf-8", "replace")


def _text(part: Message) -> str:
    try:
        data = part.get_payload(decode=True)
    except (ValueError, TypeError, AssertionError):
        data = None
    if isinstance(data, bytes):
        return _decode(data[: TEXT_LIMIT * 4], _charset(part))
    payload = part.get_payload()
    return payload if isinstance(payload, str) else ""


def _report_text(part: Message) -> str:
    """The text of a report part, whether the parser split it into blocks or not."""
    payload = part.get_payload()
    if isinstance(payload, list):
        chunks: list[str] = []
        for sub in payload:
            if not isinstance(sub, Message):
                continue
            chunks.extend(f"{name}: {value}" for name, value in sub.raw_items())
            body = sub.get_payload()
            if isinstance(body, str) and body.strip():
                chunks.append(body)
            chunks.append("")
        text = _unescape("\n".join(chunks))
    else:
        text = _text(part) if isinstance(payload, str) else ""
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if isinstance(payload, list) and encoding == "base64":
        with contextlib.suppress(binascii.Error, ValueError):
            text = _decode(base64.b64decode("".join(text.split()), validate=False),
                           _charset(part))
    elif isinstance(payload, list) and encoding == "quoted-printable":
        text = _decode(quopri.decodestring(text.encode("utf-8", "replace")), _charset(part))
    return text[:TEXT_LIMIT]


def _returned(part: Message) -> Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    text = _text(part) if isinstance(payload, str) else ""
    return email.parser.HeaderParser(policy=compat32).parsestr(text.lstrip("\r\n"))


def _strip_html(text: str) -> str:
    text = _BR.sub("\n", text)
    text = _TAGS.sub(" ", text)
    for entity, char in _ENTITIES.items():
        text = text.replace(entity, char)
    return "\n".join(line.strip() for line in text.splitlines())


def _cut_returned(text: str) -> tuple[str, str]:
    match = _RETURNED_MARKER.search(text)
    if match and match.start() > 0:
        return text[: match.start()], text[match.end():]
    return text, ""
