"""`mta classify`: run() through add_parser on a fresh parser, stdout captured; and the
module run as a real process with a real stdin pipe."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mta.cli import classify as classify_cmd

ROOT = Path(__file__).parents[2]

KEYS = {"reply", "phase", "condition", "bounce_class", "failure_type", "failure_reason",
        "failure_reason_code", "scope", "permanent", "rule", "rule_source", "comment", "retry"}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mta")
    classify_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    return classify_cmd.run(parser.parse_args(["classify", *argv]))


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_human_explanation(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["550-5.1.1 The email account that you tried to reach does not exist.\r\n"
                 "550 5.1.1 https://support.google.com/mail/?p=NoSuchUser x - gsmtp"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["rule"].startswith("user-unknown  (mta/defaults/bounce-rules.toml: rule ")
    assert rows["class"] == "10 Invalid Recipient"
    assert rows["type"] == "Hard"
    assert rows["reason"] == "User unknown (1)"
    assert rows["scope"] == "recipient"
    assert rows["permanent"] == "yes"
    assert rows["retry"] == "no retry: the failure is permanent"
    assert rows["reply"].startswith("550 5.1.1 The email account")
    # aligned: every value starts in the same column
    columns = {len(line) - len(line.split(None, 1)[1]) for line in out.splitlines()}
    assert len(columns) == 1


def test_json_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    reply = "452 4.2.2 The email account that you tried to reach is over quota."
    assert _run(["--json", reply]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert set(doc) == KEYS
    assert doc["bounce_class"] == {"code": 22, "name": "Mailbox Full"}
    assert (doc["failure_type"], doc["failure_reason"], doc["failure_reason_code"]) == (
        "Soft", "Mailbox full", 5
    )
    assert (doc["scope"], doc["permanent"], doc["rule"]) == ("recipient", False, "mailbox-full")
    assert "retry after 1h, 2h, 4h, 8h" in doc["retry"]  # the running MTA's mailbox-full policy
    assert doc["reply"] == {"code": 452, "enhanced": "4.2.2",
                            "text": "The email account that you tried to reach is over quota."}


def test_phase_changes_the_scope(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--json", "--phase", "connect", "554 5.7.1 access denied"]) == 0
    assert _run(["--json", "--phase", "rcpt", "554 5.7.1 access denied"]) == 0
    first, second = _json_lines(capsys.readouterr().out)
    assert (first["scope"], second["scope"]) == ("site", "recipient")
    assert first["phase"] == "connect"


def test_condition_without_reply(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--json", "--condition", "dns_nxdomain"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["rule"], doc["bounce_class"]["code"], doc["failure_reason"]) == (
        "dns-nxdomain", 21, "Invalid domain"
    )
    assert (doc["phase"], doc["condition"], doc["permanent"]) == ("connect", "dns_nxdomain", False)
    assert doc["reply"]["code"] == 451


def test_user_rules_in_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "mine.toml"
    rules.write_text("""
[[rule]]
name = "partner-quota"
match = 'storage limit reached'
class = 22
type = "Soft"
reason = "Mailbox full"
scope = "recipient"
permanent = false
""", encoding="utf-8")
    assert _run(["--json", "--rules", str(rules), "554 storage limit reached"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["rule"], doc["rule_source"], doc["permanent"]) == (
        "partner-quota", f"{rules}: rule 1", False
    )


def test_rules_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "mine.toml"
    rules.write_text(
        '[[rule]]\nname = "mine"\nmatch = \'zebra\'\nclass = 1\ntype = "Ignored"\n'
        'reason = "Not defined"\nscope = "message"\n', encoding="utf-8"
    )
    config = tmp_path / "mta.toml"
    config.write_text(f'[bounce]\nrules_files = ["{rules}"]\n', encoding="utf-8")
    assert _run(["--json", "--config", str(config), "550 zebra crossing"]) == 0
    assert json.loads(capsys.readouterr().out)["rule"] == "mine"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param([""], "no reply given (and no --condition)", id="empty-reply"),
        pytest.param(["--rules", "/nonexistent/r.toml", "550 x"],
                     "/nonexistent/r.toml: no such file", id="missing-rules-file"),
        pytest.param(["x" * 70000], "longer than", id="too-long"),
    ],
)
def test_bad_arguments(argv: list[str], message: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("mta classify: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1


def test_broken_rules_file_names_file_and_rule(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "my-rules.toml"
    rules.write_text('[[rule]]\nname = "gmail-quota"\nmatch = \'(\'\nclass = 22\ntype = "Soft"\n'
                     'reason = "Mailbox full"\nscope = "recipient"\n', encoding="utf-8")
    assert _run(["--rules", str(rules), "550 x"]) == 2
    err = capsys.readouterr().err
    assert f"{rules}: rule 1 'gmail-quota': bad regex" in err


def test_unknown_phase_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _run(["--phase", "helo", "550 x"])
    assert caught.value.code == 2
    assert "invalid choice: 'helo'" in capsys.readouterr().err


# ------------------------------------------------------------------ JSON lines on stdin

LINES = b"\n".join([
    b'"550 5.1.1 user unknown"',
    b'not json',
    b'{"reply": "550-5.2.1 The mailbox is\\n550 5.2.1 disabled", "phase": "dot"}',
    b'42',
    b'{"reply": "421 x", "phase": "helo"}',
    b'',
    b'\xff\xfe "latin"',
    b'{"condition": "timeout"}',
    b'{"reply": "550 x", "severity": 1}',
    b'"421 4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to user complaints"',
]) + b"\n"


def test_stdin_json_lines(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, LINES)
    assert _run(["--json", "-"]) == 1
    docs = _json_lines(capsys.readouterr().out)
    assert len(docs) == 10
    assert docs[0]["rule"] == "user-unknown"
    assert (docs[2]["rule"], docs[2]["phase"], docs[2]["failure_reason"]) == (
        "account-disabled", "dot", "Account disabled"
    )
    assert docs[7]["rule"] == "connection-timeout"
    assert docs[9]["rule"].startswith("throttle-") and docs[9]["scope"] == "site"
    errors = {doc["line"]: doc["error"] for doc in docs if "error" in doc}
    assert set(errors) == {2, 4, 5, 6, 7, 9}
    assert errors[2].startswith("not JSON")
    assert errors[4] == "expected a JSON string or object, got int"
    assert errors[5].startswith("unknown phase 'helo'")
    assert errors[6].startswith("empty line")
    assert errors[7] == "not UTF-8 text"
    assert errors[9].startswith("unknown key 'severity'")
    for doc in docs:
        assert "error" in doc or set(doc) == KEYS


def test_stdin_all_good_exits_zero(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, b'"552 5.2.2 mailbox full"\n"452 4.5.3 Too many recipients"\n')
    assert _run(["--json", "--phase", "rcpt", "-"]) == 0
    docs = _json_lines(capsys.readouterr().out)
    assert [doc["rule"] for doc in docs] == ["mailbox-full", "too-many-recipients"]


def test_stdin_human(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _stdin(monkeypatch, b'"552 5.2.2 full"\n[]\n')
    assert _run(["-"]) == 1
    blocks = capsys.readouterr().out.strip().split("\n\n")
    assert len(blocks) == 2
    assert "mailbox-full" in blocks[0]
    assert blocks[1] == "line 2: error: expected a JSON string or object, got list"


def test_module_as_a_process_with_a_stdin_pipe() -> None:
    replies = ['550 5.1.1 user unknown', '451 4.7.1 greylisted, come back later', '{']
    proc = subprocess.run(
        [sys.executable, "-m", "mta.cli.classify", "classify", "--json", "-"],
        input="\n".join(json.dumps(r) if r != "{" else r for r in replies) + "\n",
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert proc.returncode == 1, proc.stderr
    docs = _json_lines(proc.stdout)
    assert [doc.get("rule") for doc in docs] == ["user-unknown", "greylist", None]
    assert docs[2]["line"] == 3 and "error" in docs[2]
    assert proc.stderr == ""
