"""The `mta dkim` command: `keygen` writes a signing key and prints its DNS record, `verify`
checks the signatures of a stored message with dkimpy against a record given on the line.

    mta dkim keygen --domain example.com --selector s1 --out keys [--type rsa|ed25519]
                    [--bits 2048] [--force]
    mta dkim verify FILE [--txt "v=DKIM1; k=rsa; p=..."] [--key FILE] ...

`add_parser(subparsers)` registers the command on an argparse sub-parser set and
`run(args)` executes it; `python -m mta.cli.dkim ...` runs it standalone.
Exit codes: 0 success (verify: every signature passed), 1 a signature failed or
none was found, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mta.ingress.dkim import (
    MIN_RSA_BITS,
    PrivateKey,
    load_private_key,
    normalize_domain,
    public_key_record,
)

__all__ = ["add_parser", "keygen", "main", "run", "txt_record_line"]

MAX_RSA_BITS = 8192
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_KEY_NAME = re.compile(r"^(?P<name>.+\._domainkey\..+)\.pem$", re.IGNORECASE)


class CommandError(Exception):
    """Bad input for a dkim subcommand; the message is the one line the user sees."""


# --------------------------------------------------------------------------- keygen


def keygen(
    domain: str,
    selector: str,
    out_dir: str | Path,
    kind: str = "rsa",
    bits: int | None = None,
    force: bool = False,
) -> tuple[Path, PrivateKey]:
    """Create a key and write DIR/<selector>._domainkey.<domain>.pem (mode 0600)."""
    name = normalize_domain(domain)
    if name is None:
        raise CommandError(f"--domain {domain!r} is not a valid domain name")
    if not selector or not all(_LABEL.match(label) for label in selector.split(".")):
        raise CommandError(f"--selector {selector!r} is not a valid DNS label")
    key: PrivateKey
    if kind == "rsa":
        size = 2048 if bits is None else bits
        if not MIN_RSA_BITS <= size <= MAX_RSA_BITS:
            raise CommandError(f"--bits must be {MIN_RSA_BITS}-{MAX_RSA_BITS}, got {size}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=size)
    elif kind == "ed25519":
        if bits is not None:
            raise CommandError("--bits applies to rsa keys only")
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise CommandError(f"--type must be rsa or ed25519, got {kind!r}")
    directory = Path(out_dir)
    path = directory / f"{selector.lower()}._domainkey.{name}.pem"
    if path.exists() and not force:
        raise CommandError(f"{path} exists; use --force to replace it")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_private(path, pem, replace=force)
    except FileExistsError:
        raise CommandError(f"{path} exists; use --force to replace it") from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, key


def _write_private(path: Path, data: bytes, replace: bool) -> None:
    """Write `data` with mode 0600: exclusively, or through a temp file and a rename."""
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        target = path
    else:
        fd, temp = tempfile.mkstemp(prefix=".dkim-", dir=path.parent)   # created 0600
        target = Path(temp)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if target != path:
            os.replace(target, path)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def txt_record_line(dns_name: str, record: str) -> str:
    """A zone-file line: the record split into quoted strings of at most 255 characters."""
    strings = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    return f"{dns_name}. IN TXT {strings}"


def _keygen(args: argparse.Namespace) -> int:
    path, key = keygen(args.domain, args.selector, args.out, args.type, args.bits, args.force)
    algorithm = (
        f"rsa-sha256, {key.key_size} bits" if isinstance(key, rsa.RSAPrivateKey)
        else "ed25519-sha256"
    )
    domain = normalize_domain(args.domain) or args.domain
    selector = args.selector.lower()
    key_file = str(path.resolve())
    print(f"Wrote {path} ({algorithm}, mode 0600)")
    print()
    print("DNS TXT record to publish:")
    print(txt_record_line(f"{selector}._domainkey.{domain}", public_key_record(key)))
    print()
    print("mta.toml:")
    print("[[dkim.keys]]")
    print(f"domain = {json.dumps(domain)}")
    print(f"selector = {json.dumps(selector)}")
    print(f"key_file = {json.dumps(key_file)}")
    print()
    print(f"or: mta serve --dkim {domain}:{selector}:{key_file}")
    return 0


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class _Record:
    """A public-key record the user supplied, with the DNS name it is bound to (if known)."""

    text: str
    kind: str             # "rsa" or "ed25519"
    name: str | None      # "<selector>._domainkey.<domain>" or None: any name


def _parse_txt(text: str) -> _Record:
    strings = re.findall(r'"([^"]*)"', text)
    record = "".join(strings) if strings else text.strip()
    tags: dict[str, str] = {}
    for spec in record.split(";"):
        if spec.strip():
            tag, eq, value = spec.partition("=")
            if not eq:
                raise CommandError(f"--txt: {spec.strip()!r} is not a tag=value pair")
            tags[tag.strip()] = "".join(value.split())
    if not tags.get("p"):
        raise CommandError("--txt: the record has no p= public key")
    kind = tags.get("k", "rsa")
    if kind not in ("rsa", "ed25519"):
        raise CommandError(f"--txt: unsupported key type k={kind}")
    return _Record(text=record, kind=kind, name=None)


def _record_from_key(path_text: str) -> _Record:
    path = Path(path_text)
    record: str
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"--key {path}: {exc.strerror or exc}") from None
    if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
        try:
            public = serialization.load_pem_public_key(data)
        except ValueError:
            raise CommandError(f"--key {path}: not a valid PEM public key") from None
        if isinstance(public, rsa.RSAPublicKey):
            der = public.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            record = "v=DKIM1; k=rsa; p=" + _b64(der)
        elif isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            record = "v=DKIM1; k=ed25519; p=" + _b64(raw)
        else:
            raise CommandError(f"--key {path}: unsupported key type; use RSA or Ed25519")
    else:
        try:
            record = public_key_record(load_private_key(path))
        except ValueError as exc:
            raise CommandError(f"--key {path}: {exc}") from None
    match = _KEY_NAME.match(path.name)
    name = match.group("name").lower() if match else None
    kind = "ed25519" if "k=ed25519" in record else "rsa"
    return _Record(text=record, kind=kind, name=name)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _choose(records: Sequence[_Record], name: str, algorithm: str) -> _Record | None:
    """The record bound to `name`, else an unbound one of the signature's key type, else any."""
    for record in records:
        if record.name == name:
            return record
    unbound = [r for r in records if r.name is None]
    kind = "ed25519" if algorithm.startswith("ed25519") else "rsa"
    for record in unbound:
        if record.kind == kind:
            return record
    return unbound[0] if unbound else None


class _Collect(logging.Handler):
    """Keeps dkimpy's log messages so a failure can say why."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.INFO:
            self.messages.append(record.getMessage())


def verify_message(message: bytes, records: Sequence[_Record]) -> list[tuple[str, bool, str]]:
    """(description, passed, reason) per DKIM-Signature, top to bottom, checked by dkimpy."""
    import dkim
    from dkim.util import parse_tag_value

    if b"\r\n" not in message:                     # a Maildir file written with bare LF
        message = message.replace(b"\n", b"\r\n")
    collect = _Collect()
    logger = logging.getLogger("mta.dkim_cmd.verify")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(collect)
    try:
        checker = dkim.DKIM(message, logger=logger)
        signatures = [v for k, v in checker.headers if k.lower() == b"dkim-signature"]
        results: list[tuple[str, bool, str]] = []
        for index, value in enumerate(signatures):
            results.append(_verify_one(checker, index, value, records, collect, parse_tag_value))
        return results
    finally:
        logger.removeHandler(collect)


def _verify_one(
    checker: Any,
    index: int,
    value: bytes,
    records: Sequence[_Record],
    collect: _Collect,
    parse_tag_value: Any,
) -> tuple[str, bool, str]:
    try:
        tags = parse_tag_value(value)
    except Exception:
        return f"signature {index + 1}", False, "unparsable DKIM-Signature"
    domain = _text(tags.get(b"d")).lower().rstrip(".")
    selector = _text(tags.get(b"s")).lower()
    algorithm = _text(tags.get(b"a"))
    label = f"signature {index + 1}: d={domain} s={selector} a={algorithm}"
    name = f"{selector}._domainkey.{domain}"
    record = _choose(records, name, algorithm)
    if record is None:
        return label, False, f"no key given for {name}"
    wanted = "ed25519" if algorithm.startswith("ed25519") else "rsa"
    if record.kind != wanted:
        return label, False, f"the key given is k={record.kind}, the signature needs k={wanted}"
    chosen = record

    def dnsfunc(_name: bytes, timeout: float = 5) -> bytes:
        return chosen.text.encode()

    collect.messages.clear()
    try:
        passed = bool(checker.verify(idx=index, dnsfunc=dnsfunc))
    except Exception as exc:   # dkimpy raises DKIMException subclasses and a few others
        return label, False, str(exc) or type(exc).__name__
    if passed:
        return label, True, ""
    reason = collect.messages[-1] if collect.messages else "signature does not match"
    return label, False, reason


def _text(value: bytes | None) -> str:
    return "".join(value.decode("utf-8", "replace").split()) if value else ""


def _verify(args: argparse.Namespace) -> int:
    if not args.txt and not args.key:
        raise CommandError("give the public key with --txt RECORD or --key FILE")
    records = [_parse_txt(t) for t in args.txt or ()]
    records += [_record_from_key(k) for k in args.key or ()]
    path = Path(args.file)
    try:
        message = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from None
    results = verify_message(message, records)
    if not results:
        print(f"{path}: no DKIM-Signature")
        return 1
    for label, passed, reason in results:
        print(f"{label}: pass" if passed else f"{label}: fail ({reason})")
    return 0 if all(passed for _, passed, _ in results) else 1


# --------------------------------------------------------------------------- wiring


def add_parser(subparsers: Any) -> None:
    """Register `dkim` with its `keygen` and `verify` subcommands (dest: args.dkim_command)."""
    parser = subparsers.add_parser(
        "dkim", help="DKIM keys and checks", description="DKIM key generation and verification."
    )
    sub = parser.add_subparsers(dest="dkim_command", metavar="{keygen,verify}", required=True)
    gen = sub.add_parser(
        "keygen",
        help="create a signing key and print its DNS TXT record",
        description="Write DIR/<selector>._domainkey.<domain>.pem (mode 0600) and print the "
        "DNS TXT record and the config snippet.",
    )
    gen.add_argument("--domain", required=True, help="signing domain (d=)")
    gen.add_argument("--selector", required=True, help="selector (s=)")
    gen.add_argument("--out", required=True, metavar="DIR", help="directory for the key file")
    gen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="default: rsa")
    gen.add_argument("--bits", type=int, default=None, help="RSA key size (default 2048)")
    gen.add_argument("--force", action="store_true", help="replace an existing key file")
    ver = sub.add_parser(
        "verify",
        help="verify a stored message's DKIM signatures (dkimpy)",
        description="Check each DKIM-Signature of FILE against the key records given; "
        "no DNS is queried.",
    )
    ver.add_argument("file", metavar="FILE", help="the message as stored (e.g. a Maildir file)")
    ver.add_argument(
        "--txt", action="append", metavar="RECORD", help='a TXT record, "v=DKIM1; k=...; p=..."'
    )
    ver.add_argument(
        "--key", action="append", metavar="FILE", help="a key file (private or public PEM)"
    )


def run(args: argparse.Namespace) -> int:
    """Execute the parsed `dkim` command; returns the exit code."""
    try:
        if args.dkim_command == "keygen":
            return _keygen(args)
        return _verify(args)
    except CommandError as exc:
        print(f"mta dkim {args.dkim_command}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mta")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
