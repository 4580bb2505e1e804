"""Wiring only: build the MTA's parts from a config, start them, stop them cleanly.

Start order: spool (recovering leases), DKIM signer, bounce rules, resolver,
delivery, scheduler, then the SMTP listener last so nothing is accepted before
it can be stored. Stop order is the reverse: stop listening, say 421 4.3.2 to every
open session and close it (a session at its final dot gets its reply first), drain deliveries
for `spool.shutdown_grace`, close connections, close the spool.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import ssl
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from mta.admin.api import Admin, AdminSources
from mta.admin.guard import Guard, bind_warning
from mta.admin.metrics import spool_histograms
from mta.admin.operator import operator_controls
from mta.clock import Clock, make_clock
from mta.config.bounce_rules import load_bounce_rules
from mta.config.engine import parse_hostport
from mta.config.mx_rules import load_mx_data
from mta.config.service import MtaConfig, retry_schedule
from mta.core.bounce import BounceRules
from mta.core.explain import classify_one
from mta.core.rampup import DAY, Binding, day_index
from mta.core.retry import RetrySchedule
from mta.delivery.client import Delivery
from mta.delivery.dns import Resolver
from mta.feedback.retention import OutboxPruner
from mta.feedback.webhooks import Feedback
from mta.ingress.handler import IngressHandler, Signer, server_factory
from mta.ingress.workers import IngressWorkers, start_workers, usable_cores, worker_count
from mta.model import Result
from mta.queue.scheduler import Scheduler
from mta.queue.shared import LocalState, SharedState
from mta.queue.spool import Spool
from mta.smtp.limits import Listener, SmtpLimits
from mta.smtp.process import raise_open_file_limit, return_freed_memory
from mta.smtp.server import Listening, bound_port, start_server
from mta.smtp.tls import server_context

log = logging.getLogger("mta")

SPOOL_FILE = "spool.sqlite3"
# The label each counted result has in /metrics (the names predate the Result enum).
ATTEMPT_LABELS = {
    Result.DELIVERED: "delivered",
    Result.RETRY: "deferred",
    Result.THROTTLED: "throttled",
    Result.BOUNCE: "bounced",
    Result.EXPIRE: "expired",
}


def isp_of(scheduler: Scheduler, site_key: str) -> str:
    """The MX rule's name for a site key (a bounded label for metrics)."""
    site = scheduler.sites.get(site_key)
    return site.rule.name if site is not None else "unknown"


def bindings_of(config: MtaConfig, first_days: dict[str, int]) -> list[Binding]:
    """The configured source bindings for the ramp-up: a `first_use` date fixes a binding's
    first day; otherwise it is the day the spool first saw it, less its configured `age`."""
    found = []
    for spec in config.delivery.bindings:
        name = spec.name or spec.address
        if spec.first_use:
            first_use = spec.binding(0.0).first_use
        else:
            first_use = (first_days[name] - spec.age) * DAY
        found.append(Binding(name, spec.address, first_use))
    return found


def smtp_limits(config: MtaConfig) -> SmtpLimits:
    s = config.smtp
    return SmtpLimits(
        max_connections=s.max_connections,
        max_connections_per_ip=s.max_connections_per_ip,
        session_timeout=s.session_timeout,
        junk_command_limit=s.junk_command_limit,
        line_length_hard_limit=s.line_length_hard_limit,
        auth_failures_per_session=s.auth_failures_per_session,
        auth_failures_per_ip=s.auth_failures_per_ip,
        auth_lockout=s.auth_lockout,
        auth_failure_delay=s.auth_failure_delay,
        data_memory_limit=s.data_memory_limit,
        spill_dir=config.data_path,
    )


def shared_state(config: MtaConfig, clock: Clock) -> SharedState:
    """The node alone, or one of a cluster sharing its limits through Redis."""
    c = config.cluster
    if not c.url:
        return LocalState()
    import socket

    from mta.queue.cluster import RedisState

    return RedisState(c, clock, c.node or socket.gethostname())


def build_signer(config: MtaConfig) -> Signer | None:
    if not config.dkim.keys:
        return None
    from mta.ingress.dkim import DkimSigner

    return DkimSigner.from_dkim_config(config.dkim).sign


@dataclass
class Running:
    spool: Spool
    scheduler: Scheduler
    shared: SharedState
    delivery: Delivery
    handler: IngressHandler
    server: Listening | None  # None only while start() fails half-way
    listener: Listener
    executor: ThreadPoolExecutor
    feedback: Feedback
    admin: Admin | None
    admin_port: int | None
    pruner: OutboxPruner | None = None


class MtaApp:
    """The MTA service. `await start()`, then `await stop()`."""

    def __init__(
        self,
        config: MtaConfig,
        clock: Clock | None = None,
        resolver: Resolver | None = None,
        rules: BounceRules | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or make_clock(config.clock.time_scale, config.clock.anchor or None)
        self._resolver = resolver
        self._rules = rules
        self.rng = rng or random.Random()
        self.parts: Running | None = None

    @property
    def running(self) -> Running:
        if self.parts is None:
            raise RuntimeError("the MTA is not running")
        return self.parts

    @property
    def smtp_address(self) -> tuple[str, int]:
        host, _ = parse_hostport(self.config.smtp.listen)
        server = self.running.server
        assert server is not None
        return host, bound_port(server)

    @property
    def admin_address(self) -> tuple[str, int] | None:
        port = self.running.admin_port
        if port is None:
            return None
        host, _ = parse_hostport(self.config.admin.listen)
        return host, port

    async def start(self) -> None:
        config = self.config
        # Config errors (keys, rule files) before anything is opened.
        signer = build_signer(config)
        rules = self._rules or load_bounce_rules(config.bounce.rules_files)
        mx = load_mx_data(config.delivery.mx_rules_files)
        schedule = retry_schedule(config)
        tls_context: ssl.SSLContext | None = None
        if config.smtp.tls_cert:
            tls_context = server_context(config.smtp.tls_cert, config.smtp.tls_key)
        config.data_path.mkdir(parents=True, exist_ok=True)
        raise_open_file_limit(config.smtp.max_connections + 100)
        return_freed_memory()
        spool = await Spool.open(config.data_path / SPOOL_FILE, config.spool.batch_max)
        resolver = self._resolver or Resolver(self.clock, config.dns)
        delivery = Delivery(
            config.delivery, resolver, self.clock, self.rng, hostname=config.smtp.hostname
        )
        delivery.start()
        shared = shared_state(config, self.clock)
        await shared.start()
        names = [spec.name or spec.address for spec in config.delivery.bindings]
        first_days = await spool.binding_first_days(names, day_index(self.clock.now()))
        scheduler = Scheduler(
            spool,
            delivery,
            resolver,
            rules,
            self.clock,
            schedule,
            mx.rules,
            mx.rampup,
            bindings_of(config, first_days) or None,
            config,
            self.rng,
            shared,
        )
        await scheduler.start()
        executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dkim")
        handler = IngressHandler(
            config.smtp,
            spool,
            self.clock,
            signer,
            executor,
            scheduler.queued,
            validity=config.retry.validity,
            node=shared.node,
        )
        listener = Listener(smtp_limits(config))
        listener.needs_auth = lambda ip: not handler.in_relay_networks(ip)
        feedback = Feedback(spool, config.feedback)
        await feedback.start()
        spool.add_commit_listener(feedback.notify)
        pruner = OutboxPruner(spool, self.clock, config.feedback.retention, feedback.cursors)
        pruner.start()
        host, port = parse_hostport(config.smtp.listen)
        admin: Admin | None = None
        admin_port: int | None = None
        try:
            if config.admin.listen:
                admin_host, wanted = parse_hostport(config.admin.listen)
                guard = Guard(admin_host, config.admin.token, config.admin.allowed_hosts)
                admin = Admin(
                    self._admin_sources(spool, scheduler, handler, feedback, rules, schedule),
                    guard,
                )
                spool.add_commit_listener(admin.notify)
                try:
                    admin_port = await admin.start(admin_host, wanted)
                except OSError as exc:
                    raise OSError(
                        f"cannot listen on {config.admin.listen} (admin.listen): {exc.strerror}"
                    ) from None
                warning = bind_warning(admin_host, admin_port, config.admin.token)
                if warning:
                    log.warning("%s", warning)
            workers = worker_count(config.smtp.workers, self.clock, usable_cores())
            try:
                server: Listening = (
                    await start_workers(config, workers, self.clock, spool, handler, listener)
                    if workers
                    else await start_server(
                        server_factory(handler, tls_context, listener), host, port
                    )
                )
            except OSError as exc:
                raise OSError(
                    f"cannot listen on {config.smtp.listen} (smtp.listen): {exc.strerror}"
                ) from None
        except OSError:
            # Undo what started, as stop() does (there is no SMTP server to close).
            self.parts = Running(
                spool,
                scheduler,
                shared,
                delivery,
                handler,
                None,
                listener,
                executor,
                feedback,
                admin,
                None,
                pruner,
            )
            await self.stop()
            raise
        self.parts = Running(
            spool,
            scheduler,
            shared,
            delivery,
            handler,
            server,
            listener,
            executor,
            feedback,
            admin,
            admin_port,
            pruner,
        )
        log.info(
            "listening on %s:%d; spool %s (%d in-flight recipients recovered)",
            host,
            bound_port(server),
            config.data_path / SPOOL_FILE,
            spool.recovered,
        )

    async def stop(self) -> None:
        parts = self.parts
        if parts is None:
            return
        if parts.server is not None:
            parts.server.close()
        parts.handler.closing = True
        parts.listener.shut_down()
        await parts.handler.close(grace=5.0)
        if isinstance(parts.server, IngressWorkers):
            await parts.server.stop(grace=5.0)
        await parts.scheduler.stop(self.config.spool.shutdown_grace)
        await parts.shared.close()
        await parts.delivery.close()
        if parts.pruner is not None:
            await parts.pruner.stop()
        await parts.feedback.stop()
        if parts.admin is not None:
            await parts.admin.stop()
        await parts.spool.close()
        parts.executor.shutdown(wait=True)
        self.parts = None
        log.info("stopped")

    def _admin_sources(
        self,
        spool: Spool,
        scheduler: Scheduler,
        handler: IngressHandler,
        feedback: Feedback,
        rules: BounceRules,
        schedule: RetrySchedule,
    ) -> AdminSources:
        def classify(reply: str, phase: str | None, condition: str | None) -> dict[str, Any]:
            return classify_one(rules, reply, phase or "rcpt", condition, schedule)

        return AdminSources(
            ready=lambda: (
                self.parts is not None
                and self.parts.server is not None
                and self.parts.server.is_serving()
            ),
            status=self.status,
            events_after=spool.events_after,
            message=spool.recipient_history,
            metrics=self.metrics,
            classify=classify,
            webhooks=lambda: [dataclasses.asdict(s) for s in feedback.status()],
            sites=scheduler.site_report,
            inbox_url=self.config.admin.inbox_url,
            client_url=self.config.admin.client_url,
            controls=operator_controls(self.clock, scheduler, spool),
            token=self.config.admin.token,
            problem=lambda: spool.write_failure and f"spool writes fail: {spool.write_failure}",
            histograms=spool_histograms(
                spool, self.clock, lambda key: isp_of(scheduler, key), feedback.status
            ),
            detail=self.detail,
        )

    def detail(self) -> list[str]:
        """Lines /readyz adds: how this node shares its limits."""
        if self.parts is None:
            return []
        health = self.parts.shared.health()
        if health["mode"] == "local":
            return []
        if health["mode"] == "shared":
            return [
                f"cluster: node {health['node']} sharing limits through {health['redis']}"
                f" ({health['nodes_alive']} nodes alive)"
            ]
        return [
            f"cluster: node {health['node']} on fallback shares (1/{health['nodes_alive']} of"
            f" each limit): Redis {health['redis']} unreachable: {health['problem']}"
        ]

    async def metrics(self) -> dict[str, float]:
        parts = self.running
        stats = await parts.spool.stats()
        scheduler = parts.scheduler
        pool = parts.delivery.pool
        return {
            "mta_messages_accepted_total": parts.handler.accepted,
            "mta_messages_rejected_total": parts.handler.rejected,
            'mta_recipients{state="queued"}': stats.queued,
            'mta_recipients{state="delivered"}': stats.delivered,
            'mta_recipients{state="bounced"}': stats.bounced,
            'mta_recipients{state="expired"}': stats.expired,
            "mta_recipients_in_flight": scheduler.inflight,
            **{
                f'mta_attempts_total{{result="{label}"}}': scheduler.counts[result]
                for result, label in ATTEMPT_LABELS.items()
            },
            "mta_connections_opened_total": pool.opened,
            "mta_connections_reused_total": pool.reused,
            "mta_connections_open": pool.open_total,
            "mta_spool_commits_total": parts.spool.commits,
            "mta_spool_operations_total": parts.spool.ops,
            "mta_fresh_content_bytes": scheduler.fresh_held,
            "mta_events_total": stats.events,
            "mta_smtp_sessions_open": parts.listener.gate.open,
            'mta_smtp_connections_refused_total{reason="total"}': parts.listener.gate.refused_total,
            'mta_smtp_connections_refused_total{reason="per_ip"}': (
                parts.listener.gate.refused_per_ip
            ),
            "mta_smtp_auth_failures_total": parts.listener.auth.failures_total,
            "mta_smtp_auth_refused_total": parts.listener.auth.refusals_total,
            "mta_smtp_junk_closed_total": parts.listener.junk_closed_total,
            "mta_smtp_session_timeouts_total": parts.listener.session_timeouts_total,
            "mta_smtp_long_lines_total": parts.listener.long_lines_total,
            "mta_smtp_data_spilled_total": parts.listener.reading.spilled_total,
            "mta_events_pruned_total": parts.pruner.pruned if parts.pruner else 0,
            "mta_events_coalesced_total": scheduler.coalesced,
            **self._cluster_metrics(),
        }

    def _cluster_metrics(self) -> dict[str, float]:
        health = self.running.shared.health()
        if health["mode"] == "local":
            return {}
        return {
            "mta_cluster_fallback": 1.0 if health["mode"] == "fallback" else 0.0,
            "mta_cluster_fallbacks_total": health["fallbacks"],
            "mta_cluster_nodes_alive": health["nodes_alive"],
            "mta_cluster_redis_round_trips_total": health["round_trips"],
            "mta_cluster_reseeds_total": health["reseeds"],
            "mta_cluster_cuts_dropped_total": health["cuts_dropped"],
        }

    async def status(self) -> dict[str, Any]:
        parts = self.running
        stats = await parts.spool.stats()
        return {
            "queued": stats.queued,
            "in_flight": parts.scheduler.inflight,
            "delivered": stats.delivered,
            "bounced": stats.bounced,
            "expired": stats.expired,
            "accepted": parts.handler.accepted,
            "rejected": parts.handler.rejected,
        }
