"""Whether a soft bounce is worth an event, or repeats the last one reported (pure).

A next hop answering `452 4.5.3` for the whole 3.5-day validity costs one
soft_bounce event per attempt: about 500 per recipient, each sent to every
webhook and kept in the outbox, saying nothing new. A soft bounce is reported
when it is the recipient's first, when its verdict differs from the last one
reported (another bounce class, reply code or enhanced code), or when `every`
seconds of clock time have passed since that report. `every = 0` reports every
attempt. Other kinds (delivered, hard_bounce, expired) are always reported, and
the final `expired` event carries the last reply whether its repeats were
reported or not. Keep `every` at most 24 h: Campaign counts a soft error for an
address at most once a day, so a report a day at least keeps its count.
"""

from __future__ import annotations

from mta.model import EventKind, Reply, Verdict


def verdict_key(verdict: Verdict | None, reply: Reply) -> str:
    """What makes two soft bounces "the same": bounce class, reply code, enhanced code."""
    bounce_class = verdict.bounce_class.code if verdict is not None else 0
    return f"{bounce_class} {reply.code} {reply.enhanced or '-'}"


def should_report(
    kind: EventKind,
    key: str,
    last_key: str | None,
    last_at: float | None,
    *,
    now: float,
    every: float,
) -> bool:
    """True when this attempt's event is to be emitted (see the module docstring)."""
    if kind is not EventKind.SOFT_BOUNCE or every <= 0:
        return True
    if last_key is None or last_at is None or key != last_key:
        return True
    return now - last_at >= every
