"""Runtime changes to a persona, Mailpit's "chaos" per ISP: what `PUT /sim/v1/chaos/{persona}`
and `mta sim chaos` set while the simulation runs (pure: parsing and the share decision).

An update is a JSON object; every key is optional, and a key left out keeps its value:

    {"reply": {"stage": "rcpt", "reply": "451 4.7.1 Try again later", "share": 0.5},
     "rate": 2.0,                       # messages per second per sending IP; 0: no limit
     "latency": {"rcpt": 1.5},          # seconds at connect, mail, rcpt, data or dot
     "greylisting": false}

`"reply": null` stops the injected reply. The reply is given at its stage to a share of
the recipients (of the senders, at MAIL), chosen by the simulation's seeded chance on the
address, so the same address gets the same answer on every attempt and every run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STAGES = ("mail", "rcpt", "data", "dot")
LATENCY_STAGES = ("connect", "mail", "rcpt", "data", "dot")
_REPLY = re.compile(r"^[45][0-9][0-9]( [245]\.[0-9]{1,3}\.[0-9]{1,3})? [\x20-\x7e]{1,200}$")
MAX_LATENCY = 600.0


@dataclass(frozen=True)
class StageReply:
    stage: str
    reply: str
    share: float

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "reply": self.reply, "share": self.share}


@dataclass(frozen=True)
class Update:
    """What one chaos request changes (None: unchanged; `clear_reply`: stop injecting)."""

    reply: StageReply | None = None
    clear_reply: bool = False
    rate: float | None = None
    latency: dict[str, float] | None = None
    greylisting: bool | None = None


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} must be a number")
    if not low <= float(value) <= high:
        raise ValueError(f"{what} must be from {low:g} to {high:g}")
    return float(value)


def parse(data: Any) -> Update:
    """An `Update` from a request body; ValueError names the first bad key."""
    if not isinstance(data, Mapping):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(data) - {"reply", "rate", "latency", "greylisting"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (reply, rate, latency, greylisting)")
    reply: StageReply | None = None
    clear = False
    if "reply" in data:
        given = data["reply"]
        if given is None:
            clear = True
        elif not isinstance(given, Mapping):
            raise ValueError('reply must be {"stage", "reply", "share"} or null')
        else:
            stage = given.get("stage")
            if stage not in STAGES:
                raise ValueError(f"reply.stage must be one of {', '.join(STAGES)}")
            text = given.get("reply")
            if not isinstance(text, str) or not _REPLY.match(text):
                raise ValueError('reply.reply must be a 4xx or 5xx reply, e.g. "451 4.7.1 Later"')
            share = _number(given.get("share", 1.0), "reply.share", 0.0, 1.0)
            reply = StageReply(stage, text, share)
    rate = _number(data["rate"], "rate", 0.0, 1e6) if "rate" in data else None
    latency: dict[str, float] | None = None
    if "latency" in data:
        if not isinstance(data["latency"], Mapping):
            raise ValueError("latency must be an object of stage: seconds")
        latency = {}
        for stage, seconds in data["latency"].items():
            if stage not in LATENCY_STAGES:
                raise ValueError(f"latency stages are {', '.join(LATENCY_STAGES)}")
            latency[stage] = _number(seconds, f"latency.{stage}", 0.0, MAX_LATENCY)
    greylisting = data.get("greylisting")
    if greylisting is not None and not isinstance(greylisting, bool):
        raise ValueError("greylisting must be true or false")
    return Update(reply, clear, rate, latency, greylisting)


def applies(reply: StageReply | None, stage: str, roll: float) -> str | None:
    """The injected reply if `reply` is set for `stage` and the address's roll is in its share."""
    if reply is None or reply.stage != stage or roll >= reply.share:
        return None
    return reply.reply
