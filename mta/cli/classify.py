"""The `mta classify` command: explain how the MTA qualifies an SMTP reply.

    mta classify [--json] [--phase PHASE] [--condition COND] [--rules FILE]... [--config FILE]
                 REPLY | -

REPLY is the reply text ("550 5.1.1 user unknown", multiline with real newlines);
with a --condition it may be left out. The answer names the rule that matched,
the Momentum class, the Campaign failure type, reason and reason code, the scope,
whether the failure is permanent, and the retry decision. `--json` prints one
object on one line. `-` reads standard input, one JSON value per line: a string
(the reply; "\\n" for multiline) or an object {"reply", "phase", "condition"};
each line gives one line of output, a bad line an object with an "error" key,
and the exit code is 1 if any line was bad. Rule files given with --rules (and
the `[bounce] rules_files` of --config) come in front of the built-in rules.

`add_parser(subparsers)` registers the command, `run(args)` executes it,
the verdict's document and text come from `mta.core.explain` (shared with the admin API), and
`python -m mta.cli.classify ...` runs it standalone.
Exit codes: 0 success, 1 a bad input line in `-` mode, 2 bad arguments or rules.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from mta.config.bounce_rules import load_bounce_rules
from mta.config.engine import ConfigError
from mta.config.service import load_config, retry_schedule
from mta.core.bounce import BounceRules
from mta.core.explain import CONDITIONS, PHASES, InputError, human, outcome_of, verdict_document
from mta.core.retry import RetrySchedule
from mta.model import Outcome

__all__ = ["add_parser", "main", "run"]




def add_parser(subparsers: Any) -> None:
    """Register `classify` on an argparse sub-parser set."""
    parser = subparsers.add_parser(
        "classify",
        help="explain the verdict for an SMTP reply (bounce class, Campaign type and reason)",
        description="Classify an SMTP reply with the bounce rules and explain the verdict.",
    )
    parser.add_argument(
        "reply",
        metavar="REPLY",
        nargs="?",
        help='the reply, e.g. "550 5.1.1 user unknown"; "-" reads JSON lines from stdin',
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per reply")
    parser.add_argument(
        "--phase",
        choices=PHASES,
        help="SMTP phase (default: rcpt, or connect with --condition)",
    )
    parser.add_argument("--condition", choices=CONDITIONS, help="a local condition")
    parser.add_argument(
        "--rules",
        action="append",
        default=[],
        dest="rules_files",
        metavar="FILE",
        help="a rules file tried before the built-in rules (repeatable, in order)",
    )
    parser.add_argument(
        "--config", dest="classify_config", metavar="FILE",
        help="the MTA config file: its [bounce] rules_files and its retry schedule are used",
    )


def run(args: argparse.Namespace) -> int:
    """Execute the parsed `classify` command; returns the exit code."""
    try:
        rules, schedule = _load(args)
        if args.reply == "-":
            return _run_lines(rules, schedule, args, sys.stdin, sys.stdout)
        outcome = outcome_of(args.reply, args.phase, args.condition)
    except (ConfigError, InputError) as exc:
        print(f"mta classify: error: {exc}", file=sys.stderr)
        return 2
    explanation = rules.explain(outcome)
    if args.json:
        print(json.dumps(verdict_document(explanation, outcome, schedule)))
    else:
        print(human(explanation, outcome, schedule))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mta")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


# --------------------------------------------------------------------------- pieces


def _load(args: argparse.Namespace) -> tuple[BounceRules, RetrySchedule]:
    """The rules and the retry schedule `mta serve` would use with the same config and env."""
    config = load_config(getattr(args, "classify_config", None))
    files: list[str] = [*(args.rules_files or ()), *config.bounce.rules_files]
    return load_bounce_rules(files), retry_schedule(config)


def _lines(stream: TextIO) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per input line; text None when the line is not UTF-8."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        for number, raw in enumerate(buffer, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None
        return
    for number, line in enumerate(stream, start=1):
        yield number, line


def _run_lines(
    rules: BounceRules,
    schedule: RetrySchedule,
    args: argparse.Namespace,
    stream: TextIO,
    out: TextIO,
) -> int:
    bad = 0
    for number, line in _lines(stream):
        try:
            outcome = _lineoutcome_of(args, line)
        except InputError as exc:
            bad += 1
            if args.json:
                out.write(json.dumps({"line": number, "error": str(exc)}) + "\n")
            else:
                out.write(f"line {number}: error: {exc}\n\n")
            continue
        explanation = rules.explain(outcome)
        if args.json:
            out.write(json.dumps(verdict_document(explanation, outcome, schedule)) + "\n")
        else:
            out.write(human(explanation, outcome, schedule) + "\n\n")
    out.flush()
    return 1 if bad else 0


def _lineoutcome_of(args: argparse.Namespace, line: str | None) -> Outcome:
    if line is None:
        raise InputError("not UTF-8 text")
    text = line.strip()
    if not text:
        raise InputError("empty line (expected a JSON string or object)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    phase, condition = args.phase, args.condition
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"reply", "phase", "condition"})
        if unknown:
            raise InputError(f"unknown key {unknown[0]!r} (expected reply, phase, condition)")
        phase = value.get("phase", phase)
        condition = value.get("condition", condition)
        value = value.get("reply")
    elif not isinstance(value, str):
        raise InputError(f"expected a JSON string or object, got {type(value).__name__}")
    return outcome_of(value, phase, condition)


if __name__ == "__main__":
    raise SystemExit(main())
