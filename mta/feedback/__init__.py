"""Feedback: the event outbox sent to the sender's webhooks (Standard Webhooks signatures,
at least once, backoff with jitter), and the source of the pull API's events.

May import `mta.core`, `mta.model`, `mta.clock` and `mta.queue`; never a command.
"""
