"""Feedback: the event outbox sent to the sender's webhooks (Standard Webhooks signatures,
at least once, backoff with jitter), the source of the pull API's events, and the outbox's
retention (`retention`: what every webhook has and is old enough leaves).

May import `mta.core`, `mta.model`, `mta.clock`, `mta.config` (its `[feedback]` section) and
`mta.queue`; never a command.
"""
