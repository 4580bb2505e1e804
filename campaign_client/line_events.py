"""The delivery log's events: a batch applied to the lines in one transaction, each event once,
in seq order per line (an early one held until the missing ones arrive, or applied with a gap
once stale), each change following the status table and recording the address's notice.
A part of `campaign_client.log.DeliveryLog`, which inherits it; the attributes it uses are the
log's, named below.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from campaign_client import address_store as store
from campaign_client import status as machine
from campaign_client.events import Event, EventError
from campaign_client.quarantine import Notice, notice_of
from campaign_client.status import LineState, Status

Key = tuple[str, str, str]


@dataclass(slots=True)
class ApplyReport:
    """What a batch did: counts, and the line keys that changed."""

    applied: int = 0
    duplicates: int = 0
    held: int = 0
    released: int = 0
    unmatched: int = 0
    changed: set[Key] = field(default_factory=set)


class LineEvents:
    """See the module docstring."""

    # The log's, set by DeliveryLog.__init__.
    _db: sqlite3.Connection
    _lock: threading.Lock
    _transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _notice: Callable[[sqlite3.Connection, str, Notice, float], None]

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
