"""Header helpers work on raw bytes and touch only what they name."""

from mta.core import headers

MESSAGE = (
    b"From: a@b.test\r\nX-Campaign-Delivery-Id: D1\r\nSubject: hi\r\n there\r\n"
    b"x-campaign-log-id: L9\r\nX-Campaign-Validity: 84h\r\n\r\nbody\r\nX-Campaign-Log-Id: no\r\n"
)


def test_extract_strips_only_the_prefixed_fields_of_the_header() -> None:
    found, rest = headers.extract(MESSAGE, "X-Campaign-")
    assert found == {
        "x-campaign-delivery-id": "D1",
        "x-campaign-log-id": "L9",
        "x-campaign-validity": "84h",
    }
    assert (
        rest == b"From: a@b.test\r\nSubject: hi\r\n there\r\n\r\nbody\r\nX-Campaign-Log-Id: no\r\n"
    )


def test_extract_without_matches_returns_the_same_bytes() -> None:
    message = b"From: a@b.test\r\n\r\nbody\r\n"
    assert headers.extract(message, "X-Campaign-") == ({}, message)


def test_get_unfolds_and_is_case_insensitive() -> None:
    assert headers.get(MESSAGE, "SUBJECT") == "hi there"
    assert headers.get(MESSAGE, "Message-ID") is None


def test_split_headers_only_message() -> None:
    assert headers.split(b"Subject: x\r\n") == (b"Subject: x\r\n", b"")
    assert headers.split(b"Subject: x\r\n\r\n") == (b"Subject: x\r\n", b"")


def test_names_are_the_header_fields_only_lower_cased() -> None:
    """Continuation lines and the body's lines are no field names; a field without a colon
    is none either."""
    message = (
        b"Message-ID: <a@b>\r\nSubject: one\r\n two: folded\r\nFrom : <x@y>\r\nnot a field\r\n"
        b"\r\nDate: in the body\r\n"
    )
    assert headers.names(message) == {b"message-id", b"subject", b"from"}
