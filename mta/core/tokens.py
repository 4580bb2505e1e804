"""Write tokens for the HTTP APIs (pure): who may change things, and what a refusal says.

Every write (an operator action on the MTA, a chaos setting or a deletion in the
simulation) must carry the configured token as `Authorization: Bearer <token>` (or
`X-Token: <token>`). Without a configured token every write is refused (403), so a
fresh install cannot be driven by whoever reaches the port; reads stay open.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

TOKEN_ENV = "MTA_ADMIN_TOKEN"
TOKEN_KEY = "admin.token"


@dataclass(frozen=True)
class Refusal:
    status: int  # 401: no or wrong token; 403: writes are off (no token configured)
    message: str


def presented(authorization: str | None, x_token: str | None) -> str | None:
    """The token a request carries, from `Authorization: Bearer ...` or `X-Token`."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if x_token and x_token.strip():
        return x_token.strip()
    return None


def check_write(configured: str, given: str | None) -> Refusal | None:
    """None if the write may go on, else why not."""
    if not configured:
        return Refusal(
            403,
            f"writes are disabled: no token is configured (set {TOKEN_KEY} or {TOKEN_ENV})",
        )
    if given is None:
        return Refusal(401, "this write needs the token: Authorization: Bearer <token>")
    if not hmac.compare_digest(configured.encode(), given.encode()):
        return Refusal(401, "wrong token")
    return None


def who(given: str | None, peer: str) -> str:
    """How the spool's audit log names the writer: its address (the token is never kept)."""
    return f"token@{peer}" if given else peer
