"""`campaign-client quarantine ls | show ADDRESS | rm ADDRESS [--json]`: the addresses the
client will not send to (Quarantine, Denylisted) and those counting errors (Erroneous).

    ls     every address that is not Valid now: status, counted errors, the last counted error,
           the reason and the delivery that gave the status
    show   one address: its state and every error the client learned of it (counted or not)
    rm     back to Valid, counter reset (a user's decision, noted in the address's history)

"Now" is the events' clock (`DeliveryLog.clock`): the MTA's clock may run faster than real
time, and the 10-day reset counts on it. Exit 1 when `show`/`rm` name an address the client
holds nothing on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from campaign_client.cli_common import PROG, CliError, add_common_options, open_log, when
from campaign_client.log import QuarantineEntry


def register(subs: Any) -> None:
    """Add `quarantine` to the `campaign-client` subcommands."""
    parser = subs.add_parser("quarantine", help="addresses in quarantine, denylisted, erroneous")
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    ls = actions.add_parser("ls", help="every address that is not Valid")
    show = actions.add_parser("show", help="one address and its history")
    show.add_argument("address", metavar="ADDRESS")
    rm = actions.add_parser("rm", help="back to Valid (counter reset)")
    rm.add_argument("address", metavar="ADDRESS")
    for sub in (ls, show, rm):
        add_common_options(sub)
        sub.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_ls)
    show.set_defaults(func=_cmd_show)
    rm.set_defaults(func=_cmd_rm)


def _row(entry: QuarantineEntry) -> str:
    cause = entry.reason or "-"
    if entry.delivery_id:
        cause += f" (delivery {entry.delivery_id}, line {entry.log_id})"
    return (f"{entry.address:<32} {entry.status:<10} {entry.hits:>6}  "
            f"{when(entry.last_at):<20}  {cause}")


HEADER = f"{'address':<32} {'status':<10} {'errors':>6}  {'last counted error':<20}  reason"


def _cmd_ls(args: argparse.Namespace) -> int:
    log = open_log(args, create=False)
    try:
        entries = log.addresses(log.clock(time.time()))
    finally:
        log.close()
    if args.json:
        print(json.dumps([entry.to_json() for entry in entries], indent=2))
        return 0
    print(HEADER)
    for entry in entries:
        print(_row(entry))
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.status] = counts.get(entry.status, 0) + 1
    summary = ", ".join(f"{status} {count}" for status, count in sorted(counts.items()))
    print(f"{len(entries)} addresses" + (f": {summary}" if summary else ""))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    log = open_log(args, create=False)
    try:
        now = log.clock(time.time())
        state = log.address_state(args.address, now)
        history = log.address_history(args.address)
    finally:
        log.close()
    if not history:
        raise CliError(f"nothing known of {args.address} in {args.log_path}", code=1)
    entry = QuarantineEntry.of(args.address, state)
    if args.json:
        print(json.dumps({**entry.to_json(), "history": history}, indent=2))
        return 0
    print(HEADER)
    print(_row(entry))
    print("history:")
    for item in history:
        counted = "counted" if item["counted"] else "not counted"
        reason = item.get("reason") or ""
        where = f" delivery {item['delivery_id']}" if item.get("delivery_id") else ""
        print(f"  {when(item['at'])}  {item['signal']:<9} {reason:<22} {counted:<11}"
              f" -> {item['status']} ({item['errors']}){where}  [{item.get('kind') or '-'}]")
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    log = open_log(args, create=False)
    try:
        released = log.release(args.address, log.clock(time.time()))
    finally:
        log.close()
    if released is None:
        raise CliError(f"{args.address} is not in quarantine, denylisted or erroneous in "
                       f"{args.log_path}", code=1)
    if args.json:
        print(json.dumps({"removed": released.to_json()}, indent=2))
    else:
        print(f"{PROG}: {args.address} is Valid again (was {released.status}: "
              f"{released.reason or '-'}, delivery {released.delivery_id or '-'})",
              file=sys.stderr)
    return 0
