"""Unique ids without a system call each: random bits drawn once per block, then a counter.

`new_queue_id()` gives 16 upper-case hex digits and `new_event_id()` 32 lower-case
ones, the shapes `secrets.token_hex(8).upper()` and `uuid4().hex` gave. Each is a
random prefix (48 bits for queue ids, 64 for event ids) drawn from os.urandom and
a counter below it; a queue id prefix is drawn again every 65,536 ids, and a
child process (fork) draws its own, so ids stay unique across processes, nodes
and restarts with the odds of random ids, while the hot path costs one `next()`
(a getrandom call per message held the event loop's thread, and with it the
GIL hand-over, for as long as the rest of the envelope's work). Ids are unique,
not secret: nothing relies on them being unguessable.
"""

from __future__ import annotations

import itertools
import os
import threading

_QUEUE_BLOCK = 1 << 16


class _Ids:
    _lock: threading.Lock
    _event_prefix: str
    _events: itertools.count[int]
    _block: tuple[str, itertools.count[int]]

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        """New prefixes, counters and lock: at start and in a forked child (which must not
        share its parent's ids, nor inherit a lock another thread of the parent held)."""
        self._lock = threading.Lock()
        self._event_prefix = os.urandom(8).hex()
        self._events = itertools.count()
        self._block = self._new_block()

    @staticmethod
    def _new_block() -> tuple[str, itertools.count[int]]:
        return os.urandom(6).hex().upper(), itertools.count()

    def queue_id(self) -> str:
        while True:
            block = self._block  # a prefix and its own counter, read as one
            n = next(block[1])  # atomic under the GIL
            if n < _QUEUE_BLOCK:
                return f"{block[0]}{n:04X}"
            with self._lock:
                if self._block is block:  # nobody drew a new block meanwhile
                    self._block = self._new_block()

    def event_id(self) -> str:
        return f"{self._event_prefix}{next(self._events):016x}"


_ids = _Ids()
os.register_at_fork(after_in_child=_ids.reseed)


def new_queue_id() -> str:
    """16 upper-case hex digits, unique."""
    return _ids.queue_id()


def new_event_id() -> str:
    """32 lower-case hex digits, unique."""
    return _ids.event_id()
