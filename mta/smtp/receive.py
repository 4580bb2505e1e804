"""Where DATA goes while it is read: memory within a shared budget, else a temp file.

`DataSink` keeps a message's chunks in memory while the listener's `MemoryBudget` allows
and moves them to an unnamed temporary file in the spill directory (the spool's disk)
once it does not. `LineMeter` follows line lengths across chunks so an over-long line is
found without joining the message.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO

from mta.smtp.limits import MemoryBudget


class DataSink:
    """One message's bytes as they arrive; `value()` returns them joined."""

    def __init__(self, budget: MemoryBudget | None, spill_dir: Path | None) -> None:
        self.budget = budget
        self.spill_dir = spill_dir
        self.size = 0
        self._parts: list[bytes] = []
        self._held = 0
        self._file: IO[bytes] | None = None

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def write(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self._file is None:
            if self.budget is None or self.spill_dir is None or self.budget.try_take(len(chunk)):
                self._parts.append(chunk)
                self._held += len(chunk) if self.budget is not None else 0
                return
            # Closed by value() or discard(), which every reader ends with.
            self._file = tempfile.TemporaryFile(dir=self.spill_dir, prefix="data-")  # noqa: SIM115
            self.budget.spilled_total += 1
            for part in self._parts:
                self._file.write(part)
            self._release()
        self._file.write(chunk)

    def value(self) -> bytes:
        """The bytes written so far (read back from disk when spilled); empties the sink."""
        if self._file is not None:
            self._file.seek(0)
            data = self._file.read()
            self.discard()
            return data
        data = b"".join(self._parts)
        self.discard()
        return data

    def discard(self) -> None:
        self._release()
        self.size = 0
        if self._file is not None:
            self._file.close()
            self._file = None

    def _release(self) -> None:
        self._parts.clear()
        if self.budget is not None and self._held:
            self.budget.give(self._held)
        self._held = 0


class LineMeter:
    """The longest line seen across chunks, in octets before CRLF (or before a bare LF)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.run = 0  # length of the unfinished line so far
        self.over = False
        self._last = b""  # the previous chunk's last octet

    def feed(self, chunk: bytes) -> None:
        if self.over or not self.limit:
            return
        first = chunk.find(b"\n")
        previous, self._last = self._last, chunk[-1:]
        if first < 0:
            self.run += len(chunk)
            # Still in the line: only a run past limit + CR can be over.
            self.over = self.run > self.limit + 1
            return
        if self._too_long(self.run + first, chunk[first - 1 : first] if first else previous):
            self.over = True
            return
        last = chunk.rfind(b"\n")
        if last > first and last - first - 1 > self.limit:
            middle = chunk[first + 1 : last].split(b"\n")
            if max(map(len, middle)) > self.limit and any(
                len(line) - line.endswith(b"\r") > self.limit for line in middle
            ):
                self.over = True
                return
        self.run = len(chunk) - last - 1
        self.over = self.run > self.limit + 1

    def _too_long(self, length: int, before_lf: bytes) -> bool:
        return length - (before_lf == b"\r") > self.limit
