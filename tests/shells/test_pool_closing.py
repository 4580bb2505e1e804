"""A connection being closed still holds its slot: the receiving server counts it until the
close, so the pool (and through it a cluster's connection lease) must too.

A real SMTP server on loopback answers QUIT only after a pause and records how many
sessions it had open at once; the pool's group limit is one.
"""

from __future__ import annotations

import asyncio

import aiosmtplib

from mta.delivery.pool import Connection, Pool

QUIT_PAUSE = 0.3


class SlowQuitServer:
    def __init__(self) -> None:
        self.open = 0
        self.most = 0
        self.server: asyncio.Server | None = None

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.most = max(self.most, self.open)
        try:
            writer.write(b"220 slow.test ESMTP\r\n")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250 slow.test\r\n")
                elif verb == b"QUIT":
                    await asyncio.sleep(QUIT_PAUSE)
                    writer.write(b"221 2.0.0 bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 2.0.0 ok\r\n")
        finally:
            writer.close()
            self.open -= 1

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


async def connect(pool: Pool, port: int, group: str) -> Connection:
    key = ("127.0.0.1", port, None)
    assert await pool.reserve(key, group, group_limit=lambda: 1) is None
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5)
    await smtp.connect()
    await smtp.ehlo()
    return Connection(smtp, key, group, "slow.test", tls=False)


async def test_a_closing_connection_keeps_its_slot_until_closed() -> None:
    server = SlowQuitServer()
    port = await server.start()
    pool = Pool(per_key=10, total=10, idle_timeout=60)
    try:
        first = await connect(pool, port, "site")
        await pool.give_back(first, reusable=False, limit=100)  # QUIT under way
        second = await connect(pool, port, "site")  # waits for the first's close
        assert server.most == 1  # never two sessions open at the server at once
        await pool.give_back(second, reusable=True, limit=100)
        # Trimming to no connection returns once the idle one is closed.
        await pool.trim("site", 0)
        assert pool.group_counts["site"] == 0 and server.open == 0
    finally:
        await pool.close()
        assert server.server is not None
        server.server.close()
        await server.server.wait_closed()
