"""Recipient state transitions on the MTA side, as one literal table (pure).

Every state has its row; a (state, result) pair that is not in the table is
refused with `InvalidTransition` (a typed error, like h11's `_state.py`). A
queued recipient's attempt moves it on and names the feedback event the change
produces. The final states have no way out: an out-of-band bounce or a
complaint about a delivered recipient is an event from the receiving side, not
a change of the MTA's state. THROTTLED and CONNECT_FAILED describe a
transaction at its site (`mta.core.site_results`), never a recipient's move:
the table refuses them too.
"""

from __future__ import annotations

from collections.abc import Mapping

from mta.model import EventKind, RecipientState, Result

Q, D, B, E = (
    RecipientState.QUEUED,
    RecipientState.DELIVERED,
    RecipientState.BOUNCED,
    RecipientState.EXPIRED,
)

TRANSITIONS: Mapping[RecipientState, Mapping[Result, tuple[RecipientState, EventKind]]] = {
    Q: {
        Result.DELIVERED: (D, EventKind.DELIVERED),
        Result.RETRY: (Q, EventKind.SOFT_BOUNCE),
        Result.BOUNCE: (B, EventKind.HARD_BOUNCE),
        Result.EXPIRE: (E, EventKind.EXPIRED),
    },
    D: {},
    B: {},
    E: {},
}


class InvalidTransition(ValueError):
    """A result the table has no row for in the recipient's state."""

    def __init__(self, state: RecipientState, result: Result) -> None:
        super().__init__(f"no transition from {state} on {result}")
        self.state = state
        self.result = result


def transition(state: RecipientState, result: Result) -> tuple[RecipientState, EventKind]:
    """The next state and the event the change produces; InvalidTransition if not allowed."""
    found = TRANSITIONS[state].get(result)
    if found is None:
        raise InvalidTransition(state, result)
    return found
