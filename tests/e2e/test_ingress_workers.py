"""`mta serve --workers N`: SMTP and DKIM in worker processes, the spool in the main one.

By default (`auto`) one worker per core (at most 4), none on one core. Signed mail
flows end to end; SIGKILL of the main process under load loses nothing that was
acknowledged (with and without workers) and takes the workers with it; a worker that
dies is started again; SIGTERM stops them all and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from mta.cli.dkim import keygen
from mta.cli.sink import Sink
from tests.e2e.test_crash import MESSAGE, Serve
from tests.helpers import events_of, send_message, spool_rows, wait_for


def workers_of(pid: int) -> set[int]:
    """The ingress worker processes (spawned multiprocessing children) of `pid`."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in command:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_workers_relay_signed_mail_and_stop_cleanly(tmp_path: Path) -> None:
    key, _ = keygen("sender.test", "s1", tmp_path / "keys")
    sink = await Sink.start(maildir=tmp_path / "maildir")
    mta = await Serve.start(
        tmp_path / "data", sink.port, "--workers", "2", "--dkim", f"sender.test:s1:{key}"
    )
    try:
        workers = workers_of(mta.process.pid)
        assert len(workers) == 2
        replies = await asyncio.gather(
            *(
                send_message(
                    "127.0.0.1", mta.port, "b@sender.test", [f"r{i}@dest.test"], MESSAGE
                )
                for i in range(30)
            )
        )
        assert all(r.startswith("250") for r in replies), replies
        await wait_for(lambda: sink.handler.received == 30, timeout=30)
        delivered = sorted((tmp_path / "maildir").rglob("*"))
        messages = [p.read_bytes() for p in delivered if p.is_file()]
        assert len(messages) == 30
        assert all(b"DKIM-Signature: v=1; a=rsa-sha256" in m for m in messages)
        await wait_for(
            lambda: sorted(e["kind"] for e in events_of(tmp_path / "data"))
            == ["delivered"] * 30 + ["relayed"] * 30
        )
        queue_ids = {r.split()[2] for r in replies}
        stored = {q for (q,) in spool_rows(tmp_path / "data", "SELECT queue_id FROM messages")}
        assert queue_ids == stored
    finally:
        assert await mta.terminate() == 0
        await sink.close()
    assert not any(alive(pid) for pid in workers)


async def _sender(port: int, start: int, acknowledged: list[str], stop: asyncio.Event) -> None:
    """Send messages one after another until told to stop or the server is gone."""
    n = start
    while not stop.is_set():
        try:
            reply = await send_message(
                "127.0.0.1", port, "b@sender.test", [f"r{n}@dest.test"], MESSAGE
            )
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            return
        if not reply.startswith("250"):
            return
        acknowledged.append(reply.split()[2])
        n += 1000


@pytest.mark.parametrize("workers", [0, 2])
async def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path, workers: int) -> None:
    # Nothing listens on the relay port: every message stays queued.
    refused = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    dead_port = refused.sockets[0].getsockname()[1]
    refused.close()
    mta = await Serve.start(
        tmp_path, dead_port, "--workers", str(workers), MTA_RETRY_FIRST="1h"
    )
    children = workers_of(mta.process.pid)
    assert len(children) == workers
    acknowledged: list[str] = []
    stop = asyncio.Event()
    senders = [
        asyncio.create_task(_sender(mta.port, i, acknowledged, stop)) for i in range(20)
    ]
    await wait_for(lambda: len(acknowledged) >= 100, timeout=60)
    mta.process.send_signal(signal.SIGKILL)  # mid-stream: sessions are in every phase
    await mta.process.wait()
    await asyncio.wait_for(asyncio.gather(*senders), 30)
    stop.set()
    await wait_for(lambda: not any(alive(pid) for pid in children), timeout=20)
    stored = {q for (q,) in spool_rows(tmp_path, "SELECT queue_id FROM messages")}
    assert set(acknowledged) <= stored
    relayed = {e["queue_id"] for e in events_of(tmp_path) if e["kind"] == "relayed"}
    assert set(acknowledged) <= relayed
    rows = spool_rows(
        tmp_path,
        "SELECT m.queue_id FROM messages m JOIN recipients r ON r.message_id = m.id",
    )
    assert set(acknowledged) <= {q for (q,) in rows}


async def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    sink = await Sink.start()
    mta = await Serve.start(tmp_path, sink.port, "--workers", "1")
    try:
        (first,) = workers_of(mta.process.pid)
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: len(workers_of(mta.process.pid) - {first}) == 1, timeout=30)
        reply = await send_message(
            "127.0.0.1", mta.port, "b@sender.test", ["r@dest.test"], MESSAGE
        )
        assert reply.startswith("250"), reply
        await wait_for(lambda: sink.handler.received == 1, timeout=20)
    finally:
        assert await mta.terminate() == 0
        await sink.close()


async def test_serve_starts_one_worker_per_core_by_default(tmp_path: Path) -> None:
    """No flag, no config: `smtp.workers = "auto"`; `--workers 0` keeps one process."""
    cores = min(len(os.sched_getaffinity(0)), 4)
    sink = await Sink.start()
    try:
        for name, flags, expected in (
            ("auto", (), cores if cores > 1 else 0),
            ("one-process", ("--workers", "0"), 0),
        ):
            mta = await Serve.start(tmp_path / name, sink.port, *flags)
            try:
                assert len(workers_of(mta.process.pid)) == expected
                reply = await send_message(
                    "127.0.0.1", mta.port, "d@sender.test", ["r@dest.test"], MESSAGE
                )
                assert reply.startswith("250"), reply
            finally:
                assert await mta.terminate() == 0
        await wait_for(lambda: sink.handler.received == 2, timeout=20)
    finally:
        await sink.close()
