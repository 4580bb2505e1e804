"""`mta demo` wall time for 1,000 and 10,000 recipients (3.5 days of validity in ~60 s).

    python bench/bench_demo.py [--sizes 1000,10000]

Runs the demo as a user does (`mta demo --recipients N --json`) and prints its wall
time, whether every recipient ended as designed, and the time beyond the validity
period itself (the part the MTA, the simulated ISPs and the client add).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

VALIDITY = 3.5 * 86400


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000]
    )
    parser.add_argument("--time-scale", type=float, default=5040.0)
    args = parser.parse_args(argv)
    rows = []
    for size in args.sizes:
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "mta",
                "demo",
                "--recipients",
                str(size),
                "--json",
                "--time-scale",
                str(args.time_scale),
                "--timeout",
                "900",
            ],
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - started
        summary = json.loads(done.stdout) if done.stdout.strip() else {}
        rows.append((size, wall, done.returncode, summary))
    floor = VALIDITY / args.time_scale
    print(f"\nmta demo wall time (time x{args.time_scale:g}: the validity alone is {floor:.0f}s)")
    print(
        f"{'recipients':>10} {'wall s':>8} {'over validity s':>16} {'as designed':>12} "
        f"{'success %':>10}"
    )
    for size, wall, code, summary in rows:
        print(
            f"{size:>10} {wall:>8.1f} {wall - floor:>16.1f} "
            f"{'yes' if code == 0 else 'NO':>12} {summary.get('success_pct', 0):>10.1f}"
        )
    return 0 if all(code == 0 for _, _, code, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
