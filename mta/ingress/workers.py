"""Ingress worker processes: the SMTP sessions, header work and DKIM signing in N processes.

With `smtp.workers` = N > 0 (the default, "auto", is one per core, at most 4, on two
or more cores) the main process listens and starts N worker processes (spawned: each
its own interpreter, so the work spreads over the cores). The main process accepts
each connection, decides as the single-process MTA would whether to admit it
(shutting down, an IP locked out of AUTH, the total and per-IP connection limits: one
count for all workers), and passes the socket (SCM_RIGHTS over a Unix socket) to the
worker with the fewest sessions, or says the 421 itself. A worker runs the same
IngressHandler and SMTP server as the single-process MTA, but signs on its event
loop's thread (InlineExecutor), and its spool is a RemoteSpool: the signed message is
pickled over a Unix socketpair to the main process, which hands it to the spool's
writer thread like any other ingest (same group commit, "relayed" events in the same
transaction) and answers once the commit is on disk. The worker says 250 only then.
The main process keeps the spool, the scheduler, delivery, feedback and the admin API.

What a worker tells the main process besides its messages: each session that ended
(the connection counts), each failed AUTH (the main process keeps the per-IP
failures and tells every worker of a lockout), and every 0.2 s what it counted
(messages and sessions refused, junk, time-outs, long lines, spills), so the admin
API counts for all workers. Each worker holds 1/N of `smtp.data_memory_limit`.

Failures: a main process that dies closes the socketpairs and its workers exit at
once, so a client whose message was not committed sees its connection drop and
never a 250. A worker that dies is started again (its unacknowledged clients see
the drop; its sessions no longer count). At stop, the main process stops accepting,
each worker says 421 to its sessions and waits up to its grace for the messages
being stored; the main process answers their commits until the worker has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, TypeVar

from mta.clock import Clock, ScaledClock, make_clock
from mta.config.engine import parse_hostport
from mta.config.service import DkimConfig, MtaConfig, SmtpConfig
from mta.ingress.handler import IngressHandler
from mta.queue.records import NewMessage
from mta.queue.spool import Spool, SpoolError, SpoolFull
from mta.smtp.limits import AuthThrottle, Listener, SmtpLimits

log = logging.getLogger("mta.ingress")
T = TypeVar("T")

_HEADER = struct.Struct("!I")
OK, FULL, FAILED = 0, 1, 2
RESTART_DELAY = 1.0  # seconds before a worker that died is started again
COUNTS_INTERVAL = 0.2  # seconds between a worker's reports of what it counted
# "auto" starts no more: the main process's event loop (delivery, the workers' commits)
# spends about 0.9 ms of CPU a message where a worker spends 2.5, so past 3 or 4 workers
# the main process is the limit and more would only hold memory (bench/bench_peers.py).
AUTO_WORKERS_MAX = 4


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs, picklable: it builds its own signer, TLS context and clock."""

    smtp: SmtpConfig  # the [smtp] section
    validity: float  # retry.validity
    node: str  # the cluster node's name
    limits: SmtpLimits  # a worker's: no connection limits (the main process's), its memory share
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


def _counts(handler: IngressHandler, listener: Listener) -> dict[str, int]:
    """What a worker counts that the admin API reports (the main process adds them up)."""
    return {
        "rejected": handler.rejected,
        "junk_closed": listener.junk_closed_total,
        "session_timeouts": listener.session_timeouts_total,
        "long_lines": listener.long_lines_total,
        "data_spilled": listener.reading.spilled_total,
        "auth_refused": listener.auth.refusals_total,
    }


def _add_counts(handler: IngressHandler, listener: Listener, delta: dict[str, int]) -> None:
    handler.rejected += delta.get("rejected", 0)
    listener.junk_closed_total += delta.get("junk_closed", 0)
    listener.session_timeouts_total += delta.get("session_timeouts", 0)
    listener.long_lines_total += delta.get("long_lines", 0)
    listener.reading.spilled_total += delta.get("data_spilled", 0)
    listener.auth.refusals_total += delta.get("auth_refused", 0)


@dataclass(eq=False)
class _Passed:
    """A session passed to a worker, as the main process's connection gate counts it."""

    ip: str

    def shut_down(self) -> None:
        """Nothing here: at stop each worker says 421 to its own sessions."""


# -- the main process's side -------------------------------------------------------------


class IngressWorkers:
    """N worker processes accepting on one listening socket, committing through `spool`."""

    def __init__(
        self,
        count: int,
        setup: WorkerSetup,
        sock: socket.socket,
        spool: Spool,
        handler: IngressHandler,
        listener: Listener,
    ) -> None:
        self.count = count
        self.setup = setup
        self.sock = sock
        self.spool = spool
        self.handler = handler  # counts what the workers commit and refuse
        self.listener = listener  # admits every connection; counts for all workers
        self.stopping = False
        self.restarts = 0
        self._processes: dict[int, BaseProcess] = {}
        self._handoff: dict[int, socket.socket] = {}  # worker -> where its sockets go
        self._outs: dict[int, _Coalescing] = {}  # worker -> its frames
        self._sessions: dict[int, dict[str, list[_Passed]]] = {}  # worker -> IP -> sessions
        self._tasks: set[asyncio.Task[None]] = set()
        self._context = multiprocessing.get_context("spawn")
        self._accepting = False

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self.sock,)

    def is_serving(self) -> bool:
        return not self.stopping and any(p.is_alive() for p in self._processes.values())

    def close(self) -> None:
        """Stop accepting; each worker closes its sessions (421)."""
        self.stopping = True
        self._accept_when_ready()
        for process in self._processes.values():
            if process.is_alive() and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)

    async def start(self) -> None:
        ready = [self._spawn(index) for index in range(self.count)]
        await asyncio.gather(*ready)

    def _accept_when_ready(self) -> None:
        """Accept while some worker can take a connection; else the kernel holds them."""
        loop = asyncio.get_running_loop()
        ready = bool(self._handoff) and not self.stopping
        if ready and not self._accepting:
            loop.add_reader(self.sock.fileno(), self._accept)
        elif not ready and self._accepting:
            loop.remove_reader(self.sock.fileno())
        self._accepting = ready

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        handoff, their_handoff = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = self._context.Process(
            target=worker_main,
            args=(self.setup, their_handoff, theirs, index),
            name=f"mta-ingress-{index}",
            daemon=True,
        )
        process.start()
        theirs.close()
        their_handoff.close()
        self._processes[index] = process
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        if await _read_frame(reader) != "ready":
            writer.close()
            handoff.close()
            raise RuntimeError(f"ingress worker {index} did not start (see its log above)")
        handoff.setblocking(False)
        self._handoff[index] = handoff
        self._outs[index] = _Coalescing(writer)
        self._sessions[index] = {}
        task = asyncio.get_running_loop().create_task(self._serve(index, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._accept_when_ready()  # the first one ready, or one started again

    def _accept(self) -> None:
        """Admit or refuse each connection waiting; pass the admitted to a worker."""
        for _ in range(64):  # then let the event loop's other work run
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: the client waits
                log.error("cannot accept a connection: %s", exc)
                return
            with conn:
                self._admit(conn, str(peer[0]))

    def _admit(self, conn: socket.socket, ip: str) -> None:
        busy = {i: sum(map(len, self._sessions[i].values())) for i in self._handoff}
        index = min(busy, key=busy.__getitem__)  # accepting: some worker is ready
        passed = _Passed(ip)
        refusal = self.listener.admit(passed, ip)
        if refusal is None:
            try:
                socket.send_fds(self._handoff[index], [ip.encode()], [conn.fileno()])
            except OSError as exc:  # the worker is gone or not taking any more
                log.warning("ingress worker %d did not take a connection: %s", index, exc)
                self.listener.gate.release(passed, ip)
                refusal = "421 4.3.2 Service not available, try again later"
            else:
                self._sessions[index].setdefault(ip, []).append(passed)
                return
        log.info("refused a connection from %s: %s", ip, refusal)
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.send(f"{refusal}\r\n".encode())

    def _ended(self, index: int, ip: str) -> None:
        """Worker `index` says a session from `ip` ended."""
        sessions = self._sessions[index].get(ip)
        if not sessions:
            return
        self.listener.gate.release(sessions.pop(), ip)
        if not sessions:
            del self._sessions[index][ip]

    def _auth_failed(self, ip: str) -> None:
        """A failed AUTH in a worker: count it here; a lockout is told to every worker."""
        now = time.monotonic()
        self.listener.auth.failed(ip, now)
        left = self.listener.auth.locked_for(ip, now)
        if left:
            for out in self._outs.values():
                out.write(_frame(("lock", ip, left)))

    async def _serve(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Commit what worker `index` sends; answer each commit; restart it if it dies."""
        loop = asyncio.get_running_loop()
        out = self._outs[index]  # the answers and the lockouts share one coalesced stream

        def answer(seq: int, message: NewMessage, done: asyncio.Future[None]) -> None:
            exc = done.exception()
            if exc is None:
                self.handler.accepted += 1
                self.handler.on_queued(message)
                reply: tuple[int, int, str] = (seq, OK, "")
            else:
                reply = (seq, FULL if isinstance(exc, SpoolFull) else FAILED, str(exc))
            out.write(_frame(reply))

        while True:
            item = await _read_frame(reader)
            if item is None:
                break
            if item[0] == "ended":
                self._ended(index, item[1])
                continue
            if item[0] == "auth_failed":
                self._auth_failed(item[1])
                continue
            if item[0] == "counts":
                _add_counts(self.handler, self.listener, item[1])
                continue
            seq, message = item
            done: asyncio.Future[None] = loop.create_future()
            done.add_done_callback(functools.partial(answer, seq, message))
            try:
                self.spool.ingest_soon(message, done)
            except SpoolError as exc:
                done.set_exception(exc)
        writer.close()
        self._handoff.pop(index).close()
        del self._outs[index]
        self._accept_when_ready()
        for ip, sessions in self._sessions.pop(index).items():  # they went with the worker
            for passed in sessions:
                self.listener.gate.release(passed, ip)
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
    """The SMTP listening socket the main process accepts on for the workers (port 0: any).

    The single-process path does not use this: it lets asyncio's create_server bind every
    address the host resolves to (127.0.0.1 and ::1 for "localhost", IPv6 sockets made
    IPv6-only), where the main process accepts on one socket for its workers; one function
    for both would change what one of them listens on.
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
        self._thread = threading.get_ident()
        self._seq = itertools.count()
        self._pending: dict[int, asyncio.Future[None]] = {}

    def ingest_soon(self, message: NewMessage, done: asyncio.Future[None]) -> None:
        """From any thread: send `message`; `done` settles when the main process committed it."""
        seq = next(self._seq)
        frame = _frame((seq, message))  # pickled on the signing thread
        if threading.get_ident() == self._thread:
            self._send(seq, frame, done)   # signed inline: no wake-up of our own loop
        else:
            self._loop.call_soon_threadsafe(self._send, seq, frame, done)

    async def ingest(self, message: NewMessage) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        seq = next(self._seq)
        self._send(seq, _frame((seq, message)), done)
        await done

    def tell(self, note: tuple[Any, ...]) -> None:
        """Send the main process a note: ("ended", ip), ("auth_failed", ip), ("counts", {})."""
        if not self._writer.is_closing():
            self._out.write(_frame(note))

    def _send(self, seq: int, frame: bytes, done: asyncio.Future[None]) -> None:
        if self._writer.is_closing():
            done.set_exception(SpoolError("the main process is gone"))
            return
        self._pending[seq] = done
        self._out.write(frame)

    async def read_answers(self, reader: asyncio.StreamReader, auth: AuthThrottle) -> None:
        """Settle each message's future as its answer comes, apply each AUTH lockout the
        main process tells of; returns when the main process has gone."""
        while True:
            item = await _read_frame(reader)
            if item is None:
                return
            if item[0] == "lock":
                _, ip, seconds = item
                auth.lock(ip, time.monotonic() + seconds)
                continue
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


class InlineExecutor(Executor):
    """Runs each call at once on the calling thread. A worker signs on its event loop's
    thread: with one worker per core the signing threads of the single process only added
    hand-offs (3 to 8 % more CPU per message, at 2 KB and 50 KB)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class _ForwardedAuth(AuthThrottle):
    """A worker's AUTH throttle: each failure also goes to the main process, which counts
    them for all workers and tells every worker of a lockout."""

    def __init__(self, limits: SmtpLimits, spool: RemoteSpool) -> None:
        super().__init__(limits.auth_failures_per_ip, limits.auth_lockout)
        self.spool = spool

    def failed(self, ip: str, now: float) -> None:
        super().failed(ip, now)
        self.spool.tell(("auth_failed", ip))


def worker_main(
    setup: WorkerSetup, handoff: socket.socket, conn: socket.socket, index: int
) -> None:
    """A worker process: serve the SMTP sessions the main process passes over `handoff`
    until SIGTERM, or until the main process goes."""
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
    asyncio.run(_worker(setup, handoff, conn))


async def _worker(setup: WorkerSetup, handoff: socket.socket, conn: socket.socket) -> None:
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
    executor = InlineExecutor()  # one process per core: signing threads only add hand-offs
    handler = IngressHandler(
        setup.smtp, spool, clock, signer, executor, validity=setup.validity, node=setup.node
    )
    listener = Listener(setup.limits)
    listener.needs_auth = lambda ip: not handler.in_relay_networks(ip)
    listener.auth = _ForwardedAuth(setup.limits, spool)
    listener.ended = lambda ip: spool.tell(("ended", ip))
    factory = server_factory(handler, tls_context, listener)
    sessions: set[asyncio.Task[Any]] = set()

    def take(ip: str, sock: socket.socket) -> None:
        async def serve() -> None:
            try:
                await loop.connect_accepted_socket(factory, sock)
            except OSError:  # gone before it could start: the main process counted it
                sock.close()
                listener.ended(ip)

        task = loop.create_task(serve())
        sessions.add(task)
        task.add_done_callback(sessions.discard)

    def receive() -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(handoff, 256, 8)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not fds:  # the main process closed its end: nothing more comes
                loop.remove_reader(handoff.fileno())
                return
            for fd in fds:
                take(data.decode(), socket.socket(fileno=fd))

    handoff.setblocking(False)
    loop.add_reader(handoff.fileno(), receive)
    counted = _counts(handler, listener)

    def report_counts() -> None:
        nonlocal counted
        now = _counts(handler, listener)
        delta = {name: now[name] - counted[name] for name in now if now[name] != counted[name]}
        if delta:
            spool.tell(("counts", delta))
        counted = now

    async def report_counts_often() -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL)
            report_counts()

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    answers = loop.create_task(spool.read_answers(reader, listener.auth))
    reporting = loop.create_task(report_counts_often())
    writer.write(_frame("ready"))
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({answers, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if answers.done():  # the main process is gone: nothing more can be committed
        os._exit(1)
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(handoff.fileno())
    handler.closing = True
    listener.shut_down()
    await handler.close(grace=5.0)
    reporting.cancel()
    report_counts()
    await asyncio.sleep(0)  # the last notes (counts, sessions ended) leave before the close
    writer.close()
    executor.shutdown(wait=False)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0))


def worker_count(setting: int | str, clock: Clock, cores: int) -> int:
    """How many ingress workers smtp.workers asks for: a number as it is; "auto" one per
    core, at most AUTO_WORKERS_MAX, when there are two or more and the clock is real or
    scaled, else 0 (one core gains nothing from a second process; a manual clock lives in
    this process only)."""
    if isinstance(setting, int):
        return setting
    return min(cores, AUTO_WORKERS_MAX) if cores > 1 and isinstance(clock, ScaledClock) else 0


async def start_workers(
    config: MtaConfig,
    count: int,
    clock: Clock,
    spool: Spool,
    handler: IngressHandler,
    listener: Listener,
) -> IngressWorkers:
    """Listen on smtp.listen and start `count` processes serving it. The main process's
    `listener` admits every connection (its limits) and counts for all workers; its
    `handler` counts what they commit and tells the scheduler (its on_queued)."""
    limits = listener.limits
    if not isinstance(clock, ScaledClock):
        raise ValueError("smtp.workers needs a real or scaled clock")
    host, port = parse_hostport(config.smtp.listen)
    memory = limits.data_memory_limit
    setup = WorkerSetup(
        smtp=config.smtp,
        validity=handler.validity,
        node=handler.node,
        limits=dataclasses.replace(
            limits,
            max_connections=0,  # counted in the main process, for all workers
            max_connections_per_ip=0,
            data_memory_limit=-(-memory // count) if memory else 0,  # a share each
        ),
        dkim=config.dkim if config.dkim.keys else None,
        tls_cert=config.smtp.tls_cert,
        tls_key=config.smtp.tls_key,
        clock_anchor=clock.anchor.encode(),
        spool_path=spool.path,
        log_level=config.log_level,
        uvloop=type(asyncio.get_running_loop()).__module__.startswith("uvloop"),
    )
    workers = IngressWorkers(
        count, setup, listening_socket(host, port), spool, handler, listener
    )
    try:
        await workers.start()
    except BaseException:
        await workers.stop(grace=0.0)
        raise
    log.info("SMTP sessions and DKIM signing in %d worker processes", count)
    return workers
