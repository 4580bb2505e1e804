"""`mta serve` next to Postfix and Postfix + OpenDKIM, all relaying into one sink.

    python bench/bench_peers.py [--messages 5000] [--sessions 20] [--sizes 2048,51200]
        [--repeat 1] [--wide 200] [--single 1000] [--fresh 0] [--soak 0] [--compare DIR]
        [--harness auto|c|python] [--latency 1000] [--workers N,...]

Same run, same load generator, same sink: for each size, the MTA (DKIM RSA-2048,
durable spool) and each peer installed get `--messages` messages over `--sessions`
sessions; the rate is end to end (first submission to the last message handed to
the sink). The harness is Postfix's smtp-source into smtp-sink when they are
installed (C: they leave the cores to the servers), else bench/loadgen.py into an
`mta sink`; the output says which. smtp-source times nothing per message, so with
it the p50/p99 come from a second, shorter load (`--latency` messages, same
sessions) by the Python load generator right after the rate run.
Printed per server: msg/s, CPU ms per message (every process of the server,
children included), the share of both cores the server kept busy and the share
the whole machine was busy (harness, other users), p50/p99 from the client's
final dot to the 250, and the ratios of the MTA to each peer.
`--wide N` adds the 2 KB end-to-end rate at N sessions, `--single N` the MTA's
rate over one session, `--fresh N` the 2 KB rate of the MTA and Postfix when every
message comes in a new session (`--sessions` at once; smtp-source without `-d`, no
p50/p99), `--soak N` the MTA's RSS (its workers' too) after relaying N more messages,
`--compare DIR` the same runs of another checkout's `mta` (e.g. a worktree of the
commit before a change), `--workers 0,1` the MTA also with `smtp.workers` = each N
(its default is `auto`: one worker per core).
Without Postfix / OpenDKIM it says so and measures the rest (and the sink alone,
the loopback limit). With `--repeat 3` each figure is the median of three runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_relay import delivered
from bench.loadgen import LoadResult, make_message, run_load
from bench.peers import Postfix, available, free_port, tree_cpu_seconds
from bench.procs import Proc, start_mta
from bench.smtp_tools import SmtpSink, message_file, run_source, tools

CORES = os.cpu_count() or 1
DOMAIN, SELECTOR = "sender.test", "bench"


@dataclass
class Figure:
    rate: float  # end to end, msg/s
    accept: float  # accepted (250 to the load generator), msg/s: first to last submission
    behind: int  # accepted but not yet handed to the sink when the load generator finished
    cpu_ms: float  # server CPU per message
    busy: float  # server CPU / (wall x cores)
    machine: float  # every process's CPU / (wall x cores): server, harness, others
    p50: float  # final dot -> 250, ms
    p99: float
    lost: int


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


class Harness:
    """Who sends the load and who takes the relayed mail: Postfix's C tools or ours."""

    def __init__(self, work: Path, choice: str) -> None:
        found = tools() if choice != "python" else None
        if choice == "c" and found is None:
            raise SystemExit("--harness c: smtp-source / smtp-sink are not installed")
        self.work = work
        self.c = found
        self.sink_port = 0
        self._sink: SmtpSink | Proc | None = None

    @property
    def name(self) -> str:
        if self.c:
            return "smtp-source (C; -d but for a session per message) into smtp-sink"
        return "bench/loadgen.py (Python, pipelined) into `mta sink`"

    async def start(self) -> None:
        if self.c:
            sink = SmtpSink(free_port(), self.c[1])
            await sink.start()
            self._sink, self.sink_port = sink, sink.port
        else:
            proc = await start_mta("sink", "--listen", "127.0.0.1:0", "--log-level", "warning")
            self._sink, self.sink_port = proc, proc.port

    async def stop(self) -> None:
        if self._sink is not None:
            await self._sink.stop()

    async def send(
        self, port: int, total: int, sessions: int, message: bytes, keep: bool = True
    ) -> LoadResult:
        """`total` messages over `sessions` at once; `keep` False: a new session for each."""
        if self.c:
            return await run_source(
                self.c[0], port, total, sessions, message_file(self.work, message), keep
            )
        if not keep:
            raise RuntimeError("a new session for every message needs smtp-source")
        return await run_load("127.0.0.1", port, total, sessions, message)


def _figure(
    load: LoadResult, done: int, seconds: float, cpu: float, machine: float, accepted: float,
    behind: int,
) -> Figure:
    return Figure(
        rate=done / seconds if seconds > 0 else 0.0,
        accept=load.sent / accepted if accepted > 0 else 0.0,
        behind=behind,
        cpu_ms=cpu / max(done, 1) * 1000,
        busy=cpu / (seconds * CORES) if seconds > 0 else 0.0,
        machine=machine,
        p50=load.percentile(0.50) * 1000 if load.latencies else math.nan,   # nan: not timed
        p99=load.percentile(0.99) * 1000 if load.latencies else math.nan,
        lost=load.failed + (load.sent - done),
    )


def rss_kib(pid: int) -> int:
    """The resident memory of `pid` and its children (the ingress workers), in KiB."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                total += sum(rss_kib(int(child)) for child in handle.read().split())
    return total


class MtaServer:
    def __init__(
        self,
        work: Path,
        sink_port: int,
        key: Path,
        tag: str,
        cwd: str | None = None,
        workers: int | None = None,
    ) -> None:
        self.work, self.sink_port, self.key, self.tag = work, sink_port, key, tag
        self.workers = workers  # smtp.workers; None: the default
        self.cwd = cwd  # another checkout's `mta` package (a before/after comparison)
        self.proc: Proc | None = None
        self.base = 0

    @property
    def spool(self) -> Path:
        return self.work / f"spool-{self.tag}" / "spool.sqlite3"

    async def start(self, sessions: int = 20) -> int:
        # Every session comes from 127.0.0.1: lift the per-IP cap (50) for the wide run,
        # as Postfix exempts $mynetworks from its per-client limits.
        env = {"MTA_SMTP_MAX_CONNECTIONS_PER_IP": str(max(50, sessions + 10))}
        if self.workers is not None:
            env["MTA_SMTP_WORKERS"] = str(self.workers)
        self.proc = await start_mta(
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(self.spool.parent),
            "--relayhost",
            f"127.0.0.1:{self.sink_port}",
            "--log-level",
            "warning",
            "--admin",
            "",
            "--dkim",
            f"{DOMAIN}:{SELECTOR}:{self.key}",
            cwd=self.cwd,
            env=env,
        )
        return self.proc.port

    def cpu(self) -> float:
        """The server's CPU so far: its process, threads and any child processes."""
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.process.pid)

    async def wait_delivered(self, expected: int, deadline: float) -> int:
        """How many messages are delivered once `expected` are, or at the deadline."""
        while delivered(self.spool) < expected and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        return delivered(self.spool)

    async def stop(self) -> None:
        if self.proc is not None:
            await self.proc.stop()


async def _measure(
    harness: Harness,
    latency: int,
    port: int,
    cpu: Callable[[], float],
    wait_delivered: Callable[[int, float], Awaitable[int]],
    already: int,
    messages: int,
    sessions: int,
    message: bytes,
    keep: bool = True,
) -> Figure:
    """Load `messages`, wait until `already + sent` are handed on; the figures of that span.
    With the C harness, then `latency` messages by the Python generator for p50/p99 (not
    when each message has its own session: the generator keeps its sessions)."""
    cpu0 = cpu()
    busy0, total0 = machine_ticks()
    started = time.perf_counter()
    load = await harness.send(port, messages, sessions, message, keep)
    accepted = time.perf_counter() - started
    # A deadline already past: how many are handed on at this moment, without waiting.
    behind = already + load.sent - await wait_delivered(already + load.sent, 0.0)
    done = await wait_delivered(already + load.sent, time.perf_counter() + 300) - already
    seconds = time.perf_counter() - started
    busy1, total1 = machine_ticks()
    machine = (busy1 - busy0) / max(total1 - total0, 1)
    figure = _figure(load, done, seconds, cpu() - cpu0, machine, accepted, behind)
    if harness.c and latency and keep:
        timed = await run_load("127.0.0.1", port, min(latency, messages), sessions, message)
        await wait_delivered(already + load.sent + timed.sent, time.perf_counter() + 300)
        figure.p50, figure.p99 = timed.percentile(0.50) * 1000, timed.percentile(0.99) * 1000
        figure.lost += timed.failed
    return figure


async def run_mta(
    harness: Harness,
    work: Path,
    key: Path,
    size: int,
    args: argparse.Namespace,
    sessions: int,
    cwd: str | None = None,
    workers: int | None = None,
    keep: bool = True,
) -> Figure:
    message = make_message(size)
    tag = f"{size}-{sessions}-{time.monotonic_ns()}"
    server = MtaServer(work, harness.sink_port, key, tag, cwd, workers)
    port = await server.start(sessions)
    try:
        await run_load("127.0.0.1", port, 200, min(sessions, 20), message)  # warm-up
        await server.wait_delivered(200, time.perf_counter() + 60)
        count = args.fresh if not keep else args.single if sessions == 1 else args.messages
        return await _measure(
            harness, args.latency, port, server.cpu, server.wait_delivered, 200, count, sessions,
            message, keep,
        )
    finally:
        await server.stop()


async def run_postfix(
    harness: Harness,
    work: Path,
    key: Path | None,
    size: int,
    args: argparse.Namespace,
    sessions: int,
    keep: bool = True,
) -> Figure:
    message = make_message(size)
    directory = work / f"postfix-{size}-{sessions}-{'dkim' if key else 'plain'}"
    peer = Postfix(directory, free_port(), ("127.0.0.1", harness.sink_port))
    await peer.start(sessions, (DOMAIN, SELECTOR, key) if key else None)

    async def wait_delivered(expected: int, deadline: float) -> int:
        while peer.queued() and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        return expected - peer.queued() - peer.deferred()

    try:
        await run_load("127.0.0.1", peer.port, 200, min(sessions, 20), message)  # warm-up
        await wait_delivered(200, time.perf_counter() + 60)
        return await _measure(
            harness, args.latency, peer.port, peer.cpu_seconds, wait_delivered, 0,
            args.messages if keep else args.fresh, sessions, message, keep,
        )
    finally:
        await peer.stop()


def _median(figures: list[Figure]) -> Figure:
    def med(name: str) -> float:
        return float(statistics.median(getattr(f, name) for f in figures))

    return Figure(
        med("rate"), med("accept"), round(med("behind")), med("cpu_ms"), med("busy"),
        med("machine"), med("p50"), med("p99"), max(f.lost for f in figures),
    )


async def main_async(args: argparse.Namespace) -> int:
    has_postfix, has_opendkim, note = available()
    if note:
        print(note, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # Postfix's processes (user postfix) read their queue below it
        from mta.cli.dkim import keygen

        key, _ = keygen(DOMAIN, SELECTOR, work / "keys", force=True)
        harness = Harness(work, args.harness)
        print(f"harness: {harness.name}", flush=True)
        await harness.start()
        try:
            plans: list[tuple[str, Callable[[], Awaitable[Figure]]]] = []
            for size in args.sizes:
                label = f"{size // 1024} KB"

                def mta(size: int = size, sessions: int = args.sessions) -> Awaitable[Figure]:
                    return run_mta(harness, work, key, size, args, sessions)

                plans.append((f"{label} mta serve (DKIM, spool)", mta))
                for n in args.workers:

                    def with_workers(
                        size: int = size, s: int = args.sessions, n: int = n
                    ) -> Awaitable[Figure]:
                        return run_mta(harness, work, key, size, args, s, None, n)

                    plans.append((f"{label} mta serve, workers = {n}", with_workers))
                if args.compare:

                    def before(size: int = size, s: int = args.sessions) -> Awaitable[Figure]:
                        return run_mta(harness, work, key, size, args, s, args.compare)

                    plans.append((f"{label} mta serve, {args.compare_name}", before))
                if has_postfix:

                    def plain(size: int = size, s: int = args.sessions) -> Awaitable[Figure]:
                        return run_postfix(harness, work, None, size, args, s)

                    plans.append((f"{label} Postfix", plain))
                if has_opendkim:

                    def signed(size: int = size, s: int = args.sessions) -> Awaitable[Figure]:
                        return run_postfix(harness, work, key, size, args, s)

                    plans.append((f"{label} Postfix + OpenDKIM", signed))
            if args.wide:
                wide = args.wide

                def mta_wide() -> Awaitable[Figure]:
                    return run_mta(harness, work, key, 2048, args, wide)

                plans.append((f"2 KB mta serve, {wide} sessions", mta_wide))
                for n in args.workers:

                    def wide_workers(n: int = n) -> Awaitable[Figure]:
                        return run_mta(harness, work, key, 2048, args, wide, None, n)

                    plans.append((f"2 KB mta serve, {wide} sessions, workers = {n}", wide_workers))
                if has_postfix:

                    def pf_wide() -> Awaitable[Figure]:
                        return run_postfix(harness, work, None, 2048, args, wide)

                    plans.append((f"2 KB Postfix, {wide} sessions", pf_wide))
            if args.single:

                def single() -> Awaitable[Figure]:
                    return run_mta(harness, work, key, 2048, args, 1)

                plans.append(("2 KB mta serve, 1 session", single))
                for n in args.workers:

                    def single_workers(n: int = n) -> Awaitable[Figure]:
                        return run_mta(harness, work, key, 2048, args, 1, None, n)

                    plans.append((f"2 KB mta serve, 1 session, workers = {n}", single_workers))
                if args.compare:

                    def single_before() -> Awaitable[Figure]:
                        return run_mta(harness, work, key, 2048, args, 1, args.compare)

                    plans.append((f"2 KB mta serve, 1 session, {args.compare_name}", single_before))
            if args.fresh:
                each = "2 KB, a session per message"

                def fresh(n: int | None = None, cwd: str | None = None) -> Awaitable[Figure]:
                    return run_mta(harness, work, key, 2048, args, args.sessions, cwd, n, False)

                plans.append((f"{each}: mta serve", fresh))
                for n in args.workers:
                    plans.append((f"{each}: mta serve, workers = {n}", lambda n=n: fresh(n)))
                if args.compare:
                    compared = f"{each}: mta serve, {args.compare_name}"
                    plans.append((compared, lambda: fresh(None, args.compare)))
                if has_postfix:

                    def pf_fresh() -> Awaitable[Figure]:
                        return run_postfix(harness, work, None, 2048, args, args.sessions, False)

                    plans.append((f"{each}: Postfix", pf_fresh))
            results: dict[str, list[Figure]] = {}
            for _ in range(args.repeat):  # interleaved, so load from others hits all alike
                for label, plan in plans:
                    try:
                        f = await plan()
                    except (OSError, RuntimeError) as exc:
                        print(f"  {label}: failed ({exc}); left out", flush=True)
                        continue
                    print(
                        f"  {label}: {f.rate:.0f} msg/s (accepted {f.accept:.0f}/s, "
                        f"{f.behind} behind at the end), {f.cpu_ms:.2f} CPU ms/msg, "
                        f"server {f.busy:.0%} / machine {f.machine:.0%} busy, "
                        f"p50 {_ms(f.p50)} ms, p99 {_ms(f.p99)} ms",
                        flush=True,
                    )
                    results.setdefault(label, []).append(f)
            rows = [(label, _median(figures)) for label, figures in results.items()]
            report(rows, args, harness.name)
            if args.soak:
                await soak(harness, work, harness.sink_port, key, args.soak)
        finally:
            await harness.stop()
    return 0


def _ms(value: float) -> str:
    """A latency in ms, or "-" when none was timed (the C harness without --latency)."""
    return "-" if math.isnan(value) else f"{value:.1f}"


def report(rows: list[tuple[str, Figure]], args: argparse.Namespace, harness: str) -> None:
    """The table of medians and the ratios."""
    print(
        f"\npeer benchmark: {args.messages} messages x {args.sessions} sessions, "
        f"median of {args.repeat}; {CORES} cores; end to end; harness: {harness}"
    )
    print(
        f"{'server':<52} {'msg/s':>7} {'accept':>7} {'behind':>7} {'CPU ms/msg':>11} "
        f"{'cores busy':>11} "
        f"{'machine':>8} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5}"
    )
    for label, f in rows:
        print(
            f"{label:<52} {f.rate:>7.0f} {f.accept:>7.0f} {f.behind:>7} {f.cpu_ms:>11.2f} "
            f"{f.busy:>10.0%} "
            f"{f.machine:>7.0%} {_ms(f.p50):>7} {_ms(f.p99):>7} {f.lost:>5}"
        )
    figures = dict(rows)
    for size in args.sizes:
        label = f"{size // 1024} KB"
        ours = figures.get(f"{label} mta serve (DKIM, spool)")
        if ours is None:
            continue
        for peer in ("Postfix", "Postfix + OpenDKIM"):
            theirs = figures.get(f"{label} {peer}")
            if theirs is not None and theirs.rate:
                print(f"ratio at {label}: mta serve / {peer} = {ours.rate / theirs.rate:.2f}x")
        for n in args.workers:
            multi = figures.get(f"{label} mta serve, workers = {n}")
            for peer in (
                "Postfix", "Postfix + OpenDKIM", "mta serve (DKIM, spool)",
                f"mta serve, {args.compare_name}",
            ):
                theirs = figures.get(f"{label} {peer}")
                if multi is not None and theirs is not None and theirs.rate:
                    print(
                        f"ratio at {label}: mta serve with {n} workers / {peer} = "
                        f"{multi.rate / theirs.rate:.2f}x"
                    )
        old = figures.get(f"{label} mta serve, {args.compare_name}")
        if old is not None and old.rate:
            ratio = ours.rate / old.rate
            print(f"ratio at {label}: mta serve / {args.compare_name} = {ratio:.2f}x")
    report_fresh(figures, args)
    wide_ours = figures.get(f"2 KB mta serve, {args.wide} sessions")
    wide_theirs = figures.get(f"2 KB Postfix, {args.wide} sessions")
    if wide_ours is not None and wide_theirs is not None and wide_theirs.rate:
        ours, theirs = wide_ours, wide_theirs
        ratio = ours.rate / theirs.rate
        print(f"ratio at {args.wide} sessions: mta serve / Postfix = {ratio:.2f}x")
        for n in args.workers:
            multi = figures.get(f"2 KB mta serve, {args.wide} sessions, workers = {n}")
            if multi is not None:
                ratio = multi.rate / theirs.rate
                print(
                    f"ratio at {args.wide} sessions: mta serve with {n} workers / Postfix = "
                    f"{ratio:.2f}x"
                )


def report_fresh(figures: dict[str, Figure], args: argparse.Namespace) -> None:
    """The ratios of the runs with a new session for every message."""
    each = "2 KB, a session per message"
    ours = figures.get(f"{each}: mta serve")
    if ours is None:
        return
    names = ["Postfix", *(f"mta serve, workers = {n}" for n in args.workers)]
    if args.compare:
        names.append(f"mta serve, {args.compare_name}")
    for name in names:
        theirs = figures.get(f"{each}: {name}")
        if theirs is not None and theirs.rate:
            ratio = ours.rate / theirs.rate
            print(f"ratio with a session per message: mta serve / {name} = {ratio:.2f}x")


async def soak(harness: Harness, work: Path, sink: int, key: Path, total: int) -> None:
    """Relay `total` 2 KB messages through one MTA in rounds; print its RSS (with its
    workers') as it goes."""
    message = make_message(2048)
    server = MtaServer(work, harness.sink_port, key, "soak")
    port = await server.start()
    assert server.proc is not None
    pid = server.proc.process.pid
    try:
        start_rss = rss_kib(pid)
        sent = 0
        started = time.perf_counter()
        deadline = started + 900
        while sent < total and time.perf_counter() < deadline:
            batch = min(10_000, total - sent)
            load = await harness.send(port, batch, 20, message)
            sent += load.sent
            await server.wait_delivered(sent, time.perf_counter() + 300)
            print(f"  soak: {sent} relayed, RSS {rss_kib(pid) / 1024:.0f} MiB", flush=True)
        done = delivered(server.spool)
        print(
            f"soak: {done} messages relayed in {time.perf_counter() - started:.0f} s; "
            f"RSS {start_rss / 1024:.0f} MiB at start, {rss_kib(pid) / 1024:.0f} MiB after"
        )
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[2048, 51200]
    )
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--compare", metavar="DIR", help="also run the mta of another checkout (before/after)"
    )
    parser.add_argument("--wide", type=int, default=200, help="sessions, wide run (0: none)")
    parser.add_argument("--single", type=int, default=1000, help="messages, 1 session (0: none)")
    parser.add_argument("--soak", type=int, default=0, help="messages, RSS soak (0: none)")
    parser.add_argument(
        "--fresh", type=int, default=0,
        help="messages, 2 KB, a new session for each (smtp-source only; 0: none)",
    )
    parser.add_argument(
        "--harness", choices=("auto", "c", "python"), default="auto",
        help="auto: smtp-source/smtp-sink when installed, else the Python loadgen/mta sink",
    )
    parser.add_argument(
        "--latency", type=int, default=1000,
        help="messages of the Python loadgen after each C-harness run, for p50/p99 (0: none)",
    )
    parser.add_argument(
        "--workers", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
        metavar="N,...", help="also run the MTA with smtp.workers = each N (0: one process)",
    )
    args = parser.parse_args(argv)
    args.compare_name = f"checkout {Path(args.compare).name}" if args.compare else ""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
