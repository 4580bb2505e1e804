"""`campaign-client qualify`: the README's command lines, run exactly as written, and its
error handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from campaign_client.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "tests" / "data" / "bounces" / "examples"


def readme_qualify_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines()
            if line.startswith("    ") and "campaign-client qualify" in line]


def test_the_readme_command_lines_run_as_written() -> None:
    lines = readme_qualify_lines()
    assert len(lines) == 2
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    outputs = []
    for line in lines:
        done = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)
    assert "ann@isp.test" in outputs[0] and "Hard / User unknown (1)  rule user-unknown" \
        in outputs[0]
    report = json.loads(outputs[1])
    assert (report["index"], report["kind"], report["recipient"], report["failure_type"],
            report["reason"], report["rule"]) == (0, "dsn", "bob@no-such-domain.test", "Soft",
                                                  "Invalid domain", "invalid-domain")
    assert report["original"] == {"message_id": "<d1-2@sender.test>", "delivery_id": "D1",
                                  "log_id": "2"}


def test_json_for_files(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(EXAMPLES / "postfix-user-unknown.eml"), str(EXAMPLES / "exim-unrouteable.eml")]
    assert main(["qualify", "--json", *files]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["file"], r["recipient"], r["status"], r["reason_code"]) for r in rows] == [
        (files[0], "ann@isp.test", "5.1.1", 1), (files[1], "bob@no-such-domain.test", "", 2)]


def test_stdin_lines_that_cannot_be_read_get_an_error_object(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = (EXAMPLES / "postfix-user-unknown.eml").read_text(encoding="utf-8")
    lines = ["not json", json.dumps(["a", "list"]), "", json.dumps(raw), json.dumps("")]
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("\n".join(lines) + "\n"))
    assert main(["qualify", "--json", "-"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["index"] == 0 and "not JSON" in rows[0]["error"]
    assert rows[1]["index"] == 1 and "expected a JSON string" in rows[1]["error"]
    assert (rows[2]["index"], rows[2]["reason"]) == (3, "User unknown")
    assert (rows[3]["index"], rows[3]["kind"], rows[3]["reason"]) == (4, "unknown",
                                                                      "Not defined")


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["qualify", str(tmp_path / "missing.eml")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot read" in err and "missing.eml" in err
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rule]]\nname = "x"\ntype = "Fatal"\nreason = "User unknown"\n')
    assert main(["qualify", "--rules", str(bad), str(EXAMPLES / "exim-unrouteable.eml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "rules.toml" in err and "type" in err
    assert main(["qualify", "-", str(EXAMPLES / "exim-unrouteable.eml")]) == 2
    assert "give it alone" in capsys.readouterr().err
