"""What the personas receive: stored in Maildirs, and read back (`mta sim ls`, the HTTP API).

Layout under the sim's data directory: `personas/<name>/Maildir/{tmp,new,cur}`
(plus `personas/<name>/state.json`). A message's id is `<persona>/<file name>`.
Only the header block of each file is read for a summary.

Writing: `StoreWriter` is one thread that writes the files for every persona;
a session awaits its message's write before replying 250 (the file exists when
the sender hears "OK"), but the event loop keeps serving other sessions while
the kernel creates files, and a burst of messages is written in one wake-up.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mta.maildir import Maildir
from mta.sim.artefacts import header_value, split_message

PERSONAS_DIR = "personas"
MAILDIR = "Maildir"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._,:=-]*$")
READ_LIMIT = 64 * 1024


_HOST = socket.gethostname().replace("/", "_").replace(":", "_")
_serial = itertools.count()


class LeanMaildir(Maildir):
    """`mta.maildir.Maildir` with a cheaper `deliver` (string paths, one write, no pathlib):
    the same layout and file names, so everything that reads Maildirs reads these."""

    def __init__(self, root: Path, fsync: bool = False) -> None:
        super().__init__(root, fsync)
        self._tmp = f"{root}{os.sep}tmp{os.sep}"
        self._new = f"{root}{os.sep}new{os.sep}"
        self._suffix = f".P{os.getpid()}Q"

    def deliver(self, mail_from: str, recipients: Sequence[str], content: bytes) -> Path:
        name = f"{time.time_ns()}{self._suffix}{next(_serial)}.{_HOST}"
        trace = f"Return-Path: <{mail_from}>\r\n" + "".join(
            f"Delivered-To: {rcpt}\r\n" for rcpt in recipients
        )
        tmp = self._tmp + name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, trace.encode("utf-8") + content)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self._new + name)
        self.stored += 1
        return Path(self._new + name)


_Job = tuple[Maildir, str, list[str], bytes, "asyncio.Future[None]"]


def _settle(results: list[tuple[asyncio.Future[None], OSError | None]]) -> None:
    for future, error in results:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


class StoreWriter:
    """A thread that writes messages to Maildirs; see the module docstring."""

    def __init__(self) -> None:
        self._jobs: list[_Job] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sim-store", daemon=True)
        self._thread.start()

    def write(
        self, maildir: Maildir, mail_from: str, recipients: list[str], content: bytes
    ) -> asyncio.Future[None]:
        """A future done once the message is in `maildir` (or failed with OSError)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._thread is None:  # not started: write here and now
            try:
                maildir.deliver(mail_from, recipients, content)
                future.set_result(None)
            except OSError as exc:
                future.set_exception(exc)
            return future
        with self._lock:
            self._jobs.append((maildir, mail_from, recipients, content, future))
        self._wake.set()
        return future

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                jobs, self._jobs = self._jobs, []
                self._wake.clear()
                stopping = self._stopping
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, OSError | None]]] = {}
            for maildir, mail_from, recipients, content, future in jobs:
                error: OSError | None = None
                try:
                    maildir.deliver(mail_from, recipients, content)
                except OSError as exc:
                    error = exc
                by_loop.setdefault(future.get_loop(), []).append((future, error))
            for loop, results in by_loop.items():
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_settle, results)
            if stopping:
                return

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread."""
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None


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
