"""Report fields read leniently (RFC 3464 delivery-status, RFC 5965 feedback-report), pure.

`parse_fields(text)` reads "Name: value" lines with folded continuations, in order, keeping
duplicates, ignoring blank lines: so a delivery-status part written as one block (no blank line
between the per-message and the per-recipient fields), with several blank lines, or found in a
text/plain part, reads the same. `recipient_groups(fields)` cuts the list into one group per
recipient: a group starts at each Final-Recipient (an Original-Recipient just before it belongs
to the same group). `typed_value("rfc822; bob@x")` drops the address or diagnostic type.
"""

from __future__ import annotations

import re
from typing import Final

_FIELD = re.compile(r"^([A-Za-z][A-Za-z0-9-]{1,40})[ \t]*:[ \t]*(.*)$")
RECIPIENT_FIELDS: Final = ("final-recipient", "original-recipient")
DSN_FIELDS: Final = frozenset({"final-recipient", "original-recipient", "action", "status",
                               "diagnostic-code", "remote-mta", "reporting-mta",
                               "x-postfix-queue-id", "last-attempt-date", "will-retry-until"})

Fields = list[tuple[str, str]]


def parse_fields(text: str) -> list[Fields]:
    """Blocks (split at blank lines) of (lower-cased name, value) pairs, in order, duplicates
    kept; continuation lines are joined with a space; lines that are not fields are skipped."""
    blocks: list[Fields] = []
    out: Fields = []
    for line in text.splitlines():
        if not line.strip():
            if out:
                blocks.append(out)
                out = []
            continue
        if line[0] in " \t":
            if out:
                name, value = out[-1]
                out[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        match = _FIELD.match(line)
        if match:
            out.append((match.group(1).lower(), match.group(2).strip()))
    if out:
        blocks.append(out)
    return blocks


def has_dsn_fields(blocks: list[Fields]) -> bool:
    names = {name for block in blocks for name, _ in block}
    return "final-recipient" in names or ("status" in names
                                          and ("action" in names or "diagnostic-code" in names))


_PER_RECIPIENT = frozenset({"action", "status", "diagnostic-code", "remote-mta",
                            "last-attempt-date", "will-retry-until", "x-display-name"})


def recipient_groups(blocks: list[Fields]) -> list[dict[str, str]]:
    """One dict per recipient (the first value of a field wins inside a recipient's block).

    A block with one recipient field of each kind is one recipient whatever the order of its
    fields; a block holding several (or the per-message fields too) is cut at each recipient
    field. Per-recipient fields written without a recipient field (in the per-message block,
    or before the first recipient field of a block) apply to the recipients that lack them;
    with no recipient field at all they make one anonymous recipient."""
    groups: list[dict[str, str]] = []
    defaults: dict[str, str] = {}
    for block in blocks:
        current: dict[str, str] | None = None
        for name, value in block:
            if name in RECIPIENT_FIELDS and (current is None or name in current):
                current = {}
                groups.append(current)
            if current is None:
                if name in _PER_RECIPIENT:
                    defaults.setdefault(name, value)
                continue
            current.setdefault(name, value)
    for group in groups:
        for name, value in defaults.items():
            group.setdefault(name, value)
    if not groups and ("status" in defaults or "action" in defaults):
        groups.append(defaults)
    return groups


def typed_value(value: str) -> str:
    """Drop an RFC 3464 type prefix: "rfc822; a@b" -> "a@b", "smtp; 550 ..." -> "550 ..."."""
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"\s*[A-Za-z][A-Za-z0-9-]{0,20}\s*", kind):
        return rest.strip()
    return value.strip()
