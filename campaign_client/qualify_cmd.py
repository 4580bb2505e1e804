"""`campaign-client qualify [--json] [--rules FILE] FILE... | -`: explain how inbound mail is
qualified, one report per failed recipient (as `mta classify` explains a reply).

For each recipient a message reports on: the kind (dsn, complaint, auto_reply, unknown), the
recipient, action, status, diagnostic, Campaign failure type, reason and reason code, and the
inbound rule that matched. FILE arguments are whole raw messages (.eml). With `-`, standard
input carries one JSON string per line (a whole raw message); each output object carries the
index of its input line, and a line that is not a JSON string gets an object with an error
instead of stopping the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from campaign_client.cli_common import CliError, add_common_options
from campaign_client.inbound import Inbound, Qualified, Rule, RulesError, load_rules, parse_inbound
from campaign_client.inbound import qualify as qualify_inbound


def add_parser(subs: Any) -> None:
    parser = subs.add_parser("qualify", help="explain how bounce mail is qualified")
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="raw messages, or - for one JSON string per line on stdin")
    parser.add_argument("--json", action="store_true", help="one JSON object per recipient")
    parser.add_argument("--rules", help="inbound-email rules TOML (default: built in)")
    add_common_options(parser)          # accepted like every subcommand's; qualify reads no log
    parser.set_defaults(func=run)


def reports(inbound: Inbound, results: Iterable[Qualified]) -> list[dict[str, Any]]:
    """The JSON objects for one message's recipients."""
    original = inbound.original
    return [
        {
            "kind": inbound.kind,
            "recipient": q.notice.recipient or original.recipient,
            "action": q.notice.action,
            "status": q.notice.status,
            "diagnostic": q.notice.diagnostic,
            "failure_type": q.failure_type,
            "reason": q.reason,
            "reason_code": q.reason_code,
            "rule": q.rule,
            "original": {"message_id": original.message_id, "delivery_id": original.delivery_id,
                         "log_id": original.log_id},
        }
        for q in results
    ]


def run(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.rules)
    except RulesError as exc:
        raise CliError(str(exc)) from None
    if "-" in args.files:
        if args.files != ["-"]:
            raise CliError("'-' reads standard input: give it alone, without FILE arguments")
        return _from_stdin(sys.stdin, sys.stdout, rules)
    failed = 0
    for name in args.files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            failed += 1
            print(f"campaign-client: error: cannot read {name}: {exc.strerror or exc}",
                  file=sys.stderr)
            continue
        inbound = parse_inbound(raw)
        objects = reports(inbound, qualify_inbound(inbound, rules))
        if args.json:
            for item in objects:
                print(json.dumps({"file": name, **item}, ensure_ascii=False))
        else:
            _print_text(name, objects, sys.stdout)
    return 1 if failed else 0


def _from_stdin(source: TextIO, out: TextIO, rules: tuple[Rule, ...]) -> int:
    for index, line in enumerate(source):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            out.write(json.dumps({"index": index, "error": f"not JSON: {exc.msg}"}) + "\n")
            continue
        if not isinstance(raw, str):
            out.write(json.dumps({"index": index, "error": "expected a JSON string (a whole"
                                  f" raw message), got {type(raw).__name__}"}) + "\n")
            continue
        inbound = parse_inbound(raw.encode("utf-8", "surrogateescape"))
        for item in reports(inbound, qualify_inbound(inbound, rules)):
            out.write(json.dumps({"index": index, **item}, ensure_ascii=False) + "\n")
        out.flush()
    return 0


def _print_text(name: str, objects: list[dict[str, Any]], out: TextIO) -> None:
    out.write(f"{name}\n")
    for item in objects:
        status = item["status"] or "-"
        out.write(f"  {item['kind']:10} {item['recipient'] or '(recipient not given)'}"
                  f"  action {item['action'] or '-'}  status {status}\n")
        if item["diagnostic"]:
            out.write(f"  {'':10} diagnostic: {item['diagnostic'][:200]}\n")
        out.write(f"  {'':10} -> {item['failure_type']} / {item['reason']}"
                  f" ({item['reason_code']})  rule {item['rule']}\n")
