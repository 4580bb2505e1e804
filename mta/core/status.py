"""Recipient state transitions on the MTA side, as one literal table (pure).

An attempt's result moves a queued recipient to its next state and names the
feedback event that the change produces. Terminal states have no way out: a
result for a recipient that is already final is a programming error.
"""

from __future__ import annotations

from typing import Literal

from mta.model import EventKind, RecipientState

Result = Literal["delivered", "retry", "bounce", "expire"]

Q, D, B, E = (
    RecipientState.QUEUED,
    RecipientState.DELIVERED,
    RecipientState.BOUNCED,
    RecipientState.EXPIRED,
)

TRANSITIONS: dict[tuple[RecipientState, Result], tuple[RecipientState, EventKind]] = {
    (Q, "delivered"): (D, EventKind.DELIVERED),
    (Q, "retry"): (Q, EventKind.SOFT_BOUNCE),
    (Q, "bounce"): (B, EventKind.HARD_BOUNCE),
    (Q, "expire"): (E, EventKind.EXPIRED),
}


class InvalidTransition(ValueError):
    pass


def transition(state: RecipientState, result: Result) -> tuple[RecipientState, EventKind]:
    try:
        return TRANSITIONS[(state, result)]
    except KeyError:
        raise InvalidTransition(f"no transition from {state} on {result}") from None
