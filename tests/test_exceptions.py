"""Every BingX code and HTTP failure maps to the exception a user would catch, with its facts."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from bingx_async import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BingXClient,
    BingXError,
    IPBannedError,
    OrderRejectedError,
    PermissionDeniedError,
    PositionNotFoundError,
    RateLimitError,
    RequestTimeout,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    TimestampError,
    TransportError,
)
from bingx_async._decode import error_from_response, parse_unblock_time
from bingx_async.testing import FakeClock

from .conftest import API_KEY, SECRET_KEY

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
ENDPOINT = "POST /openApi/swap/v1/trade/closePosition"
NO_RETRY = RetryPolicy(attempts=1)
#: Server time in the error bodies below (ms), 4 s before the unblock times.
BODY_MS = 1727193810249

UNBLOCK_MSG = (
    "code:100410:The endpoint trigger frequency limit rule is currently in the disabled "
    "period and will be unblocked after 1727193814249"
)
ERROR_RATE_MSG = (
    "over 20 error code:100202 requests within 480000 ms for this api, please verify and fix "
    "it ,can retry after time: 1727193970155"
)
BUSY_MSG = "The current system is busy, please try again later"
BAD_GATEWAY_PAGE = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    + "<!-- padding -->\r\n" * 50
    + "</body>\r\n</html>\r\n"
)


def from_body(
    code: int | str,
    msg: str,
    *,
    status_code: int = 200,
    stamp: int | None = BODY_MS,
    headers: dict[str, str] | None = None,
) -> BingXError:
    body: dict[str, Any] = {"code": code, "msg": msg, "data": {}}
    if stamp is not None:
        body["timestamp"] = stamp
    return error_from_response(
        status_code=status_code,
        body=body,
        text=str(body),
        endpoint=ENDPOINT,
        headers=headers or {},
        server_now=None,
    )


def from_text(
    status_code: int,
    text: str,
    *,
    headers: dict[str, str] | None = None,
    server_now: float | None = None,
) -> BingXError:
    return error_from_response(
        status_code=status_code,
        body=None,
        text=text,
        endpoint=ENDPOINT,
        headers=headers or {},
        server_now=server_now,
    )


@pytest.fixture
async def strict_client(router: respx.Router, clock: FakeClock) -> Any:
    """A client that never retries, so the first error is the one raised."""
    async with BingXClient(
        api_key=API_KEY,
        secret_key=SECRET_KEY,
        clock=clock,
        retry=NO_RETRY,
        transport=httpx.MockTransport(router.async_handler),
    ) as bingx:
        yield bingx


# --- the code table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "msg", "cls"),
    [
        (80014, "timestamp is invalid", TimestampError),
        (109400, "timestamp is invalid", TimestampError),
        (
            100421,
            "Null timestamp or timestamp mismatch, try to run our sample code from the link "
            "https://bingx-api.github.io/docs/#/en-us/spot/account-api.html#Query%20Assets",
            TimestampError,
        ),
        (80014, "quantity must be greater than 0", BadRequestError),
        (
            109400,
            "CATI-USDT,symbol not exist, please verify it in api: /openApi/swap/v2/quote/contracts",
            BadRequestError,
        ),
        (100421, "This pair is currently restricted from API trading", BadRequestError),
        (100400, "miss arguments", BadRequestError),
        (
            100419,
            "IP does not match IP whitelist , please go to https://bingx.com/en/account/api/ to "
            "verify the ip you have set",
            PermissionDeniedError,
        ),
        (
            100004,
            "Permission denied as the API key was created without the permission",
            PermissionDeniedError,
        ),
        (100413, "Incorrect apiKey", AuthenticationError),
        (100412, "Null signature", AuthenticationError),
        (100001, "Signature verification failed", AuthenticationError),
        (80020, "risk forbidden", OrderRejectedError),
        (109403, "risk forbidden", OrderRejectedError),
        (100202, "Insufficient margin", OrderRejectedError),
        (101204, "Insufficient margin", OrderRejectedError),
        (101205, "No position to close", PositionNotFoundError),
        (80017, "position not exist", PositionNotFoundError),
        (109422, "position not exist", PositionNotFoundError),
        (109420, "No position exists for the specified symbol", PositionNotFoundError),
        (100500, "Internal system error", ServerError),
        (100503, "Server busy", ServerError),
        (80012, "service unavailable", ServerError),
        (109500, "system busy", ServerError),
        (101500, "rpc timeout", ServerError),
        (100410, "rate limited", RateLimitError),
        (100409, "rate limited", RateLimitError),
        (109429, "rate limited", RateLimitError),
        (99999, "something new", APIError),
    ],
)
def test_body_code_maps_to_exception_class(code: int, msg: str, cls: type[APIError]) -> None:
    """Each documented BingX code raises exactly its class, carrying code, msg and endpoint."""
    error = from_body(code, msg)
    assert type(error) is cls
    assert isinstance(error, APIError)
    assert error.code == code
    assert error.msg == msg
    assert error.status_code == 200
    assert error.endpoint == ENDPOINT
    assert error.body is not None
    assert error.body["code"] == code
    assert f"BingX error {code}" in str(error)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (100413, False),
        (100419, False),
        (80014, False),
        (101205, False),
        (80020, False),
        (100410, False),
        (100500, True),
        (80012, True),
        (109500, True),
    ],
)
def test_may_have_executed_per_code(code: int, expected: bool) -> None:
    """Only internal errors leave the outcome unknown; rejections provably did nothing."""
    assert from_body(code, "x").may_have_executed is expected


def test_body_code_wins_over_http_status() -> None:
    """A JSON code on a 4xx/5xx answer decides the class, not the status."""
    error = from_body(101205, "No position to close", status_code=500)
    assert type(error) is PositionNotFoundError
    assert error.status_code == 500


def test_string_body_code_is_understood() -> None:
    """A code sent as a string maps like the number."""
    error = from_body("100413", "Incorrect apiKey")
    assert type(error) is AuthenticationError
    assert error.code == 100413


def test_timestamp_match_ignores_case() -> None:
    """ "Timestamp" capitalised still means a clock problem."""
    assert type(from_body(109400, "Invalid Timestamp")) is TimestampError


# --- rate limits ------------------------------------------------------------------------


def test_rate_limit_unblock_after_shape() -> None:
    """Shape 1: 'will be unblocked after <ms>' gives unblock_at and retry_after from the body."""
    error = from_body(100410, UNBLOCK_MSG)
    assert type(error) is RateLimitError
    assert isinstance(error, RateLimitError)
    assert error.unblock_at == pytest.approx(1727193814.249)
    assert error.retry_after == pytest.approx(4.0)
    assert error.banned_code is None
    assert error.may_have_executed is False


def test_rate_limit_plain_shape() -> None:
    """Shape 2: 'rate limited' names no time."""
    error = from_body(100410, "rate limited")
    assert type(error) is RateLimitError
    assert isinstance(error, RateLimitError)
    assert error.unblock_at is None
    assert error.retry_after is None
    assert error.banned_code is None


def test_rate_limit_error_rate_ban_shape() -> None:
    """Shape 3: the error-rate ban names the banned code and the retry time."""
    error = from_body(100410, ERROR_RATE_MSG)
    assert type(error) is RateLimitError
    assert isinstance(error, RateLimitError)
    assert error.banned_code == 100202
    assert error.unblock_at == pytest.approx(1727193970.155)
    assert error.retry_after == pytest.approx(1727193970.155 - BODY_MS / 1000)


def test_rate_limit_system_busy_shape() -> None:
    """Shape 4: 'system busy' under 100410 is a rate limit with no time."""
    error = from_body(100410, BUSY_MSG)
    assert type(error) is RateLimitError
    assert isinstance(error, RateLimitError)
    assert (error.unblock_at, error.retry_after, error.banned_code) == (None, None, None)


def test_rate_limit_unblock_in_seconds() -> None:
    """A 10-digit unblock time is read as epoch seconds."""
    error = from_body(100410, "will be unblocked after 1727193814", stamp=1727193810000)
    assert isinstance(error, RateLimitError)
    assert error.unblock_at == 1727193814.0
    assert error.retry_after == pytest.approx(4.0)


def test_rate_limit_unblock_in_the_past_waits_zero() -> None:
    """An unblock time already passed gives retry_after 0, never negative."""
    error = from_body(100410, UNBLOCK_MSG, stamp=1727193820000)
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 0.0


def test_rate_limit_without_body_timestamp_uses_server_now() -> None:
    """With no timestamp in the body, retry_after counts from the estimated server time."""
    error = error_from_response(
        status_code=200,
        body={"code": 100410, "msg": UNBLOCK_MSG},
        text="",
        endpoint=ENDPOINT,
        headers={},
        server_now=1727193812.249,
    )
    assert isinstance(error, RateLimitError)
    assert error.retry_after == pytest.approx(2.0)


@pytest.mark.parametrize("code", [109429, 100409])
@pytest.mark.parametrize(
    ("msg", "unblock_at", "banned_code"),
    [
        (UNBLOCK_MSG, 1727193814.249, None),
        ("rate limited", None, None),
        (ERROR_RATE_MSG, 1727193970.155, 100202),
        (BUSY_MSG, None, None),
    ],
)
def test_other_rate_limit_codes_parse_alike(
    code: int, msg: str, unblock_at: float | None, banned_code: int | None
) -> None:
    """109429 and 100409 carry the same message shapes as 100410."""
    error = from_body(code, msg)
    assert type(error) is RateLimitError
    assert isinstance(error, RateLimitError)
    assert error.code == code
    assert error.banned_code == banned_code
    if unblock_at is None:
        assert error.unblock_at is None
        assert error.retry_after is None
    else:
        assert error.unblock_at == pytest.approx(unblock_at)
        assert error.retry_after == pytest.approx(unblock_at - BODY_MS / 1000)


@pytest.mark.parametrize(
    ("msg", "expected"),
    [
        (UNBLOCK_MSG, 1727193814.249),
        (ERROR_RATE_MSG, 1727193970.155),
        ("unblocked after 1727193814", 1727193814.0),
        ("unblocked after 172719381424", None),
        ("rate limited", None),
    ],
)
def test_parse_unblock_time(msg: str, expected: float | None) -> None:
    """13 digits are ms, 10 digits seconds; any other length is not a time."""
    assert parse_unblock_time(msg) == expected


def test_http_429_without_body_is_rate_limit() -> None:
    """HTTP 429 with no JSON is a RateLimitError with no code and no time."""
    error = from_text(429, "Too Many Requests")
    assert type(error) is RateLimitError
    assert isinstance(error, RateLimitError)
    assert error.code is None
    assert error.status_code == 429
    assert error.retry_after is None
    assert error.may_have_executed is False


def test_http_429_retry_after_seconds() -> None:
    """Retry-After: 7 gives retry_after 7 s."""
    error = from_text(429, "", headers={"retry-after": "7"})
    assert type(error) is RateLimitError
    assert isinstance(error, RateLimitError)
    assert error.retry_after == 7.0


def test_http_429_retry_after_http_date() -> None:
    """Retry-After as an HTTP date counts from the server time."""
    error = from_text(
        429, "", headers={"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, server_now=1445412480.0
    )
    assert isinstance(error, RateLimitError)
    assert error.retry_after == pytest.approx(10.0)


@pytest.mark.parametrize("status_code", [418, 403])
def test_ip_ban_statuses(status_code: int) -> None:
    """418 and 403 are IPBannedError, and the message says they are not retried."""
    error = from_text(status_code, "<html><title>Forbidden</title></html>")
    assert type(error) is IPBannedError
    assert error.status_code == status_code
    assert "not retried" in str(error)
    assert error.may_have_executed is False


@pytest.mark.parametrize("status_code", [418, 403])
def test_rate_limit_code_on_ban_status_is_ip_ban(status_code: int) -> None:
    """A 100410 body on HTTP 418/403 is still an IPBannedError, never retried."""
    error = from_body(100410, "rate limited", status_code=status_code)
    assert type(error) is IPBannedError
    assert error.code == 100410
    assert "not retried" in str(error)


# --- server and proxy failures -----------------------------------------------------------


@pytest.mark.parametrize("status_code", [500, 502])
def test_html_proxy_page_is_server_error(status_code: int) -> None:
    """A proxy's HTML page gives ServerError with its title as a short msg."""
    error = from_text(status_code, BAD_GATEWAY_PAGE)
    assert type(error) is ServerError
    assert error.msg == "non-JSON body: 502 Bad Gateway"
    assert error.code is None
    assert error.status_code == status_code
    assert error.may_have_executed is True
    assert len(str(error)) < 200
    assert "<" not in str(error)


def test_gateway_timeout_says_unknown_status() -> None:
    """504 is ServerError whose message warns the request may have executed."""
    error = from_text(504, "<html><title>504 Gateway Time-out</title></html>")
    assert type(error) is ServerError
    assert error.may_have_executed is True
    assert "unknown status" in str(error)


def test_unmapped_4xx_is_plain_api_error() -> None:
    """A 404 without JSON is an APIError that did not execute."""
    error = from_text(404, "Not Found")
    assert type(error) is APIError
    assert error.may_have_executed is False


def test_http_401_is_authentication_error() -> None:
    """401 without a body code is AuthenticationError."""
    assert type(from_text(401, "Unauthorized")) is AuthenticationError


def test_html_with_200_is_response_validation_error() -> None:
    """A 200 answer that is not BingX's envelope is ResponseValidationError, body kept."""
    error = from_text(200, "<html><body>Maintenance</body></html>")
    assert type(error) is ResponseValidationError
    assert isinstance(error, ResponseValidationError)
    assert error.body == "<html><body>Maintenance</body></html>"
    assert error.status_code == 200
    assert error.may_have_executed is True


def test_response_validation_error_body_redacts_signature() -> None:
    """A page echoing the signed URL keeps no signature in .body."""
    error = from_text(200, "<p>GET /x?a=1&signature=0123abcd&b=2</p>")
    assert isinstance(error, ResponseValidationError)
    assert "0123abcd" not in error.body
    assert error.body == "<p>GET /x?a=1&signature=<redacted>&b=2</p>"


# --- through the client -----------------------------------------------------------------


async def test_client_raises_position_not_found(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """101205 from closePosition raises PositionNotFoundError after one request."""
    route = router.post(CLOSE_PATH).respond(
        json={"code": 101205, "msg": "No position to close", "timestamp": BODY_MS, "data": {}}
    )
    with pytest.raises(PositionNotFoundError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is PositionNotFoundError
    assert caught.value.code == 101205
    assert caught.value.endpoint == ENDPOINT
    assert caught.value.may_have_executed is False
    assert route.call_count == 1


async def test_client_raises_rate_limit_with_retry_after(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """A 100410 with an unblock time raises RateLimitError with retry_after from the body."""
    router.post(CLOSE_PATH).respond(
        json={"code": 100410, "msg": UNBLOCK_MSG, "timestamp": BODY_MS, "data": {}}
    )
    with pytest.raises(RateLimitError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is RateLimitError
    assert caught.value.unblock_at == pytest.approx(1727193814.249)
    assert caught.value.retry_after == pytest.approx(4.0)
    assert caught.value.attempts == 1


async def test_client_raises_rate_limit_on_http_429(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """A bare HTTP 429 with Retry-After raises RateLimitError with that wait."""
    router.post(CLOSE_PATH).respond(429, text="slow down", headers={"Retry-After": "3"})
    with pytest.raises(RateLimitError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is RateLimitError
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 3.0


async def test_client_raises_ip_banned_once(router: respx.Router, clock: FakeClock) -> None:
    """HTTP 418 raises IPBannedError without a retry, even with retries enabled."""
    route = router.post(CLOSE_PATH).respond(418, text="I'm a teapot")
    async with BingXClient(
        api_key=API_KEY,
        secret_key=SECRET_KEY,
        clock=clock,
        transport=httpx.MockTransport(router.async_handler),
    ) as client:
        with pytest.raises(IPBannedError) as caught:
            await client.close_position(5)
    assert type(caught.value) is IPBannedError
    assert route.call_count == 1
    assert clock.sleeps == []


async def test_client_raises_server_error_on_bad_gateway(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """A 502 HTML page raises ServerError, outcome unknown."""
    router.post(CLOSE_PATH).respond(502, text=BAD_GATEWAY_PAGE)
    with pytest.raises(ServerError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is ServerError
    assert caught.value.msg == "non-JSON body: 502 Bad Gateway"
    assert caught.value.may_have_executed is True


async def test_client_raises_server_error_on_gateway_timeout(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """A 504 raises ServerError mentioning the unknown status."""
    router.post(CLOSE_PATH).respond(504, text="")
    with pytest.raises(ServerError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is ServerError
    assert caught.value.status_code == 504
    assert "unknown status" in str(caught.value)
    assert caught.value.may_have_executed is True


async def test_client_raises_validation_error_on_html_200(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """A 200 HTML page raises ResponseValidationError holding the text."""
    router.post(CLOSE_PATH).respond(200, text="<html>maintenance</html>")
    with pytest.raises(ResponseValidationError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is ResponseValidationError
    assert caught.value.body == "<html>maintenance</html>"


async def test_client_raises_timestamp_error(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """80014 'timestamp is invalid' raises TimestampError."""
    router.post(CLOSE_PATH).respond(
        json={"code": 80014, "msg": "timestamp is invalid", "timestamp": BODY_MS, "data": {}}
    )
    with pytest.raises(TimestampError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is TimestampError
    assert caught.value.code == 80014


async def test_connect_error_is_transport_error(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """httpx.ConnectError becomes TransportError that provably did not execute."""
    router.post(CLOSE_PATH).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(TransportError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is TransportError
    assert caught.value.may_have_executed is False
    assert caught.value.endpoint == ENDPOINT


async def test_read_timeout_is_request_timeout_maybe_executed(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """httpx.ReadTimeout becomes RequestTimeout whose outcome is unknown."""
    router.post(CLOSE_PATH).mock(side_effect=httpx.ReadTimeout("read timed out"))
    with pytest.raises(RequestTimeout) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is RequestTimeout
    assert caught.value.may_have_executed is True


async def test_connect_timeout_is_request_timeout_not_executed(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """httpx.ConnectTimeout becomes RequestTimeout that provably did not execute."""
    router.post(CLOSE_PATH).mock(side_effect=httpx.ConnectTimeout("connect timed out"))
    with pytest.raises(RequestTimeout) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is RequestTimeout
    assert caught.value.may_have_executed is False


async def test_remote_protocol_error_is_transport_error_maybe_executed(
    strict_client: BingXClient, router: respx.Router
) -> None:
    """A dropped connection mid-answer becomes TransportError whose outcome is unknown."""
    router.post(CLOSE_PATH).mock(
        side_effect=httpx.RemoteProtocolError("Server disconnected without sending a response.")
    )
    with pytest.raises(TransportError) as caught:
        await strict_client.close_position(5)
    assert type(caught.value) is TransportError
    assert caught.value.may_have_executed is True


@pytest.mark.parametrize(
    "httpx_error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("read timed out"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=type,
)
async def test_transport_error_cause_is_the_httpx_error(
    strict_client: BingXClient, router: respx.Router, httpx_error: httpx.HTTPError
) -> None:
    """The TransportError raised to the caller has the httpx error as __cause__."""
    router.post(CLOSE_PATH).mock(side_effect=httpx_error)
    with pytest.raises(TransportError) as caught:
        await strict_client.close_position(5)
    assert caught.value.__cause__ is httpx_error


# --- the exception objects themselves ----------------------------------------------------


def test_error_repr_names_class_code_and_status() -> None:
    """repr shows the class, code, status and endpoint."""
    text = repr(from_body(101205, "No position to close"))
    assert text.startswith("PositionNotFoundError(")
    assert "code=101205" in text
    assert "status_code=200" in text
    assert ENDPOINT in text


def test_error_message_redacts_signature() -> None:
    """A signature in a message or msg is replaced before it is stored."""
    error = from_body(100001, "Signature verification failed: signature=abcdef0123&x=1")
    assert "abcdef0123" not in str(error)
    assert "abcdef0123" not in repr(error)
    assert error.msg == "Signature verification failed: signature=<redacted>&x=1"


def test_errors_are_catchable_as_bingx_error() -> None:
    """Every mapped error is a BingXError, so one except clause catches them all."""
    for error in (from_body(100410, "rate limited"), from_text(502, ""), from_text(200, "x")):
        assert isinstance(error, BingXError)
