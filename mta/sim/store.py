"""What the personas accept: stored (SQLite by default, or a Maildir per persona) and read back.

Two stores, chosen by `sim.store` (`mta sim --store sqlite|maildir`):

- "sqlite" (default): one file for the whole simulation, `<data_dir>/received.sqlite3`,
  in WAL mode. Table `messages`: id, persona, received_at, mail_from, recipients
  (a JSON array), size, subject, header_from, header_to, message_id, dkim (0/1) and
  `message`, the bytes exactly as received (no trace added). Table `personas`: the
  names that ever stored here (so an empty persona is known). A message's id is
  `<persona>/<row id>`, e.g. `gmail/42`.
- "maildir": `<data_dir>/personas/<name>/Maildir/{tmp,new,cur}`, one file per
  message: Return-Path and one Delivered-To per recipient, then the bytes as
  received. A message's id is `<persona>/<file name>`.

One file rather than one per persona: the single store thread writes for every
persona, so one file makes one transaction (and with `store_fsync`, one fsync)
per batch whatever the mix of personas, and a listing across personas is one
indexed query.

Both stores give the same answers: a message read back (`message_bytes`) starts
with the same Return-Path / Delivered-To lines (SQLite adds them from its
columns); `Summary.size` is the size of the message as received (trace not
counted); `Summary.time` / `received_at` is the sim's clock (virtual time, equal
to real time at scale 1) when the persona accepted the message; the Maildir
file names carry it in nanoseconds. The readers (`mta.sim.store_reader`:
`list_messages`, `count_messages`, `personas_in`, `message_bytes`, `stored_messages`)
read every store present in the data directory, so `mta sim ls` needs no flag.

Writing: `StoreWriter` is one thread that writes for every persona. A session
awaits its message's write before replying 250 (the message is stored when the
sender hears "OK"), while the event loop keeps serving other sessions. Each
wake-up takes every message waiting: SQLite writes them in one transaction.
Durability: without `sim.store_fsync`, SQLite runs `synchronous=NORMAL` (in WAL
mode a commit survives a crash of the sim process, as a Maildir file written
without fsync does; a power loss may lose the last commits); with it, `FULL`
(the WAL is fsynced at each commit, once per batch, like one fsync per file).
Readers open read-only connections: in WAL mode they never block the writer.
(A read-only reader cannot remove the empty `-wal` / `-shm` files it may create
beside a database whose writer has gone: harmless, the next writer uses them.)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mta.smtp.maildir import Maildir
from mta.sqlite import SchemaVersionError, open_database

log = logging.getLogger("mta.sim.store")

PERSONAS_DIR = "personas"
MAILDIR = "Maildir"
SQLITE_FILE = "received.sqlite3"
STORES = ("sqlite", "maildir")
SCHEMA_VERSION = 2  # 2: delivery_id, dkim_result, transcript (what the inbox searches and shows)
READ_LIMIT = 64 * 1024


_HOST = socket.gethostname().replace("/", "_").replace(":", "_")
_serial = itertools.count()


def trace(mail_from: str, recipients: Sequence[str]) -> bytes:
    """The lines a local delivery agent adds: Return-Path, then one Delivered-To per recipient."""
    return (
        f"Return-Path: <{mail_from}>\r\n" + "".join(f"Delivered-To: {r}\r\n" for r in recipients)
    ).encode("utf-8")


_FIELDS = {
    b"from": "header_from",
    b"to": "to",
    b"subject": "subject",
    b"message-id": "message_id",
    b"dkim-signature": "dkim",
    b"feedback-id": "feedback_id",
}


def header_fields(content: bytes) -> dict[str, str]:
    """The first From, To, Subject, Message-ID and DKIM-Signature fields of a message
    (unfolded; absent ones are ""), read in one pass over the header block."""
    end = content.find(b"\r\n\r\n", 0, READ_LIMIT)
    head = content[:end] if end >= 0 else content[:READ_LIMIT]
    found: dict[str, bytes] = {}
    current: str | None = None
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                found[current] += b" " + line.strip()
            continue
        current = None
        name, colon, value = line.partition(b":")
        if colon:
            key = _FIELDS.get(name.lower())
            if key is not None and key not in found:
                current = key
                found[key] = value.strip()
    return {
        key: found[key].decode("utf-8", "replace").strip() if key in found else ""
        for key in _FIELDS.values()
    }


# -- writing ------------------------------------------------------------------------------


@dataclass(slots=True)
class Received:
    """One accepted message, as a persona hands it to the store."""

    persona: str
    mail_from: str
    recipients: list[str]
    content: bytes
    received_at: float  # the sim's clock
    # (stage, reply) in session order: what the persona answered to MAIL, each RCPT, DATA, dot
    transcript: list[tuple[str, str]] | None = None


class LeanMaildir(Maildir):
    """`mta.maildir.Maildir` with a cheaper `deliver` (string paths, one write, no pathlib)
    and the sim's clock in the file name: the same layout and name shape, so everything
    that reads Maildirs reads these."""

    def __init__(self, root: Path, fsync: bool = False) -> None:
        super().__init__(root, fsync)
        self._tmp = f"{root}{os.sep}tmp{os.sep}"
        self._new = f"{root}{os.sep}new{os.sep}"
        self._suffix = f".P{os.getpid()}Q"

    def deliver(
        self,
        mail_from: str,
        recipients: Sequence[str],
        content: bytes,
        received_at: float | None = None,
    ) -> Path:
        stamp = time.time_ns() if received_at is None else round(received_at * 1e9)
        name = f"{stamp}{self._suffix}{next(_serial)}.{_HOST}"
        tmp = self._tmp + name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, trace(mail_from, recipients) + content)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self._new + name)
        self.stored += 1
        return Path(self._new + name)


class Store(ABC):
    """Where one simulation's personas keep what they accept. `write` is called by one
    thread at a time (the `StoreWriter`'s, or the caller's when there is none)."""

    kind: ClassVar[str]

    def __init__(self, data_dir: Path, fsync: bool = False) -> None:
        self.data_dir = data_dir
        self.fsync = fsync
        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()
        self.dkim_check: DkimCheck | None = None  # set by the simulation when it knows keys

    @abstractmethod
    def open(self, persona: str) -> None:
        """Make room for `persona` (and count what it already stored)."""

    @abstractmethod
    def _write(self, batch: Sequence[Received]) -> list[OSError | None]: ...

    @property
    @abstractmethod
    def location(self) -> Path: ...

    def write(self, batch: Sequence[Received]) -> list[OSError | None]:
        """Store every message of `batch`; one result per message (None: stored)."""
        errors = self._write(batch)
        with self._counts_lock:
            for item, error in zip(batch, errors, strict=True):
                if error is None:
                    self._counts[item.persona] = self._counts.get(item.persona, 0) + 1
        return errors

    def forget(self, persona: str, count: int) -> None:
        """`count` messages of `persona` were deleted (by the inbox) behind the writer's back."""
        with self._counts_lock:
            self._counts[persona] = max(0, self._counts.get(persona, 0) - count)

    def count(self, persona: str) -> int:
        """Messages `persona` has in this store (earlier runs included)."""
        return self._counts.get(persona, 0)

    def close(self) -> None:
        """Release what the store holds open (nothing, for a Maildir)."""
        return None


class MaildirStore(Store):
    kind = "maildir"

    def __init__(self, data_dir: Path, fsync: bool = False) -> None:
        super().__init__(data_dir, fsync)
        self._boxes: dict[str, LeanMaildir] = {}

    @property
    def location(self) -> Path:
        return self.data_dir / PERSONAS_DIR

    def open(self, persona: str) -> None:
        box = self._boxes[persona] = LeanMaildir(maildir_root(self.data_dir, persona), self.fsync)
        self._counts[persona] = box.count()

    def _write(self, batch: Sequence[Received]) -> list[OSError | None]:
        errors: list[OSError | None] = []
        for item in batch:
            try:
                box = self._boxes.get(item.persona)
                if box is None:
                    self.open(item.persona)
                    box = self._boxes[item.persona]
                box.deliver(item.mail_from, item.recipients, item.content, item.received_at)
                errors.append(None)
            except OSError as exc:
                errors.append(exc)
        return errors


_SCHEMA = """
CREATE TABLE IF NOT EXISTS personas (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    persona TEXT NOT NULL,
    received_at REAL NOT NULL,
    mail_from TEXT NOT NULL,
    recipients TEXT NOT NULL,
    size INTEGER NOT NULL,
    subject TEXT NOT NULL,
    header_from TEXT NOT NULL,
    header_to TEXT NOT NULL,
    message_id TEXT NOT NULL,
    dkim INTEGER NOT NULL,
    message BLOB NOT NULL,
    delivery_id TEXT NOT NULL DEFAULT '',
    dkim_result TEXT NOT NULL DEFAULT '',
    transcript TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (received_at);
CREATE INDEX IF NOT EXISTS messages_by_persona ON messages (persona, received_at);
-- the inbox's search: every searched column in time order, so a search scans this small
-- index (never the message bytes) and reads the table only for the page it returns
CREATE INDEX IF NOT EXISTS messages_search ON messages (received_at, id, persona, delivery_id,
    dkim_result, subject, header_from, mail_from, header_to, recipients);
"""
_MIGRATE_1_TO_2 = (
    ("delivery_id", "ALTER TABLE messages ADD COLUMN delivery_id TEXT NOT NULL DEFAULT ''"),
    ("dkim_result", "ALTER TABLE messages ADD COLUMN dkim_result TEXT NOT NULL DEFAULT ''"),
    ("transcript", "ALTER TABLE messages ADD COLUMN transcript TEXT NOT NULL DEFAULT '[]'"),
)


def _upgrade(path: Path) -> None:
    """A version-1 file gains the inbox's columns (before the schema is applied)."""
    if not path.is_file():
        return
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        if int(conn.execute("PRAGMA user_version").fetchone()[0]) != 1:
            return
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        for column, statement in _MIGRATE_1_TO_2:
            if column not in columns:
                conn.execute(statement)
    finally:
        conn.close()
_INSERT = (
    "INSERT INTO messages (persona, received_at, mail_from, recipients, size, subject,"
    " header_from, header_to, message_id, dkim, message, delivery_id, dkim_result, transcript)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def delivery_id_of(feedback_id: str) -> str:
    """The delivery id the MTA put first in `Feedback-ID: <delivery id>:<sender id>` ("" none)."""
    head, colon, _ = feedback_id.rpartition(":")
    return head.strip() if colon else ""


DkimCheck = Callable[[bytes], str]  # the message -> "pass" | "fail" | "permerror" | "none"


def _row(item: Received, check: DkimCheck | None = None) -> tuple[Any, ...]:
    fields = header_fields(item.content)
    if check is not None:
        dkim_result = check(item.content)
    else:
        dkim_result = "unchecked" if fields["dkim"] else "none"
    return (
        item.persona,
        item.received_at,
        item.mail_from,
        json.dumps(item.recipients),
        len(item.content),
        fields["subject"],
        fields["header_from"],
        fields["to"],
        fields["message_id"],
        1 if fields["dkim"] else 0,
        item.content,
        delivery_id_of(fields["feedback_id"]),
        dkim_result,
        json.dumps(item.transcript or []),
    )


class SqliteStore(Store):
    kind = "sqlite"

    def __init__(self, data_dir: Path, fsync: bool = False) -> None:
        super().__init__(data_dir, fsync)
        self.path = data_dir / SQLITE_FILE
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            _upgrade(self.path)
            self._conn = open_database(
                self.path,
                _SCHEMA,
                SCHEMA_VERSION,
                synchronous="FULL" if fsync else "NORMAL",
                opens=lambda found: found < SCHEMA_VERSION,  # older files gain the tables
            )
        except SchemaVersionError as exc:
            raise OSError(
                f"{self.path}: written by a newer version (schema {exc.found}); "
                "use another --data-dir"
            ) from None
        except sqlite3.Error as exc:
            raise OSError(f"cannot use {self.path}: {exc}") from None

    @property
    def location(self) -> Path:
        return self.path

    def open(self, persona: str) -> None:
        try:
            self._conn.execute("INSERT OR IGNORE INTO personas (name) VALUES (?)", (persona,))
            row = self._conn.execute(
                "SELECT COUNT(*) FROM messages WHERE persona = ?", (persona,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise OSError(f"{self.path}: {exc}") from None
        self._counts[persona] = int(row[0])

    def _write(self, batch: Sequence[Received]) -> list[OSError | None]:
        if not batch:
            return []
        conn = self._conn
        try:
            rows = [_row(item, self.dkim_check) for item in batch]
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            error = OSError(f"{self.path}: {exc}")
            return [error] * len(batch)
        return [None] * len(batch)

    def close(self) -> None:
        try:
            self._conn.close()
        except sqlite3.Error as exc:
            log.warning("closing %s: %s", self.path, exc)


def open_store(kind: str, data_dir: Path, fsync: bool = False) -> Store:
    """The store `sim.store` names, under `data_dir` (OSError if it cannot be opened)."""
    if kind == "sqlite":
        return SqliteStore(data_dir, fsync)
    if kind == "maildir":
        return MaildirStore(data_dir, fsync)
    raise ValueError(f"unknown store {kind!r} (expected one of: {', '.join(STORES)})")


_Job = tuple[Received, "asyncio.Future[None]"]


def _resolve_futures(results: list[tuple[asyncio.Future[None], OSError | None]]) -> None:
    for future, error in results:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class StoreWriter:
    """A thread that writes messages to a `Store`; see the module docstring."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: list[_Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches = 0  # wake-ups that wrote something (a batch: one SQLite transaction)
        # called on the writing session's event loop after each stored batch (the inbox's live view)
        self.listeners: list[Callable[[], None]] = []

    def _stored(self) -> None:
        for listener in self.listeners:
            listener()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-store", daemon=True)
        self._thread.start()

    def write(self, item: Received) -> asyncio.Future[None]:
        """A future done once the message is stored (or failed with OSError)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._thread is None:  # not started: write here and now
            error = self._store([item])[0]
            if error is None:
                future.set_result(None)
                self._stored()
            else:
                future.set_exception(error)
            return future
        with self._lock:
            self._jobs.append((item, future))
        self._wake.set()
        return future

    def _store(self, items: list[Received]) -> list[OSError | None]:
        try:
            return self.store.write(items)
        except Exception as exc:  # a bug here must not leave sessions waiting forever
            log.exception("the %s store failed", self.store.kind)
            return [OSError(f"store failed: {exc}")] * len(items)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                jobs, self._jobs = self._jobs, []
                self._wake.clear()
                stopping = self._stopping
            if jobs:
                self.batches += 1
                errors = self._store([item for item, _ in jobs])
                by_loop: dict[
                    asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], OSError | None]]
                ] = {}
                for (_, future), error in zip(jobs, errors, strict=True):
                    by_loop.setdefault(future.get_loop(), []).append((future, error))
                stored = any(error is None for error in errors)
                for loop, results in by_loop.items():
                    if not loop.is_closed():
                        loop.call_soon_threadsafe(_resolve_futures, results)
                        if stored and self.listeners:
                            loop.call_soon_threadsafe(self._stored)
            if stopping:
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None


# -- where a persona's Maildir is (the readers are mta.sim.store_reader) --------------------


def maildir_root(data_dir: Path, persona: str) -> Path:
    return data_dir / PERSONAS_DIR / persona / MAILDIR


def persona_root(data_dir: Path, persona: str) -> Path:
    return data_dir / PERSONAS_DIR / persona
