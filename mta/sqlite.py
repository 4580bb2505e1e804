"""The one way the MTA and its simulation open an SQLite file of their own: WAL, the
synchronous level asked for, a busy timeout, and the schema's version checked before the
schema is applied.

The spool (`mta.queue.spool`) and the simulated ISPs' store (`mta.sim.store`) use it;
campaign_client keeps its own small opener in `campaign_client.log`, because the client
never imports `mta`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

BUSY_TIMEOUT = 5.0  # seconds a writer waits for another's lock


class SchemaVersionError(sqlite3.DatabaseError):
    """The file holds tables of a schema version this code does not open."""

    def __init__(self, path: Path, found: int, needed: int) -> None:
        super().__init__(f"{path}: schema version {found}, this version needs {needed}")
        self.path = path
        self.found = found
        self.needed = needed


def open_database(
    path: Path,
    schema: str,
    version: int,
    *,
    synchronous: str = "FULL",
    opens: Callable[[int], bool] = lambda found: False,
) -> sqlite3.Connection:
    """A connection in autocommit mode (the caller runs its own transactions), usable from
    another thread, with `schema` applied and `user_version` set to `version`. A file with
    tables of another version is refused with SchemaVersionError unless `opens(found)` says
    this code can bring it up to date (the schema's CREATE ... IF NOT EXISTS does)."""
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"{path}: cannot use WAL mode here (got {mode!r})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()
        if tables[0] and found != version and not opens(found):
            raise SchemaVersionError(path, found, version)
        conn.executescript(schema)
        conn.execute(f"PRAGMA user_version = {version}")
    except BaseException:
        conn.close()
        raise
    return conn
