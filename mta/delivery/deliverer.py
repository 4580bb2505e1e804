"""What the queue hands to delivery and what it may ask of it: the `Job` and the
`Deliverer` protocol.

The scheduler is typed against `Deliverer`, not the SMTP client, so it can be
driven in tests by a plain function (`FunctionDeliverer`) with no sockets.
`mta.delivery.client.Delivery` is the real one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

from mta.model import Outcome


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
    group_limit: int | None = None  # open connections allowed in the group
    max_messages_per_connection: int | None = None  # None: the configured default


class Deliverer(Protocol):
    """Carries jobs to the next hop."""

    async def deliver(self, job: Job) -> list[Outcome]:
        """One outcome per recipient of the job, in order; a 2xx at DOT means delivered."""
        ...

    async def limit_connections(self, group: Hashable, limit: int) -> None:
        """The group (a site and binding) may now keep only `limit` connections open:
        close idle ones above it (busy ones close when their transaction ends)."""
        ...


class FunctionDeliverer:
    """A `Deliverer` backed by a function (for tests and tools): `deliver` awaits
    `fn(job)`; `limit_connections` records each call in `limits`."""

    def __init__(self, fn: Callable[[Job], Awaitable[list[Outcome]]]) -> None:
        self.fn = fn
        self.jobs: list[Job] = []
        self.limits: list[tuple[Hashable, int]] = []

    async def deliver(self, job: Job) -> list[Outcome]:
        self.jobs.append(job)
        return await self.fn(job)

    async def limit_connections(self, group: Hashable, limit: int) -> None:
        self.limits.append((group, limit))
