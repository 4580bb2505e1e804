"""The delivery log: one SQLite file (WAL, synchronous=FULL) holding the client's view of its mail.

Tables: `deliveries` (declared totals), `lines` (one per delivery_id, log_id, recipient: status,
failure type/reason/code, last reply, attempts, queue id, Message-ID, times, possible_duplicate,
last applied seq, gaps), `applied` (event ids already applied: idempotency), `held` (events
waiting for a missing seq, kept durably), `inbound` (what the bounce mailbox received and how it
was qualified), `cursors` (pull API), and `campaign_client.address_store`'s tables: the
addresses' quarantine state and history, each line's event history, the exclusion log.

`DeliveryLog.apply_events(events, now)` applies a batch in ONE transaction, committed before it
returns (so a webhook answers 2xx only for durable events): an event id seen before is skipped; an
event whose seq is not the line's next is held until the missing ones arrive;
`release_stale(now, max_age)` applies holds older than `max_age` anyway, in seq order, counting a
gap on the line. Events without seq (the client's own) apply at once. Status changes follow
`campaign_client.status.TABLE`; what an event does to its address (the error counter,
Quarantine, Denylisted) follows `campaign_client.quarantine.TABLE` with the log's `Policy`, in
the same transaction (`campaign_client.line_events`, a part of `DeliveryLog`). `clock(wall)`
is now on the events' clock (the MTA's may run faster).

Methods are synchronous and thread-safe (one connection behind a lock), so async code calls them
through `asyncio.to_thread` and the event loop never waits on an fsync.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from campaign_client import address_store as store
from campaign_client.address_store import EXCLUSION_REASONS, Exclusion
from campaign_client.events import Event
from campaign_client.indicators import Kpis, Row, compute_kpis
from campaign_client.line_events import ApplyReport, LineEvents
from campaign_client.quarantine import (
    AddressState,
    AddressStatus,
    Notice,
    Policy,
    Signal,
    current,
    decide,
)
from campaign_client.status import Status

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id TEXT PRIMARY KEY,
    total INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS lines (
    delivery_id TEXT NOT NULL,
    log_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_type TEXT,
    failure_reason TEXT,
    reason_code INTEGER,
    last_reply TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    queue_id TEXT,
    message_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    event_at REAL,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (delivery_id, log_id, recipient)
);
CREATE INDEX IF NOT EXISTS lines_message_id ON lines (message_id);
CREATE INDEX IF NOT EXISTS lines_recipient ON lines (recipient COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS applied (
    event_id TEXT PRIMARY KEY,
    applied_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    event_id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    log_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS held_line ON held (delivery_id, log_id, recipient, seq);
CREATE TABLE IF NOT EXISTS inbound (
    id INTEGER PRIMARY KEY,
    received_at REAL NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT,
    recipient TEXT,
    delivery_id TEXT,
    log_id TEXT,
    failure_type TEXT,
    reason TEXT,
    rule TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS cursors (
    source TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
);
"""

QUARANTINE = "Quarantine"
DENYLISTED = "Denylisted"


class LogError(Exception):
    """The delivery log file cannot be opened or used; the message names the file."""


@dataclass(frozen=True, slots=True)
class Line:
    """One row of `lines`, as read back."""

    delivery_id: str
    log_id: str
    recipient: str
    status: str
    failure_type: str | None
    failure_reason: str | None
    reason_code: int | None
    last_reply: str | None
    attempts: int
    queue_id: str | None
    message_id: str | None
    created_at: float
    updated_at: float
    event_at: float | None
    possible_duplicate: bool
    last_seq: int
    gaps: int


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """An address that is not Valid, as of the log's clock (`campaign_client.quarantine`)."""

    address: str
    status: str                  # Erroneous, Quarantine or Denylisted
    failure_type: str | None     # the cause: the failure that gave the status...
    reason: str | None
    reason_code: int | None
    delivery_id: str | None      # ... and the delivery and log line it came from
    log_id: str | None
    first_at: float              # since when it has this status
    last_at: float | None        # the last counted error (the events' clock)
    hits: int                    # counted errors since the last reset

    @classmethod
    def of(cls, address: str, state: AddressState) -> QuarantineEntry:
        return cls(address, str(state.status), state.failure_type, state.reason,
                   state.reason_code, state.delivery_id, state.log_id,
                   state.since if state.since is not None else 0.0, state.last_error_at,
                   state.errors)

    def to_json(self) -> dict[str, object]:
        return {"address": self.address, "status": self.status, "errors": self.hits,
                "last_error_at": self.last_at, "since": self.first_at,
                "failure_type": self.failure_type, "reason": self.reason,
                "reason_code": self.reason_code, "delivery_id": self.delivery_id,
                "log_id": self.log_id}


_LINE_COLUMNS = (
    "delivery_id, log_id, recipient, status, failure_type, failure_reason, reason_code, "
    "last_reply, attempts, queue_id, message_id, created_at, updated_at, event_at, "
    "possible_duplicate, last_seq, gaps"
)


def _line(row: sqlite3.Row | tuple[object, ...]) -> Line:
    values = tuple(row)
    return Line(
        delivery_id=str(values[0]), log_id=str(values[1]), recipient=str(values[2]),
        status=str(values[3]),
        failure_type=None if values[4] is None else str(values[4]),
        failure_reason=None if values[5] is None else str(values[5]),
        reason_code=None if values[6] is None else int(str(values[6])),
        last_reply=None if values[7] is None else str(values[7]),
        attempts=int(str(values[8])),
        queue_id=None if values[9] is None else str(values[9]),
        message_id=None if values[10] is None else str(values[10]),
        created_at=float(str(values[11])), updated_at=float(str(values[12])),
        event_at=None if values[13] is None else float(str(values[13])),
        possible_duplicate=bool(values[14]), last_seq=int(str(values[15])),
        gaps=int(str(values[16])),
    )


class DeliveryLog(LineEvents):
    """The SQLite delivery log. `DeliveryLog(path)` creates the file if needed (WAL mode)."""

    def __init__(self, path: str | Path, *, create: bool = True,
                 policy: Policy | None = None) -> None:
        self.path = Path(path)
        self.policy = policy if policy is not None else Policy()
        if not create and not self.path.is_file():
            raise LogError(f"log file not found: {self.path}")
        try:
            self._db = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise LogError(f"{self.path}: cannot open the delivery log: {exc}") from None
        try:
            self._db.execute("PRAGMA busy_timeout=30000")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            tables = {str(row[0]) for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "lines" not in tables:
                raise LogError(f"{self.path}: not a delivery log (an SQLite file with other "
                               "tables)")
            if version > SCHEMA_VERSION:
                raise LogError(
                    f"{self.path}: delivery log schema {version} is newer than this client's "
                    f"({SCHEMA_VERSION})"
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA + store.SCHEMA)
            if version == 1:
                store.migrate_v1(self._db)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise LogError(f"{self.path}: not a usable delivery log: {exc}") from None
        except LogError:
            self._db.close()
            raise
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DeliveryLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- deliveries and lines -------------------------------------------------------------

    def register(
        self,
        delivery_id: str,
        lines: Iterable[tuple[str, str, str | None]],
        now: float,
    ) -> int:
        """Create Pending lines (log_id, recipient, message_id); existing lines are kept.

        Returns how many lines were new. The delivery's total is the count of its lines.
        """
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, total, created_at)"
                " VALUES (?, 0, ?)",
                (delivery_id, now),
            )
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO lines (delivery_id, log_id, recipient, status, message_id,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    (delivery_id, log_id, recipient, str(Status.PENDING), message_id, now, now)
                    for log_id, recipient, message_id in lines
                ),
            )
            added = db.total_changes - before
            db.execute(
                "UPDATE deliveries SET total = (SELECT COUNT(*) FROM lines WHERE delivery_id = ?)"
                " WHERE delivery_id = ?",
                (delivery_id, delivery_id),
            )
        return added

    def has_delivery(self, delivery_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM deliveries WHERE delivery_id = ? UNION ALL "
                "SELECT 1 FROM lines WHERE delivery_id = ? LIMIT 1",
                (delivery_id, delivery_id),
            ).fetchone()
        return row is not None

    def deliveries(self) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT delivery_id FROM deliveries UNION SELECT DISTINCT delivery_id FROM lines"
                " ORDER BY 1"
            ).fetchall()
        return [str(row[0]) for row in rows]

    def line(self, delivery_id: str, log_id: str, recipient: str) -> Line | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_LINE_COLUMNS} FROM lines WHERE delivery_id = ? AND log_id = ?"
                " AND recipient = ?",
                (delivery_id, log_id, recipient),
            ).fetchone()
        return None if row is None else _line(row)

    def lines(self, delivery_id: str) -> list[Line]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_LINE_COLUMNS} FROM lines WHERE delivery_id = ? ORDER BY log_id,"
                " recipient",
                (delivery_id,),
            ).fetchall()
        return [_line(row) for row in rows]

    def find_line(
        self,
        *,
        delivery_id: str | None = None,
        log_id: str | None = None,
        message_id: str | None = None,
        recipient: str | None = None,
    ) -> Line | None:
        """The line an inbound message refers to: by delivery+log id (and recipient if given),
        else by Message-ID, else the most recently updated line of the recipient."""
        queries: list[tuple[str, tuple[str, ...]]] = []
        if delivery_id and log_id:
            if recipient:
                queries.append((
                    "delivery_id = ? AND log_id = ? AND recipient = ? COLLATE NOCASE",
                    (delivery_id, log_id, recipient),
                ))
            queries.append(("delivery_id = ? AND log_id = ?", (delivery_id, log_id)))
        if message_id:
            queries.append(("message_id = ?", (message_id,)))
        if recipient:
            queries.append(("recipient = ? COLLATE NOCASE", (recipient,)))
        with self._lock:
            for where, args in queries:
                row = self._db.execute(
                    f"SELECT {_LINE_COLUMNS} FROM lines WHERE {where}"
                    " ORDER BY updated_at DESC LIMIT 1",
                    args,
                ).fetchone()
                if row is not None:
                    return _line(row)
        return None

    def kpis(self, delivery_id: str) -> Kpis:
        """KPIs of one delivery (grouped in SQL, computed by the pure `compute_kpis`)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, failure_type, failure_reason, queue_id IS NOT NULL, COUNT(*)"
                " FROM lines WHERE delivery_id = ? GROUP BY 1, 2, 3, 4",
                (delivery_id,),
            ).fetchall()
            total_row = self._db.execute(
                "SELECT total FROM deliveries WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()
            excluded = int(self._db.execute(
                "SELECT COUNT(*) FROM exclusions WHERE delivery_id = ?", (delivery_id,)
            ).fetchone()[0])
        declared = int(total_row[0]) if total_row is not None else 0
        return compute_kpis(
            delivery_id,
            (Row(str(r[0]), r[1], r[2], int(r[4]), bool(r[3])) for r in rows),
            declared,
            excluded,
        )

    # -- quarantine ------------------------------------------------------------------------

    def _notice(self, db: sqlite3.Connection, address: str, notice: Notice,
                updated_at: float) -> None:
        stored = store.load(db, address)
        found = current(stored, notice.at, self.policy)
        after = decide(stored, notice, notice.at, self.policy)
        counts = notice.signal in (Signal.HARD, Signal.SOFT, Signal.COMPLAINT)
        if after != found or counts:
            store.save(db, address, found, after, notice, updated_at)
        elif found != stored:                   # reset by time: the row goes
            db.execute("DELETE FROM quarantine WHERE address = ?", (address,))

    def quarantine(
        self, address: str, status: str, now: float, *, failure_type: str | None = None,
        reason: str | None = None, reason_code: int | None = None,
        delivery_id: str | None = None, log_id: str | None = None,
    ) -> None:
        """A Hard error ("Quarantine") or a complaint ("Denylisted") about an address with no
        log line (e.g. a bounce for mail this log never sent), decided as any other."""
        if status not in (QUARANTINE, DENYLISTED):
            raise ValueError(f"quarantine status must be {QUARANTINE} or {DENYLISTED}")
        signal = Signal.COMPLAINT if status == DENYLISTED else Signal.HARD
        notice = Notice(signal, now, failure_type, reason, reason_code, delivery_id, log_id,
                        kind="complaint" if status == DENYLISTED else "inbound")
        with self._transaction() as db:
            self._notice(db, address, notice, now)

    def clock(self, wall: float) -> float:
        """Now on the events' clock: the later of `wall` and the latest event time seen (the
        MTA's clock may run faster than real time)."""
        with self._lock:
            seen = store.events_clock(self._db)
        return wall if seen is None else max(wall, seen)

    def address_state(self, address: str, now: float) -> AddressState:
        """The address's state as of `now` (the events' clock; see `clock`)."""
        with self._lock:
            stored = store.load(self._db, address)
        return current(stored, now, self.policy)

    def quarantined(self, address: str, now: float | None = None) -> QuarantineEntry | None:
        """The address if it is in Quarantine or Denylisted now (None if Valid or Erroneous)."""
        at = self.clock(time.time()) if now is None else now
        state = self.address_state(address, at)
        return QuarantineEntry.of(address, state) if state.excluded else None

    def addresses(self, now: float) -> list[QuarantineEntry]:
        """Every address that is not Valid as of `now`, by address."""
        with self._lock:
            rows = store.load_all(self._db)
        entries = [QuarantineEntry.of(address, current(state, now, self.policy))
                   for address, state in rows]
        return [entry for entry in entries if entry.status != str(AddressStatus.VALID)]

    def quarantine_list(self, now: float | None = None) -> list[QuarantineEntry]:
        """The addresses in Quarantine or Denylisted now."""
        at = self.clock(time.time()) if now is None else now
        excluded = {str(AddressStatus.QUARANTINE), str(AddressStatus.DENYLISTED)}
        return [entry for entry in self.addresses(at) if entry.status in excluded]

    def address_history(self, address: str) -> list[dict[str, Any]]:
        with self._lock:
            return store.history_of(self._db, address)

    def release(self, address: str, now: float) -> QuarantineEntry | None:
        """Back to Valid (counter reset) by a user's decision; returns what it was, or None."""
        with self._transaction() as db:
            before = store.remove(db, address, now)
        return None if before is None else QuarantineEntry.of(address, before)

    def exclude(self, delivery_id: str, candidates: Sequence[tuple[str, str]],
                now: float) -> list[Exclusion]:
        """Of (log_id, recipient) pairs, those whose address is in Quarantine or Denylisted at
        `now`: recorded in the exclusion log of `delivery_id` and returned."""
        excluded: list[Exclusion] = []
        with self._transaction() as db:
            rows = dict(store.load_all(db))
            lowered = {address.lower(): state for address, state in rows.items()}
            for log_id, recipient in candidates:
                stored = lowered.get(recipient.lower())
                if stored is None:
                    continue
                state = current(stored, now, self.policy)
                if not state.excluded:
                    continue
                reason, code = EXCLUSION_REASONS[state.status]
                exclusion = Exclusion(delivery_id, log_id, recipient, str(state.status), reason,
                                      code, state.reason, state.delivery_id, now)
                store.add_exclusion(db, exclusion)
                excluded.append(exclusion)
            if excluded:
                db.execute(
                    "INSERT OR IGNORE INTO deliveries (delivery_id, total, created_at)"
                    " VALUES (?, 0, ?)", (delivery_id, now))
        return excluded

    def exclusions(self, delivery_id: str) -> list[Exclusion]:
        with self._lock:
            return store.exclusions_of(self._db, delivery_id)

    def histories(self, delivery_id: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Each line's applied events, oldest first, keyed by (log_id, recipient)."""
        with self._lock:
            return store.line_histories(self._db, delivery_id)

    # -- inbound mail and pull cursors ----------------------------------------------------

    def record_inbound(
        self, now: float, kind: str, *, message_id: str | None, recipient: str | None,
        delivery_id: str | None, log_id: str | None, failure_type: str | None,
        reason: str | None, rule: str | None, detail: str | None,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO inbound (received_at, kind, message_id, recipient, delivery_id,"
                " log_id, failure_type, reason, rule, detail) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (now, kind, message_id, recipient, delivery_id, log_id, failure_type, reason,
                 rule, detail),
            )

    def inbound_records(self) -> list[dict[str, object]]:
        with self._lock:
            cursor = self._db.execute(
                "SELECT received_at, kind, message_id, recipient, delivery_id, log_id,"
                " failure_type, reason, rule, detail FROM inbound ORDER BY id"
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def cursor(self, source: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT cursor FROM cursors WHERE source = ?", (source,)
            ).fetchone()
        return None if row is None else str(row[0])

    def apply_pulled(
        self, source: str, events: Sequence[Event], cursor: str | None, now: float
    ) -> ApplyReport:
        """Apply a pulled page and store its cursor in the same transaction."""
        report = ApplyReport()
        with self._transaction() as db:
            for event in events:
                self._apply_one(db, event, now, report)
            if cursor is not None:
                db.execute(
                    "INSERT INTO cursors (source, cursor) VALUES (?, ?) ON CONFLICT (source)"
                    " DO UPDATE SET cursor = excluded.cursor",
                    (source, cursor),
                )
        return report
