"""Benchmark: the cost of the adaptive-delivery decisions per message.

Times, per call: `throttle.admit` + `on_attempt` + `on_result` (one delivered
message), `on_result` for a throttling reply run through the adaptive rules,
`MxRules.match` (cached) and `RetrySchedule.policy_for` + `retry.decide`, with
the built-in data. These run once per message in the scheduler, so their sum
bounds the message rate one core can decide.

    .venv/bin/python bench/bench_throttle.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mta.config.mx_rules import load_mx_data, load_retry_schedule
from mta.core import throttle as th
from mta.core.retry import decide
from mta.core.site_results import SiteResult
from mta.model import BounceClass, Result, Verdict

MAX_RUNS = 2_000_000  # a bound on every timing loop, whatever the time budget
THROTTLED = Verdict(BounceClass(70, "Transient Failure"), "Soft", "Unreachable", 3, "site",
                    False, "throttle-unusual-rate", throttle=True)
TEXT = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail"


def per_call(fn: Callable[[int], None], seconds: float) -> tuple[float, int]:
    """Microseconds per call of fn(i), run in batches until `seconds` have passed."""
    runs = 0
    start = time.perf_counter()
    while runs < MAX_RUNS:
        for _ in range(1000):
            fn(runs)
            runs += 1
        if time.perf_counter() - start >= seconds:
            break
    return (time.perf_counter() - start) / runs * 1e6, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args(argv)
    data = load_mx_data()
    schedule = load_retry_schedule()
    gmail = data.rules.by_name("gmail")
    state = th.new_state("google.test", "127.0.0.2", gmail, 0.0)

    def delivered(i: int) -> None:
        now = i * 0.001
        th.admit(state, now, 0)
        th.on_attempt(state, now)
        th.on_result(state, now, SiteResult(Result.DELIVERED, now, None, "250 ok"))

    throttle_state = th.new_state("google.test", "127.0.0.3", gmail, 0.0)

    def throttled(i: int) -> None:
        now = i * 0.001
        th.on_result(throttle_state, now, SiteResult(Result.THROTTLED, now - 1, THROTTLED, TEXT))

    hosts = ["mx1.google.test", "mx2.google.test"]

    def match(_: int) -> None:
        data.rules.match(hosts)

    def retry(i: int) -> None:
        decide(THROTTLED, 1, 0.0, 1e12, schedule, (i % 997) / 997)

    print(f"{'decision':<44} {'us/call':>8} {'calls':>9}")
    for label, fn in [
        ("admit + on_attempt + on_result (delivered)", delivered),
        ("on_result (throttling reply, 3 rules)", throttled),
        ("MxRules.match (cached)", match),
        ("retry.decide with the schedule", retry),
    ]:
        micros, runs = per_call(fn, args.seconds)
        print(f"{label:<44} {micros:8.2f} {runs:9d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
