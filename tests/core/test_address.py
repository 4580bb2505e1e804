"""Envelope address parsing and validation: each accepted form and each refusal's reply."""

import pytest

from mta.core.address import AddressError, parse_path


@pytest.mark.parametrize(
    ("arg", "sender", "address", "params"),
    [
        ("<User@Example.COM>", False, "User@example.com", {}),
        (
            "<a@b.test> SIZE=100 BODY=8BITMIME",
            True,
            "a@b.test",
            {"SIZE": "100", "BODY": "8BITMIME"},
        ),
        ("<>", True, "", {}),
        ("<@relay1,@relay2:u@x.test>", False, "u@x.test", {}),
        ('<"john doe"@x.test>', False, '"john doe"@x.test', {}),
        ("<a@[127.0.0.1]>", False, "a@[127.0.0.1]", {}),
        ("<a@[IPv6:::1]>", False, "a@[ipv6:::1]", {}),
        ("a@x.test", False, "a@x.test", {}),
        ("<ü@bücher.test> SMTPUTF8", True, "ü@bücher.test", {"SMTPUTF8": None}),
    ],
)
def test_accepted_paths(arg: str, sender: bool, address: str, params: dict[str, str]) -> None:
    path = parse_path(arg, sender=sender)
    assert path.address == address
    assert path.params == params


@pytest.mark.parametrize(
    ("arg", "sender", "reply"),
    [
        ("<>", False, "501 5.1.3"),
        ("<a@b.test,c@d.test>", False, "553 5.1.3"),
        ("<a\x01b@x.test>", False, "501 5.1.3"),
        ("<a\x7fb@x.test>", True, "501 5.1.7"),
        ("<a@-x.test>", False, "501 5.1.3"),
        ("<a@x..test>", False, "501 5.1.3"),
        ("<a..b@x.test>", False, "501 5.1.3"),
        ("<" + "a" * 65 + "@x.test>", False, "501 5.1.3"),
        ("<a@" + ("x" * 60 + ".") * 5 + "test>", False, "501 5.1.3"),
        ("<a@x.test", False, "501 5.5.4"),
        ("<ü@x.test>", False, "553 5.6.7"),
        ("<a@x.test> BAD PARAM=", True, "501 5.5.4"),
        ("<noatsign>", True, "501 5.1.7"),
        ("<a@[999.1.1.1]>", False, "501 5.1.3"),
    ],
)
def test_refused_paths(arg: str, sender: bool, reply: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_path(arg, sender=sender)
    assert caught.value.reply.startswith(reply)
    assert "\n" not in caught.value.reply


def test_rcpt_utf8_needs_smtputf8_on_mail() -> None:
    assert parse_path("<ü@x.test>", sender=False, smtputf8=True).address == "ü@x.test"
