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


# --- every limit, at its edge -------------------------------------------------------------------


def data_of(body: bytes, status: int = 200) -> Any:
    return decode(ENDPOINT, httpx.Response(status, content=body), server_now=NOW)


@pytest.mark.parametrize(
    ("literal", "kept"),
    [
        ("9" * 64, True),
        ("-" + "9" * 64, True),
        ("9" * 65, False),
        ("1e100", True),
        ("1e101", False),
        ("1e-100", True),
        ("1e-101", False),
        ("1." + "0" * 126, True),
        ("1." + "0" * 127, False),
    ],
    ids=["64 digits", "-64 digits", "65 digits", "e100", "e101", "e-100", "e-101", "128", "129"],
)
def test_numbers_are_kept_up_to_their_bounds(literal: str, kept: bool) -> None:
    """Integers up to 64 digits, decimals up to 128 characters and exponent 100."""
    data = data_of(b'{"code":0,"data":{"n":' + literal.encode() + b"}}")
    assert (data["n"] is not None) is kept


def test_a_decimal_code_of_eleven_digits_counts_and_twelve_does_not() -> None:
    """A code written as a decimal counts up to 12 digits."""
    assert body_code({"code": Decimal("1E+11")}) == 100_000_000_000
    assert body_code({"code": Decimal("1E+12")}) is None


@pytest.mark.parametrize(
    ("status", "success"), [(299, True), (300, False), (399, False), (400, True)]
)
def test_code_zero_is_success_on_any_status_but_a_redirect(status: int, success: bool) -> None:
    """Only a 3xx turns {"code":0} into an error."""
    body = b'{"code":0,"data":{"x":1}}'
    if success:
        assert data_of(body, status) == {"x": 1}
    else:
        with pytest.raises(APIError, match="redirects"):
            data_of(body, status)


@pytest.mark.parametrize(("status", "expected"), [(299, ResponseValidationError), (300, APIError)])
def test_a_page_on_the_edge_of_the_success_statuses(status: int, expected: type) -> None:
    """HTML on 299 is no envelope; on 300 it is a redirect."""
    assert type(answer(status, b"<html>x</html>")) is expected


def test_a_body_of_exactly_the_limit_is_read_and_one_more_byte_is_not() -> None:
    """8 MiB is parsed; 8 MiB and a byte is not."""
    from bingx_async._decode import MAX_BODY

    head, tail = b'{"code":0,"data":"', b'"}'
    fits = head + b"x" * (MAX_BODY - len(head) - len(tail)) + tail
    assert parse_body(fits) is not None
    assert parse_body(fits[:-2] + b'x"}') is None


@pytest.mark.parametrize(
    ("server_time", "valid"),
    [(1, True), (0, False), (253_402_300_799_999, True), (253_402_300_800_000, False)],
)
def test_server_time_bounds(server_time: int, valid: bool) -> None:
    """From 1 ms after the epoch to the end of year 9999."""
    from bingx_async._decode import server_time_from

    if valid:
        assert server_time_from({"serverTime": server_time}, "E") == server_time
    else:
        with pytest.raises(ResponseValidationError) as caught:
            server_time_from({"serverTime": server_time}, "E")
        assert str(caught.value) == "server time answer has an impossible serverTime (E)"
        assert (caught.value.endpoint, caught.value.may_have_executed) == ("E", False)
        assert caught.value.body == f"{{'serverTime': {server_time}}}"


def test_a_server_time_answer_without_an_integer_names_what_it_got() -> None:
    """No serverTime: a ResponseValidationError with the data it got as its body."""
    from bingx_async._decode import server_time_from

    with pytest.raises(ResponseValidationError) as caught:
        server_time_from(["x"], "E")
    assert str(caught.value) == "server time answer has no integer serverTime (E)"
    assert (caught.value.body, caught.value.endpoint) == ("['x']", "E")
    assert caught.value.may_have_executed is False


@pytest.mark.parametrize(("stamp", "wait"), [(1, 1727193814.248), (0, 4.0)], ids=["1 ms", "0"])
def test_a_body_timestamp_counts_from_one_millisecond(stamp: int, wait: float) -> None:
    """A timestamp of 0 is no timestamp: the clock estimate is used instead."""
    body = b'{"code":100410,"msg":"unblocked after 1727193814249","timestamp":%d}' % stamp
    error = answer(200, body)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == pytest.approx(wait, abs=1e-6)


def test_a_retry_after_of_64_characters_is_read_and_65_is_not() -> None:
    """Headers longer than 64 characters are ignored."""
    assert answer(429, b"x", **{"Retry-After": "1".rjust(64, "0")}).retry_after == 1.0  # type: ignore[attr-defined]
    assert answer(429, b"x", **{"Retry-After": "1".rjust(65, "0")}).retry_after is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(("length", "cut"), [(500, False), (501, True)])
def test_a_message_is_quoted_whole_up_to_500_characters(length: int, cut: bool) -> None:
    """str(error) quotes BingX's msg whole up to 500 characters, then cuts it."""
    msg = "m" * length
    error = answer(400, b'{"code":100400,"msg":"' + msg.encode() + b'"}')
    assert (f"{'m' * 500}... ({length} characters)" in str(error)) is cut
    assert (msg in str(error)) is not cut


@pytest.mark.parametrize(("length", "cut"), [(2000, False), (2001, True)])
def test_a_message_is_kept_whole_up_to_2000_characters(length: int, cut: bool) -> None:
    """error.msg keeps up to 2000 characters before the library's own 1000-character cap."""
    from bingx_async._decode import _message

    text = _message("m" * length)
    assert (text == "m" * length) is not cut
    assert text.endswith(f"... ({length} characters)") is cut


def test_a_message_that_is_not_text_is_written_out() -> None:
    """A msg that is an object is kept as its text."""
    error = answer(400, b'{"code":100400,"msg":{"why":"x"}}')
    assert error.msg == "{'why': 'x'}"


@pytest.mark.parametrize(("length", "cut"), [(120, False), (121, True)])
def test_a_page_excerpt_keeps_120_characters(length: int, cut: bool) -> None:
    """Up to 120 characters of a page are quoted; longer excerpts end with '...'."""
    assert (answer(502, b"y" * length).msg or "").endswith("...") is cut


def test_a_redirect_error_says_what_to_check() -> None:
    """The redirect's message, facts and raw body."""
    error = answer(301, b"moved", location="https://other.example/x")
    assert str(error) == (
        f"HTTP 301 ({ENDPOINT}): BingX's address redirects to other.example; redirects are "
        "never followed, since the request carries the API key and a signed query. Check "
        "base_url"
    )
    assert isinstance(error, APIError)
    assert (error.endpoint, error.raw_body, error.may_have_executed) == (ENDPOINT, "moved", False)


def test_a_ban_and_a_gateway_timeout_say_what_they_mean() -> None:
    """A ban says to stop sending; a 504 says the request may have executed."""
    assert str(answer(418, b"banned")).endswith(
        "; not retried: stop sending to this host until the ban lifts"
    )
    assert str(answer(504, b"")) == (
        f"HTTP 504 (HTTP 504, {ENDPOINT}); the request may have executed (unknown status)"
    )
    assert "may have executed" not in str(answer(500, b""))
