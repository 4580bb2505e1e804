"""Bounce classification throughput, one core, the full built-in rule set.

Classifies every reply of tests/data/bounce_corpus.jsonl, the corpus repeated
`--rounds` times, and prints replies per second for:

- no cache: every reply goes through the rule engine;
- LRU cache: the default bounded cache (repeated texts are answered from it);
- unique texts + cache: each reply made unique (as real replies are, with their
  queue ids and IPs) so the cache never hits and only costs its upkeep;
- parse + classify, unique: `parse_reply` on the raw text as well.

    python -m bench.bench_classify [--rounds 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mta.config.bounce_rules import builtin_rules, load_bounce_rules
from mta.core.bounce import DEFAULT_CACHE_SIZE
from mta.core.reply import parse_reply
from mta.model import Condition, Outcome, Phase

CORPUS = Path(__file__).parents[1] / "tests" / "data" / "bounce_corpus.jsonl"


def _corpus() -> list[tuple[str, Phase, Condition | None]]:
    rows = []
    with CORPUS.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                condition = row.get("condition")
                rows.append((row["reply"], Phase(row.get("phase", "rcpt")),
                             Condition(condition) if condition else None))
    return rows


def _best_rate(work: Callable[[], int], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        count = work()
        elapsed = time.perf_counter() - start
        best = max(best, count / elapsed)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_classify", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="times the corpus is classified")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is shown)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat must be at least 1")

    rows = _corpus()
    start = time.perf_counter()
    builtin_rules.cache_clear()
    load_bounce_rules()
    load_ms = (time.perf_counter() - start) * 1000
    outcomes = [Outcome(parse_reply(raw), phase, None, cond) for raw, phase, cond in rows]
    unique_raw = [
        (f"{raw} id{n}-{i}", phase, cond)
        for n in range(args.rounds) for i, (raw, phase, cond) in enumerate(rows)
    ]
    unique = [Outcome(parse_reply(raw), phase, None, cond) for raw, phase, cond in unique_raw]
    total = len(rows) * args.rounds

    def run(cache_size: int, items: list[Outcome], rounds: int) -> Callable[[], int]:
        def work() -> int:
            rules = load_bounce_rules(cache_size=cache_size)   # fresh: a cold cache each run
            classify = rules.classify
            for _ in range(rounds):
                for outcome in items:
                    classify(outcome)
            return len(items) * rounds
        return work

    def parse_and_classify() -> int:
        classify = load_bounce_rules().classify
        for raw, phase, cond in unique_raw:
            classify(Outcome(parse_reply(raw), phase, None, cond))
        return len(unique_raw)

    print(f"rules: {len(builtin_rules())} built-in, loaded and compiled in {load_ms:.1f} ms")
    print(f"corpus: {len(rows)} replies x {args.rounds} rounds = {total} classifications")
    figures = [
        ("no cache", run(0, outcomes, args.rounds)),
        (f"LRU cache ({DEFAULT_CACHE_SIZE})", run(DEFAULT_CACHE_SIZE, outcomes, args.rounds)),
        ("unique texts + cache", run(DEFAULT_CACHE_SIZE, unique, 1)),
        ("parse + classify, unique", parse_and_classify),
    ]
    for label, work in figures:
        rate = _best_rate(work, args.repeat)
        print(f"{label:28} {rate:12,.0f} replies/s  ({1e6 / rate:6.2f} us each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
