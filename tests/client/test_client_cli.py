"""The `campaign-client` command: in-process through `main([...])` and as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import campaign_client
from campaign_client.cli import main
from campaign_client.events import Event, Failure, Kind
from campaign_client.log import DeliveryLog
from tests.client.client_helpers import SECRET, FakeMta, ev, post

REPO = str(Path(campaign_client.__file__).resolve().parent.parent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_log(path: Path) -> None:
    with DeliveryLog(path) as log:
        now = time.time()
        log.register("D1", [("1", "a@x.test", None), ("2", "b@x.test", None),
                            ("3", "c@x.test", None), ("4", "d@x.test", None)], now)
        log.apply_events([
            Event("e1", Kind.DELIVERED, "D1", "1", "a@x.test", seq=None),
            Event("e2", Kind.HARD_BOUNCE, "D1", "2", "b@x.test", seq=None,
                  failure=Failure("Hard", "User unknown", 1)),
            Event("e3", Kind.RELAYED, "D1", "3", "c@x.test", seq=None),
        ], now)


def test_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path / "log.sqlite")
    assert main(["report", "D1", "--log", str(tmp_path / "log.sqlite"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data == {
        "delivery_id": "D1", "total": 4,
        "by_status": {"Pending": 1, "Taken into account by the service provider": 1,
                      "Sent": 1, "Failed": 1},
        "success_pct": 25.0,
        "indicators": {"sent_to_provider": 2, "delivered": 1, "hard_bounces": 1,
                       "soft_bounces": 0, "excluded": 0, "success_pct": 25.0},
        "by_failure_type": {"Hard": 1}, "by_failure_reason": {"User unknown": 1},
        "after_delivery": {"by_type": {}, "by_reason": {}},
        "being_retried": {"by_type": {}, "by_reason": {}},
    }


def test_report_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_log(tmp_path / "log.sqlite")
    assert main(["report", "D1", "--log", str(tmp_path / "log.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "Taken into account by the service provider" in out and "25.00%" in out


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["report", "D1", "--log", "{tmp}/missing.sqlite"], 2, "log file not found"),
    (["report", "nope", "--log", "{tmp}/log.sqlite"], 1, "no delivery 'nope'"),
    (["send"], 2, "required"),
    (["send", "--delivery-id", "X", "--generate", "3"], 2, "--domains"),
    (["send", "--delivery-id", "X", "--generate", "3", "--domains", "a.test",
      "--mta", "nowhere"], 2, "HOST:PORT"),
    (["send", "--delivery-id", "X", "--csv", "{tmp}/none.csv"], 2, "cannot read"),
    (["send", "--delivery-id", "X", "--generate", "2", "--domains", "a.test",
      "--listen", "127.0.0.1:0"], 2, "--secret"),
    (["send", "--delivery-id", "X", "--generate", "2", "--domains", "a.test",
      "--validity", "soon"], 2, "validity"),
    (["receive"], 2, "nothing to run"),
    (["bogus"], 2, "invalid choice"),
])
def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch, argv: list[str], code: int,
                             message: str) -> None:
    monkeypatch.delenv("CAMPAIGN_CLIENT_SECRET", raising=False)
    make_log(tmp_path / "log.sqlite")
    assert main([arg.replace("{tmp}", str(tmp_path)) for arg in argv]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("campaign-client: error: ")
    assert message in err


@pytest.mark.parametrize(("content", "message"), [
    ("name\nx\n", "no 'email' column"),
    ("email,first_name\nnot-an-address,Ann\n", "people.csv:2: not an email address"),
    ("email,log_id\na@x.test,1\nb@x.test,1,extra\n", "people.csv:3: 3 cells"),
    ("email\n", "no recipients"),
])
def test_csv_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                    message: str) -> None:
    (tmp_path / "people.csv").write_text(content)
    argv = ["send", "--delivery-id", "X", "--csv", str(tmp_path / "people.csv"),
            "--log", str(tmp_path / "log.sqlite")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_template_naming_a_missing_column(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "people.csv").write_text("email,first_name\na@x.test,Ann\n")
    (tmp_path / "body.txt").write_text("Hello {first_name} {surname}\n")
    argv = ["send", "--delivery-id", "X", "--csv", str(tmp_path / "people.csv"),
            "--template", str(tmp_path / "body.txt"), "--log", str(tmp_path / "log.sqlite")]
    assert main(argv) == 2
    assert "{surname}" in capsys.readouterr().err


@pytest.fixture
async def fake_mta() -> AsyncIterator[tuple[FakeMta, int]]:
    fake = FakeMta()
    port = await fake.start()
    yield fake, port
    await fake.stop()


async def test_send_until_every_recipient_is_final(
    fake_mta: tuple[FakeMta, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, port = fake_mta
    listen = free_port()
    fake.webhook_url = f"http://127.0.0.1:{listen}/webhook"
    (tmp_path / "people.csv").write_text(
        "email,first_name\n" + "".join(f"u{i}@a.test,U{i}\n" for i in range(20))
        + "reject@b.test,R\n")
    (tmp_path / "body.txt").write_text("Hello {first_name}\n")
    argv = ["send", "--mta", f"127.0.0.1:{port}", "--delivery-id", "D7",
            "--csv", str(tmp_path / "people.csv"), "--template", str(tmp_path / "body.txt"),
            "--subject", "News for {first_name}", "--listen", f"127.0.0.1:{listen}",
            "--secret", SECRET, "--log", str(tmp_path / "log.sqlite"), "--sessions", "3",
            "--timeout", "60", "--json"]
    code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads(captured.out)
    assert data["total"] == 21 and data["final"] is True
    assert data["by_status"]["Sent"] == 20 and data["by_status"]["Failed"] == 1
    assert data["success_pct"] == round(20 * 100 / 21, 2)
    assert data["by_failure_reason"] == {"User unknown": 1}
    assert "submitting: 21/21" in captured.err            # stderr is not a TTY here
    subjects = {r.message["Subject"] for r in fake.received}
    assert "News for U3" in subjects
    await asyncio.gather(*fake.posts)


async def test_send_times_out_saying_how_many_are_not_final(
    fake_mta: tuple[FakeMta, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, port = fake_mta
    argv = ["send", "--mta", f"127.0.0.1:{port}", "--delivery-id", "D8", "--generate", "3",
            "--domains", "a.test,b.test", "--log", str(tmp_path / "log.sqlite"),
            "--timeout", "0.3"]
    code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines()[-1] == (
        "campaign-client: error: timeout after 0.3s: 3 of 3 recipients not final")
    assert "Taken into account by the service provider" in captured.out
    again = await asyncio.to_thread(main, argv)              # same delivery id: refused
    assert again == 2 and "already in" in capsys.readouterr().err


async def test_send_with_the_mta_down_is_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["send", "--mta", f"127.0.0.1:{free_port()}", "--delivery-id", "D9",
            "--generate", "2", "--domains", "a.test", "--log", str(tmp_path / "log.sqlite")]
    assert await asyncio.to_thread(main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect to the MTA" in err


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


async def test_python_dash_m_report(tmp_path: Path) -> None:
    make_log(tmp_path / "log.sqlite")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "campaign_client", "report", "D1", "--log",
        str(tmp_path / "log.sqlite"), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["by_status"]["Sent"] == 1
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "campaign_client", "report", "D2", "--log",
        str(tmp_path / "log.sqlite"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
    out, err = await proc.communicate()
    assert proc.returncode == 1
    assert err.decode() == f"campaign-client: error: no delivery 'D2' in {tmp_path}/log.sqlite\n"


async def test_receive_runs_until_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "campaign_client", "receive", "--listen", "127.0.0.1:0",
        "--bounce-listen", "127.0.0.1:0", "--log", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**_env(), "CAMPAIGN_CLIENT_SECRET": SECRET})
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
        assert "webhooks at http://127.0.0.1:" in line and "bounce mailbox at smtp://" in line
        assert line.rstrip().endswith(f"; writing {path}")
        url = line.split("webhooks at ")[1].split(";")[0].strip()
        assert await post(url, [ev("relayed", 1), ev("delivered", 2)]) == 204
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "stopped" in err.decode()
    with DeliveryLog(path) as log:
        assert log.kpis("D1").by_status["Sent"] == 1


def test_report_refuses_a_foreign_sqlite_file_without_touching_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    path = tmp_path / "spool.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE messages (id INTEGER)")
    db.close()
    assert main(["report", "D1", "--log", str(path)]) == 2
    assert "not a delivery log" in capsys.readouterr().err
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert tables == {"messages"}
