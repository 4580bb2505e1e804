"""SMTP reply text -> Reply(code, enhanced, text): multiline, disagreeing codes, pasted forms."""

from __future__ import annotations

import pytest

from mta.core.reply import from_parts, parse_reply, split_enhanced
from mta.model import Reply

PARSE = [
    ("single-line", "550 5.1.1 User unknown", Reply(550, "5.1.1", "User unknown")),
    ("no-enhanced", "554 delivery error: dd This user doesn't have a yahoo.com account",
     Reply(554, None, "delivery error: dd This user doesn't have a yahoo.com account")),
    ("gmail-multiline-crlf",
     "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n"
     "550-5.1.1 double-checking the recipient's email address for typos or\r\n"
     "550 5.1.1  https://support.google.com/mail/?p=NoSuchUser x - gsmtp",
     Reply(550, "5.1.1", "The email account that you tried to reach does not exist. Please try "
           "double-checking the recipient's email address for typos or "
           "https://support.google.com/mail/?p=NoSuchUser x - gsmtp")),
    ("multiline-lf-no-enhanced",
     "554-mx ESMTP\n554-No SMTP service\n554 IP address is black listed.",
     Reply(554, None, "mx ESMTP No SMTP service IP address is black listed.")),
    ("empty-continuation-lines", "550-5.7.26 Blocked.\r\n550-5.7.26 \r\n550 5.7.26 See x",
     Reply(550, "5.7.26", "Blocked. See x")),
    ("other-enhanced-on-later-line", "550-5.1.1 first\r\n550 5.2.2 second",
     Reply(550, "5.1.1", "first 5.2.2 second")),
    ("codes-disagree-kept-in-text", "454 5.5.1 STARTTLS may not be repeated.",
     Reply(454, None, "5.5.1 STARTTLS may not be repeated.")),
    ("three-digit-enhanced", "451 4.7.500 Server busy.", Reply(451, "4.7.500", "Server busy.")),
    ("enhanced-only", "550 5.1.1", Reply(550, "5.1.1", "")),
    ("code-only", "421", Reply(421, None, "")),
    ("code-with-dash-only", "421-", Reply(421, None, "")),
    ("bare-text", "mailbox full", Reply(0, None, "mailbox full")),
    ("bare-multiline-text", "mailbox\nfull", Reply(0, None, "mailbox full")),
    ("digits-glued-to-text", "5501 things", Reply(0, None, "5501 things")),
    ("empty", "", Reply(0, None, "")),
    ("blank-lines", "\r\n\r\n", Reply(0, None, "")),
    ("surrounding-blank-lines", "\n550 5.1.1 x\n\n", Reply(550, "5.1.1", "x")),
    ("line-with-another-code", "250-x\n550 y", Reply(250, None, "x 550 y")),
    ("dsn-diagnostic-code", "Diagnostic-Code: smtp; 550 5.1.1 <a@b>: User unknown",
     Reply(550, "5.1.1", "<a@b>: User unknown")),
    ("smtp-prefix", "smtp;550 5.2.2 full", Reply(550, "5.2.2", "full")),
    ("exchange-marks", "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##",
     Reply(550, "5.1.1", "RESOLVER.ADR.RecipNotFound; not found")),
    ("flattened-log", "550-5.1.1 a 550-5.1.1 b 550 5.1.1 c", Reply(550, "5.1.1", "a b c")),
    ("not-flattened-when-another-code", "550 5.1.1 see 550 5.1.10x",
     Reply(550, "5.1.1", "see 550 5.1.10x")),
    ("non-ascii", "552 5.2.2 Boîte aux lettres pleine",
     Reply(552, "5.2.2", "Boîte aux lettres pleine")),
]


@pytest.mark.parametrize(("raw", "want"), [pytest.param(r, w, id=i) for i, r, w in PARSE])
def test_parse_reply(raw: str, want: Reply) -> None:
    assert parse_reply(raw) == want


@pytest.mark.parametrize(
    ("code", "line", "want"),
    [
        pytest.param(550, "5.1.1 user unknown", ("5.1.1", "user unknown"), id="same-class"),
        pytest.param(452, "5.2.2 full", (None, "5.2.2 full"), id="other-class"),
        pytest.param(550, "  5.1.1   x", ("5.1.1", "x"), id="spaces"),
        pytest.param(550, "5.1.1x", (None, "5.1.1x"), id="glued"),
        pytest.param(550, "3.1.1 x", (None, "3.1.1 x"), id="not-a-class"),
    ],
)
def test_split_enhanced(code: int, line: str, want: tuple[str | None, str]) -> None:
    assert split_enhanced(code, line) == want


def test_from_parts_as_a_client_library_hands_them() -> None:
    message = "5.1.1 The email account that you tried to reach does not exist.\n5.1.1 Learn more"
    assert from_parts(550, message) == Reply(
        550, "5.1.1", "The email account that you tried to reach does not exist. Learn more"
    )
    assert from_parts(421, "") == Reply(421, None, "")


def test_str_round_trip() -> None:
    for raw in ("550 5.1.1 User unknown", "554 No SMTP service", "421"):
        assert str(parse_reply(raw)) == raw
