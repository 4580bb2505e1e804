"""`mta spool check DIR` and `mta spool salvage DIR [--out NEWDIR]`: a damaged spool.

    mta spool check var/mta                     # what is readable, what is damaged
    mta spool salvage var/mta --out var/mta-new # every readable message into a new spool

`check` exits 0 when the spool is sound, 1 when something is damaged, 2 when nothing
can be read. `salvage` writes NEWDIR/spool.sqlite3 (NEWDIR defaults to DIR.salvaged);
start the MTA on it with `mta serve --data-dir NEWDIR`. Run both with the MTA stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mta.cli.common import CliError
from mta.queue.salvage import Unsalvageable, check, salvage, spool_path


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "spool", help="check a spool for damage, or rescue what is readable into a new one"
    )
    sub = parser.add_subparsers(dest="spool_command", metavar="COMMAND", required=True)
    check_cmd = sub.add_parser(
        "check", help="report what is readable and what is damaged (exit 1 on damage)"
    )
    check_cmd.add_argument("dir", metavar="DIR", help="the MTA's data directory (or the file)")
    salvage_cmd = sub.add_parser(
        "salvage", help="copy every readable message and its recipients into a new spool"
    )
    salvage_cmd.add_argument("dir", metavar="DIR", help="the damaged spool's data directory")
    salvage_cmd.add_argument(
        "--out", metavar="NEWDIR", help="where to write the new spool (default DIR.salvaged)"
    )


def run(args: argparse.Namespace) -> int:
    source = Path(args.dir)
    if not spool_path(source).exists():
        raise CliError(f"{spool_path(source)}: no such file")
    try:
        if args.spool_command == "check":
            report = check(source)
            print("\n".join(report.lines()))
            if report.damaged:
                print(
                    f"damaged: rescue what is readable with `mta spool salvage {source}"
                    " --out NEWDIR`",
                    file=sys.stderr,
                )
                return 1
            return 0
        out = Path(args.out) if args.out else source.with_name(source.name + ".salvaged")
        report = salvage(source, out)
    except Unsalvageable as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 2
    except FileExistsError as exc:
        raise CliError(str(exc)) from None
    print("\n".join(report.lines()))
    messages = report.tables.get("messages")
    recipients = report.tables.get("recipients")
    print(
        f"salvaged into {out / 'spool.sqlite3'}: {messages.readable if messages else 0} messages"
        f" ({len(report.messages_damaged)} with damaged content, held by the MTA, never sent),"
        f" {recipients.readable - report.orphans if recipients else 0} recipients;"
        f" start it with: mta serve --data-dir {out}"
    )
    return 0
