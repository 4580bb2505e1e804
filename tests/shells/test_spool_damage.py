"""A damaged spool, made by the test from a real one: a truncated file, a garbage header,
zeroed b-tree pages, flipped content bytes, a 0-byte file, a version-2 spool.

The MTA never sends damaged content (each message's content carries a SHA-256 checked
before delivery: a mismatch holds its recipients with an event and a log line); a spool
that cannot be read stops `mta serve` with one line naming the file and what to do;
`mta spool check` reports and `mta spool salvage` rescues every readable message with its
recipients' states into a new spool that the MTA then starts on.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mta.cli.topology import free_port
from mta.clock import ManualClock
from mta.queue.queries import digest
from mta.queue.spool import Spool
from tests.helpers import (
    ScriptedServer,
    events_of,
    mta_config,
    send_message,
    serve_until_listening,
    spool_rows,
    started,
    wait_for,
)

MTA = str(Path(sys.executable).with_name("mta"))
START = 1_800_000_000.0
MESSAGES = 50
RECIPIENTS = 4  # per message: 200 recipient rows, several b-tree leaves


def body(n: int) -> bytes:
    line = f"BODY-{n:04d}-" + "x" * 60
    return (
        f"From: news@campaign.test\r\nTo: r@isp.test\r\nSubject: message {n}\r\n\r\n".encode()
        + (line + "\r\n").encode() * 90  # ~6 KB: the content spills into overflow pages
    )


async def fill(data: Path) -> None:
    """A spool of MESSAGES messages whose recipients wait (the relay host refuses them)."""
    config = mta_config(
        data.parent, data_dir=str(data), delivery__relayhost=f"127.0.0.1:{free_port()}"
    )
    app = await started(config, clock=ManualClock(START))
    try:
        host, port = app.smtp_address
        for n in range(MESSAGES):
            rcpts = [f"r{n}-{i}@isp.test" for i in range(RECIPIENTS)]
            reply = await send_message(host, port, "bounces@campaign.test", rcpts, body(n))
            assert reply.startswith("250"), reply

    finally:
        await app.stop()
    wal = data / "spool.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # all of it is in the main file


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("pristine") / "mta"
    asyncio.run(fill(data))
    return data


def copy_of(pristine: Path, tmp_path: Path) -> Path:
    data = tmp_path / "mta"
    data.mkdir()
    (data / "spool.sqlite3").write_bytes((pristine / "spool.sqlite3").read_bytes())
    return data


def mta(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MTA, *argv], capture_output=True, text=True, timeout=120)


def serve_refuses(data: Path) -> str:
    """`mta serve` on a spool it cannot read: exit 1, one line, no traceback."""
    done = mta("serve", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--admin", "")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"mta: spool {data / 'spool.sqlite3'} cannot be read"), line
    assert f"mta spool salvage {data} --out NEWDIR" in line
    return line


async def serve_says(data: Path, *extra: str) -> list[str]:
    """Start `mta serve` on `data`, collect its start lines, stop it; it exits 0."""
    return await serve_until_listening(
        [MTA, "serve", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--admin", "",
         "--relayhost", f"127.0.0.1:{free_port()}", *extra]
    )


def salvage(
    data: Path, out: Path
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]]]:
    done = mta("spool", "salvage", str(data), "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = spool_rows(out, "SELECT address, state FROM recipients ORDER BY id")
    return done, rows


def page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def leaf_pages(path: Path, table: str) -> list[int]:
    """The leaf pages of a table's b-tree, read from the file (SQLite file format 1.6)."""
    with sqlite3.connect(path) as conn:
        root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()[0]
    size = page_size(path)
    raw = path.read_bytes()

    def children(page: int) -> list[int]:
        start = (page - 1) * size
        header = start + (100 if page == 1 else 0)
        kind = raw[header]
        if kind == 0x0D:
            return [page]
        assert kind == 0x05, kind
        cells = struct.unpack(">H", raw[header + 3 : header + 5])[0]
        right = struct.unpack(">I", raw[header + 8 : header + 12])[0]
        found: list[int] = []
        for i in range(cells):
            pointer = struct.unpack(">H", raw[header + 12 + 2 * i : header + 14 + 2 * i])[0]
            child = struct.unpack(">I", raw[start + pointer : start + pointer + 4])[0]
            found += children(child)
        return found + children(right)

    return children(root)


# -- the checksum: damaged content is never sent ---------------------------------------------


async def test_flipped_content_bytes_are_held_never_sent(
    pristine: Path, tmp_path: Path, receiver: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    data = copy_of(pristine, tmp_path)
    path = data / "spool.sqlite3"
    raw = bytearray(path.read_bytes())
    at = raw.index(b"BODY-0007-") + 200
    raw[at] ^= 0x20  # one bit of message 7's content, in an overflow page
    path.write_bytes(bytes(raw))
    with sqlite3.connect(path) as conn:  # SQLite sees nothing wrong
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    check = mta("spool", "check", str(data))
    assert check.returncode == 1
    assert "message contents: 49 intact, 1 damaged" in check.stdout

    config = mta_config(
        tmp_path, data_dir=str(data), delivery__relayhost=f"127.0.0.1:{receiver.port}"
    )
    caplog.set_level(logging.ERROR, logger="mta.scheduler")
    app = await started(config, clock=ManualClock(START + 3600))  # every retry is due
    try:

        def the_undamaged_delivered() -> bool:
            rows = spool_rows(app, "SELECT COUNT(*) FROM recipients WHERE state = 'delivered'")
            return bool(rows[0][0] == (MESSAGES - 1) * RECIPIENTS)

        await wait_for(the_undamaged_delivered, timeout=60)
        await wait_for(lambda: len(held_events(app.config.data_path)) == RECIPIENTS, timeout=10)
    finally:
        await app.stop()
    received = [content for _, _, content in receiver.handler.received]
    assert not any(b"BODY-0007-" in content for content in received)
    assert all(b"Subject: message 7\r\n" not in content for content in received)
    delivered = sum(len(rcpts) for _, rcpts, _ in receiver.handler.received)
    assert delivered == (MESSAGES - 1) * RECIPIENTS
    held = spool_rows(
        data,
        "SELECT r.state, r.next_attempt_at = r.expires_at, m.damaged FROM recipients r"
        " JOIN messages m ON m.id = r.message_id WHERE r.address LIKE 'r7-%'",
    )
    assert held == [("queued", 1, 1)] * RECIPIENTS  # held until the validity ends
    for event in held_events(data):
        assert event["kind"] == "soft_bounce" and event["smtp"]["code"] == 451
        assert event["failure"]["type"] == "Ignored"  # our fault: never counted against them
    assert any("content damaged in the spool" in r.getMessage() for r in caplog.records)


def held_events(data: Path) -> list[dict[str, object]]:
    return [e for e in events_of(data) if "damaged in the spool" in str(e.get("smtp") or {})]


async def test_a_held_recipient_expires_with_the_damage_as_its_reason(
    pristine: Path, tmp_path: Path, receiver: ScriptedServer
) -> None:
    data = copy_of(pristine, tmp_path)
    path = data / "spool.sqlite3"
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"BODY-0003-") + 100] ^= 0x01
    path.write_bytes(bytes(raw))
    config = mta_config(
        tmp_path, data_dir=str(data), delivery__relayhost=f"127.0.0.1:{receiver.port}"
    )
    clock = ManualClock(START + 3600)
    app = await started(config, clock=clock)
    try:
        await wait_for(lambda: len(held_events(data)) == RECIPIENTS, timeout=60)
        clock.advance(4 * 86400)  # past the 3.5-day validity
        app.running.scheduler.wake()

        def expired() -> bool:
            rows = spool_rows(app, "SELECT COUNT(*) FROM recipients WHERE state = 'expired'")
            return bool(rows[0][0] == RECIPIENTS)

        await wait_for(expired, timeout=30)
    finally:
        await app.stop()
    last = [e for e in events_of(data) if e["kind"] == "expired"]
    assert len(last) == RECIPIENTS
    assert all("damaged in the spool" in str(e["smtp"]) for e in last)


# -- a spool that cannot be read: one line at start, then check and salvage -------------------


async def test_a_garbage_header_is_refused_then_salvaged_whole(
    pristine: Path, tmp_path: Path
) -> None:
    data = copy_of(pristine, tmp_path)
    path = data / "spool.sqlite3"
    with path.open("r+b") as f:
        f.write(bytes(range(7, 107)))  # the 100-byte header, overwritten
    assert "file is not a database" in serve_refuses(data)
    check = mta("spool", "check", str(data))
    assert check.returncode == 1
    assert "header rebuilt" in check.stdout
    done, rows = salvage(data, tmp_path / "new")
    assert f"salvaged into {tmp_path / 'new' / 'spool.sqlite3'}: {MESSAGES} messages" in done.stdout
    assert len(rows) == MESSAGES * RECIPIENTS and {s for _, s in rows} == {"queued"}
    assert mta("spool", "check", str(tmp_path / "new")).returncode == 0
    lines = await serve_says(tmp_path / "new")
    assert f"messages queued ({MESSAGES * RECIPIENTS} recipients)" in "\n".join(lines)


async def test_zeroed_btree_pages_are_refused_then_salvaged(pristine: Path, tmp_path: Path) -> None:
    data = copy_of(pristine, tmp_path)
    path = data / "spool.sqlite3"
    leaves = leaf_pages(path, "recipients")
    assert len(leaves) >= 3
    size = page_size(path)
    lost = spool_rows(data, "SELECT COUNT(*) FROM recipients")[0][0]
    victim = leaves[1]
    with path.open("r+b") as f:
        f.seek((victim - 1) * size)
        f.write(bytes(size))
    assert "malformed" in serve_refuses(data)
    check = mta("spool", "check", str(data))
    assert check.returncode == 1 and "unreadable" in check.stdout
    done, rows = salvage(data, tmp_path / "new")
    assert 0 < len(rows) < lost  # the rows on the zeroed leaf are gone, the others kept
    assert f"{MESSAGES} messages" in done.stdout  # the messages table was not touched
    states = spool_rows(tmp_path / "new", "SELECT DISTINCT state FROM recipients")
    assert states == [("queued",)]
    pending = spool_rows(tmp_path / "new", "SELECT SUM(pending) FROM messages")[0][0]
    assert pending == len(rows)
    lines = await serve_says(tmp_path / "new")
    assert f"({len(rows)} recipients)" in "\n".join(lines)


async def test_a_truncated_file_is_refused_then_what_is_left_salvaged(
    pristine: Path, tmp_path: Path
) -> None:
    data = copy_of(pristine, tmp_path)
    path = data / "spool.sqlite3"
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size * 6 // 10)
    serve_refuses(data)
    check = mta("spool", "check", str(data))
    assert check.returncode == 1
    salvage(data, tmp_path / "new")
    messages = spool_rows(tmp_path / "new", "SELECT COUNT(*), SUM(damaged) FROM messages")[0]
    assert 0 < messages[0] <= MESSAGES
    intact = spool_rows(
        tmp_path / "new", "SELECT content, content_sha256 FROM messages WHERE damaged = 0"
    )
    assert intact and all(digest(content) == sha for content, sha in intact)
    assert spool_rows(tmp_path / "new", "PRAGMA integrity_check") == [("ok",)]
    await serve_says(tmp_path / "new")


async def test_a_zero_byte_spool_says_so(tmp_path: Path) -> None:
    data = tmp_path / "mta"
    data.mkdir()
    (data / "spool.sqlite3").write_bytes(b"")
    check = mta("spool", "check", str(data))
    assert check.returncode == 1 and "the file is empty (0 bytes)" in check.stdout
    lines = await serve_says(data)
    assert any(
        line.startswith(
            f"mta: warning: spool {data / 'spool.sqlite3'}: the file was empty (0 bytes)"
        )
        for line in lines
    ), lines


async def test_serve_says_what_it_found(pristine: Path, tmp_path: Path) -> None:
    data = copy_of(pristine, tmp_path)
    lines = await serve_says(data)
    expected = (
        f"mta: spool {data / 'spool.sqlite3'}: {MESSAGES} messages queued"
        f" ({MESSAGES * RECIPIENTS} recipients), 0 leased"
    )
    assert any(line.startswith(expected) for line in lines), lines
    fresh = tmp_path / "fresh"
    assert f"mta: spool {fresh / 'spool.sqlite3'}: new, empty" in await serve_says(fresh)


def test_check_of_a_sound_spool_and_of_no_spool(pristine: Path, tmp_path: Path) -> None:
    check = mta("spool", "check", str(pristine))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "integrity check: ok" in check.stdout
    assert f"message contents: {MESSAGES} intact, 0 damaged" in check.stdout
    missing = mta("spool", "check", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "no such file" in missing.stderr


# -- a version-2 spool is upgraded in place, its contents checksummed ---------------------------


V2_MESSAGES = """
CREATE TABLE messages (
    id INTEGER PRIMARY KEY, queue_id TEXT NOT NULL UNIQUE, mail_from TEXT NOT NULL,
    delivery_id TEXT, received_at REAL NOT NULL, expires_at REAL NOT NULL,
    size INTEGER NOT NULL, smtputf8 INTEGER NOT NULL DEFAULT 0, pending INTEGER NOT NULL,
    content BLOB
);
"""


async def test_a_version_2_spool_is_upgraded_with_checksums(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(V2_MESSAGES)
    conn.execute(
        "INSERT INTO messages (queue_id, mail_from, received_at, expires_at, size, pending,"
        " content) VALUES ('Q1', 'a@b.test', 1, 2, 5, 1, X'68656C6C6F')"
    )
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    spool = await Spool.open(path)
    await spool.close()
    rows = spool_rows(tmp_path, "SELECT content_sha256, damaged FROM messages")
    assert rows == [(digest(b"hello"), 0)]
    assert spool_rows(tmp_path, "PRAGMA user_version") == [(3,)]


async def test_a_lost_spool_beside_its_wal_file_says_so(tmp_path: Path) -> None:
    """The spool file is gone but its -wal file is still there: the queue it held is lost."""
    data = tmp_path / "mta"
    data.mkdir()
    (data / "spool.sqlite3-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(60))
    lines = await serve_says(data)
    assert any(
        line.startswith(f"mta: warning: spool {data / 'spool.sqlite3'}: the file was missing")
        for line in lines
    ), lines
