"""DKIM signing (RFC 6376) with the RSA / Ed25519 step done in OpenSSL through `cryptography`.

`DkimSigner.sign(message, now)` takes a whole message as bytes with CRLF line
endings and returns it with one `DKIM-Signature:` field per matching key
prepended (RSA first, then Ed25519), or unchanged when no key matches its From
domain. Canonicalization is relaxed/relaxed (RFC 6376 3.4.2, 3.4.4), the body
hash is SHA-256, `rsa-sha256` is PKCS#1 v1.5 and `ed25519-sha256` is PureEdDSA
over the SHA-256 digest of the header hash input (RFC 8463 section 3).

Header selection: every configured header present is signed once per instance
(instances are taken bottom-up, RFC 6376 5.4.2), and each name in `oversign`
(From always) gets one extra, empty entry so that an instance added later
breaks the signature.

A signer holds only immutable data once built (the `cryptography` key objects
are safe to share), so `sign` may run in several worker threads at once; RSA
signing releases the GIL inside OpenSSL. Nothing here reads the clock: `t=`
comes from the caller's `now`.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from mta.config.engine import ConfigError
from mta.config.service import DkimConfig, DkimKey

__all__ = [
    "MIN_RSA_BITS",
    "Algorithm",
    "DkimSigner",
    "PrivateKey",
    "SigningKey",
    "author_domain",
    "body_hash",
    "canonicalize_body_relaxed",
    "canonicalize_header_relaxed",
    "header_name",
    "load_private_key",
    "load_signing_key",
    "normalize_domain",
    "public_key_record",
    "split_message",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

MIN_RSA_BITS = 1024
_LINE_LIMIT = 76          # fold the signature field's lines at this width (RFC 5322 wants < 78)
_B_CHUNK = 72             # base64 characters of b= per folded line

_CRLF = b"\r\n"
_TAB_TO_SP = bytes.maketrans(b"\t", b" ")
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")                  # printable ASCII except ':'
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")   # '_' allowed: selectors use it

_DEFAULTS = DkimConfig()


# --------------------------------------------------------------------------- parsing


def split_message(message: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, body). Each field is its raw bytes with folding, without the final CRLF.

    The header section ends at the first empty line; a message without one is
    all header and has an empty body. A continuation line (starting with SP or
    HTAB) belongs to the field above it.
    """
    if message.startswith(_CRLF):
        return [], message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        block, body = message, b""
    else:
        block, body = message[:end], message[end + 4:]
    fields: list[bytes] = []
    for line in block.split(_CRLF):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += _CRLF + line
        elif line:
            fields.append(line)
    return fields, body


def header_name(field: bytes) -> bytes:
    """The field's name in lower case, without the WSP a sloppy sender left before the colon."""
    return field.partition(b":")[0].rstrip(b" \t").lower()


def canonicalize_header_relaxed(field: bytes) -> bytes:
    """RFC 6376 3.4.2: lower-case name, unfolded value, WSP runs to one SP, trimmed; + CRLF."""
    name, _, value = field.partition(b":")
    if _CRLF in value:
        value = value.replace(_CRLF, b"")
    if b"\t" in value:
        value = value.translate(_TAB_TO_SP)
    while b"  " in value:   # C-speed bytes operations, as in the body: no regex per field
        value = value.replace(b"  ", b" ")
    return name.rstrip(b" \t").lower() + b":" + value.strip(b" ") + _CRLF


def canonicalize_body_relaxed(body: bytes) -> bytes:
    """RFC 6376 3.4.4: WSP runs to one SP, none before a CRLF, no empty lines at the end.

    A non-empty body gets a final CRLF if it lacks one; an empty one stays empty.
    (WSP on a last line without CRLF is kept, as dkimpy does; SMTP bodies always
    end with CRLF, so this reading never matters on the wire.)
    """
    # C-speed bytes operations instead of a regex: tabs to spaces, then halve space runs until
    # none is left (log2 of the longest run passes), then drop the one space before a CRLF.
    text = body.translate(_TAB_TO_SP) if b"\t" in body else body
    while b"  " in text:
        text = text.replace(b"  ", b" ")
    if b" \r\n" in text:
        text = text.replace(b" \r\n", _CRLF)
    if text and not text.endswith(_CRLF):
        text += _CRLF
    stripped = text.rstrip(b"\r\n")
    tail = len(text) - len(stripped)
    if tail % 2 == 0 and text.endswith(_CRLF * (tail // 2)):
        end = len(stripped)
    else:   # the tail mixes bare CR or LF with CRLFs: drop whole CRLF pairs only
        end = len(text)
        while end >= 2 and text[end - 2:end] == _CRLF:
            end -= 2
    return text[:end] + _CRLF if end else b""


def body_hash(body: bytes) -> str:
    """The bh= value: base64 of SHA-256 over the relaxed body."""
    return base64.b64encode(hashlib.sha256(canonicalize_body_relaxed(body)).digest()).decode()


def _strip_comments_and_quotes(value: bytes) -> bytes:
    """The field value with (comments) removed and "quoted strings" emptied."""
    if b"(" not in value and b'"' not in value:
        return value   # nothing to remove: skip the walk character by character
    out = bytearray()
    depth = 0
    quoted = False
    i = 0
    while i < len(value):
        char = value[i:i + 1]
        if char == b"\\" and (quoted or depth):
            i += 2
            continue
        if quoted:
            quoted = char != b'"'
        elif depth:
            depth += {b"(": 1, b")": -1}.get(char, 0)
        elif char == b'"':
            quoted = True
        elif char == b"(":
            depth = 1
        else:
            out += char
        i += 1
    return bytes(out)


def normalize_domain(domain: str) -> str | None:
    """Lower case, no trailing dot, IDNA A-labels; None when it is not a usable host name."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if not name or not all(_LABEL.match(label) for label in labels):
        return None
    return name


def author_domain(message: bytes) -> str | None:
    """The domain of the (single) From header's first mailbox, normalised; None if unusable.

    A message with no From or with more than one From has no author domain and
    is not signed: several From fields make the author ambiguous (RFC 5322
    allows one) and receivers applying DMARC reject such mail anyway.
    """
    return _author_domain(split_message(message)[0])


def _author_domain(fields: Sequence[bytes]) -> str | None:
    froms = [field for field in fields if header_name(field) == b"from"]
    if len(froms) != 1:
        return None
    value = _strip_comments_and_quotes(froms[0].partition(b":")[2].replace(_CRLF, b""))
    mailbox = value.split(b",")[0]                 # display names with commas are quoted
    start = mailbox.find(b"<")
    address = mailbox[start + 1:].partition(b">")[0] if start >= 0 else mailbox
    address = address.rpartition(b":")[2]          # group syntax or an obsolete route
    _, at, domain = address.rpartition(b"@")
    if not at:
        return None
    try:
        text = domain.strip(b" \t;").decode("utf-8")
    except UnicodeDecodeError:
        return None
    return normalize_domain(text)


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class SigningKey:
    """One loaded key: the d= domain, the s= selector, and the private key."""

    domain: str
    selector: str
    private_key: PrivateKey
    key_file: str = ""

    @property
    def algorithm(self) -> Algorithm:
        return "rsa-sha256" if isinstance(self.private_key, rsa.RSAPrivateKey) else "ed25519-sha256"

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    def sign(self, data: bytes) -> bytes:
        """The b= signature bytes over the header hash input `data`."""
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return self.private_key.sign(hashlib.sha256(data).digest())   # RFC 8463: sign the hash


def load_private_key(path: str | Path) -> PrivateKey:
    """A PEM private key (PKCS#8 or traditional RSA; Ed25519 PKCS#8); ValueError says why not."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a key file") from None
    except PermissionError:
        raise ValueError("permission denied") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ValueError("not a PEM file (expected '-----BEGIN PRIVATE KEY-----')")
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        raise ValueError("is a public key, not a private key")
    if b"PRIVATE KEY-----" not in data:
        raise ValueError("not a private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ValueError("is encrypted; DKIM keys must be unencrypted PEM") from None
    except UnsupportedAlgorithm:
        raise ValueError("unsupported key type; use RSA or Ed25519") from None
    except ValueError:
        raise ValueError("not a valid PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key of {key.key_size} bits is too small (at least {MIN_RSA_BITS})"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    kind = type(key).__name__.lstrip("_").removeprefix("Rust")
    raise ValueError(f"unsupported key type {kind}; use RSA or Ed25519")


def load_signing_key(domain: str, selector: str, key_file: str) -> SigningKey:
    """A SigningKey from config values; ConfigError names the key file and the problem."""
    where = f"dkim key {domain}/{selector}: {key_file}"
    name = normalize_domain(domain)
    if name is None:
        raise ConfigError(f"{where}: domain {domain!r} is not a valid domain name")
    if not selector or not all(_LABEL.match(label) for label in selector.split(".")):
        raise ConfigError(f"{where}: selector {selector!r} is not a valid DNS label")
    try:
        key = load_private_key(key_file)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return SigningKey(domain=name, selector=selector.lower(), private_key=key, key_file=key_file)


def public_key_record(key: PrivateKey) -> str:
    """The DNS TXT record value: "v=DKIM1; k=rsa; p=<SPKI DER>" or k=ed25519 with the raw key."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        der = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()   # RFC 8463 4.2


# --------------------------------------------------------------------------- signer


def _header_names(names: Iterable[str], what: str) -> tuple[str, ...]:
    """Lower-cased, de-duplicated (first wins) header names; ConfigError for a bad one."""
    out: list[str] = []
    for name in names:
        if not _FIELD_NAME.match(name):
            raise ConfigError(f"dkim.{what}: {name!r} is not a header field name")
        if name.lower() not in out:
            out.append(name.lower())
    return tuple(out)


def _fold(pieces: Sequence[Sequence[str]]) -> list[str]:
    """Lines of the field for `pieces`: each a tag as atoms that may be split by a fold.

    Tags are separated by one SP on a line; atoms of one tag are joined with
    nothing, or with a fold (CRLF TAB) when the line is full. Both are FWS
    where RFC 6376 allows it (around ':' in h=, between base64 characters).
    """
    lines: list[str] = []
    line = "DKIM-Signature:"
    for atoms in pieces:
        for index, atom in enumerate(atoms):
            sep = " " if index == 0 else ""
            if len(line) + len(sep) + len(atom) <= _LINE_LIMIT:
                line += sep + atom
            else:
                lines.append(line)
                line = "\t" + atom
    lines.append(line)
    return lines


class DkimSigner:
    """Signs messages with the keys configured for their From domain; immutable, thread-safe."""

    def __init__(
        self,
        keys: Iterable[SigningKey],
        signed_headers: Sequence[str] = _DEFAULTS.signed_headers,
        oversign: Sequence[str] = _DEFAULTS.oversign,
    ) -> None:
        by_domain: dict[str, list[SigningKey]] = {}
        seen: set[tuple[str, str]] = set()
        for key in keys:
            if (key.domain, key.selector) in seen:
                raise ConfigError(
                    f"{key.key_file}: dkim key {key.domain}/{key.selector}: duplicate selector"
                )
            seen.add((key.domain, key.selector))
            by_domain.setdefault(key.domain, []).append(key)
        ordered = {
            domain: tuple(sorted(found, key=lambda k: k.algorithm != "rsa-sha256"))
            for domain, found in by_domain.items()
        }
        self._keys: Mapping[str, tuple[SigningKey, ...]] = MappingProxyType(ordered)
        over = _header_names(("From", *oversign), "oversign")
        signed = _header_names(("From", *signed_headers), "signed_headers")
        # (name, extra entries) in h= order: the signed list, then over-signed names not in it
        self._plan: tuple[tuple[bytes, str, int], ...] = tuple(
            (name.encode(), name, 1 if name in over else 0)
            for name in (*signed, *(n for n in over if n not in signed))
        )

    @classmethod
    def from_config(
        cls,
        keys: Sequence[DkimKey],
        signed_headers: Sequence[str] = _DEFAULTS.signed_headers,
        oversign: Sequence[str] = _DEFAULTS.oversign,
    ) -> DkimSigner:
        """Load every key file; ConfigError names the file and the problem."""
        loaded = [load_signing_key(k.domain, k.selector, k.key_file) for k in keys]
        return cls(loaded, signed_headers, oversign)

    @classmethod
    def from_dkim_config(cls, config: DkimConfig) -> DkimSigner:
        return cls.from_config(config.keys, config.signed_headers, config.oversign)

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def keys_for(self, domain: str) -> tuple[SigningKey, ...]:
        """Keys of the most specific configured domain equal to or a parent of `domain`."""
        name = normalize_domain(domain)
        labels = name.split(".") if name else []
        for start in range(len(labels)):
            found = self._keys.get(".".join(labels[start:]))
            if found:
                return found
        return ()

    def sign(self, message: bytes, now: float | None) -> bytes:
        """`message` with a DKIM-Signature per matching key prepended, or unchanged.

        `now` (clock time, seconds since the epoch) becomes t=; None leaves t= out.
        Verifiers reject a t= in their future (dkimpy allows 10 h of skew), so a
        virtual clock running ahead of real time should pass None or real time.
        """
        fields = self.signature_fields(message, now)
        return b"".join(fields) + message if fields else message

    def signature_fields(self, message: bytes, now: float | None) -> list[bytes]:
        """The DKIM-Signature fields (each ending with CRLF) that `sign` would prepend."""
        fields, body = split_message(message)
        domain = _author_domain(fields)
        keys = self.keys_for(domain) if domain else ()
        if not keys:
            return []
        by_name: dict[bytes, list[bytes]] = {}
        for field in fields:
            by_name.setdefault(header_name(field), []).append(field)
        names: list[str] = []
        signed = bytearray()
        for name, text, extra in self._plan:
            instances = by_name.get(name)
            if instances is None:
                if extra:
                    names.append(text)
                continue
            names.extend([text] * (len(instances) + extra))
            for field in reversed(instances):          # bottom-up, RFC 6376 5.4.2
                signed += canonicalize_header_relaxed(field)
        bh = body_hash(body)
        t = None if now is None else int(now)
        return [self._signature(key, names, bh, t, bytes(signed)) for key in keys]

    @staticmethod
    def _signature(
        key: SigningKey, names: list[str], bh: str, t: int | None, signed: bytes
    ) -> bytes:
        h_atoms = [f"h={names[0]}:"] + [f"{n}:" for n in names[1:-1]] + [f"{names[-1]};"]
        if len(names) == 1:
            h_atoms = [f"h={names[0]};"]
        pieces: list[list[str]] = [
            ["v=1;"], [f"a={key.algorithm};"], ["c=relaxed/relaxed;"], [f"d={key.domain};"],
            [f"s={key.selector};"], *([[f"t={t};"]] if t is not None else []), h_atoms,
            [f"bh={bh};"],
        ]
        lines = _fold(pieces)
        lines.append("\tb=")
        prefix = "\r\n".join(lines).encode()
        data = signed + canonicalize_header_relaxed(prefix)[:-2]   # the field itself: no CRLF
        b64 = base64.b64encode(key.sign(data)).decode()
        first = _LINE_LIMIT - len(lines[-1]) - 1
        chunks = [b64[:first]] + [b64[i:i + _B_CHUNK] for i in range(first, len(b64), _B_CHUNK)]
        return prefix + "\r\n\t".join(chunks).encode() + _CRLF
