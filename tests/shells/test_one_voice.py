"""One voice: `mta classify`, `POST /api/v1/classify` and the running MTA describe and do the
same retry for the same reply and the same config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from mta.clock import ManualClock
from mta.config.service import load_config
from tests.helpers import (
    ScriptedServer,
    events_of,
    send_message,
    started,
    wait_for,
)

MESSAGE = (
    b"From: Sender <news@sender.test>\r\nTo: <rcpt@dest.test>\r\nSubject: Hello\r\n"
    b"X-Campaign-Delivery-Id: DLV1\r\nX-Campaign-Log-Id: LOG1\r\n\r\nHi there.\r\n"
)
CASES = [
    # (reply, the first retry the running MTA waits, the words classify must say)
    ("451 4.3.0 Temporary local problem", 300.0, "retry after 5m, 10m, 20m, 40m"),
    ("452 4.2.2 The email account that you tried to reach is over quota.", 3600.0,
     "retry after 1h, 2h, 4h, 8h"),
]


def config_file(tmp_path: Path, relay_port: int) -> Path:
    path = tmp_path / "mta.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'[smtp]\nlisten = "127.0.0.1:0"\n[admin]\nlisten = "127.0.0.1:0"\n'
        f'[delivery]\nrelayhost = "127.0.0.1:{relay_port}"\n'
        f'[retry]\nfirst = "5m"\njitter = 0.0\n'
    )
    return path


@pytest.mark.parametrize(("reply", "first_wait", "words"), CASES)
async def test_classify_the_api_and_the_running_mta_agree(
    tmp_path: Path, receiver: ScriptedServer, reply: str, first_wait: float, words: str
) -> None:
    path = config_file(tmp_path, receiver.port)
    receiver.handler.rcpt[:] = [reply] * 5
    clock = ManualClock()
    app = await started(load_config(path, environ={}), clock=clock)
    try:
        # What the running MTA does.
        await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], MESSAGE)
        await wait_for(lambda: any(e["kind"] == "soft_bounce" for e in events_of(app)))
        soft = next(e for e in events_of(app) if e["kind"] == "soft_bounce")
        assert soft["next_attempt_at"] - soft["at"] == pytest.approx(first_wait, rel=0.25)
        # What its API says.
        host, port = app.admin_address or ("", 0)
        async with aiohttp.ClientSession() as http, http.post(
            f"http://{host}:{port}/api/v1/classify", json={"reply": reply}
        ) as resp:
            api = await resp.json()
        # What the command says, given the same config file.
        cli = json.loads(
            subprocess.run(
                [sys.executable, "-m", "mta.cli.classify", "classify", "--json",
                 "--config", str(path), reply],
                capture_output=True, text=True, check=True,
                env={"PATH": "/usr/bin:/bin"},
            ).stdout
        )
    finally:
        await app.stop()
    assert words in api["retry"]
    assert cli == api
    assert soft["failure"] == {
        "type": api["failure_type"],
        "reason": api["failure_reason"],
        "reason_code": api["failure_reason_code"],
    }


@pytest.mark.parametrize(
    "condition", ["null_mx", "dns_nxdomain", "validity_expired"]
)
def test_the_client_reads_the_mtas_condition_replies_as_the_mta_does(condition: str) -> None:
    """What the MTA says of a local condition (null MX, NXDOMAIN, validity end) is what the
    client's inbound rules say of the same reply in a DSN: one voice on both sides."""
    from campaign_client.inbound import load_rules, parse_inbound, qualify
    from mta.config.bounce_rules import load_bounce_rules
    from mta.core.bounce import condition_reply
    from mta.model import Condition, Outcome, Phase

    reply = condition_reply(Condition(condition))
    mta = load_bounce_rules().classify(Outcome(reply, Phase.CONNECT, None, Condition(condition)))
    dsn = (
        "From: MAILER-DAEMON@mta.test\r\nTo: bounces@sender.test\r\nSubject: Undeliverable\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;'
        ' boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n'
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Final-Recipient: rfc822; a@x.test\r\nAction: failed\r\nStatus: {reply.enhanced}\r\n"
        f"Diagnostic-Code: smtp; {reply.code} {reply.enhanced} {reply.text}\r\n--B--\r\n"
    ).encode()
    [client] = qualify(parse_inbound(dsn), load_rules())
    assert (client.failure_type, client.reason) == (mta.failure_type, mta.failure_reason)
