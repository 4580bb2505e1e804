"""What the personas received, read back from their Maildirs (for `mta sim ls` and the HTTP API).

Layout under the sim's data directory: `personas/<name>/Maildir/{tmp,new,cur}`
(plus `personas/<name>/state.json`). A message's id is `<persona>/<file name>`.
Only the header block of each file is read for a summary.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mta.sim.artefacts import header_value, split_message

PERSONAS_DIR = "personas"
MAILDIR = "Maildir"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,:=-]*$")
READ_LIMIT = 64 * 1024


def maildir_root(data_dir: Path, persona: str) -> Path:
    return data_dir / PERSONAS_DIR / persona / MAILDIR


def persona_root(data_dir: Path, persona: str) -> Path:
    return data_dir / PERSONAS_DIR / persona


def personas_in(data_dir: Path) -> list[str]:
    base = data_dir / PERSONAS_DIR
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / MAILDIR).is_dir())


@dataclass(frozen=True)
class Summary:
    id: str
    persona: str
    time: float  # when stored (real Unix time, from the Maildir file name)
    mail_from: str
    recipients: list[str]
    header_from: str
    to: str
    subject: str
    message_id: str
    dkim: bool
    size: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _files(root: Path) -> Iterator[Path]:
    for sub in ("new", "cur"):
        folder = root / sub
        if folder.is_dir():
            yield from folder.iterdir()


def _stamp(name: str) -> float:
    head = name.split(".", 1)[0]
    return int(head) / 1e9 if head.isdigit() else 0.0


def summarise(path: Path, persona: str) -> Summary:
    with path.open("rb") as handle:
        head = handle.read(READ_LIMIT)
    size = path.stat().st_size
    headers, _ = split_message(head)
    mail_from = header_value(headers, "Return-Path").strip("<>")
    recipients = [
        line[len(b"Delivered-To:") :].strip().decode("utf-8", "replace")
        for line in headers.split(b"\r\n")
        if line[:13].lower() == b"delivered-to:"
    ]
    return Summary(
        id=f"{persona}/{path.name}",
        persona=persona,
        time=_stamp(path.name),
        mail_from=mail_from,
        recipients=recipients,
        header_from=header_value(headers, "From"),
        to=header_value(headers, "To"),
        subject=header_value(headers, "Subject"),
        message_id=header_value(headers, "Message-ID"),
        dkim=bool(header_value(headers, "DKIM-Signature")),
        size=size,
    )


def list_messages(
    data_dir: Path, persona: str | None = None, limit: int | None = None
) -> list[Summary]:
    """Newest first, at most `limit`."""
    names = [persona] if persona else personas_in(data_dir)
    found: list[tuple[str, str, Path]] = []
    for name in names:
        for path in _files(maildir_root(data_dir, name)):
            found.append((path.name, name, path))
    found.sort(reverse=True)
    if limit is not None:
        found = found[:limit]
    out = []
    for _, name, path in found:
        try:
            out.append(summarise(path, name))
        except OSError:
            continue  # moved or removed meanwhile
    return out


def count_messages(data_dir: Path, persona: str | None = None) -> dict[str, int]:
    names = [persona] if persona else personas_in(data_dir)
    return {name: sum(1 for _ in _files(maildir_root(data_dir, name))) for name in names}


def message_path(data_dir: Path, message_id: str) -> Path | None:
    """The file of `<persona>/<name>`, or None (also for anything that is not such an id)."""
    persona, slash, name = message_id.partition("/")
    if not slash or not _NAME.match(persona) or not _NAME.match(name) or ".." in message_id:
        return None
    root = maildir_root(data_dir, persona)
    for sub in ("new", "cur"):
        path = root / sub / name
        if path.is_file():
            return path
    return None
