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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("mta.spool")

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE,
    mail_from TEXT NOT NULL,
    delivery_id TEXT,
    received_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    size INTEGER NOT NULL,
    smtputf8 INTEGER NOT NULL DEFAULT 0,
    pending INTEGER NOT NULL,
    content BLOB
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL REFERENCES messages(id),
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    log_id TEXT,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    expires_at REAL NOT NULL,
    leased INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL DEFAULT 0,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    last_code INTEGER,
    last_enhanced TEXT,
    last_text TEXT,
    last_phase TEXT,
    last_mx TEXT,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS recipients_domain_due ON recipients(domain, next_attempt_at)
    WHERE state = 'queued' AND leased = 0;
CREATE INDEX IF NOT EXISTS recipients_expiry ON recipients(expires_at)
    WHERE state = 'queued' AND leased = 0;
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message_id);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL,
    at REAL NOT NULL,
    code INTEGER,
    enhanced TEXT,
    text TEXT,
    phase TEXT,
    mx TEXT,
    result TEXT NOT NULL,
    site TEXT,
    binding TEXT
);
CREATE INDEX IF NOT EXISTS attempts_recipient ON attempts(recipient_id);
CREATE TABLE IF NOT EXISTS site_events (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    site TEXT NOT NULL,
    binding TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    name TEXT PRIMARY KEY,
    first_day INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    recipient_id INTEGER,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    body TEXT NOT NULL
);
"""
SCHEMA_VERSION = 2


class SpoolError(Exception):
    """Storage failed; the message says which way, never with SQL or paths for the SMTP peer."""


class SpoolFull(SpoolError):
    """The database or the disk is full."""


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str
    domain: str
    log_id: str | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    queue_id: str
    mail_from: str
    delivery_id: str | None
    received_at: float
    expires_at: float
    content: bytes
    smtputf8: bool
    recipients: tuple[NewRecipient, ...]
    # One "relayed" event per recipient, in recipient order: (event_id, body).
    events: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class DueRecipient:
    """A recipient leased for an attempt (or found expired), with what delivery needs."""

    recipient_id: int
    message_id: int
    queue_id: str
    mail_from: str
    delivery_id: str | None
    address: str
    domain: str
    log_id: str | None
    attempts: int
    seq: int
    received_at: float
    expires_at: float
    smtputf8: bool
    possible_duplicate: bool
    last_code: int | None
    last_enhanced: str | None
    last_text: str | None
    last_phase: str | None
    last_mx: str | None


@dataclass(frozen=True, slots=True)
class Pick:
    recipients: list[DueRecipient]
    contents: dict[int, bytes]  # message id -> content
    next_due: dict[str, float | None]  # per domain asked: the earliest next attempt left


@dataclass(frozen=True, slots=True)
class DomainQueue:
    domain: str
    next_due: float | None
    queued: int


@dataclass(frozen=True, slots=True)
class Update:
    """The result of one attempt (or an expiry) for one recipient, with its event."""

    recipient_id: int
    message_id: int
    state: str  # RecipientState value
    attempts: int
    next_attempt_at: float | None
    seq: int
    at: float
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    phase: str | None = None
    mx: str | None = None
    result: str = ""  # attempts.result: delivered, retry, bounce, expire
    site: str | None = None
    binding: str | None = None
    attempted: bool = True  # False: no connection was tried (e.g. validity over)
    possible_duplicate: bool = False
    event: tuple[str, str, str] | None = None  # (event_id, kind, body json)


@dataclass(frozen=True, slots=True)
class Release:
    """Give a leased recipient back without an attempt (e.g. shutdown, site waiting)."""

    recipient_id: int
    next_attempt_at: float
    possible_duplicate: bool = False


@dataclass
class _Op:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


@dataclass
class SpoolStats:
    queued: int = 0
    leased: int = 0
    delivered: int = 0
    bounced: int = 0
    expired: int = 0
    messages: int = 0
    events: int = 0


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

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` in the event loop after every commit (e.g. new events to send)."""
        self._listeners.append(listener)

    def _committed(
        self, outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]
    ) -> None:
        _settle(outcomes)
        for listener in self._listeners:
            listener()

    @classmethod
    async def open(cls, path: Path, batch_max: int = 512) -> Spool:
        spool = cls(path, batch_max)
        await spool._start()
        return spool

    async def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="spool-writer", daemon=True
        )
        self._thread.start()
        await ready
        self.recovered = await self._submit(_recover_leases)
        if self.recovered:
            log.warning(
                "recovered %d recipients that were in flight at the last stop", self.recovered
            )

    async def close(self) -> None:
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
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA foreign_keys=OFF")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()
        if tables[0] and version != SCHEMA_VERSION:
            conn.close()
            raise sqlite3.DatabaseError(
                f"spool schema version {version}, this MTA needs {SCHEMA_VERSION}:"
                " move the old data directory away"
            )
        conn.executescript(SCHEMA)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            loop.call_soon_threadsafe(_fail_future, ready, SpoolError(f"cannot open spool: {exc}"))
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
                outcomes = self._run_batch(conn, batch)
                loop.call_soon_threadsafe(self._committed, outcomes)
                if stop_after:
                    break
        finally:
            conn.close()

    def _run_batch(
        self, conn: sqlite3.Connection, batch: list[_Op]
    ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            error = _storage_error(exc)
            return [(op.future, None, error) for op in batch]
        for op in batch:
            try:
                conn.execute("SAVEPOINT op")
                result = op.run(conn)
                conn.execute("RELEASE op")
                outcomes.append((op.future, result, None))
            except Exception as exc:  # one failing operation must not sink the batch
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                outcomes.append((op.future, None, _storage_error(exc)))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            error = _storage_error(exc)
            return [(future, None, error) for future, _, _ in outcomes]
        self.commits += 1
        self.ops += len(batch)
        return outcomes

    def _submit(self, run: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._thread is None:
            raise SpoolError("spool is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(run, future))
        return future

    # -- operations -----------------------------------------------------------

    async def ingest(self, message: NewMessage) -> None:
        """Store a message, its recipients and their "relayed" events; returns after commit."""
        await self._submit(lambda conn: _ingest(conn, message))

    async def pick(self, requests: Sequence[tuple[str, int]], now: float) -> Pick:
        """Lease, per (domain, limit), up to `limit` recipients due by `now`, earliest first.

        Each domain costs index seeks: the size of the queue does not matter. The
        answer also says when each domain's next remaining recipient is due.
        """
        return await self._submit(lambda conn: _pick(conn, requests, now))

    async def pick_expired(self, now: float, limit: int) -> tuple[list[DueRecipient], float | None]:
        """Lease waiting recipients whose validity ended, and the next expiry after them."""
        return await self._submit(lambda conn: _pick_expired(conn, now, limit))

    async def queues(self) -> list[DomainQueue]:
        """Per domain with queued recipients: next due time and count (a scan, for start-up)."""
        return await self._submit(_queues)

    async def binding_first_days(self, names: Sequence[str], today: int) -> dict[str, int]:
        """The day each binding was first seen; new ones are recorded as first seen today."""
        return await self._submit(lambda conn: _first_days(conn, names, today))

    async def site_event(self, at: float, site: str, binding: str, body: str) -> None:
        """Keep a change of a site's limits (also logged) for `mta queue sites --history`."""
        await self._submit(lambda conn: _site_event(conn, at, site, binding, body))

    async def volume_since(self, since: float) -> list[tuple[str, str, int]]:
        """Messages attempted per (binding, site) since a time (to restore ramp-up counts)."""
        return await self._submit(lambda conn: _volume_since(conn, since))

    async def record(self, updates: Sequence[Update]) -> None:
        """Apply attempt results: recipient state, attempt history and events, in one commit."""
        if updates:
            await self._submit(lambda conn: _record(conn, updates))

    async def release(self, releases: Sequence[Release]) -> None:
        if releases:
            await self._submit(lambda conn: _release(conn, releases))

    # -- reads, on their own connection and thread (WAL: they never hold up a commit) --

    async def stats(self) -> SpoolStats:
        """Recipients by state (counts the table: for the API, not the hot path)."""
        return await self._read(_stats)

    async def events_after(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Outbox rows with id > after, oldest first: (cursor, event)."""
        return await self._read(lambda conn: _events_after(conn, after, limit))

    async def recipient_history(self, queue_id: str) -> list[dict[str, Any]]:
        return await self._read(lambda conn: _history(conn, queue_id))

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

    async def execute(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run a custom operation in the writer thread, inside the group commit."""
        return await self._submit(run)


def _storage_error(exc: BaseException) -> SpoolError:
    if isinstance(exc, SpoolError):
        return exc
    text = str(exc).lower()
    if isinstance(exc, sqlite3.Error) and ("full" in text or ("disk" in text and "space" in text)):
        return SpoolFull(str(exc))
    error = SpoolError(f"{type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


def _resolve_future(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail_future(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _settle(outcomes: Iterable[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _recover_leases(conn: sqlite3.Connection) -> int:
    cursor = conn.execute(
        "UPDATE recipients SET leased = 0, possible_duplicate = 1 WHERE leased = 1"
    )
    return cursor.rowcount


def _ingest(conn: sqlite3.Connection, m: NewMessage) -> None:
    cursor = conn.execute(
        "INSERT INTO messages (queue_id, mail_from, delivery_id, received_at, expires_at, size,"
        " smtputf8, pending, content) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            m.queue_id,
            m.mail_from,
            m.delivery_id,
            m.received_at,
            m.expires_at,
            len(m.content),
            int(m.smtputf8),
            len(m.recipients),
            m.content,
        ),
    )
    message_id = cursor.lastrowid
    recipient_ids: list[int] = []
    for r in m.recipients:
        cursor = conn.execute(
            "INSERT INTO recipients (message_id, address, domain, log_id, next_attempt_at,"
            " expires_at, seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message_id,
                r.address,
                r.domain,
                r.log_id,
                m.received_at,
                m.expires_at,
                1 if m.events else 0,
                m.received_at,
            ),
        )
        recipient_ids.append(int(cursor.lastrowid or 0))
    if m.events:
        conn.executemany(
            "INSERT INTO events (event_id, recipient_id, seq, kind, at, body)"
            " VALUES (?, ?, 1, 'relayed', ?, ?)",
            [
                (event_id, recipient_id, m.received_at, body)
                for recipient_id, (event_id, body) in zip(recipient_ids, m.events, strict=True)
            ],
        )


_PICK_COLUMNS = (
    "r.id, r.message_id, m.queue_id, m.mail_from, m.delivery_id, r.address, r.domain, r.log_id,"
    " r.attempts, r.seq, m.received_at, m.expires_at, m.smtputf8, r.possible_duplicate,"
    " r.last_code, r.last_enhanced, r.last_text, r.last_phase, r.last_mx"
)


def _due(row: Sequence[Any]) -> DueRecipient:
    return DueRecipient(
        recipient_id=row[0],
        message_id=row[1],
        queue_id=row[2],
        mail_from=row[3],
        delivery_id=row[4],
        address=row[5],
        domain=row[6],
        log_id=row[7],
        attempts=row[8],
        seq=row[9],
        received_at=row[10],
        expires_at=row[11],
        smtputf8=bool(row[12]),
        possible_duplicate=bool(row[13]),
        last_code=row[14],
        last_enhanced=row[15],
        last_text=row[16],
        last_phase=row[17],
        last_mx=row[18],
    )


def _lease(conn: sqlite3.Connection, recipients: Sequence[DueRecipient]) -> None:
    conn.executemany(
        "UPDATE recipients SET leased = 1 WHERE id = ?", [(r.recipient_id,) for r in recipients]
    )


def _next_due(conn: sqlite3.Connection, domain: str) -> float | None:
    row = conn.execute(
        "SELECT MIN(next_attempt_at) FROM recipients"
        " WHERE domain = ? AND state = 'queued' AND leased = 0",
        (domain,),
    ).fetchone()
    return row[0] if row else None


def _pick(conn: sqlite3.Connection, requests: Sequence[tuple[str, int]], now: float) -> Pick:
    recipients: list[DueRecipient] = []
    next_due: dict[str, float | None] = {}
    for domain, limit in requests:
        rows = conn.execute(
            f"SELECT {_PICK_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id"
            " WHERE r.id IN (SELECT id FROM recipients WHERE domain = ? AND state = 'queued'"
            " AND leased = 0 AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
            " ORDER BY r.next_attempt_at",
            (domain, now, limit),
        ).fetchall()
        picked = [_due(row) for row in rows]
        _lease(conn, picked)
        recipients.extend(picked)
        next_due[domain] = _next_due(conn, domain)
    contents: dict[int, bytes] = {}
    message_ids = sorted({r.message_id for r in recipients})
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for message_id, content in conn.execute(
            f"SELECT id, content FROM messages WHERE id IN ({marks})", chunk
        ):
            contents[message_id] = content
    return Pick(recipients, contents, next_due)


def _pick_expired(
    conn: sqlite3.Connection, now: float, limit: int
) -> tuple[list[DueRecipient], float | None]:
    rows = conn.execute(
        f"SELECT {_PICK_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id"
        " WHERE r.id IN (SELECT id FROM recipients WHERE state = 'queued' AND leased = 0"
        " AND expires_at <= ? ORDER BY expires_at LIMIT ?)",
        (now, limit),
    ).fetchall()
    picked = [_due(row) for row in rows]
    _lease(conn, picked)
    row = conn.execute(
        "SELECT MIN(expires_at) FROM recipients WHERE state = 'queued' AND leased = 0"
    ).fetchone()
    return picked, row[0] if row else None


def _queues(conn: sqlite3.Connection) -> list[DomainQueue]:
    return [
        DomainQueue(domain, next_due, count)
        for domain, next_due, count in conn.execute(
            "SELECT domain, MIN(CASE WHEN leased = 0 THEN next_attempt_at END), COUNT(*)"
            " FROM recipients WHERE state = 'queued' GROUP BY domain"
        )
    ]


def _first_days(conn: sqlite3.Connection, names: Sequence[str], today: int) -> dict[str, int]:
    conn.executemany(
        "INSERT OR IGNORE INTO bindings (name, first_day) VALUES (?, ?)",
        [(name, today) for name in names],
    )
    return dict(conn.execute("SELECT name, first_day FROM bindings").fetchall())


def _site_event(conn: sqlite3.Connection, at: float, site: str, binding: str, body: str) -> None:
    conn.execute(
        "INSERT INTO site_events (at, site, binding, body) VALUES (?, ?, ?, ?)",
        (at, site, binding, body),
    )


def _volume_since(conn: sqlite3.Connection, since: float) -> list[tuple[str, str, int]]:
    return [
        (binding, site, count)
        for binding, site, count in conn.execute(
            "SELECT binding, site, COUNT(*) FROM attempts WHERE at >= ? AND binding IS NOT NULL"
            " AND site IS NOT NULL GROUP BY binding, site",
            (since,),
        )
    ]


def _record(conn: sqlite3.Connection, updates: Sequence[Update]) -> None:
    conn.executemany(
        "UPDATE recipients SET state = ?, attempts = ?, next_attempt_at = ?, leased = 0, seq = ?,"
        " possible_duplicate = ?, last_code = COALESCE(?, last_code),"
        " last_enhanced = CASE WHEN ? IS NULL THEN last_enhanced ELSE ? END,"
        " last_text = COALESCE(?, last_text), last_phase = COALESCE(?, last_phase),"
        " last_mx = COALESCE(?, last_mx), updated_at = ? WHERE id = ?",
        [
            (
                u.state,
                u.attempts,
                u.next_attempt_at,
                u.seq,
                int(u.possible_duplicate),
                u.code,
                u.code,
                u.enhanced,
                u.text,
                u.phase,
                u.mx,
                u.at,
                u.recipient_id,
            )
            for u in updates
        ],
    )
    conn.executemany(
        "INSERT INTO attempts (recipient_id, at, code, enhanced, text, phase, mx, result, site,"
        " binding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                u.recipient_id,
                u.at,
                u.code,
                u.enhanced,
                u.text,
                u.phase,
                u.mx,
                u.result,
                u.site,
                u.binding,
            )
            for u in updates
            if u.attempted
        ],
    )
    events = [u for u in updates if u.event is not None]
    conn.executemany(
        "INSERT INTO events (event_id, recipient_id, seq, kind, at, body)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (u.event[0], u.recipient_id, u.seq, u.event[1], u.at, u.event[2])
            for u in events
            if u.event is not None
        ],
    )
    finished: dict[int, int] = {}
    for u in updates:
        if u.state != "queued":
            finished[u.message_id] = finished.get(u.message_id, 0) + 1
    if finished:
        conn.executemany(
            "UPDATE messages SET pending = pending - ? WHERE id = ?",
            [(count, message_id) for message_id, count in finished.items()],
        )
        # Content is kept only while some recipient may still need it.
        conn.executemany(
            "UPDATE messages SET content = NULL WHERE id = ? AND pending <= 0",
            [(message_id,) for message_id in finished],
        )


def _release(conn: sqlite3.Connection, releases: Sequence[Release]) -> None:
    conn.executemany(
        "UPDATE recipients SET leased = 0, next_attempt_at = ?,"
        " possible_duplicate = MAX(possible_duplicate, ?) WHERE id = ?",
        [(r.next_attempt_at, int(r.possible_duplicate), r.recipient_id) for r in releases],
    )


def _stats(conn: sqlite3.Connection) -> SpoolStats:
    stats = SpoolStats()
    for state, leased, count in conn.execute(
        "SELECT state, leased, COUNT(*) FROM recipients GROUP BY state, leased"
    ):
        if state == "queued":
            stats.queued += count
            if leased:
                stats.leased += count
        elif state in ("delivered", "bounced", "expired"):
            setattr(stats, state, getattr(stats, state) + count)
    stats.messages = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    stats.events = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
    return stats


def _events_after(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, Any]]:
    return [
        (row[0], json.loads(row[1]))
        for row in conn.execute(
            "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
    ]


def _history(conn: sqlite3.Connection, queue_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT r.id, r.address, r.state, r.attempts, r.next_attempt_at, a.at, a.code,"
        " a.enhanced, a.text, a.phase, a.mx, a.result FROM messages m"
        " JOIN recipients r ON r.message_id = m.id"
        " LEFT JOIN attempts a ON a.recipient_id = r.id WHERE m.queue_id = ? ORDER BY r.id, a.id",
        (queue_id,),
    ).fetchall()
    keys = (
        "recipient_id",
        "address",
        "state",
        "attempts",
        "next_attempt_at",
        "at",
        "code",
        "enhanced",
        "text",
        "phase",
        "mx",
        "result",
    )
    return [dict(zip(keys, row, strict=True)) for row in rows]
