"""DKIM signer: canonicalization against RFC 6376 and dkimpy, signatures verified by dkimpy,
over-signing, domain choice, key loading errors, thread safety."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import threading
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from dkim.canonicalization import Relaxed

from mta.config.engine import ConfigError
from mta.config.service import DkimConfig, DkimKey
from mta.ingress.dkim import (
    DkimSigner,
    SigningKey,
    author_domain,
    body_hash,
    canonicalize_body_relaxed,
    canonicalize_header_relaxed,
    load_signing_key,
    public_key_record,
    split_message,
)

NOW = 1_700_000_000.0       # in the past: dkimpy rejects t= more than 10 h in the future

# A throwaway 512-bit RSA key (too small on purpose), made with `openssl genrsa 512`.
SMALL_RSA_PEM = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOQIBAAJBAKznPK4PjcXP+8f2VAWFmBojWOidhKhcgLwBzwMKqXtJUxlC6r3+
oU3mvjxpmQ/ugMKRMNVaBKkiC9RwNXIiKl8CAwEAAQJAOfZi3y8TpeatT0GCtT8t
2EVVPtXfbNllxqEMlsZyPoOvJ249u1+tKtibnNB9fBotWc0DiUVUYkKSIB8UBJ2D
cQIhANU8BL1LGQQYZ4DolPoPn0OH1Uiu4JSLOWUipPtnz6atAiEAz5SEPZpzmiZl
+N2VEPQOJ/PiUgTz0F6FZIxaUJRQUrsCIArt05RcKAEUuyFZSmFysYgFi0H5bJtQ
c3Wii/AyxurVAiA2PPQgtI6oJIhYcm1UtLBOOCdWjvy14TyxfQrMKzShqQIgWFHI
r/REybFovwW6b225LsOTqSI9Oqt0TaFL+AMxvjs=
-----END RSA PRIVATE KEY-----
"""

BASE = (
    b"From: Joe SixPack <joe@football.example.com>\r\n"
    b"To: Suzie Q <suzie@shopping.example.net>\r\n"
    b"Subject: Is dinner ready?\r\n"
    b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n"
    b"Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n"
    b"\r\n"
    b"Hi.\r\n"
    b"\r\n"
    b"We lost the game. Are you hungry yet?\r\n"
    b"\r\n"
    b"Joe.\r\n"
)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ed_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def keys(
    rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey
) -> dict[str, SigningKey]:
    return {
        "rsa": SigningKey("example.com", "rsa1", rsa_key),
        "ed25519": SigningKey("example.com", "ed1", ed_key),
    }


@pytest.fixture(scope="module")
def dns(keys: dict[str, SigningKey]) -> Callable[..., bytes]:
    records = {
        f"{k.selector}._domainkey.{k.domain}.".encode(): public_key_record(k.private_key).encode()
        for k in keys.values()
    }

    def lookup(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name, b"")

    return lookup


def verify_all(message: bytes, dns: Callable[..., bytes]) -> list[bool]:
    """dkimpy's verdict for each DKIM-Signature, top to bottom."""
    checker = dkim.DKIM(message)
    count = sum(1 for name, _ in checker.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(count):
        try:
            results.append(bool(checker.verify(idx=index, dnsfunc=dns)))
        except dkim.DKIMException:
            results.append(False)
    return results


def signature_tags(message: bytes) -> dict[str, str]:
    field = message.split(b"\r\n\r\n")[0].split(b"\r\nFrom")[0] + b"\r\n"
    value = re.sub(rb"\r\n[ \t]", b" ", field.partition(b":")[2]).decode()
    tags = {}
    for spec in value.split(";"):
        tag, _, val = spec.strip().partition("=")
        tags[tag] = "".join(val.split())
    return tags


# --------------------------------------------------------------------------- canonicalization


def test_rfc6376_example_relaxed_headers() -> None:
    # RFC 6376 3.4.5: "A: X" and "B : Y<HTAB><CRLF><HTAB>Z<SP><SP>"
    fields, body = split_message(
        b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n"
    )
    assert [canonicalize_header_relaxed(f) for f in fields] == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert canonicalize_body_relaxed(body) == b" C\r\nD E\r\n"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", b""),
        (b"\r\n", b""),
        (b"\r\n\r\n\r\n", b""),
        (b" \r\n\t\r\n", b""),
        (b"abc", b"abc\r\n"),
        (b"abc\r\n", b"abc\r\n"),
        (b"a  b\t\tc \t\r\n", b"a b c\r\n"),
        (b"x\r\n  \r\ny\r\n\r\n", b"x\r\n\r\ny\r\n"),
        (b"\tlead\r\n", b" lead\r\n"),
        ("caf\u00e9  cr\u00e8me \r\n".encode(), "caf\u00e9 cr\u00e8me\r\n".encode()),
        (b"end\r\n\r", b"end\r\n\r\r\n"),          # a stray bare CR is not an empty line
    ],
)
def test_relaxed_body(body: bytes, expected: bytes) -> None:
    assert canonicalize_body_relaxed(body) == expected


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"a \r\n\r\n", b"a\t b  \r\n c\r\n\r\n\r\n", b"tail  ", b" \t \r\n x \r\n"],
)
def test_relaxed_body_agrees_with_dkimpy(body: bytes) -> None:
    assert canonicalize_body_relaxed(body) == Relaxed.canonicalize_body(body)


@pytest.mark.parametrize(
    "field",
    [
        b"Subject: hello",
        b"SUBJECT :  hello   world  ",
        b"Subject:\thello\r\n\tworld\r\n  again ",
        b"X-Empty:",
        "Subject: h\u00e9llo  w\u00f6rld".encode(),
    ],
)
def test_relaxed_header_agrees_with_dkimpy(field: bytes) -> None:
    name, _, value = field.partition(b":")
    ((cname, cvalue),) = Relaxed.canonicalize_headers([(name, value)])
    assert canonicalize_header_relaxed(field) == cname + b":" + cvalue


def test_relaxed_canonicalization_agrees_with_dkimpy_on_random_input() -> None:
    rng = random.Random(6376)
    atoms = [b" ", b"\t", b"  ", b"a", b"xyz", b"\r\n", b"\r\n\r\n", "\u00e9".encode()]
    for _ in range(400):
        body = b"".join(rng.choice(atoms) for _ in range(rng.randrange(0, 12)))
        assert canonicalize_body_relaxed(body) == Relaxed.canonicalize_body(body), body
        value = b"".join(rng.choice([*atoms[:5], b"\r\n "]) for _ in range(rng.randrange(0, 8)))
        ((name, cvalue),) = Relaxed.canonicalize_headers([(b"X-Test", value)])
        assert canonicalize_header_relaxed(b"X-Test:" + value) == name + b":" + cvalue, value


def test_body_hash_of_empty_body_is_sha256_of_nothing() -> None:
    assert body_hash(b"") == base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert body_hash(b"\r\n\r\n") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


@pytest.mark.parametrize(
    ("message", "fields", "body"),
    [
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", [b"A: 1", b"B: 2"], b"body\r\n"),
        (b"A: 1\r\n 2\r\n\t3\r\nB: x\r\n\r\n", [b"A: 1\r\n 2\r\n\t3", b"B: x"], b""),
        (b"A: 1\r\n", [b"A: 1"], b""),
        (b"\r\nbody only\r\n", [], b"body only\r\n"),
        (b"A: 1\r\n\r\n\r\nx\r\n", [b"A: 1"], b"\r\nx\r\n"),
    ],
)
def test_split_message(message: bytes, fields: list[bytes], body: bytes) -> None:
    assert split_message(message) == (fields, body)


@pytest.mark.parametrize(
    ("from_value", "domain"),
    [
        (b"joe@Example.COM", "example.com"),
        (b"Joe <joe@mail.example.com>", "mail.example.com"),
        (b'"evil@other.org <x@other.org>" <joe@example.com>', "example.com"),
        (b"joe@example.com (from evil@other.org)", "example.com"),
        (b"=?utf-8?q?J=C3=B6e?= <joe@example.com>", "example.com"),
        ("J\u00f6e M\u00fcller <joe@example.com>".encode(), "example.com"),
        ("joe@m\u00fcnchen.example".encode(), "xn--mnchen-3ya.example"),
        (b"Joe\r\n <joe@example.com.>", "example.com"),
        (b"a@first.example, b@second.example", "first.example"),
        (b"undisclosed", None),
        (b"joe@[192.0.2.1]", None),
        (b"joe@\xff\xfe", None),
    ],
)
def test_author_domain(from_value: bytes, domain: str | None) -> None:
    assert author_domain(b"To: x@y.z\r\nFrom: " + from_value + b"\r\n\r\nhi\r\n") == domain


def test_author_domain_needs_exactly_one_from() -> None:
    assert author_domain(b"To: x@y.z\r\n\r\nhi\r\n") is None
    assert author_domain(b"From: a@example.com\r\nfrom: b@example.com\r\n\r\n") is None


# --------------------------------------------------------------------------- signing


VARIANTS = {
    "plain": BASE,
    "folded headers": BASE.replace(
        b"To: Suzie Q <suzie@shopping.example.net>\r\n",
        b"To: Suzie Q <suzie@shopping.example.net>,\r\n\tBob\r\n   <bob@example.net>\r\n",
    ),
    "repeated headers": BASE.replace(
        b"Subject:", b"To: second@example.net\r\nCc: c1@example.net\r\nCc: c2@example.net\r\n"
        b"Subject:"
    ),
    "trailing blank lines": BASE + b"\r\n\r\n\r\n",
    "empty body": BASE.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
    "no body separator": BASE.split(b"\r\n\r\n")[0] + b"\r\n",
    "whitespace": BASE.replace(b"Subject: Is dinner", b"Subject:\t Is  dinner \t").replace(
        b"We lost", b"We   \tlost"
    ) + b"trailing  \t\r\n",
    "utf-8 subject": BASE.replace(
        b"Subject: Is dinner ready?",
        "Subject: D\u00eener pr\u00eat ? \u2014 \U0001f37d\ufe0f".encode(),
    ).replace(b"Joe SixPack", "J\u00f6e S\u00efxPack".encode()),
    "lower-case names": BASE.replace(b"From:", b"from:").replace(b"Subject:", b"SUBJECT:"),
}


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_signature_verifies_with_dkimpy(
    kind: str, variant: str, keys: dict[str, SigningKey], dns: Callable[..., bytes]
) -> None:
    message = VARIANTS[variant]
    signed = DkimSigner([keys[kind]]).sign(message, NOW)
    assert signed.endswith(message)
    assert signed.startswith(b"DKIM-Signature: v=1; a=" + keys[kind].algorithm.encode())
    assert verify_all(signed, dns) == [True]
    # and a changed body word does not verify
    tampered = signed.replace(b"hungry", b"angry") if b"hungry" in signed else signed + b"\r\nx\r\n"
    assert verify_all(tampered, dns) == [False]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_relaxed_survives_whitespace_rewrites(
    kind: str, keys: dict[str, SigningKey], dns: Callable[..., bytes]
) -> None:
    signed = DkimSigner([keys[kind]]).sign(BASE, NOW)
    rewritten = (
        signed.replace(b"Subject: Is dinner ready?", b"Subject:   Is\r\n\tdinner   ready?  ")
        .replace(b"We lost the game.", b"We  lost\tthe game.   ")
        + b"\r\n\r\n"
    )
    assert rewritten != signed
    assert verify_all(rewritten, dns) == [True]


def test_tags_and_folding(keys: dict[str, SigningKey]) -> None:
    signed = DkimSigner([keys["rsa"]]).sign(BASE, 1_700_000_123.9)
    field = signed[: signed.index(b"\r\nFrom:") + 2]
    lines = field.split(b"\r\n")[:-1]
    assert all(len(line) < 78 for line in lines)
    assert all(line[:1] == b"\t" for line in lines[1:])
    tags = signature_tags(signed)
    assert tags["v"] == "1"
    assert tags["a"] == "rsa-sha256"
    assert tags["c"] == "relaxed/relaxed"
    assert tags["d"] == "example.com"
    assert tags["s"] == "rsa1"
    assert tags["t"] == "1700000123"
    assert tags["bh"] == body_hash(BASE.split(b"\r\n\r\n", 1)[1])
    assert len(base64.b64decode(tags["b"])) == 256
    assert list(tags) == ["v", "a", "c", "d", "s", "t", "h", "bh", "b"]
    # present headers once per instance, over-signed names once more (absent ones too)
    assert tags["h"].split(":") == [
        "from", "from", "reply-to", "subject", "subject", "date", "date", "to", "to",
        "message-id", "message-id",
    ]


def test_no_timestamp_when_now_is_none(
    keys: dict[str, SigningKey], dns: Callable[..., bytes]
) -> None:
    signed = DkimSigner([keys["rsa"]]).sign(BASE, None)
    assert "t" not in signature_tags(signed)
    assert verify_all(signed, dns) == [True]


def test_ed25519_signs_the_sha256_of_the_header_hash_input(
    keys: dict[str, SigningKey], ed_key: ed25519.Ed25519PrivateKey
) -> None:
    signed = DkimSigner([keys["ed25519"]]).sign(BASE, NOW)
    checker = dkim.DKIM(signed)
    field_name, field_value = checker.headers[0]
    tags = signature_tags(signed)
    stripped = re.sub(rb"b=[A-Za-z0-9+/=\s]+$", b"b=", field_value.rstrip(b"\r\n"))
    data = b"".join(
        canonicalize_header_relaxed(f)
        for f in [
            b"From: Joe SixPack <joe@football.example.com>",
            b"Subject: Is dinner ready?",
            b"Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)",
            b"To: Suzie Q <suzie@shopping.example.net>",
            b"Message-ID: <20030712040037.46341.5F8J@football.example.com>",
        ]
    ) + canonicalize_header_relaxed(field_name + b":" + stripped)[:-2]
    public = ed_key.public_key()
    public.verify(base64.b64decode(tags["b"]), hashlib.sha256(data).digest())   # raises if not


def test_dual_signatures_rsa_first(
    keys: dict[str, SigningKey], dns: Callable[..., bytes]
) -> None:
    signer = DkimSigner([keys["ed25519"], keys["rsa"]])
    signed = signer.sign(BASE, NOW)
    algorithms = re.findall(rb"a=([a-z0-9-]+);", signed.split(b"\r\nFrom:")[0])
    assert algorithms == [b"rsa-sha256", b"ed25519-sha256"]
    assert verify_all(signed, dns) == [True, True]


@pytest.mark.parametrize(
    "message",
    [
        BASE.replace(b"From: Joe SixPack <joe@football.example.com>\r\n", b""),
        BASE.replace(b"football.example.com>", b"example.org>", 1),
        BASE.replace(b"football.example.com>", b"notexample.com>", 1),
        BASE.replace(b"Subject:", b"From: second@example.com\r\nSubject:"),
        b"\r\nno headers at all\r\n",
        b"",
    ],
    ids=["no From", "other domain", "suffix is not a parent", "two From", "no headers", "empty"],
)
def test_unsigned_when_no_key_matches(message: bytes, keys: dict[str, SigningKey]) -> None:
    assert DkimSigner(keys.values()).sign(message, NOW) is message


def test_most_specific_domain_wins(rsa_key: rsa.RSAPrivateKey) -> None:
    signer = DkimSigner(
        [
            SigningKey("example.com", "parent", rsa_key),
            SigningKey("news.example.com", "child", rsa_key),
        ]
    )
    assert [k.selector for k in signer.keys_for("a.b.news.example.com")] == ["child"]
    assert [k.selector for k in signer.keys_for("NEWS.example.com.")] == ["child"]
    assert [k.selector for k in signer.keys_for("shop.example.com")] == ["parent"]
    assert signer.keys_for("example.org") == ()
    assert signer.keys_for("com") == ()
    signed = signer.sign(BASE.replace(b"football.example.com>", b"x.news.example.com>", 1), NOW)
    assert signature_tags(signed)["d"] == "news.example.com"


# --------------------------------------------------------------------------- over-signing


def add_header(signed: bytes, field: bytes, at_top: bool) -> bytes:
    """Insert a header field above the first non-signature field, or at the header's end."""
    marker = b"\r\nFrom:" if at_top else b"\r\n\r\n"
    position = signed.index(marker) + 2
    return signed[:position] + field + b"\r\n" + signed[position:]


@pytest.mark.parametrize("at_top", [True, False])
@pytest.mark.parametrize(
    "field",
    [b"From: Mallory <mallory@evil.example>", b"Subject: Urgent: wire money",
     b"Reply-To: mallory@evil.example"],
)
def test_oversigned_header_added_later_breaks_the_signature(
    field: bytes, at_top: bool, keys: dict[str, SigningKey], dns: Callable[..., bytes]
) -> None:
    signed = DkimSigner([keys["rsa"]]).sign(BASE, NOW)
    assert verify_all(signed, dns) == [True]
    assert verify_all(add_header(signed, field, at_top), dns) == [False]


def test_without_oversigning_an_added_subject_would_pass(
    keys: dict[str, SigningKey], dns: Callable[..., bytes]
) -> None:
    # the control for the test above: the protection comes from the extra h= entry
    signed = DkimSigner([keys["rsa"]], oversign=()).sign(BASE, NOW)
    assert signature_tags(signed)["h"].split(":").count("subject") == 1
    assert signature_tags(signed)["h"].split(":").count("from") == 2    # From always
    assert verify_all(add_header(signed, b"Subject: Urgent: wire money", True), dns) == [True]


def test_configured_header_lists(keys: dict[str, SigningKey]) -> None:
    signer = DkimSigner([keys["rsa"]], signed_headers=("Subject", "X-Campaign"), oversign=("To",))
    message = BASE.replace(b"Subject:", b"X-CAMPAIGN: 7\r\nx-campaign: 8\r\nSubject:")
    tags = signature_tags(signer.sign(message, NOW))
    assert tags["h"].split(":") == ["from", "from", "subject", "x-campaign", "x-campaign", "to",
                                    "to"]


# --------------------------------------------------------------------------- threads


def test_sign_is_thread_safe(keys: dict[str, SigningKey], dns: Callable[..., bytes]) -> None:
    signer = DkimSigner(keys.values())
    messages = [BASE.replace(b"Joe.", f"Joe {i}.".encode()) for i in range(24)]
    results: dict[int, bytes] = {}

    def work(start: int) -> None:
        for i in range(start, len(messages), 4):
            results[i] = signer.sign(messages[i], NOW + i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == list(range(24))
    for i, signed in results.items():
        assert signed.endswith(messages[i])
        assert signature_tags(signed)["t"] == str(int(NOW) + i)
        assert verify_all(signed, dns) == [True, True]


# --------------------------------------------------------------------------- key loading


PemKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def write_pem(path: Path, key: PemKey, fmt: serialization.PrivateFormat) -> str:
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    path.write_bytes(pem)
    return str(path)


def test_from_config_loads_pkcs8_traditional_and_ed25519(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey,
    dns: Callable[..., bytes],
) -> None:
    pkcs8 = write_pem(tmp_path / "a.pem", rsa_key, serialization.PrivateFormat.PKCS8)
    trad = write_pem(tmp_path / "b.pem", rsa_key, serialization.PrivateFormat.TraditionalOpenSSL)
    edk = write_pem(tmp_path / "c.pem", ed_key, serialization.PrivateFormat.PKCS8)
    config = DkimConfig(keys=(
        DkimKey("Example.COM", "rsa1", pkcs8),
        DkimKey("example.com", "ed1", edk),
        DkimKey("other.example", "old", trad),
    ))
    signer = DkimSigner.from_config(config.keys, config.signed_headers, config.oversign)
    assert [k.algorithm for k in signer.keys_for("example.com")] == [
        "rsa-sha256", "ed25519-sha256"
    ]
    assert signer.keys_for("other.example")[0].algorithm == "rsa-sha256"
    assert verify_all(signer.sign(BASE, NOW), dns) == [True, True]
    assert DkimSigner.from_dkim_config(config).domains == signer.domains


def test_key_loading_errors(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_small = tmp_path / "small.pem"
    rsa_small.write_bytes(SMALL_RSA_PEM)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    public = tmp_path / "public.pem"
    public.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    cases = {
        str(tmp_path / "missing.pem"): "no such file",
        str(tmp_path): "is a directory",
        str(garbage): "not a PEM file",
        str(public): "is a public key, not a private key",
        str(broken): "not a valid PEM private key",
        str(encrypted): "is encrypted",
        write_pem(tmp_path / "ec.pem", ec_key, serialization.PrivateFormat.PKCS8):
            "unsupported key type",
        str(rsa_small): "RSA key of 512 bits is too small (at least 1024)",
    }
    for path, problem in cases.items():
        with pytest.raises(ConfigError) as info:
            DkimSigner.from_config([DkimKey("example.com", "s1", path)])
        message = str(info.value)
        assert path in message
        assert problem in message
        assert "\n" not in message


@pytest.mark.parametrize(
    ("domain", "selector", "problem"),
    [
        ("exa mple.com", "s1", "not a valid domain name"),
        ("", "s1", "not a valid domain name"),
        ("example.com", "", "not a valid DNS label"),
        ("example.com", "bad/selector", "not a valid DNS label"),
    ],
)
def test_bad_domain_or_selector(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, domain: str, selector: str, problem: str
) -> None:
    path = write_pem(tmp_path / "k.pem", rsa_key, serialization.PrivateFormat.PKCS8)
    with pytest.raises(ConfigError, match=problem) as info:
        load_signing_key(domain, selector, path)
    assert path in str(info.value)


def test_duplicate_selector_and_bad_header_name(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    path = write_pem(tmp_path / "k.pem", rsa_key, serialization.PrivateFormat.PKCS8)
    with pytest.raises(ConfigError, match="duplicate selector"):
        DkimSigner.from_config([DkimKey("example.com", "s1", path)] * 2)
    with pytest.raises(ConfigError, match=r"dkim\.signed_headers: 'Bad:Name'"):
        DkimSigner.from_config([DkimKey("example.com", "s1", path)], signed_headers=("Bad:Name",))
    with pytest.raises(ConfigError, match=r"dkim\.oversign"):
        DkimSigner.from_config([DkimKey("example.com", "s1", path)], oversign=("",))


def test_public_key_records(rsa_key: rsa.RSAPrivateKey, ed_key: ed25519.Ed25519PrivateKey) -> None:
    rsa_record = public_key_record(rsa_key)
    assert rsa_record.startswith("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A")
    ed_record = public_key_record(ed_key)
    raw = ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert ed_record == "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()
