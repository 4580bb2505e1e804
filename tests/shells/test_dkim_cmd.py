"""`mta dkim keygen` / `mta dkim verify` as a real process: key files, TXT records, exit codes."""

from __future__ import annotations

import argparse
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import dkim
import pytest

from mta.cli import dkim as dkim_cmd
from mta.config.service import DkimKey
from mta.ingress.dkim import DkimSigner

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0
MESSAGE = (
    b"From: News <news@example.com>\r\n"
    b"To: reader@example.net\r\n"
    b"Subject: Hello\r\n"
    b"\r\n"
    b"Body text.\r\n"
)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "mta.cli.dkim", "dkim", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def txt_from_output(stdout: str) -> tuple[str, str]:
    """(DNS name, record value) from the printed zone line, strings joined."""
    line = next(x for x in stdout.splitlines() if " IN TXT " in x)
    name, _, strings = line.partition(" IN TXT ")
    parts = re.findall(r'"([^"]*)"', strings)
    assert all(len(p) <= 255 for p in parts)
    return name, "".join(parts)


@pytest.mark.parametrize(
    ("kind", "extra"), [("rsa", ()), ("ed25519", ()), ("rsa", ("--bits", "1024"))]
)
def test_keygen_writes_a_key_that_signs_and_a_record_dkimpy_accepts(
    tmp_path: Path, kind: str, extra: tuple[str, ...]
) -> None:
    out = tmp_path / "keys"
    result = cli(
        "keygen",
        "--domain",
        "Example.com",
        "--selector",
        "s2024",
        "--out",
        out,
        "--type",
        kind,
        *extra,
    )
    assert result.returncode == 0, result.stderr
    path = out / "s2024._domainkey.example.com.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    name, record = txt_from_output(result.stdout)
    assert name == "s2024._domainkey.example.com."
    assert record.startswith(f"v=DKIM1; k={kind}; p=")
    if kind == "rsa" and not extra:
        txt_line = next(x for x in result.stdout.splitlines() if " IN TXT " in x)
        assert txt_line.count('"') == 4  # 2048-bit: two strings of <= 255
    assert f'key_file = "{path.resolve()}"' in result.stdout
    assert "[[dkim.keys]]" in result.stdout
    assert f"--dkim example.com:s2024:{path.resolve()}" in result.stdout

    signer = DkimSigner.from_config([DkimKey("example.com", "s2024", str(path))])
    signed = signer.sign(MESSAGE, NOW)
    assert signed != MESSAGE

    def dns(qname: bytes, timeout: float = 5) -> bytes:
        return record.encode() if qname.decode() == name else b""

    assert dkim.verify(signed, dnsfunc=dns) is True
    assert dkim.verify(signed.replace(b"Body text.", b"Body text!"), dnsfunc=dns) is False


def test_keygen_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    args = (
        "keygen",
        "--domain",
        "example.com",
        "--selector",
        "s1",
        "--out",
        tmp_path,
        "--type",
        "ed25519",
    )
    assert cli(*args).returncode == 0
    path = tmp_path / "s1._domainkey.example.com.pem"
    before = path.read_bytes()
    refused = cli(*args)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        f"mta dkim keygen: error: {path} exists; use --force to replace it"
    ]
    assert path.read_bytes() == before
    forced = cli(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert path.read_bytes() != before
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("--domain", "bad domain", "--selector", "s1"), "--domain 'bad domain' is not a valid"),
        (("--domain", "example.com", "--selector", "a/b"), "--selector 'a/b' is not a valid"),
        (("--domain", "example.com", "--selector", "s1", "--bits", "512"), "--bits must be"),
        (
            ("--domain", "example.com", "--selector", "s1", "--type", "ed25519", "--bits", "2048"),
            "--bits applies to rsa keys only",
        ),
    ],
)
def test_keygen_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], problem: str) -> None:
    result = cli("keygen", "--out", tmp_path, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert problem in lines[0]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def dual(tmp_path: Path) -> tuple[Path, Path, Path, str, str]:
    """A message signed with an RSA and an Ed25519 key made by keygen, and their TXT records."""
    records = []
    for selector, kind in (("r1", "rsa"), ("e1", "ed25519")):
        result = cli(
            "keygen",
            "--domain",
            "example.com",
            "--selector",
            selector,
            "--out",
            tmp_path,
            "--type",
            kind,
        )
        assert result.returncode == 0, result.stderr
        records.append(txt_from_output(result.stdout)[1])
    rsa_path = tmp_path / "r1._domainkey.example.com.pem"
    ed_path = tmp_path / "e1._domainkey.example.com.pem"
    signer = DkimSigner.from_config(
        [DkimKey("example.com", "r1", str(rsa_path)), DkimKey("example.com", "e1", str(ed_path))]
    )
    message = tmp_path / "received.eml"
    message.write_bytes(signer.sign(MESSAGE, NOW))
    return message, rsa_path, ed_path, records[0], records[1]


def test_verify_with_key_files(dual: tuple[Path, Path, Path, str, str]) -> None:
    message, rsa_path, ed_path, _, _ = dual
    result = cli("verify", message, "--key", rsa_path, "--key", ed_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "signature 1: d=example.com s=r1 a=rsa-sha256: pass",
        "signature 2: d=example.com s=e1 a=ed25519-sha256: pass",
    ]


def test_verify_with_txt_records_and_tampering(
    dual: tuple[Path, Path, Path, str, str], tmp_path: Path
) -> None:
    message, _, _, rsa_txt, ed_txt = dual
    ok = cli("verify", message, "--txt", rsa_txt, "--txt", ed_txt)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": pass") == 2
    tampered = tmp_path / "tampered.eml"
    tampered.write_bytes(message.read_bytes().replace(b"Body text.", b"Body text?"))
    bad = cli("verify", tampered, "--txt", rsa_txt, "--txt", ed_txt)
    assert bad.returncode == 1
    lines = bad.stdout.splitlines()
    assert len(lines) == 2
    assert all(": fail (body hash mismatch" in line for line in lines)


def test_verify_reports_a_missing_or_wrong_key(dual: tuple[Path, Path, Path, str, str]) -> None:
    message, rsa_path, _, _, ed_txt = dual
    result = cli("verify", message, "--key", rsa_path)  # bound to r1 only
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "signature 1: d=example.com s=r1 a=rsa-sha256: pass",
        "signature 2: d=example.com s=e1 a=ed25519-sha256: fail "
        "(no key given for e1._domainkey.example.com)",
    ]
    other = cli("verify", message, "--txt", ed_txt.replace(ed_txt[-10:-1], "AAAAAAAAA"))
    assert other.returncode == 1
    assert "signature 2: d=example.com s=e1 a=ed25519-sha256: fail" in other.stdout


def test_verify_lf_only_file_and_no_signature(
    dual: tuple[Path, Path, Path, str, str], tmp_path: Path
) -> None:
    message, rsa_path, ed_path, _, _ = dual
    lf = tmp_path / "lf.eml"
    lf.write_bytes(message.read_bytes().replace(b"\r\n", b"\n"))
    result = cli("verify", lf, "--key", rsa_path, "--key", ed_path)
    assert result.returncode == 0, result.stdout + result.stderr
    unsigned = tmp_path / "unsigned.eml"
    unsigned.write_bytes(MESSAGE)
    none = cli("verify", unsigned, "--key", rsa_path)
    assert none.returncode == 1
    assert none.stdout.strip() == f"{unsigned}: no DKIM-Signature"


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("missing.eml", "--txt", "v=DKIM1; k=rsa; p=AAAA"), "missing.eml: No such file"),
        (("{message}",), "give the public key with --txt RECORD or --key FILE"),
        (("{message}", "--txt", "v=DKIM1; k=rsa"), "--txt: the record has no p= public key"),
        (("{message}", "--txt", "v=DKIM1; k=dsa; p=AAAA"), "unsupported key type k=dsa"),
        (("{message}", "--key", "nope.pem"), "--key nope.pem: No such file"),
    ],
)
def test_verify_bad_input_is_one_line(
    dual: tuple[Path, Path, Path, str, str], args: tuple[str, ...], problem: str
) -> None:
    message = dual[0]
    result = cli("verify", *(a.format(message=message) for a in args))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0], result.stderr


def test_add_parser_and_run_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="mta")
    dkim_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            "dkim",
            "keygen",
            "--domain",
            "example.org",
            "--selector",
            "k",
            "--out",
            str(tmp_path),
            "--type",
            "ed25519",
        ]
    )
    assert args.command == "dkim" and args.dkim_command == "keygen"
    assert dkim_cmd.run(args) == 0
    assert "k._domainkey.example.org. IN TXT" in capsys.readouterr().out
    assert (tmp_path / "k._domainkey.example.org.pem").exists()


def test_txt_record_line_splits_at_255() -> None:
    line = dkim_cmd.txt_record_line("s._domainkey.example.com", "x" * 600)
    assert line == (f's._domainkey.example.com. IN TXT "{"x" * 255}" "{"x" * 255}" "{"x" * 90}"')
