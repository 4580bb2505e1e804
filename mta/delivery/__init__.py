"""Delivery: routing and DNS (MX, null MX, fallback), the SMTP client with per-stage timeouts,
opportunistic TLS and pooled sessions. It reports what the next hop answered; it never decides
what that means (that is `mta.core`).

May import `mta.core`, `mta.model`, `mta.clock`, `mta.smtp` and `mta.config`; never a command.
"""
