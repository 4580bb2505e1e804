"""Standard Webhooks signatures (pure): parse the secret, sign, verify with a timestamp tolerance.

The signed content is ``f"{webhook-id}.{webhook-timestamp}.".encode() + body`` (the raw body
bytes); the signature is ``v1,`` + base64(HMAC-SHA256(key, content)). The secret is written
``whsec_<base64 key>``; the key is the decoded bytes. `webhook-signature` may hold several
space-separated signatures (key rotation): one valid ``v1`` signature is enough. `now` is an
argument; nothing here reads a clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0


class SignatureError(Exception):
    """A webhook request that must be refused (401); the message says why."""


def parse_secret(secret: str) -> bytes:
    """"whsec_<base64>" (or the bare base64) -> key bytes; ValueError with a clear message."""
    text = secret.strip()
    if text.startswith(SECRET_PREFIX):
        text = text[len(SECRET_PREFIX):]
    if not text:
        raise ValueError("webhook secret is empty (expected whsec_<base64>)")
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret is not valid base64 after 'whsec_'") from None
    if not key:
        raise ValueError("webhook secret decodes to an empty key")
    return key


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The `webhook-signature` value for one key: "v1,<base64>"."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a sender adds (what the MTA's POSTer does; tests use it too)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, msg_id, timestamp, body),
    }


def check_headers(
    headers: Mapping[str, str], now: float, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[str, str, str]:
    """What can be checked before reading the body: the three headers are there and the
    timestamp is within the tolerance. Returns (id, timestamp, signatures); raises
    SignatureError, so a receiver refuses an unsigned request without reading its body."""
    msg_id = headers.get("webhook-id")
    timestamp_text = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id:
        raise SignatureError("missing webhook-id header")
    if not timestamp_text:
        raise SignatureError("missing webhook-timestamp header")
    if not signatures:
        raise SignatureError("missing webhook-signature header")
    try:
        timestamp = int(timestamp_text.strip())
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    if timestamp < now - tolerance:
        raise SignatureError("webhook-timestamp too old")
    if timestamp > now + tolerance:
        raise SignatureError("webhook-timestamp too far in the future")
    return msg_id, timestamp_text, signatures


def verify(
    keys: bytes | tuple[bytes, ...],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """Check a request; returns its webhook-id, raises SignatureError otherwise.

    `headers` must look names up case-insensitively (aiohttp's do). Several keys may be given
    (secret rotation on the receiving side).
    """
    msg_id, timestamp_text, signatures = check_headers(headers, now, tolerance)
    candidates = (keys,) if isinstance(keys, bytes) else keys
    expected = [sign(key, msg_id, timestamp_text.strip(), body) for key in candidates]
    for given in signatures.split():
        version, _, value = given.partition(",")
        if version != "v1" or not value:
            continue
        for want in expected:
            if hmac.compare_digest(want.encode("ascii"), f"v1,{value}".encode(errors="replace")):
                return msg_id
    raise SignatureError("no valid webhook signature")
