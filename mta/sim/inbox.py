"""The inbox's reads and deletions over the personas' store (`mta.sim.store`).

`search(data_dir, terms, start, limit)` pages through what the personas accepted, newest
first, keeping the messages every term matches (`mta.sim.search`); it answers
{"total", "start", "count", "messages"} like Mailpit's list. On the SQLite store each term
is a WHERE clause on the summary columns (part matches with LIKE, ignoring case);
a Maildir store is read whole and filtered here (it keeps no delivery id, DKIM result
nor transcript). `record(data_dir, id)` gives one message's stored columns, `delete`
removes some or all.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from mta.sim import store, store_reader
from mta.sim.search import Term, matches

MAX_PAGE = 500


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_LIKE = "LIKE ? ESCAPE '\\'"
_TEXT_COLUMNS = ("subject", "header_from", "mail_from", "header_to", "recipients")


def _where(terms: list[Term]) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for term in terms:
        if term.field == "to":
            clauses.append(f"(recipients {_LIKE} OR header_to {_LIKE})")
            args += [_like(term.value)] * 2
        elif term.field == "from":
            clauses.append(f"(mail_from {_LIKE} OR header_from {_LIKE})")
            args += [_like(term.value)] * 2
        elif term.field == "subject":
            clauses.append(f"subject {_LIKE}")
            args.append(_like(term.value))
        elif term.field == "delivery":
            clauses.append("delivery_id = ?")
            args.append(term.value)
        elif term.field == "persona":
            clauses.append("persona = ?")
            args.append(term.value)
        elif term.field == "dkim":
            clauses.append("dkim_result = ?")
            args.append(term.value.lower())
        else:
            clauses.append("(" + " OR ".join(f"{c} {_LIKE}" for c in _TEXT_COLUMNS) + ")")
            args += [_like(term.value)] * len(_TEXT_COLUMNS)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


_COLUMNS = (
    "id, persona, received_at, mail_from, recipients, header_from, header_to, subject,"
    " message_id, dkim, size, delivery_id, dkim_result"
)


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    row_id, persona, at, mail_from, rcpts, h_from, h_to, subject, mid, dkim, size, dlv, res = row
    return {
        "id": f"{persona}/{row_id}",
        "persona": persona,
        "time": float(at),
        "mail_from": mail_from,
        "recipients": list(json.loads(rcpts)),
        "header_from": h_from,
        "to": h_to,
        "subject": subject,
        "message_id": mid,
        "dkim": bool(dkim),
        "size": int(size),
        "delivery_id": dlv,
        "dkim_result": res,
    }


def _connect(data_dir: Path) -> sqlite3.Connection | None:
    path = data_dir / store.SQLITE_FILE
    if not path.is_file():
        return None
    try:
        return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise OSError(f"cannot read {path}: {exc}") from None


def _sqlite_search(
    data_dir: Path, terms: list[Term], start: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    conn = _connect(data_dir)
    if conn is None:
        return 0, []
    where, args = _where(terms)
    try:
        with conn:
            conn.execute("PRAGMA case_sensitive_like = OFF")
            total = int(conn.execute(f"SELECT COUNT(*) FROM messages{where}", args).fetchone()[0])
            # the page's ids from the covering index alone, then only those rows
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id IN (SELECT id FROM messages"
                f" INDEXED BY messages_search{where} ORDER BY received_at DESC, id DESC"
                " LIMIT ? OFFSET ?) ORDER BY received_at DESC, id DESC",
                [*args, limit, start],
            ).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0, []
        raise OSError(f"cannot read the store: {exc}") from None
    except sqlite3.Error as exc:
        raise OSError(f"cannot read the store: {exc}") from None
    finally:
        conn.close()
    return total, [_summary(row) for row in rows]


def _maildir_search(
    data_dir: Path, terms: list[Term], start: int, limit: int
) -> tuple[int, list[dict[str, Any]]]:
    found = []
    for summary in store_reader._maildir_listing(data_dir, None, None):
        item = summary[1].as_dict()
        fields = {
            "to": [*item["recipients"], item["to"]],
            "from": [item["mail_from"], item["header_from"]],
            "subject": [item["subject"]],
            "persona": [item["persona"]],
            "dkim": ["unchecked" if item["dkim"] else "none"],
            "delivery": [],
        }
        fields["text"] = fields["to"] + fields["from"] + fields["subject"]
        if all(matches(term, fields) for term in terms):
            item["delivery_id"] = ""
            item["dkim_result"] = fields["dkim"][0]
            found.append(item)
    return len(found), found[start : start + limit]


def search(data_dir: Path, terms: list[Term], start: int = 0, limit: int = 50) -> dict[str, Any]:
    """A page of what matches `terms`, newest first; see the module docstring."""
    total, messages = _sqlite_search(data_dir, terms, start, limit)
    if (data_dir / store.PERSONAS_DIR).is_dir() and any(
        (data_dir / store.PERSONAS_DIR / p / store.MAILDIR).is_dir()
        for p in os.listdir(data_dir / store.PERSONAS_DIR)
    ):
        more, extra = _maildir_search(data_dir, terms, 0, start + limit)
        if more:
            total += more
            merged = sorted(
                messages + extra, key=lambda m: (m["time"], m["id"]), reverse=True
            )
            messages = merged[:limit]
    return {"total": total, "start": start, "count": len(messages), "messages": messages}


def record(data_dir: Path, message_id: str) -> dict[str, Any] | None:
    """The stored columns of one message plus its bytes as received (`content`) and the
    persona's answers (`transcript`); None if unknown."""
    raw = store_reader.message_bytes(data_dir, message_id)
    if raw is None:
        return None
    length, _, _ = store_reader._split_trace(raw[: store.READ_LIMIT])
    found: dict[str, Any] = {"id": message_id, "content": raw[length:], "transcript": []}
    persona, _, name = message_id.partition("/")
    if name.isdigit():
        conn = _connect(data_dir)
        if conn is not None:
            try:
                row = conn.execute(
                    f"SELECT {_COLUMNS}, transcript FROM messages WHERE id = ? AND persona = ?",
                    (int(name), persona),
                ).fetchone()
            except sqlite3.Error as exc:
                raise OSError(f"cannot read the store: {exc}") from None
            finally:
                conn.close()
            if row is not None:
                found.update(_summary(row[:-1]))
                found["transcript"] = [list(pair) for pair in json.loads(row[-1])]
    else:
        for item in store_reader.list_messages(data_dir, persona):
            if item.id == message_id:
                found.update(item.as_dict(), delivery_id="", dkim_result="")
                break
    return found


def delete(data_dir: Path, ids: list[str] | None) -> dict[str, int]:
    """Remove the messages `ids` (None: all of them); deleted count per persona."""
    deleted: dict[str, int] = {}
    path = data_dir / store.SQLITE_FILE
    if path.is_file():
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if ids is None:
                rows = conn.execute("SELECT persona, COUNT(*) FROM messages GROUP BY persona")
                for persona, count in rows.fetchall():
                    deleted[persona] = int(count)
                conn.execute("DELETE FROM messages")
            else:
                for message_id in ids:
                    persona, _, name = message_id.partition("/")
                    if name.isdigit() and len(name) <= 18:
                        cursor = conn.execute(
                            "DELETE FROM messages WHERE id = ? AND persona = ?",
                            (int(name), persona),
                        )
                        if cursor.rowcount:
                            deleted[persona] = deleted.get(persona, 0) + cursor.rowcount
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OSError(f"cannot delete from {path}: {exc}") from None
        finally:
            conn.close()
    for persona in store_reader._maildir_personas(data_dir):
        for sub in ("new", "cur"):
            folder = store.maildir_root(data_dir, persona) / sub
            if not folder.is_dir():
                continue
            for entry in os.listdir(folder):
                if ids is None or f"{persona}/{entry}" in ids:
                    try:
                        os.unlink(folder / entry)
                    except FileNotFoundError:
                        continue
                    deleted[persona] = deleted.get(persona, 0) + 1
    return deleted
