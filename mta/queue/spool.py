"""The durable queue: one SQLite file (WAL, synchronous=FULL) behind one writer thread.

Every change goes through `_submit`: the writer thread takes all operations
waiting at that moment, runs them in one transaction (each in its own
savepoint, so one failure does not sink the others) and commits once: group
commit, one fsync for every SMTP session waiting at its final dot. Callers get
their result only after the commit, so `250` after DATA means "on disk".

Tables: messages (content after normalisation and signing), recipients (state,
attempts, next attempt, lease, last reply), attempts (history) and events (the
feedback outbox, written in the same transaction as the state change that
produced them). A recipient being delivered is "leased"; after a crash, leases
found at start-up are released at once (picked up again promptly) and flagged
`possible_duplicate`, because the attempt's outcome is unknown. Reads for the
API (events, histories, counts) use their own read-only connection on their own
thread: in WAL mode they never hold up a commit.

`write_failure` says why the last write failed (a full disk, an I/O error), or is
None after a write succeeds; while it is set, a small probe write is tried every
`PROBE_INTERVAL` seconds, so an idle MTA (refused by its load balancer because it
reported not ready) still notices when the disk has room again.

This module is the writer thread, group commit and the reader; the schema is in
`mta.queue.schema`, the records in `mta.queue.records`, the statements in `mta.queue.queries`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mta.queue import queries
from mta.queue.records import (
    DomainQueue,
    DueRecipient,
    NewMessage,
    Pick,
    Release,
    SpoolStats,
    Update,
    WebhookCursor,
)
from mta.queue.schema import ADDED_COLUMNS, SCHEMA, SCHEMA_VERSION, UPGRADABLE
from mta.sqlite import SchemaVersionError, open_database

log = logging.getLogger("mta.spool")

T = TypeVar("T")

PROBE_INTERVAL = 2.0  # real seconds between probe writes while writes fail

class SpoolError(Exception):
    """Storage failed; the message says which way, never with SQL or paths for the SMTP peer."""


class SpoolFull(SpoolError):
    """The database or the disk is full."""


class SpoolUnreadable(SpoolError):
    """The spool file cannot be opened or read: the message names it and what to do."""


@dataclass(frozen=True)
class Found:
    """What the spool held when the MTA started (said at start, so nothing is silent)."""

    path: Path
    file: str  # "new", "empty" (0 bytes), "missing" (its WAL left), "existing"
    messages: int = 0  # messages with recipients still to deliver
    queued: int = 0  # recipients queued
    leased: int = 0  # of them, in flight at the last stop (tried again, flagged)

    def describe(self) -> str:
        if self.file == "new":
            return f"spool {self.path}: new, empty"
        if self.file == "empty":
            return (
                f"spool {self.path}: the file was empty (0 bytes), so the queue starts empty;"
                " if it held messages, they are lost (restore it from a backup)"
            )
        if self.file == "missing":
            return (
                f"spool {self.path}: the file was missing but its -wal file was there, so the"
                " queue starts empty; if it held messages, they are lost (restore it)"
            )
        return (
            f"spool {self.path}: {self.messages} messages queued ({self.queued} recipients),"
            f" {self.leased} leased (in flight at the last stop: tried again now)"
        )


def unreadable(path: Path, reason: str) -> SpoolUnreadable:
    directory = path.parent
    return SpoolUnreadable(
        f"spool {path} cannot be read ({reason}): see what is readable with"
        f" `mta spool check {directory}`, rescue it with `mta spool salvage {directory}"
        f" --out NEWDIR`, then start with --data-dir NEWDIR"
    )


@dataclass
class _Op:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    # Ingests and attempt results are stored with the batch's others of their kind at once.
    message: NewMessage | None = None
    updates: Sequence[Update] | None = None
    # A lease (the scheduler's pick): committed ahead of the batch without its own fsync.
    lease: bool = False


_STOP = object()


class Spool:
    """See the module docstring. Open with `await Spool.open(path)`; close with `await close()`."""

    def __init__(self, path: Path, batch_max: int = 512) -> None:
        self.path = path
        self.batch_max = batch_max
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recovered = 0
        self.commits = 0
        self.ops = 0
        self._listeners: list[Callable[[], None]] = []
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-reader")
        self._read_conn: sqlite3.Connection | None = None
        self.write_failure: str | None = None
        self.probes = 0  # probe writes tried
        self._probe: asyncio.TimerHandle | None = None
        self.found = Found(path, "new")

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` in the event loop after every commit (e.g. new events to send)."""
        self._listeners.append(listener)

    def _committed(
        self, outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        _resolve_futures(outcomes)
        self._watch_writes()
        for listener in self._listeners:
            listener()

    def _watch_writes(self) -> None:
        """While writes fail, try a probe write now and then (in the event loop)."""
        if self.write_failure is None or self._probe is not None or self._thread is None:
            return
        loop = asyncio.get_running_loop()
        self._probe = loop.call_later(PROBE_INTERVAL, self._send_probe)

    def _send_probe(self) -> None:
        self._probe = None
        if self._thread is not None and self.write_failure is not None:
            self.probes += 1
            future = self._submit(queries.probe_write)
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    @classmethod
    async def open(cls, path: Path, batch_max: int = 512) -> Spool:
        spool = cls(path, batch_max)
        await spool._start()
        return spool

    async def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kind = _file_kind(self.path)
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="spool-writer", daemon=True
        )
        self._thread.start()
        try:
            await ready
            # Counting scans the messages and recipients tables: damage there shows now.
            messages, queued, leased = await self._submit(queries.queued_counts)
            self.recovered = await self._submit(queries.recover_leases)
        except SpoolError as exc:
            await self.close()
            if isinstance(exc, SpoolUnreadable):
                raise
            reason = str(exc.__cause__ or exc).removeprefix("DatabaseError: ")
            raise unreadable(self.path, reason) from None
        self.found = Found(self.path, kind, messages, queued, leased)
        if self.recovered:
            log.warning(
                "recovered %d recipients that were in flight at the last stop", self.recovered
            )

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._thread is None:
            return
        self._queue.put(_STOP)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._thread.join)
        self._thread = None
        await loop.run_in_executor(self._reader, self._close_reader)
        self._reader.shutdown(wait=True)

    # -- the writer thread ----------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = open_database(
                self.path, SCHEMA, SCHEMA_VERSION, opens=lambda found: found in UPGRADABLE
            )
        except SchemaVersionError as exc:
            raise SpoolUnreadable(
                f"spool {self.path}: schema version {exc.found}, this MTA needs"
                f" {exc.needed}: move the old data directory away"
            ) from None
        try:
            conn.execute("PRAGMA foreign_keys=OFF")
            added = []
            for table, column, kind in ADDED_COLUMNS:
                columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    added.append(column)
            if "content_sha256" in added:
                done = queries.checksum_stored(conn)
                log.warning("spool upgraded: a checksum computed for the %d contents it held", done)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except SpoolUnreadable as exc:
            loop.call_soon_threadsafe(_fail_future, ready, exc)
            return
        except sqlite3.Error as exc:
            error = unreadable(self.path, str(exc))
            loop.call_soon_threadsafe(_fail_future, ready, error)
            return
        loop.call_soon_threadsafe(_resolve_future, ready, None)
        try:
            while True:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch: list[_Op] = [first]
                stop_after = False
                while len(batch) < self.batch_max:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop_after = True
                        break
                    batch.append(item)
                leases = [op for op in batch if op.lease]
                if leases:
                    batch = [op for op in batch if not op.lease]
                    loop.call_soon_threadsafe(self._committed, self._run_leases(conn, leases))
                if batch:
                    outcomes = self._run_batch(conn, batch)
                    loop.call_soon_threadsafe(self._committed, outcomes)
                if stop_after:
                    break
        finally:
            conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """One transaction for the batch. First all at once: the attempt results together,
        the ingests in one statement per table, then the other operations in order, no
        savepoints (each statement hands the GIL over and may wait for it back, so fewer is
        faster). If any operation fails, the transaction is rolled back and the batch run
        again one operation at a time, each in its own savepoint, so the failing one does
        not sink the others."""
        refused = self._begin(conn, batch)
        if refused is not None:
            return refused
        try:
            updates = [u for op in batch if op.updates is not None for u in op.updates]
            if updates:
                queries.record(conn, updates)
            messages = [op.message for op in batch if op.message is not None]
            if messages:
                queries.ingest(conn, messages)
            outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = [
                (op.future, _run_unless_merged(op, conn), None) for op in batch
            ]
        except Exception:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return self._run_one_by_one(conn, batch)
        return self._commit(conn, outcomes, None, len(batch))

    def _begin(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]] | None:
        """Open the batch's write transaction; if SQLite refuses, every operation's outcome
        is that storage error (None: the transaction is open)."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = _storage_error(exc)
            self.write_failure = _one_line(exc)
            return [(op.future, None, error) for op in batch]
        return None

    def _run_leases(
        self, conn: sqlite3.Connection, leases: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        """The batch's picks first, in a transaction of their own committed without waiting
        for an fsync (WAL, synchronous=NORMAL: the commit is written to the WAL, so it survives
        the process being killed; the next fsync, the rest of the batch's or the next
        batch's, makes it durable against power loss too). A lease lost that way only puts
        its recipients back to queued; ingests, attempt results and events never commit
        like this: synchronous is FULL again before anything else runs."""
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            return self._run_batch(conn, leases)
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    def _run_one_by_one(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        refused = self._begin(conn, batch)
        if refused is not None:
            return refused
        failure: str | None = None
        for op in batch:
            try:
                conn.execute("SAVEPOINT op")
                result = op.run(conn)
                conn.execute("RELEASE op")
                outcomes.append((op.future, result, None))
            except Exception as exc:  # one failing operation must not sink the batch
                error = _storage_error(exc)
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back itself (it may on a full disk
                    # or an I/O error): every operation of the batch is lost, with this error.
                    self.write_failure = _one_line(exc)
                    return [(each.future, None, error) for each in batch]
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                if _is_write_failure(exc, error):
                    failure = _one_line(exc)
                outcomes.append((op.future, None, error))
        return self._commit(conn, outcomes, failure, len(batch))

    def _commit(
        self,
        conn: sqlite3.Connection,
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        failure: str | None,
        ops: int,
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _storage_error(exc)
            self.write_failure = _one_line(exc)
            return [(future, None, error) for future, _, _ in outcomes]
        self.write_failure = failure
        self.commits += 1
        self.ops += ops
        return outcomes

    def _submit(
        self,
        run: Callable[[sqlite3.Connection], T],
        updates: Sequence[Update] | None = None,
        lease: bool = False,
    ) -> asyncio.Future[T]:
        if self._thread is None:
            raise SpoolError("spool is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(run, future, updates=updates, lease=lease))
        return future

    # -- operations -----------------------------------------------------------

    async def ingest(self, message: NewMessage) -> None:
        """Store a message, its recipients and their "relayed" events; returns after commit."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ingest_soon(message, future)
        await future

    def ingest_soon(self, message: NewMessage, done: asyncio.Future[None]) -> None:
        """From any thread (e.g. the one that signed it): queue the ingest of `message`;
        `done`, a future of the spool's event loop, is resolved after the commit."""
        if self._thread is None:
            raise SpoolError("spool is closed")
        self._queue.put(_Op(lambda conn: queries.ingest(conn, [message]), done, message))

    async def pick(
        self, requests: Sequence[tuple[str, int]], now: float, have: Collection[str] = ()
    ) -> Pick:
        """Lease, per (domain, limit), up to `limit` recipients due by `now`, earliest first,
        with the contents of their messages but those whose queue ids are in `have`.

        Each domain costs index seeks: the size of the queue does not matter. The
        answer also says when each domain's next remaining recipient is due.
        """
        return await self._submit(
            lambda conn: queries.pick(conn, requests, now, have), lease=True
        )

    async def pick_expired(self, now: float, limit: int) -> tuple[list[DueRecipient], float | None]:
        """Lease waiting recipients whose validity ended, and the next expiry after them."""
        return await self._submit(lambda conn: queries.pick_expired(conn, now, limit))

    async def queues(self) -> list[DomainQueue]:
        """Per domain with queued recipients: next due time and count (a scan, for start-up)."""
        return await self._submit(queries.queues)

    async def binding_first_days(self, names: Sequence[str], today: int) -> dict[str, int]:
        """The day each binding was first seen; new ones are recorded as first seen today."""
        return await self._submit(lambda conn: queries.first_days(conn, names, today))

    async def site_event(self, at: float, site: str, binding: str, body: str) -> None:
        """Keep a change of a site's limits (also logged) for `mta queue sites --history`."""
        await self._submit(lambda conn: queries.site_event(conn, at, site, binding, body))

    async def volume_since(self, since: float) -> list[tuple[str, str, int]]:
        """Messages attempted per (binding, site) since a time (to restore ramp-up counts)."""
        return await self._submit(lambda conn: queries.volume_since(conn, since))

    async def record(self, updates: Sequence[Update]) -> None:
        """Apply attempt results: recipient state, attempt history and events, in one commit."""
        if updates:
            await self._submit(lambda conn: queries.record(conn, updates), updates=updates)

    async def prune_events(self, cutoff: float, bound: int | None, limit: int) -> int:
        """Delete up to `limit` outbox events older than `cutoff` with id <= `bound`."""
        return await self._submit(lambda conn: queries.prune_events(conn, cutoff, bound, limit))

    async def release(self, releases: Sequence[Release]) -> None:
        if releases:
            await self._submit(lambda conn: queries.release(conn, releases))

    # -- reads, on their own connection and thread (WAL: they never hold up a commit) --

    async def webhook_cursors(self, urls: Sequence[str]) -> dict[str, WebhookCursor]:
        """Each webhook endpoint's place in the event outbox (new ones start at 0)."""
        return await self._submit(lambda conn: queries.webhook_cursors(conn, urls))

    async def advance_webhook(self, url: str, last_id: int, delivered: int, dropped: int) -> None:
        """Events up to `last_id` went to `url` (or were dropped): its cursor moves on."""
        await self._submit(
            lambda conn: queries.advance_webhook(conn, url, last_id, delivered, dropped)
        )

    async def webhook_failing(self, url: str, since: float) -> None:
        await self._submit(lambda conn: queries.webhook_failing(conn, url, since))

    async def disable_webhook(self, url: str) -> None:
        await self._submit(lambda conn: queries.disable_webhook(conn, url))

    async def make_due(self, domains: Sequence[str], now: float) -> int:
        """An operator's "retry now" for these domains; how many recipients were waiting."""
        return await self._submit(lambda c: queries.make_due(c, domains, now))

    async def take_queued(
        self, domains: Sequence[str] | None, queue_id: str | None, limit: int
    ) -> list[DueRecipient]:
        """Lease queued recipients of the domains (or one message), due or not (a bounce)."""
        return await self._submit(lambda c: queries.take_queued(c, domains, queue_id, limit))

    async def operator_actions(self, binding: str, limit: int) -> list[str]:
        return await self._read(lambda c: queries.operator_actions(c, binding, limit))

    async def delivered_since(self, after: int, limit: int) -> list[tuple[int, float, str]]:
        return await self._read(lambda c: queries.delivered_since(c, after, limit))

    async def queued_ages(
        self, now: float, bounds: Sequence[float]
    ) -> tuple[list[int], int, float]:
        return await self._read(lambda c: queries.queued_ages(c, now, bounds))

    async def event_times(self, after: int, upto: int, limit: int) -> list[float]:
        return await self._read(lambda c: queries.event_times(c, after, upto, limit))

    async def stats(self) -> SpoolStats:
        """Recipients by state (counts the table: for the API, not the hot path)."""
        return await self._read(queries.stats)

    async def events_after(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Outbox rows with id > after, oldest first: (cursor, event)."""
        return await self._read(lambda conn: queries.events_after(conn, after, limit))

    async def recipient_history(self, queue_id: str) -> list[dict[str, Any]]:
        return await self._read(lambda conn: queries.history(conn, queue_id))

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        if self._thread is None:
            raise SpoolError("spool is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reader, self._read_now, run)

    def _read_now(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """In the reader thread: a read-only connection, opened on first use."""
        try:
            if self._read_conn is None:
                self._read_conn = sqlite3.connect(
                    f"file:{self.path}?mode=ro", uri=True, check_same_thread=False
                )
                self._read_conn.execute("PRAGMA busy_timeout=5000")
            return run(self._read_conn)
        except sqlite3.Error as exc:
            raise _storage_error(exc) from None

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None



def _file_kind(path: Path) -> str:
    """What is on disk before SQLite opens (and so creates) the file."""
    if path.exists():
        return "empty" if path.stat().st_size == 0 else "existing"
    wal = path.with_name(path.name + "-wal")
    return "missing" if wal.exists() and wal.stat().st_size > 0 else "new"


def _run_unless_merged(op: _Op, conn: sqlite3.Connection) -> Any:
    """Run `op`, unless it is an ingest or attempt results, stored with the others."""
    if op.message is not None or op.updates is not None:
        return None
    return op.run(conn)


def _storage_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL":
        return SpoolFull(str(exc))
    error = SpoolError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _is_write_failure(exc: BaseException, error: SpoolError) -> bool:
    """The storage refused a write (full, I/O, corrupt), not the operation's own logic."""
    if isinstance(error, SpoolFull):
        return True
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _resolve_future(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail_future(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _resolve_futures(
    outcomes: Iterable[tuple[asyncio.Future[Any], Any, BaseException | None]],
) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


