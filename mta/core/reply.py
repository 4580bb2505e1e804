"""SMTP reply text -> `Reply(code, enhanced, text)` (pure).

Accepts a raw reply ("550-5.1.1 first line\\r\\n550 5.1.1 second line") or the
code plus the message an SMTP client library hands back (lines without their
codes). Multiline texts are joined with single spaces; a repeated enhanced code
at the start of continuation lines is dropped. The enhanced code is kept only
when its class digit agrees with the basic code's (RFC 3463 section 2); a
disagreeing one stays at the start of the text, where bounce rules still see it.

Replies copied from logs and bounce messages are accepted too: a DSN
``Diagnostic-Code: smtp;`` prefix and Exchange's ``#550 ... ##`` markers are
dropped, and a multiline reply flattened onto one line by a log
("550-5.1.1 a 550-5.1.1 b 550 5.1.1 c") loses its repeated "550-5.1.1" markers.
"""

from __future__ import annotations

import re

from mta.model import Reply

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_LINE = re.compile(r"^(\d{3})([ -]?)(.*)$")
_DSN_PREFIX = re.compile(r"^\s*(?:diagnostic-code:\s*)?(?:smtp|x-postfix|x-unix)\s*;\s*", re.I)
_EXCHANGE_MARKS = re.compile(r"^\s*#(?=\d{3}[ -])|\s*##\s*$")


def split_enhanced(code: int, line: str) -> tuple[str | None, str]:
    """("5.1.1", "rest") when the line starts with an enhanced code of the same class."""
    stripped = line.lstrip()
    match = _ENHANCED.match(stripped)
    if not match:
        return None, stripped
    enhanced = match.group(0)
    if enhanced[0] != str(code)[0]:
        return None, stripped
    return enhanced, stripped[match.end():].lstrip()


def from_parts(code: int, message: str) -> Reply:
    """A Reply from a code and the message lines without their codes."""
    enhanced: str | None = None
    texts: list[str] = []
    for raw in message.replace("\r\n", "\n").split("\n"):
        line_enhanced, text = split_enhanced(code, raw)
        if enhanced is None and line_enhanced is not None and not texts:
            enhanced = line_enhanced
        elif line_enhanced is not None and line_enhanced != enhanced:
            text = raw.strip()
        if text:
            texts.append(text)
    return Reply(code=code, enhanced=enhanced, text=" ".join(texts))


def parse_reply(raw: str) -> Reply:
    """A Reply from raw reply text, one or more lines each starting with the 3-digit code.

    Text that does not start with a code (a bare "mailbox full") is kept whole
    with code 0, so a classifier can still match its words.
    """
    raw = _EXCHANGE_MARKS.sub("", _DSN_PREFIX.sub("", raw, count=1))
    lines = [line for line in raw.replace("\r\n", "\n").strip().split("\n") if line.strip()]
    if not lines:
        return Reply(code=0, enhanced=None, text="")
    first = _LINE.match(lines[0].strip())
    if not first or (first.group(2) == "" and first.group(3)):
        return Reply(code=0, enhanced=None, text=" ".join(line.strip() for line in lines))
    code = int(first.group(1))
    parts: list[str] = []
    for line in lines:
        match = _LINE.match(line.strip())
        if match and int(match.group(1)) == code:
            parts.append(match.group(3))
        else:
            parts.append(line.strip())
    reply = from_parts(code, "\n".join(parts))
    if reply.enhanced and f"{code}" in reply.text:
        # A multiline reply flattened onto one line keeps "550-5.1.1" between its lines.
        marks = re.compile(rf"\s+{code}[ -]{re.escape(reply.enhanced)}(?=\s|$)")
        if marks.search(reply.text):
            text = " ".join(marks.sub(" ", reply.text).split())
            reply = Reply(code=code, enhanced=reply.enhanced, text=text)
    return reply
