"""Queue and event ids: the shapes they always had, unique across blocks and processes."""

from __future__ import annotations

import os
import re

from mta import ids


def test_ids_keep_their_shapes() -> None:
    assert re.fullmatch(r"[0-9A-F]{16}", ids.new_queue_id())
    assert re.fullmatch(r"[0-9a-f]{32}", ids.new_event_id())


def test_queue_ids_stay_unique_past_a_block() -> None:
    made = [ids.new_queue_id() for _ in range(3 * 65_536 + 10)]
    assert len(set(made)) == len(made)
    assert len({m[:12] for m in made}) >= 3  # a new random prefix every 65,536 ids


def test_event_ids_are_unique() -> None:
    made = [ids.new_event_id() for _ in range(100_000)]
    assert len(set(made)) == len(made)


def test_a_forked_child_draws_its_own_prefixes() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report one id of each kind, then leave at once
        os.write(write, f"{ids.new_queue_id()} {ids.new_event_id()}".encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    mine = [ids.new_queue_id(), ids.new_event_id()]
    assert child[0][:12] != mine[0][:12]
    assert child[1][:16] != mine[1][:16]
