"""One received message as the inbox shows it: headers, text, HTML, attachments, DKIM, DMARC.

`view(content, keys)` parses the bytes exactly as received (no trace lines) and checks each
DKIM-Signature with dkimpy against `keys` (DNS name -> TXT record: the keys the simulated
internet publishes, see `load_keys`). DMARC alignment (RFC 7489 3.1.1) is judged for DKIM
only: a passing signature whose d= is the From domain (strict) or shares its
organisational domain (relaxed, taken as the last two labels). SPF is not evaluated,
so the DMARC result is "pass" only through an aligned DKIM pass.
"""

from __future__ import annotations

import base64
import email
import email.policy
import logging
import re
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any

log = logging.getLogger("mta.sim.mailview")

_KEY_FILE = re.compile(r"^(?P<name>[^/]+\._domainkey\.[^/]+)\.pem$", re.IGNORECASE)
MAX_TEXT = 512 * 1024


def load_keys(directory: Path) -> dict[str, str]:
    """TXT records for the `<selector>._domainkey.<domain>.pem` files of `directory` (the
    names `mta dkim keygen` writes; private or public PEM keys)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    records: dict[str, str] = {}
    if not directory.is_dir():
        return records
    for path in sorted(directory.iterdir()):
        match = _KEY_FILE.match(path.name)
        if match is None:
            continue
        data = path.read_bytes()
        try:
            if b"PRIVATE KEY-----" in data:
                public: Any = serialization.load_pem_private_key(data, None).public_key()
            else:
                public = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            log.warning("DKIM key %s: %s; not published", path, exc)
            continue
        if isinstance(public, rsa.RSAPublicKey):
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            records[match.group("name").lower()] = "v=DKIM1; k=rsa; p=" + _b64(der)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            records[match.group("name").lower()] = "v=DKIM1; k=ed25519; p=" + _b64(raw)
    return records


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def dkim_results(content: bytes, keys: Mapping[str, str]) -> list[dict[str, str]]:
    """Per DKIM-Signature, top to bottom: d=, s=, and result pass | fail | permerror."""
    import dkim
    from dkim.util import parse_tag_value

    quiet = logging.getLogger("mta.sim.mailview.dkim")
    quiet.disabled = True
    try:
        checker = dkim.DKIM(content, logger=quiet)
        signatures = [v for k, v in checker.headers if k.lower() == b"dkim-signature"]
    except Exception:
        return [{"domain": "", "selector": "", "result": "permerror", "reason": "unparsable"}]
    found: list[dict[str, str]] = []
    for index, value in enumerate(signatures):
        try:
            tags = parse_tag_value(value)
        except Exception:
            found.append({"domain": "", "selector": "", "result": "permerror", "reason": "tags"})
            continue
        domain = _text(tags.get(b"d")).lower().rstrip(".")
        selector = _text(tags.get(b"s")).lower()
        record = keys.get(f"{selector}._domainkey.{domain}")
        entry = {"domain": domain, "selector": selector, "result": "", "reason": ""}
        if record is None:
            entry.update(result="permerror", reason="no key published for this selector")
        else:

            def dnsfunc(_name: bytes, timeout: float = 5, txt: str = record) -> bytes:
                return txt.encode()

            try:
                passed = bool(checker.verify(idx=index, dnsfunc=dnsfunc))
            except Exception as exc:
                passed = False
                entry["reason"] = str(exc) or type(exc).__name__
            entry["result"] = "pass" if passed else "fail"
            if not passed and not entry["reason"]:
                entry["reason"] = "signature does not match"
        found.append(entry)
    return found


def summary_result(results: list[dict[str, str]]) -> str:
    """One word for search: pass if any signature passes, else the first result, else none."""
    if not results:
        return "none"
    if any(r["result"] == "pass" for r in results):
        return "pass"
    return results[0]["result"]


def checker(keys: Mapping[str, str]) -> Any:
    """A `store.DkimCheck` over `keys`."""

    def check(content: bytes) -> str:
        if b"dkim-signature:" not in content[:65536].lower():
            return "none"
        return summary_result(dkim_results(content, keys))

    return check


def _text(value: bytes | None) -> str:
    return "".join(value.decode("utf-8", "replace").split()) if value else ""


def organisational(domain: str) -> str:
    labels = domain.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


def dmarc(from_domain: str, results: list[dict[str, str]]) -> dict[str, Any]:
    """DKIM alignment of the From domain and the DMARC result it gives (SPF not checked)."""
    passing = [r["domain"] for r in results if r["result"] == "pass"]
    alignment = "none"
    if from_domain:
        if from_domain in passing:
            alignment = "strict"
        elif any(organisational(d) == organisational(from_domain) for d in passing):
            alignment = "relaxed"
    return {
        "from_domain": from_domain,
        "dkim_domains": passing,
        "alignment": alignment,
        "result": "pass" if alignment != "none" else "fail",
        "note": "DKIM alignment only; SPF is not evaluated by the simulation",
    }


def _decoded(part: EmailMessage) -> str:
    try:
        text = part.get_content()
    except (LookupError, ValueError, AssertionError):
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return text[:MAX_TEXT] if isinstance(text, str) else ""


def parts(message: EmailMessage) -> tuple[str, str, list[dict[str, Any]]]:
    """(text, html, attachments): the first text/plain and text/html bodies, and each
    other leaf part as {index, filename, content_type, size} (index: its walk position)."""
    text = html = ""
    attachments: list[dict[str, Any]] = []
    for index, part in enumerate(message.walk()):
        if part.is_multipart():
            continue
        kind = part.get_content_type()
        disposition = part.get_content_disposition()
        if disposition != "attachment" and kind == "text/plain" and not text:
            text = _decoded(part)
        elif disposition != "attachment" and kind == "text/html" and not html:
            html = _decoded(part)
        else:
            payload = part.get_payload(decode=True)
            attachments.append(
                {
                    "index": index,
                    "filename": part.get_filename() or f"part-{index}",
                    "content_type": kind,
                    "size": len(payload) if isinstance(payload, bytes) else 0,
                }
            )
    return text, html, attachments


def parse(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def part_bytes(content: bytes, index: int) -> tuple[str, str, bytes] | None:
    """(filename, content type, decoded bytes) of the leaf part at walk position `index`."""
    for position, part in enumerate(parse(content).walk()):
        if position == index and not part.is_multipart():
            payload = part.get_payload(decode=True)
            return (
                part.get_filename() or f"part-{index}",
                part.get_content_type(),
                payload if isinstance(payload, bytes) else b"",
            )
    return None


def view(content: bytes, keys: Mapping[str, str]) -> dict[str, Any]:
    """Everything the message page shows, JSON-ready."""
    message = parse(content)
    head_end = content.find(b"\r\n\r\n")
    raw_head = content[: head_end if head_end >= 0 else len(content)]
    headers = [
        {"name": name, "value": str(value)}
        for name, value in email.message_from_bytes(
            raw_head + b"\r\n\r\n", policy=email.policy.compat32
        ).items()
    ]
    text, html, attachments = parts(message)
    results = dkim_results(content, keys)
    senders = getaddresses([str(v) for v in message.get_all("From", [])])
    from_address = senders[0][1] if senders else ""
    from_domain = from_address.rpartition("@")[2].lower() if "@" in from_address else ""
    return {
        "headers": headers,
        "text": text,
        "html": html,
        "attachments": attachments,
        "dkim": {"result": summary_result(results), "signatures": results},
        "dmarc": dmarc(from_domain, results),
    }
