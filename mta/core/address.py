"""Parse and validate SMTP envelope paths and mailboxes ourselves (RFC 5321 4.1.2, 4.5.3.1), pure.

`parse_path("<user@Example.COM> SIZE=100")` -> Path("user@example.com", {"SIZE": "100"}).
Errors are `AddressError(code, enhanced, text)`, ready to be sent as a reply.
The domain is lower-cased (an IDN is checked and kept in Unicode, with its
A-label available through `ascii_domain`); the local part is kept as given,
because only the receiving domain may interpret it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_ATOM = re.compile(rf"^{_ATEXT}+(?:\.{_ATEXT}+)*$")
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_PARAM = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?$")


class AddressError(ValueError):
    """A path or mailbox we refuse, with the reply to send."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.enhanced = enhanced
        self.text = text

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed MAIL FROM / RCPT TO argument. `address` is "" for the null reverse-path."""

    address: str
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def local_part(self) -> str:
        return self.address.rpartition("@")[0]

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]


def ascii_domain(domain: str) -> str:
    """The A-label form of a domain for DNS and the wire ("bücher.test" -> "xn--bcher-kva.test")."""
    if domain.isascii():
        return domain
    return domain.encode("idna").decode("ascii")


def _split_path_and_params(arg: str) -> tuple[str, str]:
    arg = arg.strip()
    if arg.startswith("<"):
        end = arg.find(">")
        if end < 0:
            raise AddressError(501, "5.5.4", "Syntax error: missing '>'")
        return arg[1:end], arg[end + 1 :]
    # Lenient: a bare address with no brackets, as some clients send.
    path, _, rest = arg.partition(" ")
    return path, rest


def _parse_params(text: str) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for token in text.split():
        match = _PARAM.match(token)
        if not match:
            raise AddressError(501, "5.5.4", f"Syntax error in parameter {token[:40]!r}")
        params[match.group(1).upper()] = match.group(2)
    return params


def _check_domain(domain: str, bad: str, smtputf8: bool) -> str:
    if not domain:
        raise AddressError(501, bad, "Domain part missing")
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal.lower().startswith("ipv6:"):
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            raise AddressError(501, bad, "Bad address literal") from None
        return domain.lower()
    domain = domain.lower()
    if not domain.isascii():
        if not smtputf8:
            raise AddressError(553, "5.6.7", "Non-ASCII domain requires SMTPUTF8")
        try:
            ascii_form = ascii_domain(domain)
        except UnicodeError:
            raise AddressError(501, bad, "Bad internationalised domain name") from None
    else:
        ascii_form = domain
    if len(ascii_form) > MAX_DOMAIN:
        raise AddressError(501, bad, "Domain name too long")
    labels = ascii_form.split(".")
    if any(not _LABEL.match(label) for label in labels):
        raise AddressError(501, bad, "Bad domain name syntax")
    return domain


def _check_local(local: str, bad: str, smtputf8: bool) -> None:
    if not local:
        raise AddressError(501, bad, "Local part missing")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:
        raise AddressError(501, bad, "Local part too long")
    if not local.isascii():
        if not smtputf8:
            raise AddressError(553, "5.6.7", "Non-ASCII local part requires SMTPUTF8")
        return
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        raise AddressError(501, bad, "Bad local part syntax")


def parse_mailbox(text: str, *, sender: bool = False, smtputf8: bool = False) -> str:
    """The canonical form of a mailbox (local@domain), or AddressError."""
    bad = "5.1.7" if sender else "5.1.3"
    what = "sender" if sender else "recipient"
    if _CONTROL.search(text):
        raise AddressError(
            501, "5.1.7" if sender else "5.1.3", f"Bad {what} address: control characters"
        )
    if "," in text and not text.startswith('"'):
        raise AddressError(553, bad, f"Bad {what} address: one mailbox only, not a list")
    local, at, domain = text.rpartition("@")
    if not at:
        raise AddressError(501, bad, f"Bad {what} address syntax: missing '@'")
    _check_local(local, bad, smtputf8)
    domain = _check_domain(domain, bad, smtputf8)
    address = f"{local}@{domain}"
    if len(address.encode("utf-8")) + 2 > MAX_PATH:
        raise AddressError(501, bad, f"Bad {what} address: path too long")
    return address


def parse_path(arg: str, *, sender: bool, smtputf8: bool = False) -> Path:
    """Parse the argument after "MAIL FROM:" or "RCPT TO:" (keyword already removed).

    `smtputf8` says the transaction allows UTF-8 addresses (for RCPT: the MAIL
    command had SMTPUTF8; for MAIL its own SMTPUTF8 parameter also counts).
    """
    if _CONTROL.search(arg):
        raise AddressError(
            501,
            "5.1.7" if sender else "5.1.3",
            f"Bad {'sender' if sender else 'recipient'} address: control characters",
        )
    raw, rest = _split_path_and_params(arg)
    params = _parse_params(rest)
    smtputf8 = smtputf8 or (sender and "SMTPUTF8" in params)
    if not raw:
        if not sender:
            raise AddressError(501, "5.1.3", "Null recipient address not allowed")
        return Path("", params)
    if raw.startswith("@"):
        # RFC 5321 4.1.1.3: a source route is accepted and ignored.
        colon = raw.find(":")
        if colon < 0:
            raise AddressError(501, "5.1.7" if sender else "5.1.3", "Bad source route syntax")
        raw = raw[colon + 1 :]
    return Path(parse_mailbox(raw, sender=sender, smtputf8=smtputf8), params)
