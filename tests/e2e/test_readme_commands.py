"""The README's "Quickstart" activation lines and every command of its "Point a sender at it"
section and its spool lines, run exactly as written, in a fresh directory.

`mta up` and `mta serve` listen on the README's fixed ports (2525, 8080, 5300, 8025,
2526), which other processes on this machine may hold: the commands run inside a
network namespace of their own (`unshare -n`, loopback only), where those ports are
free. The only text replaced is the `<queue-id>` placeholder, by the id the README's
Python example prints.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
BIN = Path(sys.executable).parent


def section(title: str, end: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(title)
    return text[start : text.index(end, start + len(title))]


def blocks(text: str) -> list[str]:
    """The code of a README section: indented command blocks and ```python blocks, in order
    (continuation lines joined; comments after a command removed)."""
    found: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```python"):
            end = lines.index("```", i + 1)
            found.append("\n".join(lines[i + 1 : end]))
            i = end + 1
            continue
        if line.startswith("    ") and line.strip():
            block = []
            while i < len(lines) and lines[i].startswith("    "):
                block.append(lines[i][4:])
                i += 1
            joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
            found.append(joined)
            continue
        i += 1
    return found


def command(line: str) -> str:
    """A command line without its trailing `# comment`."""
    return shlex.join(shlex.split(line, comments=True)) if "#" in line else line


def test_the_quickstart_activation_lines() -> None:
    (code,) = blocks(section("The commands are installed in", "## Point a sender"))
    assert code.splitlines() == [". .venv/bin/activate", "mta --version"]
    venv = BIN.parent
    done = subprocess.run(
        ["bash", "-c", code],
        cwd=venv.parent,  # the repository, whose .venv runs these tests
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert venv.name == ".venv" and done.returncode == 0, done.stderr
    assert re.fullmatch(r"mta \d+\.\d+\.\d+\n", done.stdout)


DRIVER = r"""
import json, os, re, signal, smtplib, subprocess, sys, time
from email.message import EmailMessage

plan = json.loads(sys.argv[1])
env = dict(os.environ, PATH=plan["bin"] + ":" + os.environ["PATH"])
out = {}
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

def sh(line, timeout=60):
    done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True,
                          timeout=timeout)
    return {"line": line, "status": done.returncode, "stdout": done.stdout,
            "stderr": done.stderr}

def background(line):
    return subprocess.Popen(["bash", "-c", "exec " + line.removesuffix("&").strip()], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def until(check, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False

def stop(process, sig=signal.SIGINT):
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=60)
    return {"status": process.returncode, "stdout": stdout, "stderr": stderr}

up = background(plan["up"])
ready = lambda: sh("mta check --smtp 127.0.0.1:2525 --http http://127.0.0.1:8080/readyz"
                   " --timeout 1")["status"] == 0
out["up_ready"] = until(ready, 90)
out["python"] = sh(sys.executable + " -c " + __import__("shlex").quote(plan["python"]))
out["swaks"] = sh(plan["swaks"])
message = EmailMessage()
message["From"] = "news@campaign.test"
message["To"] = "alice+452-452-250@isp.test"
message["Subject"] = "two retries"
message.set_content("retried")
with smtplib.SMTP("127.0.0.1", 2525) as smtp:
    smtp.send_message(message, from_addr="bounces@campaign.test")
started = time.monotonic()
ls_line = plan["then"][0]
out["retried_arrived"] = until(
    lambda: "alice+452-452-250@isp.test" in sh(ls_line)["stdout"], 120)
out["retried_seconds"] = time.monotonic() - started
out["alice_arrived"] = until(lambda: "alice@gmail.test" in sh(ls_line)["stdout"], 30)
queue_id = re.search(r"250 2\.0\.0 (\S+) queued", out["python"]["stdout"])
out["then"] = []
for line in plan["then"]:
    if queue_id:
        line = line.replace("<queue-id>", queue_id.group(1))
    out["then"].append(sh(line))
out["up"] = stop(up)

sink_line, keygen_line, serve_line = plan["sink"]
sink = background(sink_line)
until(lambda: sh("mta check --smtp 127.0.0.1:2526 --timeout 1")["status"] == 0, 30)
out["keygen"] = sh(keygen_line)
serve = background(serve_line)
out["serve_ready"] = until(
    lambda: sh("mta check --smtp 127.0.0.1:2525 --timeout 1")["status"] == 0, 60)
with smtplib.SMTP("127.0.0.1", 2525) as smtp:
    smtp.sendmail("news@campaign.test", ["bob@example.test"],
                          b"From: news@campaign.test\r\nSubject: to the sink\r\n\r\nhi\r\n")
out["sink_arrived"] = until(
    lambda: any(p.is_file() for p in __import__("pathlib").Path("var/sink").rglob("*")
                if "new" in p.parts or "cur" in p.parts), 60)
out["serve"] = stop(serve, signal.SIGTERM)
out["sink"] = stop(sink, signal.SIGTERM)
out["spool"] = [sh(line, timeout=120) for line in plan["spool"]]
print(json.dumps(out))
"""


@pytest.mark.timeout(600)
def test_point_a_sender_at_it_as_written(tmp_path: Path) -> None:
    code = blocks(section("## Point a sender at it", "## The sender side"))
    assert len(code) == 5, code
    up, python, swaks, then, sink = code
    assert command(up) == "mta up --time-scale 600"
    assert swaks.startswith("swaks ")
    spool = blocks(section("At start `mta serve` says what its spool holds", "## HTTP API"))
    plan = {
        "bin": str(BIN),
        "up": command(up),
        "python": python,
        "swaks": swaks,
        "then": [command(line) for line in then.splitlines()],
        "sink": [command(line) for line in sink.splitlines()],
        "spool": spool[0].splitlines(),
    }
    assert plan["spool"] == [
        "mta spool check var/mta",
        "mta spool salvage var/mta --out var/mta-rescued",
    ]
    done = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", DRIVER, json.dumps(plan)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=560,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    assert out["up_ready"]
    assert out["python"]["status"] == 0, out["python"]["stderr"]
    assert re.fullmatch(r"250 2\.0\.0 \S+ queued\n", out["python"]["stdout"])
    assert out["swaks"]["status"] == 0 and "250 2.0.0" in out["swaks"]["stdout"]
    assert out["retried_arrived"]  # two retries (1 h, 2 h virtual) inside 2 minutes at x600
    assert out["alice_arrived"]
    ls, sites, show, events = out["then"]
    for step in out["then"]:
        assert step["status"] == 0, step
    assert "alice@gmail.test" in ls["stdout"]
    assert "gmail" in sites["stdout"]
    assert "alice@gmail.test" in show["stdout"] and "delivered" in show["stdout"]
    kinds = {event["kind"] for event in json.loads(events["stdout"])["events"]}
    assert {"relayed", "delivered"} <= kinds
    assert out["up"]["status"] == 0

    assert out["keygen"]["status"] == 0
    assert out["serve_ready"] and out["sink_arrived"]
    assert out["serve"]["status"] == 0
    assert re.search(
        r"mta: spool var/mta/spool\.sqlite3: \d+ messages queued", out["serve"]["stderr"]
    )
    assert out["sink"]["status"] == 0
    check, rescue = out["spool"]
    assert check["status"] == 0, check
    assert "integrity check: ok" in check["stdout"]
    assert rescue["status"] == 0, rescue
    assert "salvaged into var/mta-rescued/spool.sqlite3" in rescue["stdout"]
    assert (tmp_path / "var" / "mta-rescued" / "spool.sqlite3").exists()
