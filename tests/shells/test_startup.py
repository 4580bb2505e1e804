"""A start that fails half-way (the SMTP port is taken) undoes what it started, through the
same stop() as a normal shutdown: the error names the key, no thread is left behind and the
data directory opens again at once."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from mta.app import MtaApp
from tests.helpers import mta_config, started


async def test_a_taken_smtp_port_fails_the_start_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        before = {t.name for t in threading.enumerate()}
        app = MtaApp(mta_config(tmp_path, smtp__listen=f"127.0.0.1:{port}"))
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port} \(smtp.listen\)"):
            await app.start()
    assert app.parts is None  # stop() ran and cleared it
    left = {t.name for t in threading.enumerate() if not t.name.startswith("asyncio_")}
    assert left <= before  # the spool's writer and reader, the dkim pool: gone
    again = await started(mta_config(tmp_path))  # the same spool file opens again
    await again.stop()
