"""Reading back what the personas stored (`mta.sim.store`), from every store present in the
data directory, so `mta sim ls` needs no flag: listings (`list_messages`, `count_messages`,
`personas_in`), one message (`message_bytes`, starting with the same Return-Path /
Delivered-To lines whichever store kept it) and a persona's messages (`stored_messages`).
See `mta.sim.store` for the two stores' layout.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mta.sim.store import (
    MAILDIR,
    PERSONAS_DIR,
    READ_LIMIT,
    SQLITE_FILE,
    header_fields,
    maildir_root,
    trace,
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,:=-]*$")
_MAILDIR_NAME = re.compile(r"^(\d+)\.P\d+Q(\d+)\.")
_MAX_ROW_ID_DIGITS = 18  # below 2**63: anything longer is not one of ours


def _split_trace(head: bytes) -> tuple[int, str, list[str]]:
    """(length of the trace, envelope sender, recipients) at the start of a stored file."""
    end = 0
    mail_from = ""
    recipients: list[str] = []
    while True:
        eol = head.find(b"\r\n", end)
        if eol < 0:
            break
        line = head[end:eol]
        if line.startswith(b"Return-Path: ") and end == 0:
            mail_from = line[13:].strip().strip(b"<>").decode("utf-8", "replace")
        elif line.startswith(b"Delivered-To: "):
            recipients.append(line[14:].strip().decode("utf-8", "replace"))
        else:
            break
        end = eol + 2
    return end, mail_from, recipients


@dataclass(frozen=True)
class Summary:
    id: str  # "<persona>/<row id>" (SQLite) or "<persona>/<file name>" (Maildir)
    persona: str
    time: float  # when the persona accepted it, on the sim's clock (Unix seconds)
    mail_from: str
    recipients: list[str]
    header_from: str
    to: str
    subject: str
    message_id: str
    dkim: bool
    size: int  # the message as received (without the trace the store adds)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_Key = tuple[float, int, str]  # (time, sequence in its store, id): newest last


def _sqlite_query(data_dir: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query on the data dir's SQLite store ([] if there is none)."""
    path = data_dir / SQLITE_FILE
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []  # created, schema not committed yet
        raise OSError(f"cannot read {path}: {exc}") from None
    except sqlite3.Error as exc:
        raise OSError(f"cannot read {path}: {exc}") from None


def _maildir_personas(data_dir: Path) -> list[str]:
    base = data_dir / PERSONAS_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MAILDIR).is_dir())


def personas_in(data_dir: Path) -> list[str]:
    """Every persona known to a store in `data_dir` (stored messages or not)."""
    names = set(_maildir_personas(data_dir))
    names.update(str(row[0]) for row in _sqlite_query(data_dir, "SELECT name FROM personas"))
    return sorted(names)


def _files(root: Path) -> Iterator[Path]:
    for sub in ("new", "cur"):
        folder = root / sub
        if folder.is_dir():
            yield from folder.iterdir()


def _maildir_key(name: str, persona: str) -> _Key:
    match = _MAILDIR_NAME.match(name)
    if match is None:
        return (0.0, 0, f"{persona}/{name}")
    return (int(match.group(1)) / 1e9, int(match.group(2)), f"{persona}/{name}")


def summarise(path: Path, persona: str) -> Summary:
    """The summary of one Maildir file."""
    with path.open("rb") as handle:
        head = handle.read(READ_LIMIT)
    size = path.stat().st_size
    length, mail_from, recipients = _split_trace(head)
    fields = header_fields(head[length:])
    return Summary(
        id=f"{persona}/{path.name}",
        persona=persona,
        time=_maildir_key(path.name, persona)[0],
        mail_from=mail_from,
        recipients=recipients,
        header_from=fields["header_from"],
        to=fields["to"],
        subject=fields["subject"],
        message_id=fields["message_id"],
        dkim=bool(fields["dkim"]),
        size=size - length,
    )


def _maildir_listing(
    data_dir: Path, persona: str | None, limit: int | None
) -> list[tuple[_Key, Summary]]:
    names = [persona] if persona else _maildir_personas(data_dir)
    found: list[tuple[_Key, str, Path]] = []
    for name in names:
        for path in _files(maildir_root(data_dir, name)):
            found.append((_maildir_key(path.name, name), name, path))
    found.sort(reverse=True)
    if limit is not None:
        found = found[:limit]
    out = []
    for key, name, path in found:
        try:
            out.append((key, summarise(path, name)))
        except OSError:
            continue  # moved or removed meanwhile
    return out


_SUMMARY_COLUMNS = (
    "id, persona, received_at, mail_from, recipients, header_from, header_to, subject,"
    " message_id, dkim, size"
)


def _sqlite_listing(
    data_dir: Path, persona: str | None, limit: int | None
) -> list[tuple[_Key, Summary]]:
    where, args = ("WHERE persona = ?", (persona,)) if persona else ("", ())
    rows = _sqlite_query(
        data_dir,
        f"SELECT {_SUMMARY_COLUMNS} FROM messages {where}"
        " ORDER BY received_at DESC, id DESC LIMIT ?",
        (*args, -1 if limit is None else limit),
    )
    out = []
    for row_id, name, at, mail_from, rcpts, h_from, h_to, subject, mid, dkim, size in rows:
        summary = Summary(
            id=f"{name}/{row_id}",
            persona=name,
            time=float(at),
            mail_from=mail_from,
            recipients=list(json.loads(rcpts)),
            header_from=h_from,
            to=h_to,
            subject=subject,
            message_id=mid,
            dkim=bool(dkim),
            size=int(size),
        )
        out.append(((float(at), int(row_id), summary.id), summary))
    return out


def list_messages(
    data_dir: Path, persona: str | None = None, limit: int | None = None
) -> list[Summary]:
    """Newest first (by the sim's clock, then arrival), at most `limit`."""
    found = _sqlite_listing(data_dir, persona, limit) + _maildir_listing(data_dir, persona, limit)
    found.sort(key=lambda pair: pair[0], reverse=True)
    if limit is not None:
        found = found[:limit]
    return [summary for _, summary in found]


def count_messages(data_dir: Path, persona: str | None = None) -> dict[str, int]:
    """Messages stored per persona (every known persona when `persona` is None)."""
    names = [persona] if persona else personas_in(data_dir)
    counts = {name: sum(1 for _ in _files(maildir_root(data_dir, name))) for name in names}
    if persona:
        rows = _sqlite_query(
            data_dir, "SELECT persona, COUNT(*) FROM messages WHERE persona = ?", (persona,)
        )
    else:
        rows = _sqlite_query(data_dir, "SELECT persona, COUNT(*) FROM messages GROUP BY persona")
    for name, count in rows:
        if name is not None:
            counts[str(name)] = counts.get(str(name), 0) + int(count)
    return counts


def _parse_id(message_id: str) -> tuple[str, str] | None:
    persona, slash, name = message_id.partition("/")
    if not slash or not _NAME.match(persona) or not _NAME.match(name) or ".." in message_id:
        return None
    return persona, name


def message_bytes(data_dir: Path, message_id: str) -> bytes | None:
    """A stored message as a local delivery agent would hand it over: Return-Path and
    Delivered-To lines, then the bytes exactly as received. None for an unknown id
    (and for anything that is not an id)."""
    parsed = _parse_id(message_id)
    if parsed is None:
        return None
    persona, name = parsed
    if name.isdigit():  # a row id; Maildir names always hold a dot
        if len(name) > _MAX_ROW_ID_DIGITS:
            return None
        rows = _sqlite_query(
            data_dir,
            "SELECT mail_from, recipients, message FROM messages WHERE id = ? AND persona = ?",
            (int(name), persona),
        )
        if not rows:
            return None
        mail_from, recipients, content = rows[0]
        return trace(mail_from, json.loads(recipients)) + bytes(content)
    root = maildir_root(data_dir, persona)
    for sub in ("new", "cur"):
        path = root / sub / name
        if path.is_file():
            try:
                return path.read_bytes()
            except FileNotFoundError:
                return None  # moved or removed meanwhile
    return None


def stored_messages(data_dir: Path, persona: str) -> list[bytes]:
    """Every message `persona` stored, oldest first, as `message_bytes` returns them."""
    found: list[tuple[_Key, bytes]] = []
    for row_id, at, mail_from, recipients, content in _sqlite_query(
        data_dir,
        "SELECT id, received_at, mail_from, recipients, message FROM messages"
        " WHERE persona = ? ORDER BY received_at, id",
        (persona,),
    ):
        found.append(
            (
                (float(at), int(row_id), f"{persona}/{row_id}"),
                trace(mail_from, json.loads(recipients)) + bytes(content),
            )
        )
    for path in _files(maildir_root(data_dir, persona)):
        found.append((_maildir_key(path.name, persona), path.read_bytes()))
    found.sort(key=lambda pair: pair[0])
    return [content for _, content in found]
