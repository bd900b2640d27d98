"""The decode stage on its own: codes, statuses, headers and bodies of every shape."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest

from bingx_async import (
    APIError,
    BadRequestError,
    BingXError,
    IPBannedError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
)
from bingx_async._decode import body_code, decode, error_from_response, parse_body

from .conftest import case_id

ENDPOINT = "POST /openApi/swap/v1/trade/closePosition"
NOW = 1_727_193_810.249


def answer(status: int, content: bytes, **headers: str) -> BingXError:
    response = httpx.Response(status, content=content, headers=headers)
    with pytest.raises(BingXError) as caught:
        decode(ENDPOINT, response, server_now=NOW)
    return caught.value


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, 0),
        ("0", 0),
        (" 100410 ", 100410),
        ("-1", -1),
        (Decimal("0.0"), 0),
        (Decimal("100400.0"), 100400),
        (Decimal("1.5"), None),
        (Decimal("1E+20"), None),
        ("1e3", None),
        ("²", None),
        ("1" * 13, None),
        (10**13, None),
        (True, None),
        (None, None),
        ([0], None),
    ],
    ids=case_id,
)
def test_a_code_is_ascii_digits_of_sane_length(code: Any, expected: int | None) -> None:
    """Integers, integral decimals and digit strings count; anything else is no code."""
    assert body_code({"code": code}) == expected


def test_a_body_without_a_code_is_no_envelope() -> None:
    """A JSON object without a code, answered 200, is a ResponseValidationError."""
    error = answer(200, b'{"data":{"orderId":1}}')
    assert type(error) is ResponseValidationError
    assert (error.endpoint, error.status_code, error.may_have_executed) == (ENDPOINT, 200, True)


@pytest.mark.parametrize("body", [b"[1,2]", b'"ok"', b"12"], ids=case_id)
def test_a_json_body_that_is_not_an_object_is_no_envelope(body: bytes) -> None:
    """Lists, strings and numbers are not BingX's envelope."""
    assert parse_body(body) is None
    assert type(answer(200, body)) is ResponseValidationError


@pytest.mark.parametrize(
    ("status", "expected"),
    [(403, IPBannedError), (418, IPBannedError), (429, RateLimitError), (400, BadRequestError)],
)
def test_an_unknown_code_falls_back_to_the_status(status: int, expected: type[APIError]) -> None:
    """Code 999999 means nothing here: the HTTP status decides."""
    error = answer(status, b'{"code":999999,"msg":"new"}')
    assert type(error) is expected
    assert error.code == 999999


def test_a_timed_rate_limit_without_a_body_timestamp_uses_the_clock_estimate() -> None:
    """ "unblocked after T" and no "timestamp": the wait is T minus BingX's estimated clock."""
    error = answer(200, b'{"code":100410,"msg":"will be unblocked after 1727193814249"}')
    assert isinstance(error, RateLimitError)
    assert error.unblock_at == 1727193814.249
    assert error.retry_after == pytest.approx(4.0, abs=1e-6)


def test_a_body_timestamp_wins_over_the_clock_estimate() -> None:
    """The body's own server time is the better clock."""
    body = b'{"code":100410,"msg":"unblocked after 1727193814249","timestamp":1727193813249}'
    error = answer(200, body)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("inf", None),
        ("nan", None),
        ("Tue, 24 Sep 2024 16:03:34 GMT", pytest.approx(3.751, abs=1e-3)),
        ("Tue, 24 Sep 2024 16:00:00 GMT", 0.0),
        ("soon", None),
        ("9" * 100, None),
    ],
    ids=case_id,
)
def test_retry_after_is_seconds_or_an_http_date(value: str, expected: object) -> None:
    """Retry-After of a bare 429: seconds, or a date on BingX's clock; nonsense is ignored."""
    error = answer(429, b"Too Many Requests", **{"Retry-After": value})
    assert isinstance(error, RateLimitError)
    assert error.retry_after == expected


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        (b"<HTML><TITLE>\n 502 Bad\n Gateway </TITLE></HTML>", "non-JSON body: 502 Bad Gateway"),
        (b"<p>upstream <b>timed</b> out</p>", "non-JSON body: upstream timed out"),
        (b"   ", "HTTP 502"),
        (b"x" * 200, "non-JSON body: " + "x" * 120 + "..."),
    ],
    ids=["title", "tags", "blank", "long"],
)
def test_a_page_that_is_not_json_is_summed_up_in_one_line(text: bytes, msg: str) -> None:
    """A proxy's page: its title, else its text without tags, at most 120 characters."""
    error = answer(502, text)
    assert type(error) is ServerError
    assert error.msg == msg


def test_invalid_utf8_in_a_page_is_replaced_not_raised() -> None:
    """Bytes that are not UTF-8 never raise a UnicodeDecodeError."""
    error = answer(500, b"<title>\xff\xfe broken</title>")
    assert error.msg == "non-JSON body: \ufffd\ufffd broken"


def test_a_redirect_without_a_location_is_still_an_error() -> None:
    """A 302 with no (or a broken) Location: an APIError saying the address redirects."""
    assert "redirects elsewhere" in str(answer(302, b""))
    assert "redirects elsewhere" in str(answer(307, b"", location="http://[::1"))


def test_a_redirect_with_code_zero_is_not_success() -> None:
    """{"code":0} on a 301 is not a close."""
    error = answer(301, b'{"code":0,"data":{}}', location="https://x.example/y")
    assert type(error) is APIError
    assert "redirects to x.example" in str(error)


def test_an_error_repr_names_its_class_and_facts() -> None:
    """repr shows the message, code, status, endpoint and whether it may have executed."""
    error = error_from_response(
        status_code=200,
        body={"code": 100400, "msg": "bad"},
        text="{}",
        endpoint=ENDPOINT,
        headers={},
        server_now=None,
    )
    assert repr(error) == (
        f"BadRequestError('BingX error 100400: bad (HTTP 200, {ENDPOINT})', code=100400, "
        f"status_code=200, endpoint={ENDPOINT!r}, may_have_executed=False)"
    )


def test_the_raw_body_is_kept_without_signatures() -> None:
    """raw_body holds the answer's text, signatures removed."""
    error = answer(400, b'{"code":100400,"msg":"bad","echo":"signature=abc123&x=1"}')
    assert isinstance(error, APIError)
    assert error.raw_body is not None
    assert "abc123" not in error.raw_body
    assert "signature=<redacted>" in error.raw_body
