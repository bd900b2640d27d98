"""Bad input fails with a clear error naming what is wrong, before anything is sent."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx

from bingx_async import (
    BingXClient,
    BingXError,
    ConfigurationError,
    InvalidArgumentError,
    RetryPolicy,
)
from bingx_async.testing import FakeClock

from .conftest import API_KEY, BASE_URL, SECRET_KEY, case_id


def keyless_client(router: respx.Router, clock: FakeClock) -> BingXClient:
    return BingXClient(clock=clock, transport=httpx.MockTransport(router.async_handler))


def make_client(**kwargs: Any) -> BingXClient:
    return BingXClient(**kwargs)


# --- position ids ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "position_id",
    ["12a", "-5", "1.5", " 123", "123 ", "١٢٣", "1e5", "0x1F", "\uff11\uff12\uff13", -5],
    ids=case_id,
)
async def test_position_id_with_non_digits_is_rejected(
    client: BingXClient, router: respx.Router, position_id: object
) -> None:
    """An ID with anything but ASCII digits is rejected, quoting the ID, and nothing is sent."""
    with pytest.raises(InvalidArgumentError, match="position_id") as caught:
        await client.close_position(position_id)  # type: ignore[arg-type]
    assert type(caught.value) is InvalidArgumentError
    assert repr(position_id) in str(caught.value)
    assert router.calls.call_count == 0


@pytest.mark.parametrize("position_id", ["", "   ", "\t\n"], ids=case_id)
async def test_empty_position_id_is_rejected(
    client: BingXClient, router: respx.Router, position_id: str
) -> None:
    """An empty or blank ID is rejected as empty, and nothing is sent."""
    with pytest.raises(InvalidArgumentError, match="position_id is empty"):
        await client.close_position(position_id)
    assert router.calls.call_count == 0


@pytest.mark.parametrize("position_id", [0, "0", "000"], ids=case_id)
async def test_zero_position_id_is_rejected(
    client: BingXClient, router: respx.Router, position_id: object
) -> None:
    """Zero is not a position ID."""
    with pytest.raises(InvalidArgumentError, match="positive"):
        await client.close_position(position_id)  # type: ignore[arg-type]
    assert router.calls.call_count == 0


@pytest.mark.parametrize(
    ("position_id", "type_name"),
    [
        (True, "bool"),
        (False, "bool"),
        (None, "NoneType"),
        (1.5, "float"),
        (123.0, "float"),
        (b"123", "bytes"),
        (Decimal("123"), "Decimal"),
        ([123], "list"),
    ],
    ids=case_id,
)
async def test_position_id_of_wrong_type_is_rejected(
    client: BingXClient, router: respx.Router, position_id: object, type_name: str
) -> None:
    """Only str and int are accepted; the error names the type given."""
    with pytest.raises(InvalidArgumentError, match="position_id must be a str or int") as caught:
        await client.close_position(position_id)  # type: ignore[arg-type]
    assert type_name in str(caught.value)
    assert router.calls.call_count == 0


async def test_overlong_position_id_is_rejected(client: BingXClient, router: respx.Router) -> None:
    """An ID of more than 32 digits is rejected."""
    with pytest.raises(InvalidArgumentError, match="too long"):
        await client.close_position("1" * 33)
    assert router.calls.call_count == 0


@pytest.mark.parametrize("position_id", ["9223372036854775808", "1" * 25, 2**64])
async def test_a_position_id_beyond_64_bits_is_rejected_before_anything_is_sent(
    client: BingXClient, router: respx.Router, position_id: object
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await client.close_position(position_id)  # type: ignore[arg-type]
    assert str(caught.value) == (
        f"position_id {position_id} is larger than any BingX position ID (at most 2^63-1)"
    )
    assert router.calls.call_count == 0


async def test_the_largest_64_bit_position_id_is_sent(
    client: BingXClient, router: respx.Router
) -> None:
    closes = router.post("/openApi/swap/v1/trade/closePosition").respond(
        json={"code": 101205, "msg": "no position to close"}
    )
    with pytest.raises(BingXError):
        await client.close_position(2**63 - 1, retry=RetryPolicy(attempts=1))
    assert closes.calls.last.request.url.params["positionId"] == "9223372036854775807"


async def test_invalid_position_id_is_a_value_error(
    client: BingXClient, router: respx.Router
) -> None:
    """InvalidArgumentError can be caught as ValueError."""
    with pytest.raises(ValueError, match="position_id"):
        await client.close_position("abc")
    assert router.calls.call_count == 0


async def test_bad_id_in_close_positions_fails_alone(
    client: BingXClient, router: respx.Router
) -> None:
    """close_positions reports a bad ID as its outcome without sending it."""
    [outcome] = await client.close_positions(["12a"])
    assert type(outcome) is InvalidArgumentError
    assert router.calls.call_count == 0


# --- credentials -------------------------------------------------------------------------


async def test_missing_credentials_name_env_vars(router: respx.Router, clock: FakeClock) -> None:
    """A signed call without keys names BINGX_API_KEY and BINGX_SECRET_KEY; nothing is sent."""
    async with keyless_client(router, clock) as client:
        with pytest.raises(ConfigurationError) as caught:
            await client.close_position(5)
    assert type(caught.value) is ConfigurationError
    assert "BINGX_API_KEY" in str(caught.value)
    assert "BINGX_SECRET_KEY" in str(caught.value)
    assert router.calls.call_count == 0


async def test_missing_credentials_for_get_positions(
    router: respx.Router, clock: FakeClock
) -> None:
    """get_positions without keys fails the same way, nothing sent."""
    async with keyless_client(router, clock) as client:
        with pytest.raises(ConfigurationError, match="BINGX_API_KEY"):
            await client.get_positions()
    assert router.calls.call_count == 0


def test_only_api_key_names_missing_secret() -> None:
    """An API key without a secret names secret_key and BINGX_SECRET_KEY."""
    with pytest.raises(ConfigurationError, match=r"secret_key.*BINGX_SECRET_KEY"):
        make_client(api_key=API_KEY)


def test_only_secret_key_names_missing_api_key() -> None:
    """A secret without an API key names api_key and BINGX_API_KEY."""
    with pytest.raises(ConfigurationError, match=r"api_key.*BINGX_API_KEY"):
        make_client(secret_key=SECRET_KEY)


def test_only_one_env_var_names_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """BINGX_API_KEY set without BINGX_SECRET_KEY is a configuration error."""
    monkeypatch.setenv("BINGX_API_KEY", API_KEY)
    with pytest.raises(ConfigurationError, match="BINGX_SECRET_KEY"):
        make_client()


@pytest.mark.parametrize("bad", ["", "   ", " key", "key\n"], ids=case_id)
def test_blank_or_padded_api_key_is_rejected(bad: str) -> None:
    """An empty, blank or whitespace-padded key is rejected, naming api_key."""
    with pytest.raises(ConfigurationError, match="api_key"):
        make_client(api_key=bad, secret_key=SECRET_KEY)


def test_configuration_error_is_a_value_error() -> None:
    """ConfigurationError can be caught as ValueError."""
    with pytest.raises(ValueError, match="secret_key"):
        make_client(api_key=API_KEY)


# --- client options ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    ["open-api.bingx.com", "ftp://x", "https://", "https://open-api.bingx.com?x=1", "//host"],
)
def test_bad_base_url_is_rejected(base_url: str) -> None:
    """A base URL that is not an absolute http(s) URL without query is rejected, quoted."""
    with pytest.raises(ConfigurationError, match="base_url") as caught:
        make_client(api_key=API_KEY, secret_key=SECRET_KEY, base_url=base_url)
    assert repr(base_url) in str(caught.value)


def test_bad_base_url_from_env_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """BINGX_BASE_URL is validated like the argument."""
    monkeypatch.setenv("BINGX_BASE_URL", "open-api.bingx.com")
    with pytest.raises(ConfigurationError, match="base_url"):
        make_client(api_key=API_KEY, secret_key=SECRET_KEY)


@pytest.mark.parametrize("recv_window", [0, -1, math.nan, math.inf, 0.0001, True], ids=case_id)
def test_bad_recv_window_is_rejected(recv_window: float) -> None:
    """recv_window must be finite seconds of at least a millisecond."""
    with pytest.raises(ConfigurationError, match="recv_window"):
        make_client(api_key=API_KEY, secret_key=SECRET_KEY, recv_window=recv_window)


@pytest.mark.parametrize("timeout", [0, -1.0, math.nan, True], ids=case_id)
def test_bad_timeout_is_rejected(timeout: float) -> None:
    """timeout must be seconds > 0 (or an httpx.Timeout)."""
    with pytest.raises(ConfigurationError, match="timeout"):
        make_client(api_key=API_KEY, secret_key=SECRET_KEY, timeout=timeout)


@pytest.mark.parametrize("attempts", [0, -1], ids=case_id)
def test_retry_policy_needs_an_attempt(attempts: int) -> None:
    """RetryPolicy(attempts=0) is rejected, naming attempts."""
    with pytest.raises(ConfigurationError, match="attempts"):
        RetryPolicy(attempts=attempts)


@pytest.mark.parametrize("attempts", [1.5, True, "3"], ids=case_id)
def test_retry_policy_attempts_must_be_int(attempts: object) -> None:
    """RetryPolicy.attempts must be an int."""
    with pytest.raises(ConfigurationError, match="attempts"):
        RetryPolicy(attempts=attempts)  # type: ignore[arg-type]


@pytest.mark.parametrize("base", [0.5, math.nan, math.inf, True], ids=case_id)
def test_retry_policy_bad_exp_base_is_rejected(base: float) -> None:
    """wait_exp_base must be a finite number >= 1 (nan would make every back-off wait_max)."""
    with pytest.raises(ConfigurationError, match="wait_exp_base"):
        RetryPolicy(wait_exp_base=base)


def test_retry_policy_zero_timeout_is_rejected() -> None:
    """RetryPolicy(total_timeout=0) is rejected (None means no limit)."""
    with pytest.raises(ConfigurationError, match="timeout"):
        RetryPolicy(total_timeout=0)


def test_retry_must_be_a_retry_policy() -> None:
    """Passing something other than a RetryPolicy as retry= is rejected."""
    with pytest.raises(ConfigurationError, match="RetryPolicy"):
        make_client(api_key=API_KEY, secret_key=SECRET_KEY, retry=3)


def test_http_client_and_transport_are_exclusive() -> None:
    """Passing both http_client and transport is rejected."""
    with pytest.raises(ConfigurationError, match="http_client"):
        make_client(
            api_key=API_KEY,
            secret_key=SECRET_KEY,
            http_client=httpx.AsyncClient(),
            transport=httpx.MockTransport(lambda request: httpx.Response(200)),
        )


# --- generic requests --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PATCH", "", "GET ", "HEAD"], ids=case_id)
async def test_request_rejects_bad_method(
    client: BingXClient, router: respx.Router, method: str
) -> None:
    """Only GET, POST, PUT and DELETE are accepted; nothing is sent."""
    with pytest.raises(InvalidArgumentError, match="method"):
        await client.request(method, "/openApi/x")
    assert router.calls.call_count == 0


@pytest.mark.parametrize(
    "path", ["openApi/x", "", "/openApi/x?a=1", "/openApi/x#frag", "https://evil.example/x"]
)
async def test_request_rejects_bad_path(
    client: BingXClient, router: respx.Router, path: str
) -> None:
    """The path must start with '/' and carry no query or fragment; nothing is sent."""
    with pytest.raises(InvalidArgumentError, match="path"):
        await client.request("GET", path)
    assert router.calls.call_count == 0


@pytest.mark.parametrize("name", ["timestamp", "signature", "recvWindow"])
async def test_request_rejects_reserved_param(
    client: BingXClient, router: respx.Router, name: str
) -> None:
    """Parameters the client sets itself cannot be passed; the error names them."""
    with pytest.raises(InvalidArgumentError, match=name):
        await client.request("POST", "/openApi/x", {name: "1"})
    assert router.calls.call_count == 0


@pytest.mark.parametrize("name", ["", "a b", "a&b", "a=b", "1abc", "é"], ids=case_id)
async def test_request_rejects_bad_param_name(
    client: BingXClient, router: respx.Router, name: str
) -> None:
    """A parameter name that could corrupt the query is rejected."""
    with pytest.raises(InvalidArgumentError, match="parameter name"):
        await client.request("POST", "/openApi/x", {name: "1"})
    assert router.calls.call_count == 0


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, Decimal("NaN"), Decimal("-Infinity"), object(), b"x"],
    ids=["nan", "inf", "Decimal NaN", "Decimal -Infinity", "object", "bytes"],
)
async def test_request_rejects_bad_param_value(
    client: BingXClient, router: respx.Router, value: object
) -> None:
    """Non-finite numbers and unsupported types are rejected, naming the parameter."""
    with pytest.raises(InvalidArgumentError, match="quantity"):
        await client.request("POST", "/openApi/x", {"quantity": value})  # type: ignore[dict-item]
    assert router.calls.call_count == 0


async def test_request_rejects_non_mapping_params(
    client: BingXClient, router: respx.Router
) -> None:
    """params must be a mapping."""
    with pytest.raises(InvalidArgumentError, match="mapping"):
        await client.request("GET", "/openApi/x", [("a", "1")])  # type: ignore[arg-type]
    assert router.calls.call_count == 0


@pytest.mark.parametrize("symbol", ["btc usdt", "BTCUSDT", "BTC-USDT ", "", "BTC/USDT", 5])
async def test_get_positions_rejects_bad_symbol(
    client: BingXClient, router: respx.Router, symbol: object
) -> None:
    """A symbol not shaped like 'BTC-USDT' is rejected, quoted, before sending."""
    with pytest.raises(InvalidArgumentError, match="symbol") as caught:
        await client.get_positions(symbol)  # type: ignore[arg-type]
    assert repr(symbol) in str(caught.value)
    assert router.calls.call_count == 0


async def test_integer_like_position_ids_are_accepted(
    client: BingXClient, router: respx.Router
) -> None:
    """Any integer type (e.g. numpy.int64 from a DataFrame) is sent as its digits."""

    class Int64:
        def __init__(self, value: int) -> None:
            self.value = value

        def __index__(self) -> int:
            return self.value

    route = router.post("/openApi/swap/v1/trade/closePosition").respond(
        json={"code": 0, "msg": "", "data": {"positionId": "1769649551460794368"}}
    )
    await client.close_position(Int64(1769649551460794368))  # type: ignore[arg-type]
    assert route.calls.last.request.url.params["positionId"] == "1769649551460794368"


# --- base URLs, checked where every setting is ------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    ["https://open-api.bingx.com:70000", "https://open-api.bingx.com:0", "http://h:-1"],
    ids=case_id,
)
def test_a_port_out_of_range_is_rejected(base_url: str) -> None:
    """Ports must be 1-65535: refused when the client is made, not as an ExceptionGroup later."""
    with pytest.raises(ConfigurationError, match="invalid port"):
        BingXClient(base_url=base_url)


@pytest.mark.parametrize(
    "base_url", ["https://user:hunter2@open-api.bingx.com", "https://user@open-api.bingx.com"]
)
def test_credentials_in_the_base_url_are_rejected_without_showing_them(base_url: str) -> None:
    """user:password@ is refused, and the error never repeats it."""
    with pytest.raises(ConfigurationError, match="must not carry credentials") as caught:
        BingXClient(base_url=base_url)
    assert "hunter2" not in str(caught.value)
    assert "user" not in str(caught.value).split("(")[0]


def test_plain_http_to_another_host_is_refused_unless_allowed() -> None:
    """http:// beyond this machine needs allow_insecure_http=True."""
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        BingXClient(base_url="http://open-api.bingx.com")
    allowed = BingXClient(base_url="http://open-api.bingx.com", allow_insecure_http=True)
    assert allowed.base_url == "http://open-api.bingx.com"


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9", "http://a.localhost"],
)
def test_plain_http_to_this_machine_is_allowed(base_url: str) -> None:
    """Local simulators and proxies need no opt-in."""
    assert BingXClient(base_url=base_url).base_url == base_url


async def test_an_overlong_request_is_refused_before_it_takes_a_slot(
    client: BingXClient, router: respx.Router
) -> None:
    """A 10,000-character parameter: InvalidArgumentError, nothing sent, no slot used."""
    with pytest.raises(InvalidArgumentError, match="characters long"):
        await client.request("POST", "/openApi/swap/v2/trade/order", {"note": "x" * 10_000})
    assert not router.routes["server_time"].called
    assert all(usage.in_window == 0 for usage in client.rate_limit_usage())


async def test_leading_zeros_name_the_same_position(
    client: BingXClient, router: respx.Router
) -> None:
    """ "0008" and 8 are one close: one request, for positionId=8."""
    route = router.post("/openApi/swap/v1/trade/closePosition").respond(
        json={"code": 0, "msg": "", "data": {"positionId": "8", "orderId": 1}}
    )
    first, second = await asyncio.gather(client.close_position("0008"), client.close_position(8))
    assert first is second
    assert route.call_count == 1
    assert route.calls[0].request.url.params["positionId"] == "8"


def test_back_off_never_overflows() -> None:
    """Retry 100,000 of a doubling back-off is wait_max, not an OverflowError."""
    policy = RetryPolicy(attempts=100_000, total_timeout=None, wait_jitter=0)
    assert [policy._backoff(n, 0.0) for n in (1, 1025, 100_000)] == [0.5, 8.0, 8.0]
    assert RetryPolicy(wait_initial=0, wait_exp_base=10)._backoff(5000, 0.0) == 0.0


async def test_a_request_at_the_length_limit_is_sent_and_one_character_more_is_not(
    client: BingXClient, router: respx.Router
) -> None:
    """The limit counts the base URL, the path, the query and 128 characters of signing."""
    from bingx_async._connection import MAX_URL_LENGTH

    path = "/openApi/swap/v2/trade/x"
    router.post(path).respond(json={"code": 0, "data": {}})
    room = MAX_URL_LENGTH - len(BASE_URL) - len(path) - 128 - len("note=")
    await client.request("POST", path, {"note": "x" * room})
    with pytest.raises(InvalidArgumentError):
        await client.request("POST", path, {"note": "x" * (room + 1)})
