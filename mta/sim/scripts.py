"""Deterministic scripts carried in a local part, and the seeded chance function (pure).

Grammar (after the first "+" of the local part; several directives may follow,
each after its own "+"; the first one that does not parse makes the rest an
ordinary sub-address tag, so ``john+news@`` is a plain mailbox)::

    local-part = base *("+" directive)
    directive  = steps / "async" [sep code] / "ooto" / "complaint"
    steps      = step *(("-" / ",") step)
    step       = [stage sep] action
    sep        = "=" / ":"
    stage      = "mail" / "rcpt" / "data" / "dot"
    action     = code / "drop" / "stall"
    code       = 3DIGIT        ; 2xx, 4xx or 5xx

"," and ":" are not allowed in an unquoted local part (RFC 5321 atext), so the
unquoted forms use "-" and "=": ``alice+452-452-250@isp.test``; the quoted form
``"alice+452,452,250"@isp.test`` is read the same way.

Attempt n (counted per recipient by the persona, 1 first) takes step n; after
the last step, the last one repeats. A step without a stage takes the stage of
the last step that named one; if none did, RCPT for codes and after the final
dot for `drop` / `stall`. A 2xx step lets that stage pass normally. At MAIL
the server does not know the recipients yet, so a recipient's `mail=` step is
answered at RCPT; a MAIL-stage script on the *sender's* local part
(``bounces+mail=451-250@campaign.test``) is answered at MAIL. `drop` closes
the connection without a reply; `stall` never replies (bounded by
`sim.stall_max`, then the connection is closed).

`async[=CODE]` accepts the message, then sends an RFC 3464 DSN later (CODE,
default 550); `ooto` sends an RFC 3834 auto-reply; `complaint` an RFC 5965
report. The base may be a mailbox-simulator name (as Amazon SES's): `success`
(250), `bounce` (550 5.1.1), `ooto` (250, then an auto-reply), `complaint`
(250, then a complaint), `suppressionlist` (550 5.1.1, on a suppression list).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Stage = Literal["mail", "rcpt", "data", "dot"]
Action = Literal["reply", "drop", "stall"]
Simulator = Literal["success", "bounce", "ooto", "complaint", "suppressionlist"]

STAGES: tuple[Stage, ...] = ("mail", "rcpt", "data", "dot")
SIMULATORS: frozenset[str] = frozenset(
    {"success", "bounce", "ooto", "complaint", "suppressionlist"}
)
DEFAULT_ASYNC_CODE = 550


@dataclass(frozen=True, slots=True)
class Step:
    stage: Stage
    action: Action
    code: int = 250

    @property
    def passes(self) -> bool:
        return self.action == "reply" and 200 <= self.code < 300


@dataclass(frozen=True, slots=True)
class Script:
    """What a local part asks of the persona."""

    steps: tuple[Step, ...] = ()
    async_code: int | None = None
    autoreply: bool = False
    complaint: bool = False
    simulator: Simulator | None = None

    def step(self, attempt: int) -> Step | None:
        """The step for the `attempt`-th attempt (1-based); the last one repeats."""
        if not self.steps:
            return None
        return self.steps[min(max(attempt, 1), len(self.steps)) - 1]


def _code(text: str) -> int | None:
    if len(text) == 3 and text.isdigit() and text[0] in "245":
        return int(text)
    return None


def _split_stage(token: str) -> tuple[str | None, str]:
    for sep in ("=", ":"):
        stage, found, action = token.partition(sep)
        if found:
            return stage, action
    return None, token


def parse_steps(text: str) -> tuple[Step, ...] | None:
    """The steps of a directive, or None if it is not one."""
    tokens = text.replace(",", "-").split("-")
    steps: list[Step] = []
    named: Stage | None = None
    for token in tokens:
        stage_text, action_text = _split_stage(token)
        if stage_text is not None:
            if stage_text not in STAGES:
                return None
            named = stage_text
        code = _code(action_text)
        if code is not None:
            action: Action = "reply"
        elif action_text in ("drop", "stall"):
            action = action_text  # type: ignore[assignment]  # one of the two literals
            code = 0
        else:
            return None
        stage: Stage = named or ("rcpt" if action == "reply" else "dot")
        steps.append(Step(stage, action, code))
    return tuple(steps) if steps else None


def parse_local_part(local: str) -> Script | None:
    """The script in a local part, or None for an ordinary mailbox."""
    text = local.lower()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    base, plus, rest = text.partition("+")
    simulator: Simulator | None = base if base in SIMULATORS else None  # type: ignore[assignment]
    steps: tuple[Step, ...] = ()
    async_code: int | None = None
    autoreply = complaint = False
    found = False
    if plus:
        for directive in rest.split("+"):
            name, _, value = (
                directive.partition("=") if "=" in directive else (directive.partition(":"))
            )
            if name == "async":
                code = _code(value) if value else DEFAULT_ASYNC_CODE
                if code is None:
                    break
                async_code = code
            elif directive == "ooto":
                autoreply = True
            elif directive == "complaint":
                complaint = True
            else:
                parsed = parse_steps(directive)
                if parsed is None:
                    break
                steps = parsed
            found = True
    if not found and simulator is None:
        return None
    return Script(steps, async_code, autoreply, complaint, simulator)


def chance(seed: int, *parts: object) -> float:
    """A number in [0, 1) fixed by the seed and the parts (no shared random stream)."""
    key = "\x1f".join([str(seed), *map(str, parts)]).encode("utf-8", "surrogateescape")
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 18446744073709551616.0
