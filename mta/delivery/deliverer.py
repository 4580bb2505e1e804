"""What the queue hands to delivery and what it may ask of it: the `Job` and the
`Deliverer` protocol.

The scheduler is typed against `Deliverer`, not the SMTP client, so it can be
driven in tests by a plain function (`FunctionDeliverer`) with no sockets.
`mta.delivery.client.Delivery` is the real one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Literal, Protocol

from mta.model import Outcome

FailureScope = Literal["session", "message", "recipient"]


@dataclass(frozen=True, slots=True)
class Job:
    """One message to one domain, for some of its recipients."""

    queue_id: str
    mail_from: str
    content: bytes
    domain: str
    recipients: tuple[str, ...]
    smtputf8: bool = False
    source: str | None = None  # source address to bind, None: the configured default
    group: Hashable = None  # connections limited together (site, binding); None: per key
    group_limit: Callable[[], int] | None = None  # open connections the group may have now
    max_messages_per_connection: int | None = None  # None: the configured default


@dataclass(frozen=True, slots=True)
class JobResult:
    """What delivery observed for one job: one outcome per recipient, in order, and what each
    outcome is about, decided where it happened (as Postfix's smtp_trouble does):

    - "session": no transaction took place (DNS, connect, greeting, EHLO, STARTTLS, a new
      connection dropped): every recipient shares the one outcome, a failure of the site;
    - "message": MAIL, DATA or the final dot answered for every recipient still open;
    - "recipient": the recipient's own RCPT reply.
    """

    outcomes: tuple[Outcome, ...]
    scopes: tuple[FailureScope, ...]

    def __post_init__(self) -> None:
        if len(self.outcomes) != len(self.scopes):
            raise ValueError("a job result needs one scope per outcome")

    @classmethod
    def session(cls, outcome: Outcome, recipients: int) -> JobResult:
        """The session failed: every recipient shares `outcome`."""
        scope: FailureScope = "session"
        return cls((outcome,) * recipients, (scope,) * recipients)

    @classmethod
    def message(cls, outcome: Outcome, recipients: int) -> JobResult:
        """One answer for the whole message."""
        scope: FailureScope = "message"
        return cls((outcome,) * recipients, (scope,) * recipients)

    @property
    def session_failed(self) -> bool:
        return bool(self.scopes) and all(scope == "session" for scope in self.scopes)


class Deliverer(Protocol):
    """Carries jobs to the next hop."""

    async def deliver(self, job: Job) -> JobResult:
        """One outcome per recipient of the job, in order, with its scope; a 2xx at DOT
        means delivered."""
        ...

    async def limit_connections(self, group: Hashable, limit: int) -> None:
        """The group (a site and binding) may now keep only `limit` connections open:
        close idle ones above it (busy ones close when their transaction ends)."""
        ...

    def open_connections(self, group: Hashable) -> int:
        """Connections of the group open now (busy, idle, being opened or closed)."""
        ...


class FunctionDeliverer:
    """A `Deliverer` backed by a function (for tests and tools): `deliver` awaits
    `fn(job)`; `limit_connections` records each call in `limits`."""

    def __init__(self, fn: Callable[[Job], Awaitable[JobResult]]) -> None:
        self.fn = fn
        self.jobs: list[Job] = []
        self.limits: list[tuple[Hashable, int]] = []

    async def deliver(self, job: Job) -> JobResult:
        self.jobs.append(job)
        return await self.fn(job)

    async def limit_connections(self, group: Hashable, limit: int) -> None:
        self.limits.append((group, limit))

    def open_connections(self, group: Hashable) -> int:
        return 0
