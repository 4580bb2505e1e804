"""`mta demo`: the whole story on one machine, checked.

It starts the simulated internet and the MTA (two processes sharing a clock
that runs `--time-scale` times faster than real time), runs the Campaign
side's receiver in this process (webhooks in, the bounce mailbox on the
sender domain's MX address), sends a delivery of `--recipients` addresses
designed to cover every row of the Email Feedback Service table, shows the
live status table while the events arrive, then prints the final table, the
KPIs and per-site throughput, and exits 0 only if every recipient ended in
the status its address was designed to produce.

The address design (each category's share of the delivery):

    delivered at once              u<i>@gmail.test, @yahoo.test, @outlook.test, ...   Sent
    hard bounce (user unknown)     unknown<i>@gmail.test, ...                         Failed
    account disabled               disabled<i>@gmail.test                             Failed
    soft bounce, then success      s<i>+452-250@isp.test                              Sent
    soft bounces until validity    full<i>@gmail.test (mailbox full, every attempt)   Failed
    greylisted, then accepted      g<i>@isp.test                                      Sent
    throttled, then accepted       t<i>+421-250@gmail.test (Gmail's 421 4.7.28)       Sent
    invalid domain (NXDOMAIN)      x<i>@nxdomain.test (retried until validity)        Failed
    null MX                        x<i>@nullmx.test (556 5.1.10 at once)              Failed
    async bounce after delivery    a<i>+async@isp.test (a DSN comes back later)       Failed
    auto-reply                     o<i>+ooto@outlook.test                             Sent
    complaint                      c<i>+complaint@gmail.test (ARF: address denylisted) Sent

The simulation runs deterministically (no seeded random faults), so the
expectations are exact. Complaints go to the Gmail-like persona: the Yahoo-like
one refuses an IP whose complaint rate passes 0.3%, as Yahoo does, and 3% of a
delivery complaining would turn the rest of its Yahoo mail into "Refused".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mta.cli.topology import (
    BOUNCE_HOST_DEFAULT,
    PERSONA_HOSTS_DEFAULT,
    Addresses,
    Supervisor,
    free_common_port,
    free_port,
    mta_service,
    sim_service,
)
from mta.clock import Anchor

VALIDITY_SECONDS = 3.5 * 86400
DEFAULT_SCALE = 5040.0  # 3.5 days in about a minute
SENDER_DOMAIN = "campaign.test"
BOUNCE_HOST = BOUNCE_HOST_DEFAULT
PERSONA_HOSTS = [*PERSONA_HOSTS_DEFAULT, BOUNCE_HOST]


@dataclass(frozen=True)
class Category:
    name: str
    share: float
    patterns: tuple[str, ...]  # "{i}" is the recipient's number
    expected: str  # the final EFS status
    reason: str | None = None  # the final failure reason of a Failed line (None: not checked)


CATEGORIES = (
    Category(
        "delivered at once",
        0.46,
        (
            "u{i}@gmail.test",
            "u{i}@yahoo.test",
            "u{i}@outlook.test",
            "u{i}@googlemail.test",
            "u{i}@hotmail.test",
            "u{i}@aol.test",
        ),
        "Sent",
    ),
    Category(
        "hard bounce (user unknown)",
        0.08,
        ("unknown{i}@gmail.test", "unknown{i}@outlook.test", "unknown{i}@yahoo.test"),
        "Failed",
        "User unknown",
    ),
    Category("account disabled", 0.02, ("disabled{i}@gmail.test",), "Failed", "Account disabled"),
    Category("soft bounce, then success", 0.10, ("s{i}+452-250@isp.test",), "Sent"),
    Category(
        "soft bounces until the validity ends",
        0.05,
        ("full{i}@gmail.test", "full{i}@outlook.test"),
        "Failed",
        "Mailbox full",
    ),
    Category("greylisted, then accepted", 0.10, ("g{i}@isp.test",), "Sent"),
    Category("throttled, then accepted", 0.03, ("t{i}+421-250@gmail.test",), "Sent"),
    Category(
        "invalid domain (NXDOMAIN)", 0.03, ("x{i}@nxdomain.test",), "Failed", "Invalid domain"
    ),
    Category("null MX", 0.03, ("x{i}@nullmx.test",), "Failed", "User unknown"),
    Category(
        "async bounce after delivery", 0.04, ("a{i}+async@isp.test",), "Failed", "User unknown"
    ),
    Category("auto-reply", 0.03, ("o{i}+ooto@outlook.test",), "Sent"),
    Category("complaint", 0.03, ("c{i}+complaint@gmail.test",), "Sent"),
)


def plan_recipients(total: int) -> list[tuple[str, Category]]:
    """`total` addresses, each category at least once, shares as above (largest remainder)."""
    if total < len(CATEGORIES):
        raise ValueError(f"--recipients must be at least {len(CATEGORIES)} (one per category)")
    counts = [1] * len(CATEGORIES)
    rest = total - len(CATEGORIES)
    wants = [c.share * rest for c in CATEGORIES]
    for index, want in enumerate(wants):
        counts[index] += math.floor(want)
    by_remainder = sorted(
        range(len(CATEGORIES)), key=lambda k: wants[k] - math.floor(wants[k]), reverse=True
    )
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    planned: list[tuple[str, Category]] = []
    for category, count in zip(CATEGORIES, counts, strict=True):
        for n in range(count):
            pattern = category.patterns[n % len(category.patterns)]
            planned.append((pattern.format(i=n), category))
    return planned


def whsec() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def write_mta_config(path: Path, webhook_url: str, secret: str, key_file: Path) -> None:
    path.write_text(
        "# written by `mta demo`\n"
        '[smtp]\nhostname = "mta.demo.test"\n'
        "[[dkim.keys]]\n"
        f'domain = "{SENDER_DOMAIN}"\nselector = "demo"\nkey_file = "{key_file}"\n'
        "[[feedback.webhooks]]\n"
        f'url = "{webhook_url}"\nsecret = "{secret}"\n'
    )


class Screen:
    """Progress on stderr: on a terminal the live table, redrawn in place; elsewhere (a CI
    log, a file) one line, written only when the counts it shows change (at most every
    5 s), so a log holds the story once instead of a copy of the table per poll."""

    def __init__(self, stream: Any, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.last_text = ""
        self.last_key = ""
        self.last_lines = 0
        self.last_at = 0.0

    def show(self, text: str, key: str | None = None) -> None:
        """`text` for a terminal; `key` (default `text`) is the line written elsewhere."""
        if not self.enabled:
            return
        if self.tty:
            if text == self.last_text:
                return
            if self.last_lines:
                self.stream.write(f"\x1b[{self.last_lines}F\x1b[J")
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_text, self.last_lines = text, text.count("\n") + 1
            return
        line = text if key is None else key
        now = time.monotonic()
        if line == self.last_key or now - self.last_at < 5.0:
            return
        self.stream.write(line + "\n")
        self.stream.flush()
        self.last_key, self.last_at = line, now


def live_text(kpis: Any, started: float, scale: float) -> str:
    from campaign_client import render_table

    elapsed = time.monotonic() - started
    virtual = elapsed * scale
    return f"{render_table(kpis)}\nelapsed {elapsed:5.1f}s real = {virtual / 3600:6.1f}h virtual"


def live_line(kpis: Any) -> str:
    """The counts alone, for progress off a terminal."""
    counts = ", ".join(f"{status} {n}" for status, n in kpis.by_status.items())
    return f"mta demo: {counts}; {kpis.not_final} not final yet"


async def fetch_sites(admin: str) -> list[dict[str, Any]]:
    from mta.cli.queue import QueueError, fetch

    with contextlib.suppress(QueueError):
        data = await fetch(f"http://{admin}", "/api/v1/queue/sites")
        return list(data["sites"])
    return []


async def run_demo(args: argparse.Namespace) -> int:
    from campaign_client import (
        Delivery,
        DeliveryLog,
        Receiver,
        Recipient,
        WaitTimeout,
        render_table,
        submit,
        wait_for,
    )
    from mta.cli.dkim import keygen
    from mta.cli.queue import render_sites

    out = sys.stderr  # progress; the results go to stdout
    planned = plan_recipients(args.recipients)
    keep = args.data_dir is not None
    root = Path(args.data_dir) if keep else Path(tempfile.mkdtemp(prefix="mta-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    addresses = Addresses(
        smtp=f"127.0.0.1:{free_port()}",
        admin=f"127.0.0.1:{free_port()}",
        dns=f"127.0.0.1:{free_port()}",
        sim_http="",
        persona_port=free_common_port(PERSONA_HOSTS),
    )
    secret = whsec()
    log = DeliveryLog(root / "campaign-log.sqlite")
    receiver = Receiver(
        log,
        secret,
        "127.0.0.1",
        0,
        bounce_host=BOUNCE_HOST,
        bounce_port=addresses.persona_port,
        bounce_addresses=[f"bounces@{SENDER_DOMAIN}"],
    )
    await receiver.start()
    key_path, _ = keygen(SENDER_DOMAIN, "demo", root / "keys", force=True)
    config = root / "mta.toml"
    write_mta_config(config, receiver.webhook_url, secret, key_path)
    wall = time.time()
    anchor = Anchor(wall, wall, args.time_scale)
    supervisor = Supervisor()
    started = time.monotonic()
    delivery_id = f"DEMO-{int(wall)}"
    try:
        await supervisor.start(
            sim_service(addresses, anchor, root / "sim", seed=args.seed, deterministic=True),
            log=root / "sim.log",
        )
        await supervisor.start(
            mta_service(addresses, anchor, root / "mta", str(config)), log=root / "mta.log"
        )
        print(
            f"mta demo: {len(planned)} recipients, time x{args.time_scale:g} "
            f"(3.5 days = {VALIDITY_SECONDS / args.time_scale:.0f}s), data in {root}",
            file=out,
            flush=True,
        )
        delivery = Delivery(
            delivery_id,
            [Recipient(address, f"L{n:06d}", {}) for n, (address, _) in enumerate(planned)],
            from_addr=f"news@{SENDER_DOMAIN}",
            bounce_address=f"bounces@{SENDER_DOMAIN}",
            subject="Our winter collection",
            validity="5d",
        )
        screen = Screen(out, not args.json)
        host, port = addresses.smtp.rsplit(":", 1)

        def progress(done: int, total: int) -> None:
            screen.show(f"submitting {done}/{total}")

        result = await submit(delivery, host, int(port), log=log, sessions=10, progress=progress)
        if result.error:
            print(f"mta demo: submission stopped: {result.error}", file=out)
        deadline = args.timeout
        try:
            final = await wait_for(
                log,
                delivery_id,
                "final",
                timeout=deadline,
                interval=0.25,
                on_poll=lambda k: screen.show(live_text(k, started, args.time_scale), live_line(k)),
            )
        except WaitTimeout as exc:
            final = exc.kpis
        sites = await fetch_sites(addresses.admin)
        lines = log.lines(delivery_id)
    finally:
        statuses = await supervisor.stop()
        await receiver.stop()
    wall_seconds = time.monotonic() - started
    expected = {f"L{n:06d}": (address, category) for n, (address, category) in enumerate(planned)}
    mismatches = [
        {
            "recipient": line.recipient,
            "category": expected[line.log_id][1].name,
            "expected": _designed(expected[line.log_id][1]),
            "got": line.status,
            "reason": line.failure_reason,
            "last_reply": line.last_reply,
        }
        for line in lines
        if line.log_id in expected and not _as_designed(line, expected[line.log_id][1])
    ]
    missing = len(expected) - len(lines)
    designed_success = round(
        100.0 * sum(c.expected == "Sent" for _, c in planned) / len(planned), 2
    )
    by_category = _by_category(lines, expected)
    summary = {
        "delivery_id": delivery_id,
        "total": final.total,
        "by_status": dict(final.by_status),
        "success_pct": final.success_pct,
        "designed_success_pct": designed_success,
        "by_failure_reason": dict(final.by_failure_reason),
        "categories": by_category,
        "mismatches": mismatches,
        "not_final": final.not_final,
        "wall_seconds": round(wall_seconds, 2),
        "time_scale": args.time_scale,
        "sites": sites,
        "processes": statuses,
        "data_dir": str(root) if keep else None,
    }
    ok = (
        not mismatches
        and final.not_final == 0
        and missing == 0
        and final.success_pct == designed_success
    )
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(f"\n{render_table(final)}\n")
        print(_category_table(by_category))
        print(f"\nper site:\n{render_sites(sites)}\n")
        for m in mismatches[:20]:
            print(
                f"MISMATCH {m['recipient']} ({m['category']}): expected {m['expected']}, got "
                f"{m['got']} {m['reason'] or ''} {m['last_reply'] or ''}".rstrip()
            )
        verdict = (
            "every recipient ended as designed"
            if ok
            else (
                f"{len(mismatches)} mismatches, {final.not_final} not final, {missing} missing,"
                f" Success {final.success_pct}% (designed {designed_success}%)"
            )
        )
        print(f"mta demo: {verdict}; {wall_seconds:.1f}s", flush=True)
    if not keep:
        _remove(root)
    return 0 if ok else 1


def _as_designed(line: Any, category: Category) -> bool:
    """The final status as designed and, for a Failed line, the final reason too."""
    if line.status != category.expected:
        return False
    return category.reason is None or line.failure_reason == category.reason


def _designed(category: Category) -> str:
    return category.expected + (f" ({category.reason})" if category.reason else "")


def _by_category(lines: list[Any], expected: dict[str, tuple[str, Any]]) -> list[dict[str, Any]]:
    got: dict[str, Counter[str]] = {}
    reasons: dict[str, Counter[str]] = {}
    for line in lines:
        if line.log_id in expected:
            name = expected[line.log_id][1].name
            got.setdefault(name, Counter())[line.status] += 1
            if line.status == "Failed":
                reasons.setdefault(name, Counter())[line.failure_reason or "Not defined"] += 1
    return [
        {
            "category": c.name,
            "expected": c.expected,
            "expected_reason": c.reason,
            "count": sum(got.get(c.name, Counter()).values()),
            "got": dict(got.get(c.name, Counter())),
            "reasons": dict(reasons.get(c.name, Counter())),
        }
        for c in CATEGORIES
    ]


def _category_table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["category"]) for r in rows)
    lines = [f"{'address design':<{width}}  count  expected                   got"]
    for r in rows:
        got = ", ".join(f"{k} {v}" for k, v in sorted(r["got"].items())) or "-"
        if r["reasons"]:
            got += " (" + ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items())) + ")"
        designed = r["expected"] + (f" ({r['expected_reason']})" if r["expected_reason"] else "")
        as_designed = r["got"] == {r["expected"]: r["count"]} and (
            not r["expected_reason"] or r["reasons"] == {r["expected_reason"]: r["count"]}
        )
        mark = "" if as_designed else "   <-- differs"
        lines.append(f"{r['category']:<{width}}  {r['count']:>5}  {designed:<25}  {got}{mark}")
    return "\n".join(lines)


def _remove(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(dirpath, name))
        for name in dirnames:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(dirpath, name))
    with contextlib.suppress(OSError):
        root.rmdir()


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the MTA, the simulated ISPs and the client on a designed delivery"
    )
    parser.add_argument(
        "--recipients", type=int, default=1000, metavar="N", help="how many (default 1000)"
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULT_SCALE,
        metavar="X",
        help=f"virtual seconds per real second (default {DEFAULT_SCALE:g}:"
        " 3.5 days in about a minute)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="real seconds to wait for every recipient to be final",
    )
    parser.add_argument(
        "--seed", type=int, default=1, metavar="N", help="seed of the plan and the ISPs' faults"
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="keep everything here (default: a temporary directory, removed)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from mta.cli.common import CliError, check_time_scale, install_uvloop

    check_time_scale(args.time_scale)
    if args.timeout <= 0:
        raise CliError("--timeout must be positive")
    try:
        plan_recipients(args.recipients)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    install_uvloop()
    try:
        return asyncio.run(run_demo(args))
    except RuntimeError as exc:
        raise CliError(str(exc)) from None
