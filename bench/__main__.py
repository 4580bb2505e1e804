"""`make bench` / `python -m bench`: every benchmark, one after the other, figures printed."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "bench.bench_relay",
    "bench.bench_peers",
    "bench.bench_dkim",
    "bench.bench_classify",
    "bench.bench_qualify",
    "bench.bench_quarantine",
    "bench.bench_throttle",
    "bench.bench_queue",
    "bench.bench_data_memory",
    "bench.bench_spool_damage",
    "bench.bench_throttling",
    "bench.bench_cluster",
    "bench.bench_persona",
    "bench.bench_feedback",
    "bench.bench_outbox",
    "bench.bench_demo",
    "bench.bench_inbox",
]


def main() -> int:
    failures = 0
    for name in BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(name)
        try:
            result = module.main([])
        except SystemExit as exc:
            result = exc.code if isinstance(exc.code, int) else 1
        failures += 1 if result else 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
