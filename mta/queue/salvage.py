"""Look into a damaged spool and rescue what can be read (`mta spool check|salvage`).

A spool can be damaged on disk in ways SQLite alone reports badly: a truncated file
or zeroed b-tree pages make some queries fail ("database disk image is malformed"),
an overwritten header makes every query fail ("file is not a database"), and flipped
bytes inside a message's content are read back without complaint. Here:

- the header is checked, and on a copy rebuilt (its fields follow from the file's
  size and a page size that makes the schema readable) when it is garbage;
- every table is read by rowid ranges; a range that fails is split in two until the
  unreadable rows are isolated, so one bad page costs only the rows on it;
- each message's content is checked against its stored SHA-256;
- `salvage` writes every readable row into a fresh spool: messages whose content is
  intact as they were, the others without content and marked damaged (their
  recipients are then held by the MTA, with an event, never sent), every readable
  recipient with its state, attempt, event and cursor.

Synchronous, for a command; it never writes to the spool it reads.
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mta.queue.queries import digest
from mta.queue.schema import SCHEMA, SCHEMA_VERSION

SPOOL_FILE = "spool.sqlite3"
MAGIC = b"SQLite format 3\x00"
PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
CHUNK = 2000  # rows asked for in one query while reading a table
TAIL_CHUNKS = 20  # chunks without a row before a table of unknown extent is taken as read


class Unsalvageable(Exception):
    """Nothing can be read (no file, or not an SQLite file even with a rebuilt header)."""


@dataclass
class TableReport:
    name: str
    readable: int = 0
    unreadable: int = 0  # rowids whose row could not be read (a damaged page)
    lost_tail: bool = False  # the table's last pages could not be read (e.g. truncated)


@dataclass
class Report:
    path: Path
    size: int
    header: str  # "ok", "rebuilt" (it was garbage), "empty"
    version: int | None = None
    integrity: list[str] = field(default_factory=list)  # quick_check's lines ("ok" alone)
    tables: dict[str, TableReport] = field(default_factory=dict)
    messages_intact: int = 0
    messages_damaged: list[str] = field(default_factory=list)  # queue ids
    states: dict[str, int] = field(default_factory=dict)  # recipients by state
    orphans: int = 0  # recipients whose message could not be read (left out of a salvage)

    @property
    def damaged(self) -> bool:
        unreadable = any(t.unreadable or t.lost_tail for t in self.tables.values())
        return (
            self.header != "ok"
            or self.integrity != ["ok"]
            or unreadable
            or bool(self.messages_damaged)
            or bool(self.orphans)
        )

    def lines(self) -> list[str]:
        out = [
            f"spool {self.path}: {self.size} bytes, header {self.header},"
            f" schema version {self.version if self.version is not None else '?'}"
        ]
        if self.header == "empty":
            out.append("  the file is empty (0 bytes): it holds no messages")
            return out
        integrity = "ok" if self.integrity == ["ok"] else f"{len(self.integrity)} problems"
        out.append(f"  integrity check: {integrity}")
        out += [f"    {line}" for line in self.integrity[:5] if self.integrity != ["ok"]]
        for table in self.tables.values():
            lost = f", {table.unreadable} unreadable" if table.unreadable else ""
            tail = ", its last pages unreadable" if table.lost_tail else ""
            out.append(f"  {table.name}: {table.readable} readable rows{lost}{tail}")
        damaged = len(self.messages_damaged)
        out.append(
            f"  message contents: {self.messages_intact} intact, {damaged} damaged"
            + (
                f" ({', '.join(self.messages_damaged[:5])}{' ...' if damaged > 5 else ''})"
                if damaged
                else ""
            )
        )
        if self.states:
            states = ", ".join(f"{n} {s}" for s, n in sorted(self.states.items()))
            out.append(f"  recipients by state: {states}")
        if self.orphans:
            out.append(f"  {self.orphans} recipients whose message could not be read")
        return out


def spool_path(directory: Path) -> Path:
    """The spool file of a data directory (or the file itself when given one)."""
    return directory if directory.is_file() else directory / SPOOL_FILE


@contextlib.contextmanager
def readable_copy(path: Path) -> Iterator[tuple[sqlite3.Connection, str]]:
    """A read-only connection to the spool, or to a copy with a rebuilt header when its
    header is garbage; with "ok", "rebuilt" or "empty"."""
    if not path.exists():
        raise Unsalvageable(f"{path}: no such file")
    size = path.stat().st_size
    with tempfile.TemporaryDirectory(prefix="mta-salvage-") as tmp:
        if size == 0:
            empty = sqlite3.connect(":memory:")
            try:
                yield empty, "empty"
            finally:
                empty.close()
            return
        with path.open("rb") as f:
            header_ok = f.read(16) == MAGIC
        copy = Path(tmp) / path.name
        shutil.copyfile(path, copy)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
        conn = _open(copy) if header_ok else None
        header = "ok"
        for page_size in PAGE_SIZES:
            if conn is not None:
                break
            _write_header(copy, page_size, wal.exists())
            conn, header = _open(copy), "rebuilt"
        if conn is not None:
            try:
                yield conn, header
            finally:
                conn.close()
            return
        raise Unsalvageable(f"{path}: not readable as an SQLite file, even with a rebuilt header")


def _open(path: Path) -> sqlite3.Connection | None:
    """A connection that can at least read the schema, else None."""
    conn = sqlite3.connect(path)
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:
        conn.close()
        return None
    if "messages" not in names:
        conn.close()
        return None
    return conn


def _write_header(path: Path, page_size: int, wal: bool) -> None:
    """A fresh 100-byte database header (SQLite file format, section 1.3)."""
    pages = path.stat().st_size // page_size
    mode = 2 if wal else 1
    header = bytearray(100)
    header[0:16] = MAGIC
    header[16:18] = struct.pack(">H", 1 if page_size == 65536 else page_size)
    header[18], header[19], header[20] = mode, mode, 0
    header[21], header[22], header[23] = 64, 32, 32
    struct.pack_into(">I", header, 24, 1)  # change counter
    struct.pack_into(">I", header, 28, pages)  # size in pages, valid with offset 92
    struct.pack_into(">I", header, 40, 1)  # schema cookie
    struct.pack_into(">I", header, 44, 4)  # schema format
    struct.pack_into(">I", header, 56, 1)  # UTF-8
    struct.pack_into(">I", header, 92, 1)  # version-valid-for = change counter
    struct.pack_into(">I", header, 96, sqlite3.sqlite_version_info[0] * 1_000_000)
    with path.open("r+b") as f:
        f.write(header)


def read_rows(
    conn: sqlite3.Connection, table: str, columns: list[str], report: TableReport
) -> Iterator[tuple[object, ...]]:
    """Every readable row (rowid first), in rowid order; unreadable ones are counted.

    Rowids are dense in the spool (rows are never deleted). When the table's last
    rowid cannot be read either (its rightmost pages are lost, as in a truncated
    file), reading goes on by chunks until `TAIL_CHUNKS` chunks in a row give nothing,
    and the failures past the last readable row count as one lost tail.
    """
    select = ", ".join(["rowid", *(f'"{c}"' for c in columns)])
    try:
        top: int | None = conn.execute(f'SELECT MAX(rowid) FROM "{table}"').fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = None
    low, last_seen, barren = 1, 0, 0
    failed_at: list[int] = []
    while (top is not None and low <= top) or (top is None and barren < TAIL_CHUNKS):
        high = low + CHUNK - 1 if top is None else min(low + CHUNK - 1, top)
        found = False
        for row in _read_range(conn, table, select, low, high, failed_at):
            found = True
            report.readable += 1
            last_seen = int(str(row[0]))
            yield row
        barren = 0 if found else barren + 1
        low = high + 1
    inside = [rowid for rowid in failed_at if rowid <= last_seen or top is not None]
    report.unreadable += len(inside)
    if len(inside) < len(failed_at):
        report.lost_tail = True


def _read_range(
    conn: sqlite3.Connection, table: str, select: str, low: int, high: int, failed: list[int]
) -> Iterator[tuple[object, ...]]:
    """The rows of a rowid range; a range that fails is halved until single rows fail."""
    try:
        rows = conn.execute(
            f'SELECT {select} FROM "{table}" WHERE rowid BETWEEN ? AND ? ORDER BY rowid',
            (low, high),
        ).fetchall()
    except sqlite3.DatabaseError:
        if low == high:
            failed.append(low)
            return
        middle = (low + high) // 2
        yield from _read_range(conn, table, select, low, middle, failed)
        yield from _read_range(conn, table, select, middle + 1, high, failed)
        return
    yield from rows


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


def _tables(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    return [
        (name, sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY rootpage"
        )
    ]


def _content(conn: sqlite3.Connection, rowid: int, has_checksum: bool) -> tuple[bytes | None, bool]:
    """A message's content and whether it is intact (its checksum holds, and it is readable)."""
    try:
        if has_checksum:
            row = conn.execute(
                "SELECT content, content_sha256, damaged FROM messages WHERE rowid = ?", (rowid,)
            ).fetchone()
        else:
            found = conn.execute(
                "SELECT content FROM messages WHERE rowid = ?", (rowid,)
            ).fetchone()
            row = (found[0], None, 0) if found else None
    except sqlite3.DatabaseError:
        return None, False
    if row is None or row[0] is None:
        return None, True  # no content kept (every recipient final): nothing to damage
    content = bytes(row[0])
    intact = not row[2] and (row[1] is None or digest(content) == row[1])
    return content, intact


def inspect(path: Path, out: sqlite3.Connection | None = None) -> Report:
    """Read every table of the spool at `path`; with `out`, copy what is readable into it."""
    report = Report(path=path, size=path.stat().st_size if path.exists() else 0, header="?")
    with readable_copy(path) as (conn, header):
        report.header = header
        if header == "empty":
            return report
        with contextlib.suppress(sqlite3.DatabaseError):
            report.version = conn.execute("PRAGMA user_version").fetchone()[0]
        try:
            report.integrity = [r[0] for r in conn.execute("PRAGMA quick_check(20)")]
        except sqlite3.DatabaseError as exc:
            report.integrity = [str(exc)]
        for table, sql in _tables(conn):
            try:
                columns = _columns(conn, table)
            except sqlite3.DatabaseError:
                report.tables[table] = TableReport(table, unreadable=1)
                continue
            if out is not None and table not in _created(out):
                out.execute(sql)
            if table == "messages":
                _messages(conn, columns, report, out)
            else:
                _table(conn, table, columns, report, out)
    return report


def _created(out: sqlite3.Connection) -> set[str]:
    return {r[0] for r in out.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _table(
    conn: sqlite3.Connection,
    table: str,
    columns: list[str],
    report: Report,
    out: sqlite3.Connection | None,
) -> None:
    tally = report.tables[table] = TableReport(table)
    target = [c for c in columns if out is None or c in _columns(out, table)]
    state_at = columns.index("state") if table == "recipients" and "state" in columns else None
    insert = None
    if out is not None:
        marks = ", ".join("?" * len(target))
        names = ", ".join(f'"{c}"' for c in target)
        insert = f'INSERT OR REPLACE INTO "{table}" (rowid, {names}) VALUES (?, {marks})'
    keep = [columns.index(c) for c in target]
    batch: list[tuple[object, ...]] = []
    for row in read_rows(conn, table, columns, tally):
        values = row[1:]
        if state_at is not None:
            state = str(values[state_at])
            report.states[state] = report.states.get(state, 0) + 1
        if insert is not None:
            batch.append((row[0], *(values[i] for i in keep)))
            if len(batch) >= 1000:
                assert out is not None
                out.executemany(insert, batch)
                batch.clear()
    if insert is not None and batch:
        assert out is not None
        out.executemany(insert, batch)


def _messages(
    conn: sqlite3.Connection, columns: list[str], report: Report, out: sqlite3.Connection | None
) -> None:
    """Messages: the row without its content first (so a damaged content page loses only
    the content), then the content, checked against its checksum."""
    tally = report.tables["messages"] = TableReport("messages")
    meta = [c for c in columns if c not in ("content", "content_sha256", "damaged")]
    has_checksum = "content_sha256" in columns
    queue_id_at = meta.index("queue_id")
    for row in read_rows(conn, "messages", meta, tally):
        rowid = int(str(row[0]))
        content, intact = _content(conn, rowid, has_checksum)
        if intact:
            report.messages_intact += 1
        else:
            report.messages_damaged.append(str(row[1 + queue_id_at]))
        if out is None:
            continue
        names = ", ".join(f'"{c}"' for c in meta)
        marks = ", ".join("?" * len(meta))
        out.execute(
            f"INSERT OR REPLACE INTO messages (rowid, {names}, content, content_sha256, damaged)"
            f" VALUES (?, {marks}, ?, ?, ?)",
            (
                row[0],
                *row[1:],
                content if intact else None,
                digest(content) if intact and content is not None else None,
                0 if intact else 1,
            ),
        )


def check(directory: Path) -> Report:
    return inspect(spool_path(directory))


def salvage(directory: Path, out_dir: Path) -> Report:
    """Copy every readable row of the spool in `directory` into a new spool in `out_dir`."""
    target = out_dir / SPOOL_FILE
    if target.exists():
        raise FileExistsError(f"{target} exists: give --out a new directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    out = sqlite3.connect(partial, isolation_level=None)
    try:
        out.executescript(SCHEMA)
        out.execute("BEGIN")
        report = inspect(spool_path(directory), out)
        out.execute("UPDATE recipients SET leased = 0, possible_duplicate = 1 WHERE leased = 1")
        # Recipients whose message row was lost cannot be delivered (no sender, no content):
        # they are counted, not carried over; each message's pending count is recomputed.
        report.orphans = out.execute(
            "DELETE FROM recipients WHERE message_id NOT IN (SELECT id FROM messages)"
        ).rowcount
        out.execute(
            "UPDATE messages SET pending = (SELECT COUNT(*) FROM recipients r"
            " WHERE r.message_id = messages.id AND r.state = 'queued')"
        )
        out.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        out.execute("COMMIT")
    except BaseException:
        out.close()
        partial.unlink(missing_ok=True)
        raise
    out.close()
    partial.rename(target)
    return report
