"""A persona's reply texts: the generic text of a bare code, placeholders filled in, multiline
replies rendered (RFC 5321 4.2.1: the code on every line) and read back as one line.
"""

from __future__ import annotations

from mta.sim.config import TEMPORARY_PROBLEM

GENERIC_REPLIES = {
    250: "250 2.0.0 OK",
    421: "421 4.7.0 Try again later, closing connection",
    450: "450 4.2.1 Mailbox temporarily unavailable",
    451: TEMPORARY_PROBLEM,
    452: "452 4.2.2 Mailbox full",
    550: "550 5.1.1 Mailbox unavailable",
    551: "551 5.1.6 User not local",
    552: "552 5.2.2 Mailbox full",
    553: "553 5.1.3 Mailbox name not allowed",
    554: "554 5.7.1 Message rejected",
}


def render(template: str, values: dict[str, str]) -> str:
    """Fill the placeholders; a newline makes a multiline reply (codes repeated on each line)."""
    text = template
    if "{" in text:
        for key, value in values.items():
            text = text.replace("{" + key + "}", value)
    if "\n" not in text:
        return text
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    code, enhanced = lines[0][:3], enhanced_code(lines[0])
    bodies = [lines[0][4:]] + [f"{enhanced} {line}" if enhanced else line for line in lines[1:]]
    last = len(bodies) - 1
    return "\r\n".join(f"{code}{' ' if i == last else '-'}{body}" for i, body in enumerate(bodies))


def enhanced_code(reply: str) -> str:
    """The RFC 3463 code after the basic code of a reply's first line ("" if none)."""
    token = reply[4:].split(" ", 1)[0]
    parts = token.split(".")
    if len(parts) == 3 and token[:1] in "245" and all(p.isdigit() for p in parts):
        return token
    return ""


def one_line(reply: str) -> str:
    """A rendered (possibly multiline) reply as one line: code, enhanced code, the texts."""
    lines = reply.split("\r\n")
    if len(lines) == 1:
        return reply
    enhanced = enhanced_code(lines[0])
    texts = [line[4:] for line in lines]
    if enhanced:
        texts = [t[len(enhanced) :].strip() if t.startswith(enhanced) else t for t in texts]
        return f"{lines[0][:3]} {enhanced} " + " ".join(texts)
    return f"{lines[0][:3]} " + " ".join(texts)


def basic_code(reply: str) -> int:
    return int(reply[:3])
