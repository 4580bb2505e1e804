"""Benchmark: what quarantine costs the client, each figure beside a baseline of the same run.

- decide: address decisions/s (`campaign_client.quarantine.decide`, pure) against the line
  status table's `campaign_client.status.apply` per second on the same events.
- apply: events/s applied by `DeliveryLog.apply_events` (batches of `--batch`, one fsync each)
  for a mix with hard and soft bounces (every bounce read, decided and written for its address)
  against an all-delivered mix of the same size (no address rows written).
- exclude: milliseconds for the exclusion check of `--recipients` addresses with 10% of them in
  quarantine, against registering the same recipients as Pending lines (which `send` does
  anyway).

    .venv/bin/python -m bench.bench_quarantine [--recipients 100000] [--events 10000]
        [--batch 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from campaign_client import status
from campaign_client.events import Event, Failure, Kind
from campaign_client.log import DeliveryLog
from campaign_client.quarantine import AddressState, Policy, decide, notice_of

T0 = 1_800_000_000.0
HARD = Failure("Hard", "User unknown", 1)
SOFT = Failure("Soft", "Mailbox full", 5)


def _events(count: int, with_bounces: bool) -> list[Event]:
    out: list[Event] = []
    for i in range(count // 2):
        rcpt = f"u{i}@x.test"
        out.append(Event(f"r{i}", Kind.RELAYED, "D1", str(i), rcpt, seq=1, at=T0))
        if with_bounces and i % 4 == 1:
            out.append(Event(f"h{i}", Kind.HARD_BOUNCE, "D1", str(i), rcpt, seq=2, at=T0 + 60,
                             failure=HARD))
        elif with_bounces and i % 4 == 2:
            out.append(Event(f"s{i}", Kind.SOFT_BOUNCE, "D1", str(i), rcpt, seq=2, at=T0 + 60,
                             failure=SOFT))
        else:
            out.append(Event(f"d{i}", Kind.DELIVERED, "D1", str(i), rcpt, seq=2, at=T0 + 60))
    return out


def bench_decide(events: Sequence[Event]) -> tuple[float, float]:
    policy = Policy()
    notices = [n for n in (notice_of(e, T0) for e in events) if n is not None]
    start = time.perf_counter()
    state = AddressState()
    for notice in notices:
        state = decide(state, notice, notice.at, policy)
    decided = len(notices) / (time.perf_counter() - start)
    start = time.perf_counter()
    line = status.LineState()
    for event in events:
        line = status.apply(line, event)
    applied = len(events) / (time.perf_counter() - start)
    return decided, applied


def bench_apply(events: Sequence[Event], batch: int, directory: Path, name: str) -> float:
    with DeliveryLog(directory / f"{name}.sqlite") as log:
        log.register("D1", [(e.log_id or "", e.recipient or "", None)
                            for e in events if e.kind is Kind.RELAYED], T0)
        start = time.perf_counter()
        for at in range(0, len(events), batch):
            log.apply_events(events[at:at + batch], T0)
        return len(events) / (time.perf_counter() - start)


def bench_exclude(recipients: int, directory: Path) -> tuple[float, float, int]:
    with DeliveryLog(directory / "exclude.sqlite") as log:
        held = [f"u{i}@x.test" for i in range(0, recipients, 10)]
        log.apply_events([Event(f"q{n}", Kind.HARD_BOUNCE, "D0", str(n), address, at=T0,
                                failure=HARD) for n, address in enumerate(held)], T0)
        candidates = [(str(i), f"u{i}@x.test") for i in range(recipients)]
        start = time.perf_counter()
        excluded = log.exclude("D1", candidates, T0 + 60)
        exclude_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        log.register("D1", [(log_id, address, None) for log_id, address in candidates], T0)
        register_ms = (time.perf_counter() - start) * 1000
    return exclude_ms, register_ms, len(excluded)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    bounces = _events(args.events, with_bounces=True)
    delivered = _events(args.events, with_bounces=False)
    decided, applied = bench_decide(bounces)
    print(f"decide: {decided:,.0f} address decisions/s vs status.apply {applied:,.0f} events/s"
          f" (ratio {decided / applied:.2f})")
    with tempfile.TemporaryDirectory(prefix="bench-quarantine-") as tmp:
        directory = Path(tmp)
        with_bounces = bench_apply(bounces, args.batch, directory, "bounces")
        plain = bench_apply(delivered, args.batch, directory, "delivered")
        print(f"apply: {with_bounces:,.0f} events/s with 25% hard + 25% soft bounces vs"
              f" {plain:,.0f} events/s all delivered (ratio {with_bounces / plain:.2f};"
              f" batches of {args.batch}, one fsync each)")
        exclude_ms, register_ms, excluded = bench_exclude(args.recipients, directory)
        print(f"exclude: {exclude_ms:,.0f} ms to check {args.recipients:,} recipients"
              f" ({excluded:,} excluded) vs {register_ms:,.0f} ms to register them"
              f" (ratio {exclude_ms / register_ms:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
