"""Qualify a failed outcome: Reply + phase + local condition -> Verdict (pure).

First version: by code class only. Replaced by the rule engine of the bounce
qualification issue, keeping this interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mta.model import BounceClass, Condition, Outcome, Verdict


class BounceRules:
    def classify(self, outcome: Outcome) -> Verdict:
        reply = outcome.reply
        if outcome.condition is Condition.NULL_MX:
            return Verdict(BounceClass(10, "Invalid Recipient"), "Hard", "User unknown", 1,
                           "message", True, "null-mx")
        if outcome.condition in (Condition.DNS_NXDOMAIN, Condition.DNS_FAILURE):
            return Verdict(BounceClass(21, "DNS Failure"), "Soft", "Invalid domain", 2,
                           "site", False, "dns")
        if reply.is_permanent:
            return Verdict(BounceClass(10, "Invalid Recipient"), "Hard", "User unknown", 1,
                           "recipient", True, "5xx")
        return Verdict(BounceClass(20, "Soft Bounce"), "Soft", "Unreachable", 3,
                       "recipient", False, "4xx")


def load_bounce_rules(extra_files: Sequence[str | Path] = ()) -> BounceRules:
    return BounceRules()
