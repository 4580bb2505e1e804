"""The shared limits of a cluster of MTA nodes, kept in Redis (`SharedState`).

Each node asks Redis only when what it holds runs out: a batch of tokens from the
(site, binding)'s GCRA bucket and a few connection leases, in one script call
(`redis_scripts.ACQUIRE`); the reply carries the shared adaptive state (rate,
connections, suspension, "down"), which the node adopts. Besides, every `poll`
seconds (real time) one pipelined round trip: the node's heartbeat, the global
version of the adaptive state (when it moved, the states of the keys the node uses
are read back: a suspension decided on one node reaches the others within `poll`),
lease renewals (a lease not renewed within `lease_ttl` expires: a dead node's
connections free themselves), lease releases the node no longer needs, and the
ramp-up ledger (its increments flushed, today's totals read).

A change of the adaptive state goes to Redis as an operation (`redis_scripts.PUBLISH`,
`mta.core.shares.rate_op`): a cut applies once per congestion episode across the
cluster, an additive step adds to the shared level. The script publishes the state it
left on a channel, so the other nodes adopt it at once; a node counts another's cut as
acted from when it hears of it.

Redis unreachable or slower than `timeout`: the node says so in its log, its health
(`/readyz`) and a metric, and goes on alone on a conservative share of every limit
(the limit divided by the nodes it last saw alive; for connections, no more than the
leases it held until they lapse, as others may still count them); the poll keeps
trying, and when Redis answers again the node re-registers its leases, shares what
it changed while cut off and takes the shared limits back. A Redis that lost the shared state
(restarted empty: the epoch key is gone) gets each node's view back, conservatively
(`_reseed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from mta.clock import Clock
from mta.config.service import ClusterConfig
from mta.core import rampup, shares
from mta.core.rampup import VolumeLedger
from mta.core.shares import RateOp
from mta.core.throttle import Change, SiteThrottle
from mta.queue import redis_scripts
from mta.queue.shared import Grant, Key, _no_connections, _no_trim, _no_wake

log = logging.getLogger("mta.cluster")

_NONE = -1.0  # "no suspension" / "no hold" in Redis


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The shared adaptive state of one key, as Redis last said."""

    rate: float  # inf: unlimited
    concurrency: int
    suspended_until: float
    down_until: float
    hold_until: float
    pushback: float
    version: int
    by: str
    used: int
    fired: dict[str, float]


def _time(value: str | bytes) -> float:
    number = float(value)
    return -math.inf if number == _NONE else number


def _snapshot(fields: list[Any]) -> Snapshot:
    rate = float(fields[0])
    push = float(fields[5])
    return Snapshot(
        rate=rate if rate > 0 else math.inf,
        concurrency=int(float(fields[1])),
        suspended_until=_time(fields[2]),
        down_until=_time(fields[3]),
        hold_until=_time(fields[4]),
        pushback=push if push > 0 else math.inf,
        version=int(float(fields[6])),
        by=fields[7].decode() if isinstance(fields[7], bytes) else str(fields[7]),
        used=int(float(fields[8])),
        fired=_fired(fields[9]),
    )


def _fired(raw: str | bytes) -> dict[str, float]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    found: dict[str, float] = {}
    for item in text.split(";"):
        name, sep, at = item.rpartition("=")
        if sep:
            found[name] = float(at)
    return found


def _fired_text(fired: dict[str, float]) -> str:
    return ";".join(f"{name}={at!r}" for name, at in sorted(fired.items()) if math.isfinite(at))


@dataclass
class Entry:
    """What this node holds and knows of one key."""

    key: Key
    tokens: int = 0
    tokens_until: float = -math.inf  # virtual: unused tokens lapse (no bursts saved up)
    future: deque[float] = field(default_factory=deque)  # virtual: reserved tokens' due times
    retry_at: float | None = None  # virtual: the bucket is empty (or suspended) until then
    held: int = 0  # connection leases
    renewed_at: float = -math.inf  # monotonic: when Redis last confirmed `held` (call sent)
    cap: int | None = None  # leases being given back: use no more than this
    in_flight: int = 0
    asked: bool = False  # wanted more leases since the last poll
    lease_wait_until: float = 0.0  # monotonic: no lease to be had before then
    pending: bool = False  # an acquire in flight
    others_leases: int = 0
    contenders: int = 1
    shares: dict[str, int] = field(default_factory=dict)
    remote: Snapshot | None = None
    applied: int = 0  # version adopted (or published) last
    used_seen: int | None = None  # transactions started on all nodes, as last seen
    own_used: int = 0  # started on this node since it last told
    others_attempts: int = 0  # started on other nodes, not yet counted in the state
    dirty: SiteThrottle | None = None  # changed while Redis was unreachable
    local_tat: float = -math.inf  # the fallback bucket
    rate: float = math.inf  # the rate in force, for the report
    concurrency: int = 0
    state: SiteThrottle | None = None  # the node's view, to put back into an emptied Redis


class ClusterLedger(VolumeLedger):
    """The ramp-up volume of the whole cluster: Redis' totals for today plus what this
    node sent since it last flushed; cut off from Redis, what it sends counts once per
    node alive (each node keeps to its share of what is left)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared: dict[tuple[str, str], tuple[int, int]] = {}
        self.pending: dict[tuple[str, str, int], int] = {}
        self.alone: dict[tuple[str, str], tuple[int, int]] = {}
        self.nodes = 1
        self.degraded = False

    def sent(self, binding: str, isp: str, now: float) -> int:
        today = rampup.day_index(now)
        day, shared = self.shared.get((binding, isp), (today, 0))
        total = max(shared if day == today else 0, super().sent(binding, isp, now))
        total += self.pending.get((binding, isp, today), 0)
        day, alone = self.alone.get((binding, isp), (today, 0))
        if self.degraded and day == today:
            total += alone * (self.nodes - 1)
        return total

    def record(self, binding: str, isp: str, now: float, count: int = 1) -> None:
        today = rampup.day_index(now)
        key = (binding, isp, today)
        self.pending[key] = self.pending.get(key, 0) + count
        if self.degraded:
            day, alone = self.alone.get((binding, isp), (today, 0))
            self.alone[(binding, isp)] = (today, (alone if day == today else 0) + count)

    def take_pending(self) -> dict[tuple[str, str, int], int]:
        taken, self.pending = self.pending, {}
        return taken

    def put_back(self, taken: dict[tuple[str, str, int], int]) -> None:
        for key, count in taken.items():
            self.pending[key] = self.pending.get(key, 0) + count

    def load(self, day: int, totals: dict[tuple[str, str], int]) -> None:
        for pair, count in totals.items():
            self.shared[pair] = (day, count)


class RedisState:
    """`SharedState` through Redis; see the module docstring."""

    def __init__(self, config: ClusterConfig, clock: Clock, node: str) -> None:
        """`config` is the `[cluster]` section; `node` is this node's name (cluster.node, or
        the host's name when that is empty)."""
        self.config = config
        self.node = node
        self.clock = clock
        self.ledger = ClusterLedger()
        self.on_wake: Callable[[str], None] = _no_wake
        self.trim: Callable[[Key, int], Any] = _no_trim
        self.connections: Callable[[Key], int] = _no_connections
        self.redis = aioredis.Redis.from_url(
            config.url,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            retry_on_timeout=False,
            # A pooled connection left from before a Redis restart fails once: try again
            # at once on a new one (no backoff: `timeout` bounds each call).
            retry=Retry(NoBackoff(), 1),
        )
        self._acquire = self.redis.register_script(redis_scripts.ACQUIRE)
        self._renew = self.redis.register_script(redis_scripts.RENEW)
        self._publish = self.redis.register_script(redis_scripts.PUBLISH)
        self._seed_ledger = self.redis.register_script(redis_scripts.SEED_LEDGER)
        self.entries: dict[Key, Entry] = {}
        self.degraded = False
        self.problem = ""
        self.degraded_since: float | None = None
        self.nodes_alive = 1
        self.node_names: list[str] = [self.node]
        self.round_trips = 0
        # A poll's lease renewal and an acquire never overlap: a renewal computed before an
        # acquire's grant and applied after it would give back leases the node now uses.
        self._leases = asyncio.Lock()
        self.fallbacks = 0
        self.cuts_dropped = 0  # cuts another node had made for the same episode
        self._version = -1
        self._epoch: bytes | None = None  # names the Redis data set this node shares
        self._lost_epoch: bytes | None = None
        self.reseeds = 0
        self._waiting: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- keys -------------------------------------------------------------------

    def _tag(self, key: Key) -> str:
        return f"{{{self.config.prefix}:{key.site}|{key.binding}}}"

    def _k(self, key: Key, kind: str) -> str:
        return f"{self._tag(key)}:{kind}"

    @property
    def _nodes_key(self) -> str:
        return f"{self.config.prefix}:nodes"

    @property
    def _version_key(self) -> str:
        return f"{self.config.prefix}:version"

    @property
    def _index_key(self) -> str:
        return f"{self.config.prefix}:keys"

    @property
    def _channel(self) -> str:
        return f"{self.config.prefix}:changes"

    @property
    def _epoch_key(self) -> str:
        return f"{self.config.prefix}:epoch"

    def _ledger_key(self, day: int) -> str:
        return f"{self.config.prefix}:ramp:{day}"

    # -- life -------------------------------------------------------------------

    async def start(self) -> None:
        await self._poll_once()
        if self.degraded:
            log.warning("cluster: starting without Redis (%s)", self.problem)
        else:
            log.info(
                "cluster: node %s joined %s (%d nodes alive)",
                self.node, self.config.url, self.nodes_alive,
            )
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._poll_forever(), name="cluster")
        self._listener = loop.create_task(self._listen_forever(), name="cluster-changes")

    async def close(self) -> None:
        for task in (self._task, self._listener):
            if task is not None:
                task.cancel()
                # Bounded: a Redis client stuck in a read must not hold up the stop.
                await asyncio.wait({task}, timeout=2 * self.config.timeout)
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry in self.entries.values():
                    await self._renew(
                        keys=[self._k(entry.key, "c"), self._k(entry.key, "w")],
                        args=[self.node, 0, self._ttl_ms],
                        client=pipe,
                    )
                pipe.zrem(self._nodes_key, self.node)
                await asyncio.wait_for(pipe.execute(), self.config.timeout)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await self.redis.aclose()

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.config.lease_ttl * 1000))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _entry(self, key: Key) -> Entry:
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = Entry(key)
        return entry

    # -- health -------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.degraded:
            self.degraded = True
            self.degraded_since = time.time()
            self.fallbacks += 1
            self.ledger.degraded = True
            self.ledger.nodes = self.nodes_alive
            for entry in self.entries.values():
                entry.tokens = 0
                entry.future.clear()
                entry.pending = False
            self._spawn(self._wake_when_leases_lapse())
            log.warning(
                "cluster: Redis %s unreachable (%s): node %s falls back to 1/%d of every limit",
                self.config.url, problem, self.node, self.nodes_alive,
            )
        self.problem = problem

    async def _wake_when_leases_lapse(self) -> None:
        """Cut off, a node keeps within the leases it held until they lapse in Redis;
        then its sites may use the whole fallback share: look at them again."""
        await asyncio.sleep(self.config.lease_ttl)
        if self.degraded:
            for key in list(self.entries):
                self.on_wake(key.site)

    def _back(self) -> None:
        if self.degraded:
            log.warning(
                "cluster: Redis %s answers again: node %s back on the shared limits",
                self.config.url, self.node,
            )
        self.degraded = False
        self.problem = ""
        self.degraded_since = None
        self.ledger.degraded = False
        self.ledger.alone.clear()

    def health(self) -> dict[str, Any]:
        return {
            "mode": "fallback" if self.degraded else "shared",
            "node": self.node,
            "redis": self.config.url,
            "nodes_alive": self.nodes_alive,
            "nodes": list(self.node_names),
            "problem": self.problem,
            "since": self.degraded_since,
            "round_trips": self.round_trips,
            "fallbacks": self.fallbacks,
            "reseeds": self.reseeds,
            "cuts_dropped": self.cuts_dropped,
        }

    # -- admission ----------------------------------------------------------------

    def grant(self, key: Key, state: SiteThrottle, want: int, in_flight: int, now: float) -> Grant:
        entry = self._entry(key)
        entry.in_flight = in_flight
        entry.rate, entry.concurrency = state.rate, state.concurrency
        entry.state = state
        if want <= 0:
            return Grant(0)
        if self.degraded:
            return self._fallback(entry, state, want, in_flight, now)
        limited = math.isfinite(state.rate)
        if limited:
            self._ripen(entry, now)
        if limited and now >= entry.tokens_until:
            entry.tokens = 0
        tokens = entry.tokens if limited else want
        held = entry.held if entry.cap is None else min(entry.held, entry.cap)
        allowed = max(0, min(want, tokens, held - in_flight))
        if allowed >= want:
            return Grant(allowed)
        if limited and entry.future and tokens <= allowed:
            # Tokens reserved come due later: no round trip before then.
            return Grant(allowed, None if allowed else entry.future[0])
        if entry.retry_at is not None and now < entry.retry_at and (not limited or tokens <= 0):
            return Grant(allowed, None if allowed else entry.retry_at)
        if held - in_flight <= allowed and time.monotonic() < entry.lease_wait_until:
            entry.asked = True
            return Grant(allowed)
        if not entry.pending:
            entry.pending = True
            entry.asked = True
            self._spawn(self._refill(entry, state, want - allowed, in_flight, now))
        return Grant(allowed)

    def _ripen(self, entry: Entry, now: float) -> None:
        """Reserved tokens now due become usable (for `batch`; then they lapse)."""
        while entry.future and entry.future[0] <= now:
            due = entry.future.popleft()
            if now >= due + self.config.batch:
                continue
            if now >= entry.tokens_until:
                entry.tokens = 0
            entry.tokens += 1
            entry.tokens_until = max(entry.tokens_until, due + self.config.batch)

    def _fallback(
        self, entry: Entry, state: SiteThrottle, want: int, in_flight: int, now: float
    ) -> Grant:
        nodes = max(self.nodes_alive, 1)
        limit = self._fallback_connections(entry, state)
        room = max(0, min(want, limit - in_flight))
        if room <= 0:
            return Grant(0)
        rate = shares.fallback_share(state.rate, nodes)
        burst = state.rule.burst if state.rule.burst > 0 else max(1.0, state.rate)
        step = shares.gcra(entry.local_tat, now, rate, shares.fallback_share(burst, nodes), room)
        entry.local_tat = step.tat
        return Grant(step.granted, step.retry_at if step.granted == 0 else None)

    def _fallback_connections(self, entry: Entry, state: SiteThrottle) -> int:
        lapsed = time.monotonic() >= entry.renewed_at + self.config.lease_ttl
        leases = None if lapsed else entry.held
        return shares.fallback_connections(state.concurrency, self.nodes_alive, leases)

    async def _refill(
        self, entry: Entry, state: SiteThrottle, want: int, in_flight: int, now: float
    ) -> None:
        key = entry.key
        wake_later = False
        try:
            async with self._leases:
                free = max(0, entry.held - entry.in_flight)
                limited = math.isfinite(state.rate)
                burst = state.rule.burst if state.rule.burst > 0 else 0.0
                want_tokens, horizon = (
                    shares.reservation(state.rate, burst or max(1.0, state.rate), want,
                                       self.config.batch, self.nodes_alive)
                    if limited else (0, 0.0)
                )
                want_leases = max(0, want - free)
                want_leases = min(want_leases, max(state.concurrency - entry.held, 0))
                have = entry.tokens + len(entry.future)  # taken or reserved already
                if limited:
                    want_tokens = 0 if have >= want else max(0, want_tokens - have)
                sent = time.monotonic()
                reply = await asyncio.wait_for(
                    self._acquire(
                        keys=[self._k(key, "s"), self._k(key, "c"), self._k(key, "w")],
                        args=[
                            self.node,
                            repr(now),
                            want_tokens,
                            want_leases,
                            repr(state.rate if limited else 0.0),
                            repr(burst),
                            state.concurrency,
                            self._ttl_ms,
                            free,
                            repr(horizon),
                            max(entry.in_flight, self.connections(key)),
                        ],
                    ),
                    self.config.timeout,
                )
                self.round_trips += 1
                if self.degraded:
                    return
                tokens, retry_at = int(reply[0]), float(reply[1])
                entry.held = int(reply[2])
                entry.renewed_at = sent
                entry.cap = None
                entry.others_leases, entry.contenders = int(reply[3]), int(reply[4])
                snap = _snapshot(reply[5:])
                self._note(entry, snap)  # first: a cut it shows drops the old rate's tokens
                if limited and tokens:
                    interval = 1.0 / snap.rate if math.isfinite(snap.rate) else 0.0
                    entry.future.extend(
                        shares.due_times(now + float(reply[15]), interval, tokens, now)
                    )
                    self._ripen(entry, self.clock.now())
                waiting = retry_at >= 0 and (tokens == 0 or not limited)
                entry.retry_at = retry_at if waiting else None
                if want_leases and entry.held - entry.in_flight <= 0:
                    entry.lease_wait_until = time.monotonic() + self.config.poll
                    wake_later = True
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
        except Exception:
            log.exception("cluster: acquiring for %s failed", key)
        finally:
            entry.pending = False
            if not wake_later:
                self.on_wake(key.site)  # whatever happened, the scheduler looks again
        if wake_later:
            await asyncio.sleep(self.config.poll)
            self.on_wake(key.site)

    def started(self, key: Key, count: int, now: float) -> None:
        entry = self._entry(key)
        entry.in_flight += count
        entry.own_used += count
        if entry.tokens > 0:
            entry.tokens = max(0, entry.tokens - count)

    def ended(self, key: Key) -> None:
        entry = self._entry(key)
        entry.in_flight = max(0, entry.in_flight - 1)

    def connection_limit(self, key: Key, state: SiteThrottle) -> int:
        # At least one: a transaction already started may always have a connection
        # (shared, the node holds a lease for each transaction in flight).
        entry = self._entry(key)
        if self.degraded:
            return max(1, self._fallback_connections(entry, state))
        held = entry.held if entry.cap is None else min(entry.held, entry.cap)
        return max(1, min(state.concurrency, held))

    # -- adaptive state -------------------------------------------------------------

    def _note(self, entry: Entry, snap: Snapshot) -> None:
        """A snapshot from Redis: keep it for `adopt`. A newer one with a lower rate is a
        cut: tokens taken (or reserved) at the old rate are not to be spent."""
        before = entry.remote
        if before is None or snap.version >= before.version:
            if before is not None and snap.rate < before.rate:
                entry.tokens = 0
                entry.future.clear()
            entry.remote = snap

    def adopt(self, key: Key, state: SiteThrottle, now: float) -> list[Change]:
        entry = self._entry(key)
        if entry.others_attempts:
            # The controller cuts from the rate the site sees: the whole cluster's.
            state.attempts.add(now, entry.others_attempts)
            entry.others_attempts = 0
        snap = entry.remote
        if self.degraded or snap is None or snap.version <= entry.applied:
            return []
        entry.applied = snap.version
        reason = f"shared by node {snap.by}"
        changes: list[Change] = []

        def change(what: Any, old: float, new: float) -> None:
            changes.append(Change(state.site, state.binding, now, what, old, new, "cluster",
                                  reason))

        if any(at > state.fired_at.get(rule, -math.inf) for rule, at in snap.fired.items()):
            state.positives = 0  # a rule acted on another node: recovery counts from then
        if snap.rate != state.rate and snap.version > 0:
            change("rate", state.rate, snap.rate)
            state.rate = snap.rate
        if snap.concurrency != state.concurrency and snap.version > 0:
            change("concurrency", state.concurrency, snap.concurrency)
            state.concurrency = snap.concurrency
        if snap.suspended_until > max(state.suspended_until, now):
            change("suspended_until", state.suspended_until, snap.suspended_until)
            state.suspended_until = snap.suspended_until
        if snap.down_until > max(state.down_until, now):
            change("down_until", state.down_until, snap.down_until)
            state.down_until = snap.down_until
        state.hold_until = max(state.hold_until, snap.hold_until)
        for rule, at in snap.fired.items():
            # A rule that acted on another node counts as acted here when this node hears
            # of it: replies to what it sent before are about the old rate (once per
            # round, cluster-wide).
            if at > state.fired_at.get(rule, -math.inf):
                state.fired_at[rule] = max(at, now)
        if math.isfinite(snap.pushback):
            state.pushback_rate = snap.pushback
        if changes:
            state.last_change_at = now
            state.last_reason = changes[-1].describe()
        return changes

    def publish(self, key: Key, state: SiteThrottle, now: float, op: RateOp) -> None:
        entry = self._entry(key)
        if op.kind == "cut":
            entry.tokens = 0  # taken at the old rate: not to be spent
            entry.future.clear()
        if self.degraded:
            entry.dirty = state
            return
        self._spawn(self._send(entry, state, op))

    async def _send(
        self, entry: Entry, state: SiteThrottle, op: RateOp | None, whole: str = "set"
    ) -> None:
        """Share the state; `op` says how its rate joins the shared one (None: the whole
        state, `whole` saying how: "set" after Redis was out of reach, "seed" into a
        Redis that lost it)."""

        def t(value: float) -> str:
            return repr(value) if math.isfinite(value) else repr(_NONE)

        def r(value: float) -> str:
            return repr(value if math.isfinite(value) else 0.0)

        kind, value, rule, started = whole, state.rate, "", -math.inf
        if op is not None:
            kind, value, rule, started = op.kind, op.value, op.rule, op.started
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                await self._publish(
                    keys=[self._k(entry.key, "s")],
                    args=[
                        self.node,
                        r(state.rate),
                        state.concurrency,
                        t(state.suspended_until),
                        t(state.down_until),
                        t(state.hold_until),
                        r(state.pushback_rate),
                        entry.applied,
                        r(state.rule.start_rate if math.isfinite(state.rule.rate) else 0.0),
                        state.rule.max_connections,
                        _fired_text(state.fired_at),
                        kind,
                        r(value) if kind == "cut" else repr(value),
                        repr(started) if math.isfinite(started) else "-inf",
                        rule,
                        r(state.rule.ceiling),
                        self._channel,
                        f"{entry.key.site}|{entry.key.binding}",
                    ],
                    client=pipe,
                )
                pipe.incr(self._version_key)
                pipe.sadd(self._index_key, f"{entry.key.site}|{entry.key.binding}")
                reply, _, _ = await asyncio.wait_for(pipe.execute(), self.config.timeout)
            self.round_trips += 1
            entry.dirty = None
            snap = _snapshot(reply[1:])
            if not int(reply[0]):
                # Another node cut for this episode first: the shared level stays (this
                # node goes by it from now on, as from its own cut).
                self.cuts_dropped += 1
            # The shared level after the op is what this node goes by (a dropped cut: the
            # level the episode's cut left; a step: added to the others').
            self._note(entry, snap)
            entry.applied = min(entry.applied, snap.version - 1)
            self.on_wake(entry.key.site)
        except (RedisError, OSError, TimeoutError) as exc:
            entry.dirty = state
            self._lost(exc)

    # -- changes from the other nodes -------------------------------------------------

    async def _listen_forever(self) -> None:
        """Every change another node makes comes at once on the channel (the poll's
        version check catches what a lost subscription missed)."""
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self.config.poll
                    )
                    if message is not None:
                        self._changed(message["data"])
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError):
                await asyncio.sleep(self.config.poll)
            except Exception:
                log.exception("cluster: reading the changes failed")
                await asyncio.sleep(self.config.poll)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(
                        pubsub.aclose(),  # type: ignore[no-untyped-call]
                        self.config.timeout,
                    )

    def _changed(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        lines = text.split("\n")
        if len(lines) != 13 or lines[0] == self.node:
            return
        site, _, binding = lines[1].rpartition("|")
        entry = self.entries.get(Key(site, binding))
        if entry is None:
            return
        self._note(entry, _snapshot(lines[3:]))
        self.on_wake(site)

    # -- the poll ------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll)
            try:
                await self._poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("cluster: poll failed")

    def _targets(self) -> dict[Key, tuple[int, int]]:
        """Per key, the leases to hold from now on (what is in use, plus what the
        scheduler still wants unless others wait for their fair share), and the leases
        held when that was decided."""
        targets: dict[Key, tuple[int, int]] = {}
        self._waiting = {key.site for key, entry in self.entries.items() if entry.asked}
        for key, entry in self.entries.items():
            target = entry.held
            if not entry.asked:
                target = entry.in_flight
            elif entry.contenders > 1:
                fair = math.ceil(max(entry.concurrency, 1) / entry.contenders)
                target = min(target, max(fair, entry.in_flight))
            entry.asked = False
            targets[key] = (target, entry.held)
        return targets

    async def _poll_once(self) -> None:
        targets = self._targets()
        lowered = [(k, n) for k, (n, held) in targets.items() if n < held]
        for key, target in lowered:
            # Close idle pooled connections first, then give the leases back.
            self.entries[key].cap = target
            await self.trim(key, target)
        async with self._leases:
            await self._exchange(targets)

    async def _exchange(self, targets: dict[Key, tuple[int, int]]) -> None:
        """The poll's round trip: liveness, the ledger, lease renewals, shared state."""
        now = self.clock.now()
        today = rampup.day_index(now)
        pending = self.ledger.take_pending()
        dirty = [e for e in self.entries.values() if e.dirty is not None]
        keys = list(self.entries)
        used = {key: self.entries[key].own_used for key in keys}
        renewals: dict[Key, int] = {}
        for key in keys:
            entry = self.entries[key]
            entry.own_used = 0
            target, held = targets.get(key, (0, -1))
            count = renewals[key] = self._renewal(entry, target, held, self.connections(key))
            if 0 <= count < entry.held:
                # Use no more from now on than Redis is about to count.
                entry.cap = count if entry.cap is None else min(entry.cap, count)
        sent = time.monotonic()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                wall = time.time()
                pipe.zadd(self._nodes_key, {self.node: wall})
                pipe.zremrangebyscore(self._nodes_key, "-inf", wall - 60 * self.config.lease_ttl)
                pipe.zrangebyscore(self._nodes_key, wall - self.config.lease_ttl, "+inf")
                pipe.get(self._version_key)
                pipe.get(self._epoch_key)
                for (binding, isp, day), count in pending.items():
                    pipe.hincrby(self._ledger_key(day), f"{binding}|{isp}", count)
                    pipe.expire(self._ledger_key(day), 3 * 86400)
                pipe.hgetall(self._ledger_key(today))
                for key in keys:
                    entry = self.entries[key]
                    await self._renew(
                        keys=[self._k(key, "c"), self._k(key, "w")],
                        args=[self.node, renewals[key], self._ttl_ms],
                        client=pipe,
                    )
                    pipe.hgetall(self._k(key, "c"))
                    pipe.hincrby(self._k(key, "s"), "used", used[key])
                results = await asyncio.wait_for(pipe.execute(), self.config.timeout)
            self.round_trips += 1
        except (RedisError, OSError, TimeoutError) as exc:
            self.ledger.put_back(pending)
            for key in keys:
                entry = self.entries[key]
                entry.own_used += used[key]
                if renewals[key] >= 0:
                    # The renewal may have run in Redis though no reply came: count no
                    # more than it said, and (a reply late, not a connection refused)
                    # as long as it would keep them.
                    entry.held = min(entry.held, renewals[key])
                    if isinstance(exc, (TimeoutError, RedisTimeout)):
                        entry.renewed_at = sent
            self._lost(exc)
            return
        try:
            emptied = await self._check_epoch(results[4])
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return
        was_degraded = self.degraded
        self._back()
        names = sorted(n.decode() for n in results[2])
        self.node_names = names or [self.node]
        self.nodes_alive = max(1, len(names))
        self.ledger.nodes = self.nodes_alive
        version = int(results[3] or 0)
        position = 5 + 2 * len(pending)
        if not emptied:
            self.ledger.load(today, _ledger(results[position]))
        position += 1
        for key in keys:
            entry = self.entries[key]
            held, others, contenders = (int(v) for v in results[position])
            if not entry.pending:  # else an acquire waits for the lock: its count wins
                entry.held = held
                entry.renewed_at = sent
                entry.cap = None
            entry.others_leases, entry.contenders = others, contenders
            entry.shares = _shares(results[position + 1])
            total = int(results[position + 2])
            if entry.used_seen is not None:
                entry.others_attempts += max(0, total - entry.used_seen - used[key])
            entry.used_seen = total
            position += 3
        if emptied:
            await self._reseed(today, pending)
        elif was_degraded:
            for entry in dirty:
                if entry.dirty is not None:
                    self._spawn(self._send(entry, entry.dirty, None))
        if version != self._version and self.entries:
            await self._read_states()
            self._version = version
        if was_degraded:
            for key in self.entries:
                self.on_wake(key.site)
        for site in self._waiting:  # a site that wanted more since the last poll: look again
            self.on_wake(site)

    async def _check_epoch(self, epoch: bytes | None) -> bool:
        """True when Redis lost the shared state since this node last saw it (restarted
        empty, flushed): its epoch key is gone or another. The first node to see it
        gone names a new one."""
        if epoch is None:
            await asyncio.wait_for(
                self.redis.set(self._epoch_key, uuid.uuid4().hex, nx=True),
                self.config.timeout,
            )
            named: Any = await asyncio.wait_for(
                self.redis.get(self._epoch_key), self.config.timeout
            )
            epoch = named
        known, self._epoch = self._epoch, epoch
        emptied = known is not None and epoch != known
        if emptied:
            self._lost_epoch = known
        return emptied

    async def _reseed(self, today: int, flushed: dict[tuple[str, str, int], int]) -> None:
        """Put back what this node knew of the shared state into a Redis that lost it,
        conservatively (every node does, and the scripts keep the most cautious): the
        lowest rate and connections, suspensions and holds still running, the highest
        ramp-up volume of today."""
        log.warning(
            "cluster: Redis %s lost the shared state: node %s puts back what it knew",
            self.config.url, self.node,
        )
        self._version = -1
        for entry in self.entries.values():
            entry.applied = 0
            entry.remote = None
            entry.used_seen = None
        volumes = {
            f"{binding}|{isp}": count + flushed.get((binding, isp, today), 0)
            for (binding, isp), (day, count) in self.ledger.shared.items()
            if day == today and count > 0
        }
        if volumes:
            args: list[str | int] = [3 * 86400]
            for name, count in sorted(volumes.items()):
                args += [name, count]
            try:
                await asyncio.wait_for(
                    self._seed_ledger(keys=[self._ledger_key(today)], args=args),
                    self.config.timeout,
                )
                self.round_trips += 1
            except (RedisError, OSError, TimeoutError) as exc:
                self._lost(exc)
                self._epoch = self._lost_epoch
                return
        for entry in list(self.entries.values()):
            state = entry.dirty or entry.state
            if state is not None:
                await self._send(entry, state, None, "seed")
        if self.degraded:  # cut off again midway: seed again when Redis is back
            self._epoch = self._lost_epoch
            return
        self.reseeds += 1

    @staticmethod
    def _renewal(entry: Entry, target: int, held_then: int, connections: int) -> int:
        """What to tell Redis the node holds: the target, but never fewer than the
        transactions in flight and the connections open now (the receiving server counts
        those, whatever the target said when it was set). -1: keep what Redis has, as an
        acquire is under way or landed since the target was set (`held_then`): its count
        wins."""
        if entry.pending or entry.held != held_then:
            return -1
        return max(target, entry.in_flight, connections)

    async def _read_states(self) -> None:
        entries = list(self.entries.values())
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.hmget(
                        self._k(entry.key, "s"),
                        ["rate", "conc", "susp", "down", "hold", "push", "ver", "by", "used",
                         "fired"],
                    )
                results = await asyncio.wait_for(pipe.execute(), self.config.timeout)
            self.round_trips += 1
        except (RedisError, OSError, TimeoutError) as exc:
            self._lost(exc)
            return
        for entry, fields in zip(entries, results, strict=True):
            if fields[6] is None:
                continue
            defaults = [b"0", b"0", b"-1", b"-1", b"-1", b"0", b"0", b"", b"0", b""]
            values = [v if v is not None else d for v, d in zip(fields, defaults, strict=True)]
            if values[0] == b"0" and fields[0] is None:
                continue
            self._note(entry, _snapshot(values))
            self.on_wake(entry.key.site)

    # -- reporting ---------------------------------------------------------------------

    def report(self, key: Key) -> dict[str, Any] | None:
        entry = self.entries.get(key)
        if entry is None:
            return {"node": self.node, "mode": "fallback" if self.degraded else "shared"}
        snap = entry.remote
        shared: dict[str, Any] = {
            "node": self.node,
            "mode": "fallback" if self.degraded else "shared",
            "leases": entry.held,
            "tokens": entry.tokens,
            "shares": dict(sorted(entry.shares.items())),
            "nodes_alive": self.nodes_alive,
        }
        if snap is not None:
            shared.update(
                rate=snap.rate if math.isfinite(snap.rate) else None,
                concurrency=snap.concurrency,
                suspended_until=snap.suspended_until if math.isfinite(snap.suspended_until)
                else None,
                version=snap.version,
                changed_by=snap.by,
            )
        return shared


def _ledger(raw: dict[bytes, bytes]) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for name, count in raw.items():
        binding, _, isp = name.decode().rpartition("|")
        totals[(binding, isp)] = int(count)
    return totals


def _shares(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {
        name.decode(): int(count)
        for name, count in raw.items()
        if not name.endswith(b":exp")
    }

