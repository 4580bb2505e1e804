"""Read, strip and add RFC 5322 header fields on raw CRLF bytes, without re-serialising (pure).

The MTA must not rewrite what it relays (a DKIM signature covers the bytes), so
these helpers work on the header block as bytes and touch only what they name.
"""

from __future__ import annotations

import re


def split(message: bytes) -> tuple[bytes, bytes]:
    """(header block including its final CRLF, body); a message with no body gives (msg, b"")."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        if message.startswith(b"\r\n"):
            return b"", message[2:]
        return message, b""
    return message[: end + 2], message[end + 4 :]


def fields(header_block: bytes) -> list[tuple[bytes, bytes]]:
    """[(name, raw field including continuation lines and CRLF)], in order."""
    result: list[tuple[bytes, bytes]] = []
    lines = header_block.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    for line in lines:
        if line[:1] in (b" ", b"\t") and result:
            name, raw = result[-1]
            result[-1] = (name, raw + line + b"\r\n")
            continue
        name, colon, _ = line.partition(b":")
        result.append((name.strip() if colon else b"", line + b"\r\n"))
    return result


def value(raw_field: bytes) -> str:
    """The unfolded value of a raw field, decoded leniently, stripped."""
    _, _, rest = raw_field.partition(b":")
    unfolded = re.sub(rb"\r\n([ \t])", rb"\1", rest).strip()
    return unfolded.decode("utf-8", "replace")


def get(message: bytes, name: str) -> str | None:
    """The first value of a header field, or None."""
    wanted = name.lower().encode()
    for field_name, raw in fields(split(message)[0]):
        if field_name.lower() == wanted:
            return value(raw)
    return None


def extract(message: bytes, prefix: str) -> tuple[dict[str, str], bytes]:
    """Values of the fields whose names start with `prefix` (lower-cased names), and the
    message without them. Returns the message object unchanged when none is present."""
    wanted = prefix.lower().encode()
    head, body = split(message)
    if wanted not in head.lower():
        return {}, message
    found: dict[str, str] = {}
    kept: list[bytes] = []
    for field_name, raw in fields(head):
        if field_name.lower().startswith(wanted):
            found.setdefault(field_name.decode("ascii", "replace").lower(), value(raw))
        else:
            kept.append(raw)
    rebuilt = b"".join(kept)
    if message.find(b"\r\n\r\n") >= 0 or body:
        return found, rebuilt + b"\r\n" + body
    return found, rebuilt


def prepend(message: bytes, *raw_fields: bytes) -> bytes:
    """Add complete fields (each ending in CRLF) at the top of the message."""
    return b"".join(raw_fields) + message


def names(message: bytes) -> set[bytes]:
    """The lower-cased names of the message's header fields (no values unfolded)."""
    return {name.lower() for name, _ in fields(split(message)[0]) if name}
