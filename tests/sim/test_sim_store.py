"""The personas' stores (SQLite and Maildir): the same answers from both, SQLite's
transactions, WAL and durability settings, readers beside the writer, DKIM-signed
bytes kept exactly as the MTA sent them, `mta sim show`, and the `--store` setting."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any, cast

import aiohttp
import dkim
import pytest

from mta.cli import sim as cli
from mta.cli.dkim import keygen
from mta.clock import ManualClock
from mta.config.service import DkimKey
from mta.ingress.dkim import public_key_record
from mta.sim import store, store_reader
from mta.sim.config import ConfigError, load_sim_config, parse_sim_config
from mta.smtp.maildir import strip_trace
from tests.sim.conftest import Stack

SIGNED_BY = "campaign.test"  # the domain of the From the harness submits with


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mta")
    cli.add_parser(top.add_subparsers(dest="command"))
    return top


def message(n: int, extra: bytes = b"") -> bytes:
    return (
        (
            f"From: Sender <s@campaign.test>\r\nTo: <r{n}@isp.test>\r\nSubject: Message {n}\r\n"
            f"Message-ID: <{n}@campaign.test>\r\n"
        ).encode()
        + extra
        + f"\r\nBody {n}.\r\n".encode()
    )


def received(n: int, at: float, persona: str = "isp", extra: bytes = b"") -> store.Received:
    return store.Received(persona, "s@campaign.test", [f"r{n}@isp.test"], message(n, extra), at)


# -- both stores, the same answers --------------------------------------------------------


def test_both_stores_answer_alike(tmp_path: Path) -> None:
    dkim_field = b"DKIM-Signature: v=1; a=rsa-sha256; d=campaign.test;\r\n\tb=abc\r\n"
    answers = {}
    for kind in store.STORES:
        data_dir = tmp_path / kind
        data_dir.mkdir()
        kept = store.open_store(kind, data_dir)
        kept.open("isp")
        kept.open("quiet")  # known, never stores anything
        # twelve messages at the same clock time (a manual clock): order is arrival order
        batch = [received(n, 1000.0, extra=dkim_field if n == 3 else b"") for n in range(12)]
        assert kept.write(batch) == [None] * 12
        assert kept.count("isp") == 12 and kept.count("quiet") == 0
        kept.close()
        listed = store_reader.list_messages(data_dir)
        assert [s.subject for s in listed] == [f"Message {n}" for n in reversed(range(12))]
        assert [s.subject for s in store_reader.list_messages(data_dir, "isp", 2)] == [
            "Message 11",
            "Message 10",
        ]
        assert store_reader.personas_in(data_dir) == ["isp", "quiet"]
        assert store_reader.count_messages(data_dir) == {"isp": 12, "quiet": 0}
        assert store_reader.count_messages(data_dir, "quiet") == {"quiet": 0}
        for summary, item in zip(reversed(listed), batch, strict=True):
            raw = store_reader.message_bytes(data_dir, summary.id)
            assert raw == store.trace(item.mail_from, item.recipients) + item.content
            assert summary.size == len(item.content)
        assert store_reader.stored_messages(data_dir, "isp") == [
            store.trace(i.mail_from, i.recipients) + i.content for i in batch
        ]
        answers[kind] = [{k: v for k, v in s.as_dict().items() if k != "id"} for s in listed]
    assert answers["sqlite"] == answers["maildir"]
    signed = answers["sqlite"][-4]
    assert signed == {
        "persona": "isp",
        "time": 1000.0,
        "mail_from": "s@campaign.test",
        "recipients": ["r3@isp.test"],
        "header_from": "Sender <s@campaign.test>",
        "to": "<r3@isp.test>",
        "subject": "Message 3",
        "message_id": "<3@campaign.test>",
        "dkim": True,
        "size": len(message(3, dkim_field)),
    }
    assert [a["dkim"] for a in answers["maildir"]].count(True) == 1


def test_a_data_dir_with_both_stores_lists_them_merged_by_time(tmp_path: Path) -> None:
    maildir = store.MaildirStore(tmp_path)
    sqlite = store.SqliteStore(tmp_path)
    assert maildir.write([received(1, 10.0), received(3, 30.0)]) == [None, None]
    assert sqlite.write([received(2, 20.0)]) == [None]
    sqlite.close()
    listed = store_reader.list_messages(tmp_path)
    assert [s.subject for s in listed] == ["Message 3", "Message 2", "Message 1"]
    assert [s.subject for s in store_reader.list_messages(tmp_path, limit=2)] == [
        "Message 3",
        "Message 2",
    ]
    assert store_reader.count_messages(tmp_path) == {"isp": 3}
    assert listed[1].id == "isp/1" and listed[0].id.startswith("isp/30000000000.P")


def test_counts_survive_a_restart(tmp_path: Path) -> None:
    for kind in store.STORES:
        for expected in (2, 4):
            kept = store.open_store(kind, tmp_path / kind)
            kept.open("isp")
            assert kept.write([received(1, 1.0), received(2, 2.0)]) == [None, None]
            assert kept.count("isp") == expected
            kept.close()


def test_ids_that_are_not_ours_are_unknown(tmp_path: Path) -> None:
    kept = store.SqliteStore(tmp_path)
    kept.open("isp")
    kept.write([received(1, 1.0)])
    kept.close()
    assert store_reader.message_bytes(tmp_path, "isp/1") is not None
    for bad in ("other/1", "isp/2", "isp/0", "isp/" + "9" * 30, "isp", "isp/../x", "/1", "isp/"):
        assert store_reader.message_bytes(tmp_path, bad) is None, bad


# -- SQLite: transactions, WAL, durability, readers -------------------------------------


def test_one_transaction_per_batch(tmp_path: Path) -> None:
    kept = store.SqliteStore(tmp_path)
    kept.open("isp")
    broken = store.Received(cast(str, None), "s@x.test", ["r@isp.test"], b"x", 1.0)
    errors = kept.write([received(1, 1.0), broken, received(2, 2.0)])
    assert all(isinstance(e, OSError) for e in errors) and len(errors) == 3
    assert "NOT NULL" in str(errors[0])
    assert kept.count("isp") == 0 and store_reader.count_messages(tmp_path) == {"isp": 0}
    assert kept.write([received(3, 3.0)]) == [None]  # the store goes on after a failure
    kept.close()
    assert [s.subject for s in store_reader.list_messages(tmp_path)] == ["Message 3"]


@pytest.mark.parametrize(("fsync", "synchronous"), [(False, 1), (True, 2)])
def test_wal_and_synchronous_follow_store_fsync(
    tmp_path: Path, fsync: bool, synchronous: int
) -> None:
    kept = store.SqliteStore(tmp_path, fsync=fsync)
    try:
        conn = kept._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous  # NORMAL / FULL
    finally:
        kept.close()


async def test_a_reader_in_a_transaction_does_not_block_the_writer(tmp_path: Path) -> None:
    kept = store.SqliteStore(tmp_path)
    kept.open("isp")
    writer = store.StoreWriter(kept)
    writer.start()
    try:
        await writer.write(received(1, 1.0))
        path = tmp_path / store.SQLITE_FILE
        reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
            # the writer commits while the reader holds its snapshot open
            await asyncio.wait_for(
                asyncio.gather(*(writer.write(received(n, float(n))) for n in range(2, 40))), 10
            )
            assert reader.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
            reader.execute("COMMIT")
            assert reader.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 39
        finally:
            reader.close()
        assert len(store_reader.list_messages(tmp_path)) == 39
        assert 1 <= writer.batches <= 39
    finally:
        writer.stop()
        kept.close()


def test_an_unreadable_store_is_a_one_line_error(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / store.SQLITE_FILE).write_bytes(b"not a database, just bytes" * 100)
    with pytest.raises(OSError, match="cannot read"):
        store_reader.list_messages(tmp_path)
    assert cli.run(parser().parse_args(["sim", "ls", "--data-dir", str(tmp_path)])) == 1
    err = capsys.readouterr().err
    assert err.startswith("mta sim: cannot read ") and err.count("\n") == 1
    with pytest.raises(OSError, match="cannot use"):
        store.SqliteStore(tmp_path)


# -- through the MTA: the bytes as sent, DKIM included ------------------------------------


async def test_dkim_signed_messages_are_kept_byte_for_byte(
    net: str, tmp_path: Path, store_kind: str, capsysbinary: Any
) -> None:
    rsa_path, rsa_key = keygen(SIGNED_BY, "rsa1", tmp_path / "keys")
    ed_path, ed_key = keygen(SIGNED_BY, "ed1", tmp_path / "keys", kind="ed25519")
    records = {
        f"rsa1._domainkey.{SIGNED_BY}.".encode(): public_key_record(rsa_key).encode(),
        f"ed1._domainkey.{SIGNED_BY}.".encode(): public_key_record(ed_key).encode(),
    }
    keys = (DkimKey(SIGNED_BY, "rsa1", str(rsa_path)), DkimKey(SIGNED_BY, "ed1", str(ed_path)))
    # a signature dated in the future does not verify: the clock starts now
    stack = Stack(net, tmp_path, ManualClock(time.time()))
    try:
        await stack.start(store=store_kind, dkim=keys)
        await stack.submit(["ann@isp.test"], subject="Signed ünïcode")
        await stack.quiet()
        assert stack.sim is not None
        host, port = stack.sim.http_address
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/sim/v1/messages") as response:
                (listed,) = await response.json()
            async with http.get(f"http://{host}:{port}/sim/v1/messages/{listed['id']}") as got:
                raw = await got.read()
        assert listed["dkim"] is True
        assert listed["subject"] == "Signed ünïcode"
        assert stack.sim.personas["isp"].stored() == [raw]
        as_received = strip_trace(raw)
        assert listed["size"] == len(as_received)
        assert as_received.count(b"DKIM-Signature:") == 2
        verifier = dkim.DKIM(as_received)
        dnsfunc = lambda name, timeout=5: records.get(name, b"")  # noqa: E731
        assert verifier.verify(idx=0, dnsfunc=dnsfunc)
        assert verifier.verify(idx=1, dnsfunc=dnsfunc)
        # the check could fail: one byte changed in the body breaks both signatures
        assert not dkim.verify(
            as_received.replace(b"Hello there.", b"Hello there!"), dnsfunc=dnsfunc
        )
        # `mta sim show ID` writes the same bytes
        data_dir = str(stack.sim.data_dir)
        args = parser().parse_args(["sim", "show", listed["id"], "--data-dir", data_dir])
        capsysbinary.readouterr()
        assert cli.run(args) == 0
        assert capsysbinary.readouterr().out == raw
    finally:
        await stack.stop()


def test_show_an_unknown_id_is_one_line(tmp_path: Path, capsys: Any) -> None:
    args = parser().parse_args(["sim", "show", "isp/7", "--data-dir", str(tmp_path)])
    assert cli.run(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mta sim show: no message 'isp/7' in ") and err.count("\n") == 1


# -- the setting ----------------------------------------------------------------------------


def test_store_setting_and_flag() -> None:
    assert load_sim_config().sim.store == "sqlite"
    args = parser().parse_args(["sim", "--store", "maildir"])
    assert cli.load_from_args(args).sim.store == "maildir"
    with pytest.raises(
        ConfigError, match=r"t.toml: sim.store: expected one of 'sqlite', 'maildir'"
    ):
        parse_sim_config('[sim]\nstore = "mbox"\n', "t.toml")
    with pytest.raises(SystemExit):
        parser().parse_args(["sim", "--store", "mbox"])
