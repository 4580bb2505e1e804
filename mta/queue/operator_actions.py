"""The operator's actions on a running scheduler (`mta.admin.operator`, `mta queue
suspend|resume|retry|bounce`): suspend or resume a site, make a domain's recipients due now,
hard-bounce what is queued. A part of `mta.queue.scheduler.Scheduler`, which inherits it; the
attributes it uses are the scheduler's, named below.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from mta import ids
from mta.clock import Clock
from mta.config.service import MtaConfig
from mta.core.limits import MxRules
from mta.core.rampup import Binding
from mta.core.routing import site_key
from mta.core.settle import Classifier, Settlement, bounce_by_operator
from mta.delivery.dns import MxLookup
from mta.queue.jobs import attempted, update_of
from mta.queue.records import DueRecipient, Update
from mta.queue.shared import SharedState
from mta.queue.sites import DomainWork, Site
from mta.queue.spool import Spool

log = logging.getLogger("mta.scheduler")

BATCH = 500  # queued recipients a bounce takes from the spool at once


class OperatorActions:
    """See the module docstring."""

    # The scheduler's, set by Scheduler.__init__.
    spool: Spool
    resolver: MxLookup
    rules: Classifier
    clock: Clock
    mx_rules: MxRules
    bindings: list[Binding]
    config: MtaConfig
    shared: SharedState
    domains: dict[str, DomainWork]
    sites: dict[str, Site]
    _wake: asyncio.Event
    _work: Callable[[str], DomainWork]
    _record: Callable[[list[Update]], Coroutine[Any, Any, None]]
    _count: Callable[[Sequence[Settlement]], None]
    _requeue: Callable[[list[DueRecipient], list[Settlement]], None]

    async def sites_for(self, target: str) -> list[Site]:
        """The site whose key is `target`, or the site of the domain `target` (looked up
        when no mail for it is queued: a site outlives its domains' queues)."""
        site = self.sites.get(target)
        if site is not None:
            return [site]
        found = [s for s in self.sites.values() if target in s.domains]
        if found or self.config.delivery.relayhost:
            return found
        try:
            answer = await self.resolver.mx(target)
        except Exception:
            log.warning("cannot look up the site of %s", target)
            return []
        hosts = tuple(sorted({r.host for r in answer.records if r.host}))
        if answer.kind not in ("records", "implicit") or not hosts:
            return []
        key = site_key(hosts)
        site = self.sites.get(key)
        if site is None:
            site = self.sites[key] = Site(key, hosts, self.mx_rules.match(hosts))
        return [site]

    async def domains_for(self, target: str) -> list[str]:
        """The domains of the site `target`, or just the domain `target`."""
        found = {d for s in await self.sites_for(target) for d in s.domains}
        if target not in self.sites:
            found.add(target)
        return sorted(found)

    async def suspend(self, target: str, until: float, reason: str) -> list[str]:
        """Suspend the site (every binding) until `until`; the site keys suspended."""
        now = self.clock.now()
        sites = await self.sites_for(target)
        for site in sites:
            for binding in self.bindings:
                state = site.state(binding.name, now)
                state.suspended_until = max(until, now)
                state.last_change_at = now
                state.last_reason = f"suspended by the operator: {reason}"
        return [s.key for s in sites]

    async def resume(self, target: str, reason: str) -> list[str]:
        """End a suspension of the site now (the operator's or an adaptive rule's)."""
        now = self.clock.now()
        sites = await self.sites_for(target)
        for site in sites:
            for state in site.states.values():
                state.suspended_until = min(state.suspended_until, now)
                state.last_change_at = now
                state.last_reason = f"resumed by the operator: {reason}"
            for domain in site.domains:
                self._work(domain).not_before = -math.inf
        self._wake.set()
        return [s.key for s in sites]

    async def retry_now(self, target: str) -> int:
        """Make the queued recipients of the domain (or site) due now; how many were waiting."""
        now = self.clock.now()
        domains = await self.domains_for(target)
        count = await self.spool.make_due(domains, now)
        for domain in domains:
            work = self.domains.get(domain)
            if work is not None and work.queued > 0:
                work.next_due = now
                work.not_before = -math.inf
        self._wake.set()
        return count

    async def bounce(self, target: str | None, queue_id: str | None, reason: str) -> int:
        """Hard-bounce every queued recipient of the domain (or site), or of one message; the
        reason is in each event's reply text. Recipients in flight finish their attempt."""
        domains = await self.domains_for(target) if target is not None else None
        total = 0
        while True:
            due = await self.spool.take_queued(domains, queue_id, BATCH)
            if not due:
                return total
            now = self.clock.now()
            settlements = [
                bounce_by_operator(
                    attempted(r), reason, now=now, rules=self.rules, event_id=ids.new_event_id()
                )
                for r in due
            ]
            node = self.shared.node
            updates = [
                update_of(r, s, now, node=node) for r, s in zip(due, settlements, strict=True)
            ]
            await self._record(updates)
            self._count(settlements)
            self._requeue(due, settlements)
            total += len(due)
