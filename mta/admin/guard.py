"""Who may use the admin API: the Host header (DNS rebinding) and a bearer token off loopback.

DNS rebinding: a web page on `evil.example` re-resolves its own name to 127.0.0.1
and reads our API from the victim's browser; the browser still sends
`Host: evil.example`. So a request is served only when its Host names this server:
a loopback form (`127.x.y.z`, `localhost`, `[::1]`), the bound address, any IP
literal when bound to a wildcard (0.0.0.0, ::), or a name listed in
`admin.allowed_hosts`. Only the name is compared, not the port: rebinding needs a
name, and a published port (Docker's `127.0.0.1:9000:8080`) changes the port the
client writes. Anything else: 421 with a one-line reason.

A request from another host (the peer is not a loopback address) must carry
`Authorization: Bearer <admin.token>` (env `MTA_ADMIN_TOKEN`); without a
configured token such requests are refused (403), except the probes `/livez` and
`/readyz`, which tell nothing. Loopback peers need no token. The decisions are pure
functions (`check`); `middleware` applies them to aiohttp requests, and
`bind_warning` is the line `mta serve` logs when the API listens beyond loopback.
Other admin modules (e.g. write tokens for the console) reuse `bearer` and
`token_matches`.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

PROBES = frozenset({"/livez", "/readyz"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
WILDCARDS = frozenset({"", "0.0.0.0", "::", "*"})


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Guard:
    """The bound host (as configured), extra allowed names, and the token ("" for none)."""

    bound_host: str
    token: str = ""
    allowed_hosts: tuple[str, ...] = ()

    @property
    def wildcard(self) -> bool:
        return self.bound_host.strip("[]") in WILDCARDS


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """A loopback address or `localhost` (names other than localhost are not resolved)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    ip = _ip(host)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def host_name(header: str) -> str:
    """The name part of a Host header: `[::1]:8080` -> `::1`, `Example:80` -> `example`."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value


def host_allowed(guard: Guard, header: str | None) -> bool:
    if header is None:
        return True  # HTTP/1.0 without Host: no browser sends that
    name = host_name(header)
    if is_loopback(name):
        return True
    bound = guard.bound_host.strip("[]").lower()
    if name == bound or name in (h.lower() for h in guard.allowed_hosts):
        return True
    ip = _ip(name)
    return ip is not None and guard.wildcard


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_matches(expected: str, given: str | None) -> bool:
    """Constant-time comparison; an empty expected token matches nothing."""
    if not expected or given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def check(
    guard: Guard, path: str, host: str | None, peer: str | None, authorization: str | None
) -> Refusal | None:
    """None when the request may be served, else the status and a one-line reason."""
    if not host_allowed(guard, host):
        name = host_name(host or "")
        return Refusal(421, f"Host {name!r} is not this server (see admin.allowed_hosts)")
    if peer is not None and is_loopback(peer):
        return None
    if path in PROBES:
        return None
    if not guard.token:
        return Refusal(403, "requests from other hosts need admin.token (MTA_ADMIN_TOKEN) set")
    given = bearer(authorization)
    if given is None:
        return Refusal(401, "missing Authorization: Bearer <admin.token>")
    if not token_matches(guard.token, given):
        return Refusal(401, "wrong token")
    return None


def bind_warning(host: str, port: int, token: str) -> str | None:
    """The start-up warning for an API listening beyond loopback, else None."""
    if is_loopback(host):
        return None
    where = f"{host or '*'}:{port}"
    if token:
        return (
            f"admin API listens on {where}, beyond loopback: other hosts need"
            " Authorization: Bearer <admin.token>"
        )
    return (
        f"admin API listens on {where}, beyond loopback, and admin.token is not set:"
        " other hosts get 403 (except /livez and /readyz); set MTA_ADMIN_TOKEN"
    )


def middleware(guard: Guard) -> Middleware:
    """An aiohttp middleware that answers a refused request with JSON `{"error": reason}`."""

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = check(
            guard,
            request.path,
            request.headers.get("Host"),
            request.remote,
            request.headers.get("Authorization"),
        )
        if refusal is None:
            return await handler(request)
        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
        return web.json_response({"error": refusal.reason}, status=refusal.status, headers=headers)

    return guarded
