"""The spool's statements: each function runs on a connection inside the writer's (or the
reader's) transaction and knows nothing of threads or futures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

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


def digest(content: bytes) -> str:
    """The checksum kept with a message's content (hex SHA-256)."""
    return hashlib.sha256(content).hexdigest()


def checksum_stored(conn: sqlite3.Connection) -> int:
    """Migration 2 -> 3: the checksum of every content already stored."""
    rows = conn.execute(
        "SELECT id, content FROM messages WHERE content IS NOT NULL AND content_sha256 IS NULL"
    ).fetchall()
    conn.executemany(
        "UPDATE messages SET content_sha256 = ? WHERE id = ?",
        [(digest(content), message_id) for message_id, content in rows],
    )
    return len(rows)


def queued_counts(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """(messages with recipients pending, recipients queued, of them leased) at start."""
    messages = conn.execute("SELECT COUNT(*) FROM messages WHERE pending > 0").fetchone()[0]
    queued, leased = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(leased), 0) FROM recipients WHERE state = 'queued'"
    ).fetchone()
    return int(messages), int(queued), int(leased)


def recover_leases(conn: sqlite3.Connection) -> int:
    cursor = conn.execute(
        "UPDATE recipients SET leased = 0, possible_duplicate = 1 WHERE leased = 1"
    )
    return cursor.rowcount


def probe_write(conn: sqlite3.Connection) -> None:
    """A write that needs free pages and leaves nothing behind: is there room again?"""
    cursor = conn.execute(
        "INSERT INTO site_events (at, site, binding, body) VALUES (0, '', '', zeroblob(8192))"
    )
    conn.execute("DELETE FROM site_events WHERE id = ?", (cursor.lastrowid,))


def ingest(conn: sqlite3.Connection, messages: Sequence[NewMessage]) -> None:
    """Store messages, their recipients and their "relayed" events: one statement per table
    for them all (each statement costs the writer thread a GIL hand-over). The ids are given
    here, as SQLite would: the next after the largest."""
    message_id = _next_id(conn, "messages")
    recipient_id = _next_id(conn, "recipients")
    message_rows: list[tuple[Any, ...]] = []
    recipient_rows: list[tuple[Any, ...]] = []
    event_rows: list[tuple[Any, ...]] = []
    for m in messages:
        message_rows.append(
            (
                message_id,
                m.queue_id,
                m.mail_from,
                m.delivery_id,
                m.received_at,
                m.expires_at,
                len(m.content),
                int(m.smtputf8),
                len(m.recipients),
                m.content,
                m.content_sha256 or digest(m.content),
            )
        )
        seq = 1 if m.events else 0
        for index, r in enumerate(m.recipients):
            recipient_rows.append(
                (
                    recipient_id,
                    message_id,
                    r.address,
                    r.domain,
                    r.log_id,
                    m.received_at,
                    m.expires_at,
                    seq,
                    m.received_at,
                )
            )
            if m.events:
                event_id, body = m.events[index]
                event_rows.append((event_id, recipient_id, m.received_at, body))
            recipient_id += 1
        message_id += 1
    _insert_rows(
        conn,
        "messages (id, queue_id, mail_from, delivery_id, received_at, expires_at, size,"
        " smtputf8, pending, content, content_sha256)",
        message_rows,
    )
    _insert_rows(
        conn,
        "recipients (id, message_id, address, domain, log_id, next_attempt_at, expires_at, seq,"
        " updated_at)",
        recipient_rows,
    )
    _insert_rows(
        conn,
        "events (event_id, recipient_id, at, body, seq, kind)",
        event_rows,
        extra="1, 'relayed'",
    )


ROWS_PER_INSERT = 256  # rows of one INSERT (SQLite allows 32,766 parameters a statement)


def _next_id(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").fetchone()[0])


def _insert_rows(
    conn: sqlite3.Connection, into: str, rows: Sequence[tuple[Any, ...]], extra: str = ""
) -> None:
    """INSERT INTO `into` VALUES (...), (...), ...: one statement for up to ROWS_PER_INSERT
    rows; `extra` is SQL for the columns after the parameters, the same in every row."""
    if not rows:
        return
    marks = "(" + ", ".join("?" * len(rows[0])) + (f", {extra}" if extra else "") + ")"
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        conn.execute(
            f"INSERT INTO {into} VALUES {', '.join([marks] * len(chunk))}",
            [value for row in chunk for value in row],
        )


_PICK_COLUMNS = (
    "r.id, r.message_id, m.queue_id, m.mail_from, m.delivery_id, r.address, r.domain, r.log_id,"
    " r.attempts, r.seq, m.received_at, m.expires_at, m.smtputf8, r.possible_duplicate,"
    " r.last_code, r.last_enhanced, r.last_text, r.last_phase, r.last_mx, r.reported_key,"
    " r.reported_at"
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
        reported_key=row[19],
        reported_at=row[20],
    )


def _lease(conn: sqlite3.Connection, recipients: Sequence[DueRecipient]) -> None:
    _where_ids(conn, "UPDATE recipients SET leased = 1 WHERE", [r.recipient_id for r in recipients])


def _next_due(conn: sqlite3.Connection, domain: str) -> float | None:
    row = conn.execute(
        "SELECT MIN(next_attempt_at) FROM recipients"
        " WHERE domain = ? AND state = 'queued' AND leased = 0",
        (domain,),
    ).fetchone()
    return row[0] if row else None


def pick(
    conn: sqlite3.Connection,
    requests: Sequence[tuple[str, int]],
    now: float,
    have: Collection[str] = (),
) -> Pick:
    """Lease per (domain, limit); read (and check) the contents of the messages picked but
    those whose queue ids are in `have` (the caller has their content)."""
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
    wanted = sorted({r.message_id for r in recipients if r.queue_id not in have})
    contents, damaged = verified_contents(conn, wanted)
    return Pick(recipients, contents, next_due, frozenset(damaged))


def verified_contents(
    conn: sqlite3.Connection, message_ids: Sequence[int]
) -> tuple[dict[int, bytes], list[int]]:
    """The contents whose checksum holds, and the ids of the others (a checksum that does
    not match, content missing or unreadable): those are marked damaged, never sent.

    Read 500 at a time; a batch that meets a damaged page is read again one message at a
    time, so only the messages on that page are lost."""
    rows: dict[int, tuple[Any, Any, Any]] = {}
    for start in range(0, len(message_ids), 500):
        chunk = list(message_ids[start : start + 500])
        try:
            rows.update(_content_rows(conn, chunk))
        except sqlite3.DatabaseError:
            for message_id in chunk:
                with contextlib.suppress(sqlite3.DatabaseError):
                    rows.update(_content_rows(conn, [message_id]))
    contents: dict[int, bytes] = {}
    damaged: list[int] = []
    for message_id in message_ids:
        row = rows.get(message_id)
        if row is None or row[0] is None or row[2] or (row[1] and digest(row[0]) != row[1]):
            damaged.append(message_id)
        else:
            contents[message_id] = bytes(row[0])
    if damaged:
        mark_damaged(conn, damaged)
    return contents, damaged


def _content_rows(
    conn: sqlite3.Connection, message_ids: list[int]
) -> dict[int, tuple[Any, Any, Any]]:
    marks = ",".join("?" * len(message_ids))
    return {
        row[0]: (row[1], row[2], row[3])
        for row in conn.execute(
            f"SELECT id, content, content_sha256, damaged FROM messages WHERE id IN ({marks})",
            message_ids,
        ).fetchall()
    }


def mark_damaged(conn: sqlite3.Connection, message_ids: Sequence[int]) -> None:
    with contextlib.suppress(sqlite3.DatabaseError):  # a page too damaged to take the flag
        conn.executemany(
            "UPDATE messages SET damaged = 1 WHERE id = ?", [(i,) for i in message_ids]
        )


def pick_expired(
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


def queues(conn: sqlite3.Connection) -> list[DomainQueue]:
    return [
        DomainQueue(domain, next_due, count)
        for domain, next_due, count in conn.execute(
            "SELECT domain, MIN(CASE WHEN leased = 0 THEN next_attempt_at END), COUNT(*)"
            " FROM recipients WHERE state = 'queued' GROUP BY domain"
        )
    ]


def first_days(conn: sqlite3.Connection, names: Sequence[str], today: int) -> dict[str, int]:
    conn.executemany(
        "INSERT OR IGNORE INTO bindings (name, first_day) VALUES (?, ?)",
        [(name, today) for name in names],
    )
    return dict(conn.execute("SELECT name, first_day FROM bindings").fetchall())


def site_event(conn: sqlite3.Connection, at: float, site: str, binding: str, body: str) -> None:
    conn.execute(
        "INSERT INTO site_events (at, site, binding, body) VALUES (?, ?, ?, ?)",
        (at, site, binding, body),
    )


def volume_since(conn: sqlite3.Connection, since: float) -> list[tuple[str, str, int]]:
    return [
        (binding, site, count)
        for binding, site, count in conn.execute(
            "SELECT binding, site, COUNT(*) FROM attempts WHERE at >= ? AND binding IS NOT NULL"
            " AND site IS NOT NULL GROUP BY binding, site",
            (since,),
        )
    ]


def record(conn: sqlite3.Connection, updates: Sequence[Update]) -> None:
    """Attempt results: one statement per table for them all (each row of an executemany
    would cost the writer thread a GIL hand-over). Each recipient gets its state and, where
    the attempt had one, its last reply (a reply's enhanced code goes with its code)."""
    _update_rows(
        conn,
        "recipients SET state = v.column2, attempts = v.column3, next_attempt_at = v.column4,"
        " leased = 0, seq = v.column5, possible_duplicate = v.column6,"
        " last_code = COALESCE(v.column7, last_code),"
        " last_enhanced = CASE WHEN v.column7 IS NULL THEN last_enhanced ELSE v.column8 END,"
        " last_text = COALESCE(v.column9, last_text),"
        " last_phase = COALESCE(v.column10, last_phase),"
        " last_mx = COALESCE(v.column11, last_mx), updated_at = v.column12,"
        " reported_at = CASE WHEN v.column13 IS NULL THEN reported_at ELSE v.column12 END,"
        " reported_key = COALESCE(v.column13, reported_key)",
        "recipients.id",
        [
            (
                u.recipient_id,
                u.state,
                u.attempts,
                u.next_attempt_at,
                u.seq,
                int(u.possible_duplicate),
                u.code,
                u.enhanced,
                u.text,
                u.phase,
                u.mx,
                u.at,
                u.reported_key,
            )
            for u in updates
        ],
    )
    _insert_rows(
        conn,
        "attempts (recipient_id, at, code, enhanced, text, phase, mx, result, site, binding)",
        [
            (
                u.recipient_id,
                u.at,
                u.code,
                u.enhanced,
                u.text,
                u.phase,
                u.mx,
                u.result.value,
                u.site,
                u.binding,
            )
            for u in updates
            if u.attempted
        ],
    )
    _insert_rows(
        conn,
        "events (event_id, recipient_id, seq, kind, at, body)",
        [
            (u.event[0], u.recipient_id, u.seq, u.event[1], u.at, u.event[2])
            for u in updates
            if u.event is not None
        ],
    )
    finished: dict[int, int] = {}
    for u in updates:
        if u.state != "queued":
            finished[u.message_id] = finished.get(u.message_id, 0) + 1
    if finished:
        _update_rows(
            conn,
            "messages SET pending = pending - v.column2",
            "messages.id",
            list(finished.items()),
        )
        # Content is kept only while some recipient may still need it.
        _where_ids(conn, "UPDATE messages SET content = NULL WHERE pending <= 0 AND", finished)


def _update_rows(
    conn: sqlite3.Connection, table_set: str, key: str, rows: Sequence[tuple[Any, ...]]
) -> None:
    """UPDATE `table_set` FROM (VALUES ...) AS v WHERE `key` = v.column1: one statement for
    up to ROWS_PER_INSERT rows, each row's values as v.column1, v.column2, ... A key given
    twice: its last row wins, as with one UPDATE per row (SQLite would pick either)."""
    rows = list({row[0]: row for row in rows}.values())
    if not rows:
        return
    marks = "(" + ", ".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start : start + ROWS_PER_INSERT]
        conn.execute(
            f"UPDATE {table_set} FROM (VALUES {', '.join([marks] * len(chunk))}) AS v"
            f" WHERE {key} = v.column1",
            [value for row in chunk for value in row],
        )


def _where_ids(conn: sqlite3.Connection, statement: str, ids: Collection[int]) -> None:
    """`statement` (ending in WHERE ... or AND) for the rows with these ids, one statement
    for up to ROWS_PER_INSERT of them."""
    every = list(ids)
    for start in range(0, len(every), ROWS_PER_INSERT):
        chunk = every[start : start + ROWS_PER_INSERT]
        conn.execute(f"{statement} id IN ({', '.join('?' * len(chunk))})", chunk)


def release(conn: sqlite3.Connection, releases: Sequence[Release]) -> None:
    conn.executemany(
        "UPDATE recipients SET leased = 0, next_attempt_at = ?,"
        " possible_duplicate = MAX(possible_duplicate, ?) WHERE id = ?",
        [(r.next_attempt_at, int(r.possible_duplicate), r.recipient_id) for r in releases],
    )


def stats(conn: sqlite3.Connection) -> SpoolStats:
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


def prune_events(conn: sqlite3.Connection, cutoff: float, bound: int | None, limit: int) -> int:
    """Delete up to `limit` of the oldest events with id <= bound and `at` before cutoff.

    Stops at the first event too young (ids follow time), and never deletes the newest
    event: SQLite would hand its id out again and the cursors would skip new events."""
    newest = conn.execute("SELECT MAX(id) FROM events").fetchone()[0]
    if newest is None:
        return 0
    top = newest - 1 if bound is None else min(bound, newest - 1)
    last: int | None = None
    for event_id, at in conn.execute(
        "SELECT id, at FROM events WHERE id <= ? ORDER BY id LIMIT ?", (top, limit)
    ):
        if at >= cutoff:
            break
        last = event_id
    if last is None:
        return 0
    return conn.execute("DELETE FROM events WHERE id <= ?", (last,)).rowcount


def events_after(conn: sqlite3.Connection, after: int, limit: int) -> list[tuple[int, Any]]:
    return [
        (row[0], json.loads(row[1]))
        for row in conn.execute(
            "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        )
    ]


def history(conn: sqlite3.Connection, queue_id: str) -> list[dict[str, Any]]:
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


def webhook_cursors(conn: sqlite3.Connection, urls: Sequence[str]) -> dict[str, WebhookCursor]:
    """Each endpoint's cursor; an endpoint seen for the first time starts at event 0."""
    found: dict[str, WebhookCursor] = {}
    for url in urls:
        conn.execute("INSERT OR IGNORE INTO webhook_cursors (url) VALUES (?)", (url,))
        last_id, disabled, failing_since, delivered, dropped = conn.execute(
            "SELECT last_id, disabled, failing_since, delivered, dropped FROM webhook_cursors"
            " WHERE url = ?",
            (url,),
        ).fetchone()
        found[url] = WebhookCursor(
            url, last_id, bool(disabled), failing_since, delivered, dropped
        )
    return found


def advance_webhook(
    conn: sqlite3.Connection, url: str, last_id: int, delivered: int, dropped: int
) -> None:
    conn.execute(
        "UPDATE webhook_cursors SET last_id = ?, failing_since = NULL,"
        " delivered = delivered + ?, dropped = dropped + ? WHERE url = ?",
        (last_id, delivered, dropped, url),
    )


def webhook_failing(conn: sqlite3.Connection, url: str, since: float) -> None:
    conn.execute("UPDATE webhook_cursors SET failing_since = ? WHERE url = ?", (since, url))


def disable_webhook(conn: sqlite3.Connection, url: str) -> None:
    conn.execute("UPDATE webhook_cursors SET disabled = 1 WHERE url = ?", (url,))


def _queued_where(domains: Sequence[str] | None, queue_id: str | None) -> tuple[str, list[Any]]:
    if queue_id is not None:
        return "message_id = (SELECT id FROM messages WHERE queue_id = ?)", [queue_id]
    names = list(domains or ())
    return f"domain IN ({','.join('?' * len(names))})", names


def make_due(conn: sqlite3.Connection, domains: Sequence[str], now: float) -> int:
    """An operator's "retry now": the domains' queued recipients are due at `now`."""
    if not domains:
        return 0
    where, args = _queued_where(domains, None)
    cursor = conn.execute(
        f"UPDATE recipients SET next_attempt_at = ? WHERE {where}"
        " AND state = 'queued' AND leased = 0 AND next_attempt_at > ?",
        [now, *args, now],
    )
    return cursor.rowcount


def take_queued(
    conn: sqlite3.Connection, domains: Sequence[str] | None, queue_id: str | None, limit: int
) -> list[DueRecipient]:
    """Lease up to `limit` queued recipients of the domains (or of one message), due or not:
    an operator bounces them."""
    where, args = _queued_where(domains, queue_id)
    if not args:
        return []
    rows = conn.execute(
        f"SELECT {_PICK_COLUMNS} FROM recipients r JOIN messages m ON m.id = r.message_id"
        f" WHERE r.id IN (SELECT id FROM recipients WHERE {where} AND state = 'queued'"
        " AND leased = 0 LIMIT ?)",
        [*args, limit],
    ).fetchall()
    picked = [_due(row) for row in rows]
    _lease(conn, picked)
    return picked


def operator_actions(conn: sqlite3.Connection, binding: str, limit: int) -> list[str]:
    """The bodies of the newest `limit` site events recorded under `binding` (the operator's)."""
    rows = conn.execute(
        "SELECT body FROM site_events WHERE binding = ? ORDER BY id DESC LIMIT ?",
        (binding, limit),
    ).fetchall()
    return [str(body) for (body,) in rows]


def delivered_since(
    conn: sqlite3.Connection, after: int, limit: int
) -> list[tuple[int, float, str]]:
    """(attempt id, seconds from acceptance to delivery, site) of delivered attempts after
    `after` (for the delivery latency histogram)."""
    rows = conn.execute(
        "SELECT a.id, a.at - m.received_at, COALESCE(a.site, '') FROM attempts a"
        " JOIN recipients r ON r.id = a.recipient_id JOIN messages m ON m.id = r.message_id"
        " WHERE a.id > ? AND a.result = 'delivered' ORDER BY a.id LIMIT ?",
        (after, limit),
    ).fetchall()
    return [(int(i), float(seconds), str(site)) for i, seconds, site in rows]


def queued_ages(
    conn: sqlite3.Connection, now: float, bounds: Sequence[float]
) -> tuple[list[int], int, float]:
    """How many queued recipients are at most each bound old, how many in all, the sum of ages."""
    sums = ", ".join("SUM(? - m.received_at <= ?)" for _ in bounds)
    args: list[float] = []
    for bound in bounds:
        args += [now, bound]
    row = conn.execute(
        f"SELECT {sums}{',' if bounds else ''} COUNT(*), COALESCE(SUM(? - m.received_at), 0)"
        " FROM recipients r JOIN messages m ON m.id = r.message_id WHERE r.state = 'queued'",
        [*args, now],
    ).fetchone()
    return [int(c or 0) for c in row[: len(bounds)]], int(row[-2] or 0), float(row[-1] or 0.0)


def event_times(conn: sqlite3.Connection, after: int, upto: int, limit: int) -> list[float]:
    """The times of the events with ids in (after, upto]."""
    rows = conn.execute(
        "SELECT at FROM events WHERE id > ? AND id <= ? ORDER BY id LIMIT ?", (after, upto, limit)
    ).fetchall()
    return [float(at) for (at,) in rows]
