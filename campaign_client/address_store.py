"""The addresses' quarantine state and the lines' histories in the delivery log's SQLite file.

Functions take the log's connection, inside the log's transaction, so an event's effect on its
line, on the line's history and on its address commit together. The decisions are
`campaign_client.quarantine`'s (pure); this module only reads and writes rows:

- `quarantine`: one row per address that is not Valid (Erroneous, Quarantine, Denylisted): the
  counter (`hits`), the last counted error, the cause (failure, delivery, log line), since when.
- `address_history`: every notice about an address and what it did (counted or not, status).
- `history`: every event applied to a log line (attempts, replies, verdicts, status after).
- `exclusions`: recipients a send left out because their address was excluded.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from campaign_client.events import Event
from campaign_client.quarantine import AddressState, AddressStatus, Notice

SCHEMA = """
CREATE TABLE IF NOT EXISTS quarantine (
    address TEXT PRIMARY KEY COLLATE NOCASE,
    status TEXT NOT NULL,
    failure_type TEXT,
    reason TEXT,
    reason_code INTEGER,
    delivery_id TEXT,
    log_id TEXT,
    first_at REAL NOT NULL,
    last_at REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 1,
    last_error_at REAL
);
CREATE TABLE IF NOT EXISTS address_history (
    id INTEGER PRIMARY KEY,
    address TEXT NOT NULL COLLATE NOCASE,
    at REAL NOT NULL,
    kind TEXT,
    signal TEXT NOT NULL,
    failure_type TEXT,
    reason TEXT,
    delivery_id TEXT,
    log_id TEXT,
    counted INTEGER NOT NULL,
    status TEXT NOT NULL,
    errors INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS address_history_address ON address_history (address, id);
CREATE INDEX IF NOT EXISTS address_history_at ON address_history (at);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    log_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    at REAL,
    kind TEXT NOT NULL,
    seq INTEGER,
    attempt INTEGER,
    reply TEXT,
    failure_type TEXT,
    reason TEXT,
    status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_line ON history (delivery_id, log_id, recipient, id);
CREATE INDEX IF NOT EXISTS history_at ON history (at);
CREATE TABLE IF NOT EXISTS exclusions (
    delivery_id TEXT NOT NULL,
    log_id TEXT NOT NULL,
    recipient TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_type TEXT NOT NULL,
    reason TEXT NOT NULL,
    reason_code INTEGER NOT NULL,
    cause TEXT,
    cause_delivery_id TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (delivery_id, log_id, recipient)
);
"""

# Campaign's exclusion reasons (its failure reasons 9 and 8), by the address's status.
EXCLUSION_REASONS: dict[AddressStatus, tuple[str, int]] = {
    AddressStatus.QUARANTINE: ("Address in quarantine", 9),
    AddressStatus.DENYLISTED: ("Denylisted", 8),
}


@dataclass(frozen=True, slots=True)
class Exclusion:
    """A recipient a send left out, with Campaign's reason and what caused it."""

    delivery_id: str
    log_id: str
    recipient: str
    status: str            # the address's status: Quarantine or Denylisted
    reason: str            # "Address in quarantine" / "Denylisted"
    reason_code: int
    cause: str | None      # the failure reason that put the address there
    cause_delivery_id: str | None
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "log_id": self.log_id,
                "recipient": self.recipient, "status": self.status, "failure_type": "Hard",
                "reason": self.reason, "reason_code": self.reason_code, "cause": self.cause,
                "cause_delivery_id": self.cause_delivery_id, "at": self.at}


def migrate_v1(db: sqlite3.Connection) -> None:
    """Schema 1 -> 2: the quarantine table gains the last counted error."""
    columns = {str(row[1]) for row in db.execute("PRAGMA table_info(quarantine)")}
    if "last_error_at" not in columns:
        db.execute("ALTER TABLE quarantine ADD COLUMN last_error_at REAL")
        db.execute("UPDATE quarantine SET last_error_at = last_at")


def load(db: sqlite3.Connection, address: str) -> AddressState:
    row = db.execute(
        "SELECT status, hits, last_error_at, failure_type, reason, reason_code, delivery_id,"
        " log_id, first_at FROM quarantine WHERE address = ?",
        (address,),
    ).fetchone()
    if row is None:
        return AddressState()
    return _state(row)


def _state(row: Any) -> AddressState:
    return AddressState(
        status=AddressStatus(row[0]), errors=int(row[1]),
        last_error_at=None if row[2] is None else float(row[2]), failure_type=row[3],
        reason=row[4], reason_code=row[5], delivery_id=row[6], log_id=row[7],
        since=float(row[8]),
    )


def load_all(db: sqlite3.Connection) -> list[tuple[str, AddressState]]:
    rows = db.execute(
        "SELECT address, status, hits, last_error_at, failure_type, reason, reason_code,"
        " delivery_id, log_id, first_at FROM quarantine ORDER BY address"
    ).fetchall()
    return [(str(row[0]), _state(row[1:])) for row in rows]


def save(db: sqlite3.Connection, address: str, before: AddressState, after: AddressState,
         notice: Notice, updated_at: float) -> None:
    """Store `after` and note the notice in the address's history (`before` is the state the
    notice found, resets applied, so a rise of the counter means the notice was counted)."""
    if after.status is AddressStatus.VALID:
        db.execute("DELETE FROM quarantine WHERE address = ?", (address,))
    else:
        db.execute(
            "INSERT INTO quarantine (address, status, failure_type, reason, reason_code,"
            " delivery_id, log_id, first_at, last_at, hits, last_error_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET"
            " status = excluded.status, failure_type = excluded.failure_type,"
            " reason = excluded.reason, reason_code = excluded.reason_code,"
            " delivery_id = excluded.delivery_id, log_id = excluded.log_id,"
            " first_at = excluded.first_at, last_at = excluded.last_at, hits = excluded.hits,"
            " last_error_at = excluded.last_error_at",
            (address, str(after.status), after.failure_type, after.reason, after.reason_code,
             after.delivery_id, after.log_id,
             after.since if after.since is not None else notice.at, updated_at, after.errors,
             after.last_error_at),
        )
    counted = after.errors > before.errors
    db.execute(
        "INSERT INTO address_history (address, at, kind, signal, failure_type, reason,"
        " delivery_id, log_id, counted, status, errors) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (address, notice.at, notice.kind, str(notice.signal), notice.failure_type,
         notice.reason, notice.delivery_id, notice.log_id, int(counted), str(after.status),
         after.errors),
    )


def remove(db: sqlite3.Connection, address: str, at: float) -> AddressState | None:
    """Take an address out of the table (back to Valid); returns what it was, or None."""
    before = db.execute(
        "SELECT status, hits, last_error_at, failure_type, reason, reason_code, delivery_id,"
        " log_id, first_at FROM quarantine WHERE address = ?", (address,),
    ).fetchone()
    if before is None:
        return None
    db.execute("DELETE FROM quarantine WHERE address = ?", (address,))
    db.execute(
        "INSERT INTO address_history (address, at, kind, signal, counted, status, errors)"
        " VALUES (?, ?, 'removed by a user', 'Removed', 0, 'Valid', 0)", (address, at),
    )
    return _state(before)


def history_of(db: sqlite3.Connection, address: str) -> list[dict[str, Any]]:
    cursor = db.execute(
        "SELECT at, kind, signal, failure_type, reason, delivery_id, log_id, counted, status,"
        " errors FROM address_history WHERE address = ? ORDER BY id", (address,),
    )
    names = [d[0] for d in cursor.description]
    return [
        {**dict(zip(names, row, strict=True)), "counted": bool(row[7])}
        for row in cursor.fetchall()
    ]


def record_event(db: sqlite3.Connection, key: tuple[str, str, str], event: Event,
                 status: str) -> None:
    """One applied event in its line's history."""
    failure = event.failure
    db.execute(
        "INSERT INTO history (delivery_id, log_id, recipient, at, kind, seq, attempt, reply,"
        " failure_type, reason, status) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (*key, event.at, str(event.kind), event.seq, event.attempt,
         event.smtp.line() if event.smtp is not None else None,
         failure.type if failure else None, failure.reason if failure else None, status),
    )


def line_histories(db: sqlite3.Connection,
                   delivery_id: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    cursor = db.execute(
        "SELECT log_id, recipient, at, kind, seq, attempt, reply, failure_type, reason, status"
        " FROM history WHERE delivery_id = ? ORDER BY id", (delivery_id,),
    )
    names = [d[0] for d in cursor.description][2:]
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in cursor.fetchall():
        out.setdefault((str(row[0]), str(row[1])), []).append(
            dict(zip(names, row[2:], strict=True)))
    return out


def events_clock(db: sqlite3.Connection) -> float | None:
    """The latest time seen on the events' clock (the MTA's, which may run faster)."""
    row = db.execute(
        "SELECT MAX(t) FROM (SELECT MAX(at) AS t FROM history UNION ALL"
        " SELECT MAX(at) FROM address_history)"
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def add_exclusion(db: sqlite3.Connection, exclusion: Exclusion) -> None:
    db.execute(
        "INSERT OR REPLACE INTO exclusions (delivery_id, log_id, recipient, status,"
        " failure_type, reason, reason_code, cause, cause_delivery_id, at)"
        " VALUES (?, ?, ?, ?, 'Hard', ?, ?, ?, ?, ?)",
        (exclusion.delivery_id, exclusion.log_id, exclusion.recipient, exclusion.status,
         exclusion.reason, exclusion.reason_code, exclusion.cause, exclusion.cause_delivery_id,
         exclusion.at),
    )


def exclusions_of(db: sqlite3.Connection, delivery_id: str) -> list[Exclusion]:
    rows = db.execute(
        "SELECT delivery_id, log_id, recipient, status, reason, reason_code, cause,"
        " cause_delivery_id, at FROM exclusions WHERE delivery_id = ? ORDER BY log_id,"
        " recipient", (delivery_id,),
    ).fetchall()
    return [Exclusion(str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), int(r[5]),
                      r[6], r[7], float(r[8])) for r in rows]
