"""Store received messages in a Maildir (tmp/ then rename into new/), and read them back.

Used by `mta sink` and the simulated ISPs, so that what arrived can be listed,
counted and checked byte for byte (DKIM signatures included). Each stored file
starts with Return-Path and one Delivered-To per recipient, as a local
delivery agent would add them; the rest is the message exactly as received.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "_").replace(":", "_")


class Maildir:
    def __init__(self, root: Path, fsync: bool = False) -> None:
        self.root = root
        self.fsync = fsync
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.stored = 0

    def deliver(self, mail_from: str, recipients: Sequence[str], content: bytes) -> Path:
        """Write one message; returns its path in new/."""
        name = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.{_HOST}"
        trace = f"Return-Path: <{mail_from}>\r\n" + "".join(
            f"Delivered-To: {rcpt}\r\n" for rcpt in recipients
        )
        tmp = self.root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, trace.encode("utf-8") + content)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        final = self.root / "new" / name
        os.rename(tmp, final)
        self.stored += 1
        return final

    def paths(self) -> list[Path]:
        """Stored messages, oldest first."""
        found = [p for sub in ("new", "cur") for p in (self.root / sub).iterdir()]
        return sorted(found, key=lambda p: p.name)

    def count(self) -> int:
        return sum(1 for sub in ("new", "cur") for _ in (self.root / sub).iterdir())

    def messages(self) -> Iterator[bytes]:
        for path in self.paths():
            yield path.read_bytes()


def strip_trace(stored: bytes) -> bytes:
    """The message as received: without the Return-Path / Delivered-To lines we added."""
    while stored.startswith((b"Return-Path: ", b"Delivered-To: ")):
        stored = stored[stored.index(b"\r\n") + 2 :]
    return stored
