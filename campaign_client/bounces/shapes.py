"""Failed recipients and their reasons in the text of non-RFC-3464 bounces (pure).

Mail servers that write no delivery-status part still follow a few layouts; each function here
reads one of them and returns (recipient, reason) pairs, `find_failures(text)` tries them all:

- one line per recipient with the reason on it: Yahoo/AOL ("Sorry your message to X cannot be
  delivered. This account ..."), "This user doesn't have a yahoo.com account (X)", SMTP32
  ("Delivery failed 20 attempts: X", "Unknown user: X", "Invalid final delivery userid: X"),
  MailEnable ("Recipient: [SMTP:X]" + "Reason: ..."), "Failed Recipient: X" + "Reason: ...",
  Novell ("X (user not found)"), PMDF/Sun ("Original address: X" + "Reason: ...");
- "<X>: reason" blocks: Postfix's human-readable part, qmail (QSBMF), Courier;
- a list under a heading ("The following address(es) failed:", "Delivery to the following
  recipient failed permanently:", "did not reach the following recipient(s):", "was not
  delivered to:", "Delivery has failed to these recipients or groups:", translations): Exim,
  Gmail, Exchange / Office 365, Lotus Domino, MDaemon, hMailServer, Sendmail's transcript.
The reason is the text after the address up to the next address or a blank-line gap.
"""

from __future__ import annotations

import re
from typing import Final

ADDRESS: Final = (r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                  r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
_ADDRESS = re.compile(ADDRESS)


def _shape(pattern: str, flags: int = re.I) -> re.Pattern[str]:
    """A layout's regex; ADDR stands for the (named) failed address, ANY for any address."""
    pattern = pattern.replace("ADDR", "(?P<addr>" + ADDRESS + ")").replace("ANY", ADDRESS)
    return re.compile(pattern, flags)


# One recipient per line (or per short "Recipient: ... Reason: ..." block), in order of use.
_LINE_SHAPES: Final = (
    # Yahoo / AOL
    _shape(r"sorry,? your message to ADDR cannot be delivered\.?\s*(?P<reason>.*)"),
    _shape(r"(?P<reason>this user doesn'?t have an? \S+ account) \(ADDR\)"),
    # SMTP32 / IMail
    _shape(r"(?P<reason>delivery failed \d+ attempts):\s*ADDR"),
    _shape(r"(?P<reason>unknown user|invalid final delivery userid"
           r"|user mailbox exceeds allowed size)\s*:?\s*<?ADDR>?"),
    _shape(r"undeliverable\s+to\s*<?ADDR>?(?P<reason>)"),
    # Domino-style "(Originally addressed to X)" followed by the reason
    _shape(r"originally addressed to\s*<?ADDR>?\)?\s*\n(?P<reason>(?:.*\S.*\n){1,2})"),
    # MailEnable
    _shape(r"recipient:\s*\[?(?:smtp:)?ADDR\]?\s*\n\s*reason:\s*"
           r"(?P<reason>.*(?:\n[ \t]+.*)*)"),
    # "Failed Recipient: X" + "Reason: ..."
    _shape(r"failed recipient:\s*<?ADDR>?\s*\n\s*reason:\s*"
           r"(?P<reason>.*(?:\n(?!\s*\n).*){0,2})"),
    # PMDF / Sun Messaging Server
    _shape(r"original address:\s*<?ADDR>?\s*\n(?:.*\n){0,1}?\s*reason:\s*"
           r"(?P<reason>.*(?:\n\s*diagnostic code:.*)?)"),
    # Novell GroupWise: "X (user not found)"
    _shape(r"^[ \t]*ADDR[ \t]+\((?P<reason>(?!expanded|generated|ultimately)"
           r"[^()\n]{3,80})\)[ \t]*$", re.I | re.M),
    # "Your message to X ..." / "Delivery of email to this address "X" has failed ..."
    _shape(r"(?:your message to|delivery of email to this address)\s*:?\s*\"?<?ADDR>?\"?"
           r"\s*(?P<reason>.{0,200}?)(?:\n\s*\n|$)", re.I | re.S),
    # MDaemon / Kerio: "Failed to deliver to '<X>'" + the module's report
    _shape(r"(?:failed to deliver to|fehler bei der auslieferung ihrer nachricht an)"
           r"\s+'<?ADDR>?'\s*(?P<reason>(?:.*\n){0,3})"),
    # Sendmail: "550 X... User unknown"
    _shape(r"^[ \t]*(?:[45]\d\d[ -](?:[45]\.\d{1,3}\.\d{1,3} )?)?<?ADDR>?"
           r"[ \t]*\.{3}[ \t]*(?P<reason>.+)$", re.I | re.M),
    _shape(r"you sent mail to <?ADDR>?[.,:]?[ \t]*(?P<reason>.*)"),
    _shape(r"intended recipient:\s*ADDR\s*(?P<reason>(?:.*\n){0,3})"),
    # LSMTP / LISTSERV
    _shape(r"error-for:\s*ADDR\s*\n(?:.*\n)*?\s*error-text:\s*"
           r"(?P<reason>.*(?:\n[ \t]+.*)*)"),
)
_ANGLE_BLOCK = _shape(
    r"^[ \t]*<ADDR>:?[ \t]*(?P<reason>.*(?:\n(?![ \t]*\n)(?![ \t]*<ANY>).*){0,8})", re.M
)
_HEADINGS = re.compile(
    r"(?:following address\(?e?s?\)? failed|following addresses failed|address\(es\) failed"
    r"|following recipients? failed|to the following recipients? failed"
    r"|delivery to the following recipients? (?:failed|was aborted|has been delayed)"
    r"|could not be delivered to the following (?:recipients?|address(?:\(?es\)?)?)"
    r"|did not reach the following recipient|following recipient\(s\) could not be reached"
    r"|was not delivered to|was undeliverable to the following|could not be delivered to:"
    r"|following recipients? (?:failed|was aborted|has been delayed|did not receive)"
    r"|delivery has failed to these recipients or groups|failed permanently"
    r"|wasn'?t able to deliver your message to the following address"
    r"|not able to deliver your message to the following address|"
        r"unable to deliver message to the following address"
    r"|unable to deliver your message to the following address|"
        r"not delivered to the following address"
    r"|has not yet been delivered to the following address|had permanent fatal errors"
    r"|had transient non-fatal errors|message to the following addresses|failed addresses follow"
    r"|la remise .{0,40} a .chou. pour les destinataires|die zustellung an folgende empf.nger"
    r"|la remise aux destinataires .{0,30}a .chou.|error al entregar a estos destinatarios"
    r"|recapito non riuscito per i destinatari|bezorging is mislukt voor deze ontvangers"
    r"|falha na entrega para estes destinat|dostarczenie do tych adresat"
    r"|error occurred while trying to deliver the mail to the following recipients"
    r"|no se pudo entregar a los siguientes|non . stato possibile recapitare|"
        r"n.o foi poss.vel entregar"
    r"|det gick inte att leverera till|levering aan de volgende ontvangers"
    r"|the address to which the message has not yet been delivered is"
    r"|addressed to\b|the following recipients? (?:could not|cannot) be reached)[^\n]*\n",
    re.IGNORECASE,
)
_HEADER_LINE = re.compile(r"^(?:from|to|cc|subject|date|received|message-id|return-path|reply-to"
                          r"|sender|mime-version|content-type):\s", re.I)
_SKIP_LINE = re.compile(r"^\s*(?:https?://|_{5,}|\*{5,}|-{5,}|={5,}|#{5,})")


def _clean(reason: str) -> str:
    return " ".join(reason.replace("<br>", " ").split())[:600]


def line_shapes(text: str) -> list[tuple[str, str]]:
    found: list[tuple[int, str, str]] = []
    covered: list[tuple[int, int]] = []
    for shape in _LINE_SHAPES:
        for match in shape.finditer(text):
            if any(start <= match.start() < end or match.start() <= start < match.end()
                   for start, end in covered):
                continue                           # an earlier layout read this text already
            covered.append((match.start(), match.end()))
            reason = match.group("reason").strip()
            if reason.endswith(":"):               # "... for the following reason:" + paragraph
                after = text[match.end(): match.end() + 600].strip().split("\n\n")[0]
                reason = f"{reason} {after}"
            found.append((match.start(), match.group("addr"), _clean(reason)))
    found.sort()
    return [(address, reason) for _, address, reason in found]


def angle_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group("addr"), _clean(m.group("reason"))) for m in _ANGLE_BLOCK.finditer(text)]


def heading_lists(text: str) -> list[tuple[str, str]]:
    """Addresses listed under a failure heading, each with the lines that follow it."""
    found: list[tuple[str, str]] = []
    for heading in _HEADINGS.finditer(text[:8000]):
        section = text[heading.end(): heading.end() + 3000]
        current: str | None = None
        reason: list[str] = []
        blank_run = 0
        for line in section.splitlines():
            stripped = line.strip()
            if not stripped:
                blank_run += 1
                if blank_run >= 3 or (blank_run >= 2 and current and reason):
                    break
                continue
            blank_run = 0
            if _SKIP_LINE.match(stripped):
                continue
            if _HEADER_LINE.match(stripped):
                break                                # the returned original's headers
            address = _ADDRESS.search(stripped)
            if re.match(r"\(?(?:ultimately |)(?:generated|expanded) from", stripped, re.I):
                continue
            is_address_line = address is not None and address.start() <= 12 \
                and len(stripped) - len(address.group(0)) < 40 \
                and not re.search(r"\b(said|error|host|reply|rcpt|mail from)\b|^#?[45]\d\d\b",
                                  stripped, re.I)
            if is_address_line and address is not None:
                if current is not None:
                    found.append((current, _clean(" ".join(reason))))
                current = address.group(0)
                reason = []
                tail = stripped[address.end():].strip(" :>)\"'")
                if tail:
                    reason.append(tail)
            elif current is not None:
                if stripped.endswith(":") and len(stripped) < 60:
                    continue                         # "Technical details:", a lead-in
                reason.append(stripped)
                if len(reason) > 12:
                    break
            elif found:
                break
        if current is not None:
            found.append((current, _clean(" ".join(reason))))
        if found:
            return found
    return found


def find_failures(text: str) -> list[tuple[str, str]]:
    """(recipient, reason) pairs in a bounce's text, by the first layout that finds any."""
    for reader in (line_shapes, angle_blocks, heading_lists):
        found = reader(text)
        if found:
            return _dedupe(found)
    return []


def _dedupe(found: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """One entry per address (first spelling kept), its reasons joined in order."""
    seen: dict[str, str] = {}
    for address, reason in found:
        key = address.lower()
        if key not in seen:
            seen[key] = reason
        elif reason and reason not in seen[key]:
            seen[key] = f"{seen[key]} {reason}".strip()
    first = {a.lower(): a for a, _ in reversed(found)}
    return [(first[key], reason) for key, reason in seen.items()]
