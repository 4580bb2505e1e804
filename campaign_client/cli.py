"""The `campaign-client` command: send a delivery, receive feedback, report, quarantine.

    campaign-client send --mta HOST:PORT --delivery-id ID (--csv FILE | --generate N --domains
        a.test,b.test) [--from ADDR] [--subject S] [--template FILE] [--validity 5d]
        [--sessions 10] [--listen HOST:PORT] [--secret whsec_...] [--bounce-listen HOST:PORT]
        [--pull URL] [--timeout SECONDS] [--idle-notice SECONDS] [--no-wait] [--json]
    campaign-client receive [--listen HOST:PORT --secret whsec_...] [--bounce-listen HOST:PORT]
        [--pull URL]                       (runs until SIGTERM / SIGINT)
    campaign-client report DELIVERY_ID [--recipients [--status S]] [--json]
    campaign-client quarantine ls | show ADDRESS | rm ADDRESS [--json]
    campaign-client qualify [--json] [--rules FILE] FILE... | -   (campaign_client.qualify_cmd)

Every subcommand takes --config FILE (the client's TOML config, `campaign_client.config`) and
--log FILE (the delivery log: flag > $CAMPAIGN_CLIENT_LOG > config > var/campaign-log.sqlite).
`send` leaves out addresses in Quarantine or Denylisted and says so (Campaign's exclusion log);
while it waits it says, on stderr, what it waits for when no event has come for a while.
The secret may come from $CAMPAIGN_CLIENT_SECRET. Exit codes: 0 done (send: every recipient Sent
or Failed), 1 not final when the timeout passed / unknown delivery or address / submission
stopped, 2 bad usage or input, 130 interrupted. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from campaign_client.cli_common import (
    PROG,
    CliError,
    add_common_options,
    open_log,
)
from campaign_client.config import DEFAULT_LOG
from campaign_client.indicators import Kpis, render_table
from campaign_client.log import DeliveryLog

if TYPE_CHECKING:
    from campaign_client.submission import Recipient

SECRET_ENV = "CAMPAIGN_CLIENT_SECRET"
IDLE_NOTICE = 15.0
SHOW_EXCLUDED = 20
__all__ = ["DEFAULT_LOG", "PROG", "CliError", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see {PROG} {self._sub_name()}--help)")

    def _sub_name(self) -> str:
        parts = self.prog.split()
        return " ".join(parts[1:]) + " " if len(parts) > 1 else ""


def parse_hostport(value: str) -> tuple[str, int]:
    """"HOST:PORT", "[v6]:PORT" or ":PORT" (host 127.0.0.1) -> (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise CliError(f"expected HOST:PORT with a port 0-65535, got {value!r}")
    return host or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="The sender side of the MTA simulator.")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    send = subs.add_parser("send", help="submit a delivery and follow its statuses")
    send.add_argument("--mta", default="127.0.0.1:2525", help="MTA submission HOST:PORT")
    send.add_argument("--delivery-id", required=True)
    source = send.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="recipients: columns email, log_id (optional), fields")
    source.add_argument("--generate", type=int, metavar="N", help="generate N recipients")
    send.add_argument("--domains", help="comma-separated domains for --generate")
    send.add_argument("--from", dest="from_addr", default="campaign@sender.test")
    send.add_argument("--bounce-address", help="envelope sender (default: --from)")
    send.add_argument("--subject", default=None)
    send.add_argument("--template", help="body template file ({first_name} fields)")
    send.add_argument("--validity", default="5d")
    send.add_argument("--sessions", type=int, default=10)
    send.add_argument("--timeout", type=float, default=600.0,
                      help="seconds to wait for final statuses (default 600)")
    send.add_argument("--no-wait", action="store_true", help="exit after submission")
    send.add_argument("--idle-notice", type=float, default=IDLE_NOTICE, metavar="SECONDS",
                      help="say what it waits for when no event came for this long "
                           f"(default {IDLE_NOTICE:g})")
    _receiver_options(send)
    send.add_argument("--json", action="store_true")
    send.set_defaults(func=_cmd_send)

    receive = subs.add_parser("receive", help="run the webhook receiver and bounce mailbox")
    _receiver_options(receive)
    receive.set_defaults(func=_cmd_receive)

    report = subs.add_parser("report", help="the status table of a delivery")
    report.add_argument("delivery_id", metavar="DELIVERY_ID")
    add_common_options(report)
    report.add_argument("--recipients", action="store_true",
                        help="each recipient: status, reason, history (attempts, replies,"
                             " verdicts)")
    report.add_argument("--status", metavar="S",
                        help="with --recipients: only this status (Pending, Taken, Sent, "
                             "Failed, Excluded)")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=_cmd_report)

    from campaign_client import quarantine_cmd

    quarantine_cmd.register(subs)

    from campaign_client import qualify_cmd

    qualify_cmd.add_parser(subs)
    return parser


def _receiver_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", help="webhook receiver HOST:PORT (port 0: any)")
    parser.add_argument("--secret", help=f"webhook secret whsec_... (or ${SECRET_ENV})")
    parser.add_argument("--bounce-listen", help="bounce mailbox SMTP HOST:PORT")
    parser.add_argument("--bounce-mailbox", action="append", default=None, metavar="ADDR",
                        help="accept bounce mail only for ADDR (repeatable; default: any)")
    parser.add_argument("--pull", metavar="URL", help="also pull events from the MTA's API")
    add_common_options(parser)
    parser.add_argument("--rules", help="inbound-email rules TOML (default: built in)")
    parser.add_argument("--tolerance", type=float, default=300.0,
                        help="webhook timestamp tolerance in seconds (default 300)")
    parser.add_argument("--gap-timeout", type=float, default=120.0,
                        help="seconds an event waits for a missing seq (default 120)")
    parser.add_argument("--max-body", type=int, default=1024 * 1024, metavar="BYTES",
                        help="largest webhook request accepted, 413 beyond (default 1 MiB;"
                             " the MTA sends about 1.5 KB per event)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args)
        return code
    except CliError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`... report D1 | head -1`): stop quietly,
        # with the status of a process killed by SIGPIPE; the flush at exit goes nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141


# -- report ---------------------------------------------------------------------------------


def _cmd_report(args: argparse.Namespace) -> int:
    from campaign_client import recipient_report as listing

    status = None
    if args.status is not None:
        if not args.recipients:
            raise CliError("--status goes with --recipients")
        try:
            status = listing.match_status(args.status)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    log = open_log(args, create=False)
    try:
        if not log.has_delivery(args.delivery_id):
            raise CliError(f"no delivery {args.delivery_id!r} in {args.log_path}", code=1)
        if args.recipients:
            items = listing.recipients(log, args.delivery_id, status)
        else:
            kpis = log.kpis(args.delivery_id)
    finally:
        log.close()
    if not args.recipients:
        _print_kpis(kpis, args.json)
    elif args.json:
        print(json.dumps({"delivery_id": args.delivery_id, "status": status,
                          "recipients": items}, indent=2))
    else:
        print(listing.render(items))
    return 0


def _print_kpis(kpis: Kpis, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        data = kpis.to_json()
        if extra:
            data.update(extra)
        print(json.dumps(data, indent=2))
    else:
        print(render_table(kpis))


# -- recipients -----------------------------------------------------------------------------


def load_csv(path: str) -> list[Recipient]:
    """Recipients from a CSV file: email (required), log_id (optional), template fields."""
    from campaign_client.submission import Recipient, is_address

    try:
        handle = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise CliError(f"{path}: empty file (expected a header with an email column)")
            names = [name.strip() for name in header]
            lowered = [name.lower() for name in names]
            if "email" not in lowered:
                raise CliError(f"{path}: no 'email' column in the header")
            email_at = lowered.index("email")
            log_at = lowered.index("log_id") if "log_id" in lowered else None
            recipients: list[Recipient] = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{path}:{reader.line_num}"
                if len(row) != len(names):
                    raise CliError(f"{where}: {len(row)} cells, the header has {len(names)}")
                address = row[email_at].strip()
                if not is_address(address):
                    raise CliError(f"{where}: not an email address: {address!r}")
                log_id = row[log_at].strip() if log_at is not None else ""
                fields = {name: row[i].strip() for i, name in enumerate(names)
                          if i not in (email_at, log_at) and name}
                recipients.append(Recipient(address, log_id or str(len(recipients) + 1),
                                            fields))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise CliError(f"{path}: not a readable CSV file: {exc}") from None
    if not recipients:
        raise CliError(f"{path}: no recipients")
    return recipients


def generate_recipients(count: int, domains: str | None) -> list[Recipient]:
    from campaign_client.submission import Recipient, is_address

    if count < 1:
        raise CliError("--generate needs a positive number of recipients")
    if not domains:
        raise CliError("--generate needs --domains a.test,b.test")
    names = [domain.strip() for domain in domains.split(",") if domain.strip()]
    for domain in names:
        if not is_address(f"user@{domain}"):
            raise CliError(f"--domains: not a domain: {domain!r}")
    width = len(str(count))
    return [
        Recipient(f"user{i:0{width}d}@{names[(i - 1) % len(names)]}", str(i),
                  {"first_name": f"User{i}"})
        for i in range(1, count + 1)
    ]


# -- terminal output ------------------------------------------------------------------------


class ProgressBar:
    """Submission progress on stderr: a redrawn bar on a TTY, otherwise a line every 2 s."""

    def __init__(self, stream: IO[str], tty: bool, width: int = 30) -> None:
        self.stream = stream
        self.tty = tty
        self.width = width
        self.started = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        every = 0.1 if self.tty else 2.0
        if done < total and now - self.last < every:
            return
        self.last = now
        rate = done / (now - self.started) if now > self.started else 0.0
        pct = done * 100.0 / total if total else 100.0
        if self.tty:
            filled = int(self.width * done / total) if total else self.width
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\rsubmitting [{bar}] {done}/{total} {pct:5.1f}% {rate:7.0f}/s")
            self.drawn = True
        else:
            self.stream.write(f"submitting: {done}/{total} ({pct:.1f}%, {rate:.0f}/s)\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class LiveTable:
    """The status table while events arrive: redrawn in place on a TTY, else a line every 5 s."""

    def __init__(self, stream: IO[str], tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self.lines = 0
        self.last = 0.0
        self.previous: str | None = None

    def update(self, kpis: Kpis) -> None:
        now = time.monotonic()
        if now - self.last < (0.25 if self.tty else 5.0):
            return
        self.last = now
        if self.tty:
            text = render_table(kpis)
            if text == self.previous:
                return
            self.previous = text
            self._erase()
            self.stream.write(text + "\n")
            self.lines = text.count("\n") + 1
        else:
            counts = ", ".join(f"{status} {n}" for status, n in kpis.by_status.items())
            line = f"status: {counts}; Success {kpis.success_pct:.2f}%"
            if line == self.previous:
                return
            self.previous = line
            self.stream.write(line + "\n")
        self.stream.flush()

    def _erase(self) -> None:
        if self.lines:
            self.stream.write(f"\x1b[{self.lines}F\x1b[J")
            self.lines = 0

    def close(self) -> None:
        if self.tty:
            self._erase()
            self.stream.flush()


# -- send and receive -----------------------------------------------------------------------


def _secret(args: argparse.Namespace) -> str | None:
    secret = args.secret or os.environ.get(SECRET_ENV) or None
    if args.listen and not secret:
        raise CliError(f"--listen needs --secret whsec_... (or ${SECRET_ENV})")
    return secret


def _rules(args: argparse.Namespace) -> Any:
    from campaign_client.inbound import RulesError, load_rules

    try:
        return load_rules(args.rules)
    except RulesError as exc:
        raise CliError(str(exc)) from None


def _make_receiver(args: argparse.Namespace, log: DeliveryLog) -> Any:
    from campaign_client.receiver import Receiver

    if args.gap_timeout <= 0 or args.tolerance <= 0:
        raise CliError("--gap-timeout and --tolerance must be > 0 seconds")
    rules = _rules(args)
    if not args.listen and not args.bounce_listen:
        return None
    host, port = parse_hostport(args.listen) if args.listen else ("127.0.0.1", None)
    bounce_host, bounce_port = (parse_hostport(args.bounce_listen) if args.bounce_listen
                                else (None, None))
    try:
        return Receiver(log, _secret(args), host, port, bounce_host, bounce_port,
                        tolerance=args.tolerance, gap_timeout=args.gap_timeout, rules=rules,
                        bounce_addresses=args.bounce_mailbox, max_body=args.max_body)
    except ValueError as exc:
        raise CliError(str(exc)) from None


async def _start(receiver: Any) -> None:
    try:
        await receiver.start()
    except OSError as exc:
        raise CliError(f"cannot listen: {exc.strerror or exc}") from None
    print(f"{PROG}: {receiver.describe()}", file=sys.stderr)


def _start_pull(args: argparse.Namespace, log: DeliveryLog,
                stop: asyncio.Event) -> asyncio.Task[Any] | None:
    if not args.pull:
        return None
    from campaign_client.pull import pull_events

    if not args.pull.startswith(("http://", "https://")):
        raise CliError(f"--pull: expected an http:// URL, got {args.pull!r}")
    return asyncio.create_task(
        pull_events(args.pull, log, stop=stop, gap_timeout=args.gap_timeout)
    )


def _cmd_receive(args: argparse.Namespace) -> int:
    if not (args.listen or args.bounce_listen or args.pull):
        raise CliError("nothing to run: give --listen, --bounce-listen and/or --pull")
    return asyncio.run(_receive(args))


async def _receive(args: argparse.Namespace) -> int:
    log = open_log(args, create=True)
    stop = asyncio.Event()
    receiver = _make_receiver(args, log)
    puller: asyncio.Task[Any] | None = None
    try:
        if receiver is not None:
            await _start(receiver)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop.set)   # main thread only
        puller = _start_pull(args, log, stop)
        if puller is not None:
            print(f"{PROG}: pulling events from {args.pull}; writing {args.log_path}",
                  file=sys.stderr)
        await stop.wait()
    finally:
        stop.set()
        if puller is not None:
            await asyncio.gather(puller, return_exceptions=True)
        if receiver is not None:
            await receiver.stop()
        log.close()
    print(f"{PROG}: stopped", file=sys.stderr)
    return 0


def _cmd_send(args: argparse.Namespace) -> int:
    from campaign_client.submission import DEFAULT_SUBJECT, DEFAULT_TEMPLATE, Delivery

    host, port = parse_hostport(args.mta)
    if args.sessions < 1:
        raise CliError("--sessions must be >= 1")
    if args.timeout < 0:
        raise CliError("--timeout must be >= 0 seconds")
    if args.idle_notice <= 0:
        raise CliError("--idle-notice must be > 0 seconds")
    if args.generate is None and args.domains:
        raise CliError("--domains goes with --generate")
    recipients = (load_csv(args.csv) if args.csv is not None
                  else generate_recipients(args.generate, args.domains))
    template = DEFAULT_TEMPLATE
    if args.template:
        try:
            template = Path(args.template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read template {args.template}: {exc}") from None
    delivery = Delivery(
        delivery_id=args.delivery_id, recipients=recipients, from_addr=args.from_addr,
        subject=args.subject if args.subject is not None else DEFAULT_SUBJECT,
        template=template, validity=args.validity, bounce_address=args.bounce_address,
    )
    try:
        delivery.check()
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _secret(args)
    return asyncio.run(_send(args, delivery, host, port))


async def _send(args: argparse.Namespace, delivery: Any, host: str, port: int) -> int:
    from campaign_client.submission import SubmitError, submit
    from campaign_client.wait import WaitTimeout, wait_for, watch_idle

    log = open_log(args, create=True)
    stop = asyncio.Event()
    receiver = None
    puller: asyncio.Task[Any] | None = None
    tty = sys.stderr.isatty()
    try:
        if log.has_delivery(delivery.delivery_id):
            raise CliError(f"delivery {delivery.delivery_id!r} is already in {args.log_path};"
                           " choose another --delivery-id")
        receiver = _make_receiver(args, log)
        if receiver is not None:
            await _start(receiver)
        puller = _start_pull(args, log, stop)
        bar = ProgressBar(sys.stderr, tty)
        try:
            result = await submit(delivery, host, port, log=log, sessions=args.sessions,
                                  progress=bar, rules=_rules(args))
        except SubmitError as exc:
            raise CliError(str(exc)) from None
        finally:
            bar.finish()
        _say_excluded(result.excluded, delivery.delivery_id)
        print(f"{PROG}: submitted {result.accepted + result.failed}/{result.total}: "
              f"{result.accepted} accepted, {result.failed} refused, {result.retries} retries, "
              f"{result.elapsed:.2f}s ({result.rate:.0f} msg/s)", file=sys.stderr)
        submission = {"accepted": result.accepted, "refused": result.failed,
                      "retries": result.retries, "not_submitted": result.not_submitted,
                      "excluded": [item.to_json() for item in result.excluded],
                      "elapsed_s": round(result.elapsed, 3)}
        if result.error is not None:
            kpis = log.kpis(delivery.delivery_id)
            _print_kpis(kpis, args.json, {"final": False, "not_final": kpis.not_final,
                                          "submission": submission})
            raise CliError(f"submission stopped: {result.error}; "
                           f"{result.not_submitted} recipients not submitted", code=1)
        if args.no_wait or result.total == 0:
            kpis = log.kpis(delivery.delivery_id)
            _print_kpis(kpis, args.json, {"final": kpis.final, "not_final": kpis.not_final,
                                          "submission": submission})
            return 0
        live = LiveTable(sys.stderr, tty)
        timed_out = None
        waiting = asyncio.Event()
        notice = asyncio.create_task(watch_idle(
            log, delivery.delivery_id, args.idle_notice,
            lambda idle, kpis: _say_waiting(args, idle, kpis, live), waiting))
        try:
            kpis = await wait_for(log, delivery.delivery_id, "final", args.timeout,
                                  interval=0.1, on_poll=live.update)
        except WaitTimeout as exc:
            kpis, timed_out = exc.kpis, exc
        finally:
            waiting.set()
            await asyncio.gather(notice, return_exceptions=True)
            live.close()
        _print_kpis(kpis, args.json, {"final": kpis.final, "not_final": kpis.not_final,
                                      "submission": submission})
        if timed_out is not None:
            raise CliError(f"timeout after {args.timeout:g}s: {kpis.not_final} of {kpis.total}"
                           " recipients not final", code=1)
        return 0
    finally:
        stop.set()
        if puller is not None:
            await asyncio.gather(puller, return_exceptions=True)
        if receiver is not None:
            await receiver.stop()
        log.close()


def _say_excluded(excluded: Sequence[Any], delivery_id: str) -> None:
    """Campaign's exclusion log, on stderr: who was left out and why."""
    if not excluded:
        return
    reasons: dict[str, int] = {}
    for item in excluded:
        reasons[item.reason] = reasons.get(item.reason, 0) + 1
    summary = ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
    print(f"{PROG}: excluded {len(excluded)} recipients before submission ({summary}):",
          file=sys.stderr)
    for item in excluded[:SHOW_EXCLUDED]:
        print(f"  {item.recipient}: {item.reason} ({item.status}: {item.cause or '-'}, "
              f"delivery {item.cause_delivery_id or '-'})", file=sys.stderr)
    if len(excluded) > SHOW_EXCLUDED:
        print(f"  ... {len(excluded) - SHOW_EXCLUDED} more: {PROG} report {delivery_id} "
              "--recipients --status Excluded", file=sys.stderr)


def _say_waiting(args: argparse.Namespace, idle: float, kpis: Kpis, live: LiveTable) -> None:
    """What `send` waits for, when no event has come for a while."""
    counts = ", ".join(f"{status} {count}" for status, count in kpis.by_status.items()
                       if count and status not in ("Sent", "Failed"))
    sources = [f"this command's --listen {args.listen}" if args.listen else "",
               f"--pull {args.pull}" if args.pull else ""]
    running = " and ".join(part for part in sources if part)
    where = (f"events come through {running}" if running else
             "this command runs no receiver (no --listen, --pull), so the MTA's events must"
             f" come from another process writing {args.log_path}: `mta up --client` (it writes"
             " DIR/campaign-log.sqlite of its --data-dir, default var) or `campaign-client"
             f" receive --log {args.log_path}`")
    live.close()
    print(f"{PROG}: waiting for the MTA's feedback events on {kpis.not_final} of {kpis.total}"
          f" recipients ({counts}); no new event in {args.log_path} for {idle:.0f}s; {where}",
          file=sys.stderr, flush=True)
