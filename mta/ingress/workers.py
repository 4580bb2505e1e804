"""Ingress worker processes: the SMTP sessions, header work and DKIM signing in N processes.

With `smtp.workers` = N > 0 the main process opens the listening socket and starts N
worker processes (spawned: each its own interpreter, so the work spreads over the
cores) that accept on it. A worker runs the same IngressHandler and SMTP server as
the single-process MTA; only its spool is a RemoteSpool: the signed message is
pickled (in the signing thread) over a Unix socketpair to the main process, which
hands it to the spool's writer thread like any other ingest (same group commit,
"relayed" events in the same transaction) and answers once the commit is on disk.
The worker says 250 only then. The main process keeps the spool, the scheduler,
delivery, feedback and the admin API.

Failures: a main process that dies closes the socketpairs and its workers exit at
once, so a client whose message was not committed sees its connection drop and
never a 250. A worker that dies is started again (its unacknowledged clients see
the drop). At stop, each worker stops accepting, says 421 to its sessions, and
waits up to its grace for the messages being stored; the main process answers
their commits until the worker has gone.

Per-process: the connection and memory limits and the AUTH throttle apply per
worker; the admin API's accepted count is the main process's (committed
messages), its rejected count only what the main process refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from mta.clock import Clock, ScaledClock, make_clock
from mta.config.engine import parse_hostport
from mta.config.service import DkimConfig, MtaConfig, SmtpConfig
from mta.ingress.handler import IngressHandler
from mta.queue.records import NewMessage
from mta.queue.spool import Spool, SpoolError, SpoolFull
from mta.smtp.limits import Listener, SmtpLimits

log = logging.getLogger("mta.ingress")

_HEADER = struct.Struct("!I")
OK, FULL, FAILED = 0, 1, 2
RESTART_DELAY = 1.0  # seconds before a worker that died is started again


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs, picklable: it builds its own signer, TLS context and clock."""

    smtp: SmtpConfig  # the [smtp] section
    validity: float  # retry.validity
    node: str  # the cluster node's name
    limits: SmtpLimits
    dkim: DkimConfig | None  # None: no keys, no signing
    tls_cert: str
    tls_key: str
    clock_anchor: str  # the main process's clock, so both stamp the same time
    spool_path: Path  # for the free-space check of MAIL ... SIZE=
    log_level: str
    uvloop: bool


def _frame(obj: object) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    """The next object, or None at end of stream."""
    try:
        head = await reader.readexactly(_HEADER.size)
        (length,) = _HEADER.unpack(head)
        return pickle.loads(await reader.readexactly(length))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


class _Coalescing:
    """Frames written to a stream in one write per turn of the event loop (a commit settles
    a whole batch of messages at once: one system call answers them all)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._frames: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, frame: bytes) -> None:
        if not self._frames:
            self._loop.call_soon(self._flush)
        self._frames.append(frame)

    def _flush(self) -> None:
        frames, self._frames = self._frames, []
        if not self.writer.is_closing():
            self.writer.write(b"".join(frames))


# -- the main process's side -------------------------------------------------------------


class IngressWorkers:
    """N worker processes accepting on one listening socket, committing through `spool`."""

    def __init__(
        self,
        count: int,
        setup: WorkerSetup,
        sock: socket.socket,
        spool: Spool,
        on_committed: Callable[[NewMessage], None],
    ) -> None:
        self.count = count
        self.setup = setup
        self.sock = sock
        self.spool = spool
        self.on_committed = on_committed
        self.stopping = False
        self.restarts = 0
        self._processes: dict[int, BaseProcess] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._context = multiprocessing.get_context("spawn")

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self.sock,)

    def is_serving(self) -> bool:
        return not self.stopping and any(p.is_alive() for p in self._processes.values())

    def close(self) -> None:
        """Stop accepting: each worker closes its listener and its sessions (421)."""
        self.stopping = True
        for process in self._processes.values():
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    async def start(self) -> None:
        ready = [self._spawn(index) for index in range(self.count)]
        await asyncio.gather(*ready)

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        process = self._context.Process(
            target=worker_main,
            args=(self.setup, self.sock, theirs, index),
            name=f"mta-ingress-{index}",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._processes[index] = process
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        if await _read_frame(reader) != "ready":
            writer.close()
            raise RuntimeError(f"ingress worker {index} did not start (see its log above)")
        task = asyncio.get_running_loop().create_task(self._serve(index, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Commit what worker `index` sends; answer each commit; restart it if it dies."""
        loop = asyncio.get_running_loop()
        out = _Coalescing(writer)

        def answer(seq: int, message: NewMessage, done: asyncio.Future[None]) -> None:
            exc = done.exception()
            if exc is None:
                self.on_committed(message)
                reply: tuple[int, int, str] = (seq, OK, "")
            else:
                reply = (seq, FULL if isinstance(exc, SpoolFull) else FAILED, str(exc))
            out.write(_frame(reply))

        while True:
            item = await _read_frame(reader)
            if item is None:
                break
            seq, message = item
            done: asyncio.Future[None] = loop.create_future()
            done.add_done_callback(functools.partial(answer, seq, message))
            try:
                self.spool.ingest_soon(message, done)
            except SpoolError as exc:
                done.set_exception(exc)
        writer.close()
        process = self._processes[index]
        await loop.run_in_executor(None, process.join, 10)
        if self.stopping:
            return
        log.error("ingress worker %d exited (%s); starting it again", index, process.exitcode)
        await self._restart(index)

    async def _restart(self, index: int) -> None:
        """Start worker `index` again, every RESTART_DELAY until it starts or the workers stop."""
        while True:
            await asyncio.sleep(RESTART_DELAY)
            if self.stopping:
                return
            self.restarts += 1
            try:
                await self._spawn(index)
                return
            except (OSError, RuntimeError) as exc:
                log.error("ingress worker %d: %s; trying again", index, exc)

    async def stop(self, grace: float) -> None:
        """After close(): wait for the workers to finish the messages being stored."""
        self.close()
        loop = asyncio.get_running_loop()
        for process in self._processes.values():
            await loop.run_in_executor(None, process.join, grace + 5)
            if process.is_alive():
                log.warning("ingress worker %s did not stop; killed", process.name)
                process.kill()
                await loop.run_in_executor(None, process.join, 5)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, 5)
        self.sock.close()


def listening_socket(host: str, port: int) -> socket.socket:
    """The SMTP listening socket the workers share (port 0: any free port).

    The single-process path does not use this: it lets asyncio's create_server bind every
    address the host resolves to (127.0.0.1 and ::1 for "localhost", IPv6 sockets made
    IPv6-only), where the workers need one socket object to hand to their processes; one
    function for both would change what one of them listens on.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# -- the worker's side --------------------------------------------------------------------


class RemoteSpool:
    """The spool as a worker sees it: ingests go to the main process, which commits them."""

    def __init__(self, path: Path, writer: asyncio.StreamWriter) -> None:
        self.path = path
        self._writer = writer
        self._out = _Coalescing(writer)
        self._loop = asyncio.get_running_loop()
        self._seq = itertools.count()
        self._pending: dict[int, asyncio.Future[None]] = {}

    def ingest_soon(self, message: NewMessage, done: asyncio.Future[None]) -> None:
        """From any thread: send `message`; `done` settles when the main process committed it."""
        seq = next(self._seq)
        frame = _frame((seq, message))  # pickled here, off the event loop's thread
        self._loop.call_soon_threadsafe(self._send, seq, frame, done)

    async def ingest(self, message: NewMessage) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        seq = next(self._seq)
        self._send(seq, _frame((seq, message)), done)
        await done

    def _send(self, seq: int, frame: bytes, done: asyncio.Future[None]) -> None:
        if self._writer.is_closing():
            done.set_exception(SpoolError("the main process is gone"))
            return
        self._pending[seq] = done
        self._out.write(frame)

    async def read_answers(self, reader: asyncio.StreamReader) -> None:
        """Settle each message's future as its answer comes; returns when the main has gone."""
        while True:
            item = await _read_frame(reader)
            if item is None:
                return
            seq, status, text = item
            done = self._pending.pop(seq)
            if done.done():
                continue
            if status == OK:
                done.set_result(None)
            elif status == FULL:
                done.set_exception(SpoolFull(text))
            else:
                done.set_exception(SpoolError(text))


def worker_main(setup: WorkerSetup, sock: socket.socket, conn: socket.socket, index: int) -> None:
    """A worker process: serve SMTP on `sock` until SIGTERM, or until the main process goes."""
    logging.basicConfig(
        level=setup.log_level.upper(),
        format=f"mta[ingress-{index}]: %(message)s",
        stream=sys.stderr,
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the main process too: it stops us
    if setup.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
    asyncio.run(_worker(setup, sock, conn))


async def _worker(setup: WorkerSetup, sock: socket.socket, conn: socket.socket) -> None:
    from mta.ingress.handler import server_factory
    from mta.smtp.tls import server_context

    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_unix_connection(sock=conn)
    signer = None
    if setup.dkim is not None:
        from mta.ingress.dkim import DkimSigner

        signer = DkimSigner.from_dkim_config(setup.dkim).sign
    tls_context = server_context(setup.tls_cert, setup.tls_key) if setup.tls_cert else None
    clock = make_clock(anchor=setup.clock_anchor)
    spool = RemoteSpool(setup.spool_path, writer)
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dkim")
    handler = IngressHandler(
        setup.smtp, spool, clock, signer, executor, validity=setup.validity, node=setup.node
    )
    listener = Listener(setup.limits)
    listener.needs_auth = lambda ip: not handler.in_relay_networks(ip)
    server = await loop.create_server(
        server_factory(handler, tls_context, listener), sock=sock
    )
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    answers = loop.create_task(spool.read_answers(reader))
    writer.write(_frame("ready"))
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({answers, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if answers.done():  # the main process is gone: nothing more can be committed
        os._exit(1)
    server.close()
    handler.closing = True
    listener.shut_down()
    await handler.close(grace=5.0)
    writer.close()
    executor.shutdown(wait=False)


async def start_workers(
    config: MtaConfig,
    clock: Clock,
    limits: SmtpLimits,
    spool: Spool,
    handler: IngressHandler,
) -> IngressWorkers:
    """Listen on smtp.listen and start smtp.workers processes serving it; the main process's
    `handler` counts what they commit and tells the scheduler (its on_queued)."""
    if not isinstance(clock, ScaledClock):
        raise ValueError("smtp.workers needs a real or scaled clock")
    host, port = parse_hostport(config.smtp.listen)

    def committed(message: NewMessage) -> None:
        handler.accepted += 1
        handler.on_queued(message)

    setup = WorkerSetup(
        smtp=config.smtp,
        validity=handler.validity,
        node=handler.node,
        limits=limits,
        dkim=config.dkim if config.dkim.keys else None,
        tls_cert=config.smtp.tls_cert,
        tls_key=config.smtp.tls_key,
        clock_anchor=clock.anchor.encode(),
        spool_path=spool.path,
        log_level=config.log_level,
        uvloop=type(asyncio.get_running_loop()).__module__.startswith("uvloop"),
    )
    workers = IngressWorkers(
        config.smtp.workers, setup, listening_socket(host, port), spool, committed
    )
    try:
        await workers.start()
    except BaseException:
        await workers.stop(grace=0.0)
        raise
    log.info("SMTP sessions and DKIM signing in %d worker processes", config.smtp.workers)
    return workers
