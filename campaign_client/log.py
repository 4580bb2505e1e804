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
the same transaction. `clock(wall)` is now on the events' clock (the MTA's may run faster).

Methods are synchronous and thread-safe (one connection behind a lock), so async code calls them
through `asyncio.to_thread` and the event loop never waits on an fsync.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from campaign_client import address_store as store
from campaign_client import status as machine
from campaign_client.address_store import EXCLUSION_REASONS, Exclusion
from campaign_client.events import Event, EventError
from campaign_client.indicators import Kpis, Row, compute_kpis
from campaign_client.quarantine import (
    AddressState,
    AddressStatus,
    Notice,
    Policy,
    Signal,
    current,
    decide,
    notice_of,
)
from campaign_client.status import LineState, Status

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

Key = tuple[str, str, str]


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


@dataclass(slots=True)
class ApplyReport:
    """What a batch did: counts, and the line keys that changed."""

    applied: int = 0
    duplicates: int = 0
    held: int = 0
    released: int = 0
    unmatched: int = 0
    changed: set[Key] = field(default_factory=set)


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


class DeliveryLog:
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

    # -- events ---------------------------------------------------------------------------

    def apply_events(self, events: Sequence[Event], now: float) -> ApplyReport:
        """Apply a batch durably (one transaction, committed on return); see the module doc."""
        report = ApplyReport()
        with self._transaction() as db:
            for event in events:
                self._apply_one(db, event, now, report)
        return report

    def release_stale(self, now: float, max_age: float) -> ApplyReport:
        """Apply held events received more than `max_age` seconds ago, gaps and all."""
        report = ApplyReport()
        cutoff = now - max_age
        with self._lock:
            stale = self._db.execute(
                "SELECT 1 FROM held WHERE received_at <= ? LIMIT 1", (cutoff,)
            ).fetchone()
        if stale is None:
            return report
        with self._transaction() as db:
            keys = db.execute(
                "SELECT DISTINCT delivery_id, log_id, recipient FROM held WHERE received_at <= ?",
                (cutoff,),
            ).fetchall()
            for row in keys:
                key: Key = (str(row[0]), str(row[1]), str(row[2]))
                self._drain(db, key, now, report, cutoff=cutoff)
        return report

    def progress(self) -> int:
        """A number that grows with every event applied to any line (for "no event since")."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM history").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def held_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM held").fetchone()[0])

    def is_applied(self, event_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM applied WHERE event_id = ?", (event_id,)
            ).fetchone()
        return row is not None

    def _apply_one(
        self, db: sqlite3.Connection, event: Event, now: float, report: ApplyReport
    ) -> None:
        seen = db.execute(
            "SELECT 1 FROM applied WHERE event_id = ? UNION ALL "
            "SELECT 1 FROM held WHERE event_id = ?",
            (event.event_id, event.event_id),
        ).fetchone()
        if seen is not None:
            report.duplicates += 1
            return
        key = event.key
        if key is not None:
            key = self._resolve(db, key)
        if key is None:
            db.execute("INSERT INTO applied (event_id, applied_at) VALUES (?, ?)",
                       (event.event_id, now))
            report.unmatched += 1
            return
        last_seq = self._last_seq(db, key)
        if event.seq is None or event.seq <= last_seq:
            self._change(db, key, event, now, report)
            return
        if event.seq == last_seq + 1:
            self._change(db, key, event, now, report)
            self._drain(db, key, now, report, cutoff=None)
            return
        db.execute(
            "INSERT INTO held (event_id, delivery_id, log_id, recipient, seq, received_at, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, *key, event.seq, now, json.dumps(event.to_json())),
        )
        report.held += 1

    def _resolve(self, db: sqlite3.Connection, key: Key) -> Key:
        """The stored key of the event's line: the recipient matches case-insensitively (the
        MTA lower-cases domains), so "a@X.test" and "a@x.test" are one line."""
        row = db.execute(
            "SELECT recipient FROM lines WHERE delivery_id = ? AND log_id = ?"
            " AND recipient = ? COLLATE NOCASE ORDER BY recipient = ? DESC LIMIT 1",
            (*key, key[2]),
        ).fetchone()
        return key if row is None else (key[0], key[1], str(row[0]))

    def _last_seq(self, db: sqlite3.Connection, key: Key) -> int:
        row = db.execute(
            "SELECT last_seq FROM lines WHERE delivery_id = ? AND log_id = ? AND recipient = ?",
            key,
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _drain(
        self, db: sqlite3.Connection, key: Key, now: float, report: ApplyReport,
        cutoff: float | None,
    ) -> None:
        """Apply held events of a line while the next seq is there (or, past `cutoff`, the
        oldest hold regardless of the gap)."""
        for _ in range(1_000_000):
            row = db.execute(
                "SELECT event_id, seq, received_at, body FROM held WHERE delivery_id = ?"
                " AND log_id = ? AND recipient = ? ORDER BY seq LIMIT 1",
                key,
            ).fetchone()
            if row is None:
                return
            last_seq = self._last_seq(db, key)
            seq, received_at = int(row[1]), float(row[2])
            gap = seq > last_seq + 1
            if gap and (cutoff is None or received_at > cutoff):
                return
            db.execute("DELETE FROM held WHERE event_id = ?", (row[0],))
            try:
                event = Event.from_json(json.loads(row[3]))
            except (EventError, ValueError):
                continue
            self._change(db, key, event, now, report, gap=gap)
            report.released += 1

    def _change(
        self, db: sqlite3.Connection, key: Key, event: Event, now: float, report: ApplyReport,
        gap: bool = False,
    ) -> None:
        row = db.execute(
            "SELECT status, failure_type, failure_reason, reason_code, last_reply, attempts,"
            " queue_id, possible_duplicate, last_seq FROM lines WHERE delivery_id = ?"
            " AND log_id = ? AND recipient = ?",
            key,
        ).fetchone()
        if row is None:
            db.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, total, created_at)"
                " VALUES (?, 0, ?)",
                (key[0], now),
            )
            db.execute(
                "INSERT INTO lines (delivery_id, log_id, recipient, status, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (*key, str(Status.PENDING), now, now),
            )
            db.execute(
                "UPDATE deliveries SET total = total + 1 WHERE delivery_id = ?", (key[0],)
            )
            before, last_seq = LineState(), 0
        else:
            before = LineState(
                status=Status(row[0]), failure_type=row[1], failure_reason=row[2],
                reason_code=row[3], last_reply=row[4], attempts=int(row[5]), queue_id=row[6],
                possible_duplicate=bool(row[7]),
            )
            last_seq = int(row[8])
        after = machine.apply(before, event)
        cell = machine.effect(before.status, event)
        new_seq = max(last_seq, event.seq or 0)
        db.execute(
            "UPDATE lines SET status = ?, failure_type = ?, failure_reason = ?, reason_code = ?,"
            " last_reply = ?, attempts = ?, queue_id = ?, possible_duplicate = ?, last_seq = ?,"
            " gaps = gaps + ?, updated_at = CASE WHEN ? THEN ? ELSE updated_at END,"
            " event_at = COALESCE(?, event_at)"
            " WHERE delivery_id = ? AND log_id = ? AND recipient = ?",
            (
                str(after.status), after.failure_type, after.failure_reason, after.reason_code,
                after.last_reply, after.attempts, after.queue_id, int(after.possible_duplicate),
                new_seq, int(gap), int(after != before), now,
                event.at if cell.record else None, *key,
            ),
        )
        db.execute("INSERT OR IGNORE INTO applied (event_id, applied_at) VALUES (?, ?)",
                   (event.event_id, now))
        store.record_event(db, key, event, str(after.status))
        notice = notice_of(event, now)
        if notice is not None:
            self._notice(db, key[2], notice, now)
        report.applied += 1
        if after != before:
            report.changed.add(key)

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
