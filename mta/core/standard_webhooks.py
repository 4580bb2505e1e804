"""Standard Webhooks signing (pure): the key of a `whsec_` secret and the `v1,` signature of
`id.timestamp.body` (HMAC-SHA256), as the webhook sender and the config check both need."""

from __future__ import annotations

import base64
import hashlib
import hmac


def secret_key(secret: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ("whsec_" + base64), or of a plain string."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except ValueError:
            raise ValueError("webhook secret: 'whsec_' must be followed by base64") from None
    return secret.encode("utf-8")


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")
