"""Ingress: where a message enters. The SMTP submission session's checks (relay access,
addresses, size, content), normalisation, the X-Campaign headers, DKIM signing, and the
hand-off to the queue: `250` only after the spool has committed.

May import `mta.core`, `mta.model`, `mta.clock`, `mta.config` (its `[smtp]` and `[dkim]`
sections), `mta.smtp` and `mta.queue`; never a command.
"""
