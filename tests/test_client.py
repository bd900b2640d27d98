"""BingXClient end to end on a mocked BingX: the wire, the results, the lifecycle, secrecy."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import unquote

import httpx
import pytest
import respx

from bingx_async import (
    DEMO_BASE_URL,
    PRODUCTION_BASE_URL,
    BingXClient,
    ClosePositionResult,
    InvalidArgumentError,
    Position,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    TransportError,
)
from bingx_async._config import Credentials
from bingx_async.testing import FakeClock

from .conftest import API_KEY, BASE_URL, SECRET_KEY, SERVER_MS

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
POSITIONS_PATH = "/openApi/swap/v2/user/positions"
NO_RETRY = RetryPolicy(attempts=1)

#: BingX's documented answer, verbatim: orderId is a bare JSON number above 2**53.
CLOSE_ANSWER = (
    '{"code":0,"msg":"","timestamp":1710992264190,'
    '"data":{"orderId":1770656007907930112,"positionId":"1751667128353910784",'
    '"symbol":"LTC-USDT","side":"Ask","type":"MARKET","positionSide":"Long","origQty":"0.2"}}'
)

POSITIONS_ANSWER = (
    '{"code":0,"msg":"","data":[{"positionId":"1751667128353910784","symbol":"BTC-USDT",'
    '"currency":"USDT","positionAmt":"0.0010","availableAmt":"0.0010","positionSide":"LONG",'
    '"isolated":true,"avgPrice":"43210.5","initialMargin":"8.6421","leverage":5,'
    '"unrealizedProfit":"-0.0123","realisedProfit":"0.0000",'
    '"liquidationPrice":34567.123456789012345678,"markPrice":"43198.2",'
    '"updateTime":1710992264190}]}'
)


def json_answer(text: str) -> httpx.Response:
    return httpx.Response(200, text=text, headers={"Content-Type": "application/json"})


def wire_pairs(request: httpx.Request) -> list[tuple[str, str]]:
    """The query as sent, percent-decoded pair by pair, in order."""
    pairs = []
    for part in request.url.query.decode("ascii").split("&"):
        key, _, value = part.partition("=")
        pairs.append((unquote(key), unquote(value)))
    return pairs


def expected_signature(pairs: list[tuple[str, str]]) -> str:
    payload = "&".join(f"{key}={value}" for key, value in pairs)
    return hmac.new(SECRET_KEY.encode(), payload.encode(), hashlib.sha256).hexdigest()


def closed(request: httpx.Request) -> httpx.Response:
    """A success answer naming the requested position."""
    position_id = request.url.params["positionId"]
    return httpx.Response(
        200,
        json={
            "code": 0,
            "msg": "",
            "timestamp": 1,
            "data": {"orderId": 10**18 + int(position_id), "positionId": position_id},
        },
    )


def make_client(router: respx.Router, clock: FakeClock, **kwargs: object) -> BingXClient:
    return BingXClient(
        api_key=API_KEY,
        secret_key=SECRET_KEY,
        clock=clock,
        transport=httpx.MockTransport(router.async_handler),
        **kwargs,  # type: ignore[arg-type]
    )


# --- closePosition on the wire ----------------------------------------------------------


async def test_close_position_sends_post_to_close_path(
    client: BingXClient, router: respx.Router
) -> None:
    """close_position sends exactly one POST to /openApi/swap/v1/trade/closePosition."""
    route = router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    await client.close_position("1751667128353910784")
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.scheme == "https"
    assert request.url.host == "open-api.bingx.com"
    assert request.url.path == CLOSE_PATH


async def test_close_position_sends_api_key_header(
    client: BingXClient, router: respx.Router
) -> None:
    """The API key travels in X-BX-APIKEY."""
    route = router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    await client.close_position("1751667128353910784")
    assert route.calls.last.request.headers["X-BX-APIKEY"] == API_KEY


async def test_close_position_params_in_exact_order(
    client: BingXClient, router: respx.Router
) -> None:
    """The query is positionId, recvWindow, timestamp, then signature last."""
    route = router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    await client.close_position("1751667128353910784")
    pairs = wire_pairs(route.calls.last.request)
    assert [key for key, _ in pairs] == ["positionId", "recvWindow", "timestamp", "signature"]
    assert pairs[0] == ("positionId", "1751667128353910784")
    assert pairs[1] == ("recvWindow", "5000")


async def test_close_position_signature_matches_independent_hmac(
    client: BingXClient, router: respx.Router
) -> None:
    """The signature is HMAC-SHA256 of the raw query before it, under the secret key."""
    route = router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    await client.close_position(1751667128353910784)
    pairs = wire_pairs(route.calls.last.request)
    assert pairs[-1] == ("signature", expected_signature(pairs[:-1]))


async def test_close_position_timestamp_is_server_time(
    client: BingXClient, router: respx.Router
) -> None:
    """With BingX's clock 2.5 s ahead, the timestamp sent is BingX's time, not ours."""
    router["server_time"].respond(
        json={"code": 0, "msg": "", "data": {"serverTime": SERVER_MS + 2500}}
    )
    route = router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    await client.close_position("1751667128353910784")
    assert dict(wire_pairs(route.calls.last.request))["timestamp"] == str(SERVER_MS + 2500)
    assert router["server_time"].call_count == 1


async def test_close_position_sends_empty_body(client: BingXClient, router: respx.Router) -> None:
    """Nothing travels in the body."""
    route = router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    await client.close_position("1751667128353910784")
    request = route.calls.last.request
    assert request.content == b""
    assert "content-type" not in request.headers


async def test_each_call_signs_a_fresh_timestamp(
    client: BingXClient, router: respx.Router, clock: FakeClock
) -> None:
    """Two calls 1.5 s apart carry different timestamps and signatures."""
    route = router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    await client.close_position("1751667128353910784")
    clock.advance(1.5)
    await client.close_position("1751667128353910784")
    first, second = (wire_pairs(call.request) for call in route.calls)
    assert int(dict(second)["timestamp"]) - int(dict(first)["timestamp"]) == 1500
    assert dict(first)["signature"] != dict(second)["signature"]
    assert second[-1] == ("signature", expected_signature(second[:-1]))


async def test_each_retry_attempt_is_signed_afresh(router: respx.Router, clock: FakeClock) -> None:
    """A retried attempt carries a later timestamp and its own valid signature."""
    route = router.post(CLOSE_PATH).mock(
        side_effect=[
            httpx.Response(200, json={"code": 100410, "msg": "rate limited", "data": None}),
            json_answer(CLOSE_ANSWER),
        ]
    )
    retry = RetryPolicy(attempts=2, wait_initial=1.0, wait_jitter=0.0)
    async with make_client(router, clock, retry=retry) as client:
        await client.close_position("1751667128353910784")
    first, second = (wire_pairs(call.request) for call in route.calls)
    assert int(dict(second)["timestamp"]) - int(dict(first)["timestamp"]) == 1000
    for pairs in (first, second):
        assert pairs[-1] == ("signature", expected_signature(pairs[:-1]))


# --- closePosition results --------------------------------------------------------------


async def test_close_position_returns_typed_result(
    client: BingXClient, router: respx.Router
) -> None:
    """BingX's documented answer becomes a ClosePositionResult with every field."""
    router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    result = await client.close_position("1751667128353910784")
    assert type(result) is ClosePositionResult
    assert result.order_id == "1770656007907930112"
    assert result.position_id == "1751667128353910784"
    assert result.symbol == "LTC-USDT"
    assert result.side == "Ask"
    assert result.type == "MARKET"
    assert result.position_side == "Long"
    assert result.orig_qty == Decimal("0.2")
    assert type(result.orig_qty) is Decimal


async def test_close_position_keeps_all_order_id_digits(
    client: BingXClient, router: respx.Router
) -> None:
    """An orderId above 2**53 keeps all 19 digits (never through float)."""
    router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    result = await client.close_position("1751667128353910784")
    assert 1770656007907930112 > 2**53
    assert result.order_id == "1770656007907930112"
    assert len(result.order_id) == 19
    assert result.data["orderId"] == 1770656007907930112


async def test_close_position_exposes_raw_data(client: BingXClient, router: respx.Router) -> None:
    """result.data is the decoded data object as BingX sent it."""
    router.post(CLOSE_PATH).mock(return_value=json_answer(CLOSE_ANSWER))
    result = await client.close_position("1751667128353910784")
    assert dict(result.data) == {
        "orderId": 1770656007907930112,
        "positionId": "1751667128353910784",
        "symbol": "LTC-USDT",
        "side": "Ask",
        "type": "MARKET",
        "positionSide": "Long",
        "origQty": "0.2",
    }


async def test_close_position_tolerates_missing_fields(
    client: BingXClient, router: respx.Router
) -> None:
    """A success with only orderId still succeeds; the rest is None, the ID is the requested one."""
    router.post(CLOSE_PATH).respond(json={"code": 0, "msg": "", "data": {"orderId": 7}})
    result = await client.close_position(42)
    assert result.position_id == "42"
    assert result.order_id == "7"
    assert (result.symbol, result.side, result.type) == (None, None, None)
    assert (result.position_side, result.orig_qty) == (None, None)


async def test_close_position_tolerates_extra_fields(
    client: BingXClient, router: respx.Router
) -> None:
    """Unknown fields are ignored but kept in result.data."""
    router.post(CLOSE_PATH).respond(
        json={"code": 0, "msg": "", "data": {"orderId": 7, "newField": {"x": 1}, "avgPrice": "1"}}
    )
    result = await client.close_position(42)
    assert result.order_id == "7"
    assert result.data["newField"] == {"x": 1}


async def test_close_position_tolerates_key_casing(
    client: BingXClient, router: respx.Router
) -> None:
    """orderID and PositionId are read like orderId and positionId."""
    router.post(CLOSE_PATH).mock(
        return_value=json_answer(
            '{"code":0,"msg":"","data":{"orderID":1770656007907930112,'
            '"PositionId":"1751667128353910784","ORIGQTY":"1.0000"}}'
        )
    )
    result = await client.close_position("1751667128353910784")
    assert result.order_id == "1770656007907930112"
    assert result.position_id == "1751667128353910784"
    assert result.orig_qty == Decimal("1.0000")


async def test_close_position_tolerates_null_data(
    client: BingXClient, router: respx.Router
) -> None:
    """code 0 with data null means closed: a result naming the requested position."""
    router.post(CLOSE_PATH).respond(json={"code": 0, "msg": "", "data": None})
    result = await client.close_position("1751667128353910784")
    assert result.position_id == "1751667128353910784"
    assert result.order_id is None
    assert dict(result.data) == {}


async def test_close_position_accepts_string_code_zero(
    client: BingXClient, router: respx.Router
) -> None:
    """A code of "0" (a string) is success too."""
    router.post(CLOSE_PATH).respond(json={"code": "0", "msg": "", "data": {"orderId": "9"}})
    result = await client.close_position(5)
    assert result.order_id == "9"


async def test_concurrent_closes_each_get_their_own_result(
    client: BingXClient, router: respx.Router
) -> None:
    """50 closes under one gather on one client each get the answer for their own ID."""
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    ids = [str(1_000_000 + n) for n in range(50)]
    results = await asyncio.gather(*(client.close_position(pid) for pid in ids))
    assert [r.position_id for r in results] == ids
    assert [r.order_id for r in results] == [str(10**18 + int(pid)) for pid in ids]
    assert route.call_count == 50
    sent = sorted(call.request.url.params["positionId"] for call in route.calls)
    assert sent == ids


async def test_concurrent_closes_are_each_signed_correctly(
    client: BingXClient, router: respx.Router
) -> None:
    """Every one of 50 concurrent requests carries a valid signature over its own query."""
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    await asyncio.gather(*(client.close_position(1_000_000 + n) for n in range(50)))
    for call in route.calls:
        pairs = wire_pairs(call.request)
        assert pairs[-1] == ("signature", expected_signature(pairs[:-1]))


# --- other endpoints ---------------------------------------------------------------------


async def test_get_positions_parses_typed_fields(client: BingXClient, router: respx.Router) -> None:
    """Decimals stay exact (a JSON-number liquidationPrice too), leverage int, isolated bool."""
    router.get(POSITIONS_PATH).mock(return_value=json_answer(POSITIONS_ANSWER))
    [position] = await client.get_positions()
    assert type(position) is Position
    assert position.position_id == "1751667128353910784"
    assert position.symbol == "BTC-USDT"
    assert position.position_side == "LONG"
    assert position.isolated is True
    assert position.leverage == 5
    assert type(position.leverage) is int
    assert position.liquidation_price == Decimal("34567.123456789012345678")
    assert str(position.liquidation_price) == "34567.123456789012345678"
    assert position.position_amt == Decimal("0.0010")
    assert position.available_amt == Decimal("0.0010")
    assert position.avg_price == Decimal("43210.5")
    assert position.mark_price == Decimal("43198.2")
    assert position.unrealized_profit == Decimal("-0.0123")
    assert position.realised_profit == Decimal("0.0000")


async def test_get_positions_parses_update_time(client: BingXClient, router: respx.Router) -> None:
    """updateTime (epoch ms) becomes an aware UTC datetime."""
    router.get(POSITIONS_PATH).mock(return_value=json_answer(POSITIONS_ANSWER))
    [position] = await client.get_positions()
    assert position.update_time == datetime(2024, 3, 21, 3, 37, 44, 190000, tzinfo=UTC)


@pytest.mark.parametrize("junk", ["NaN", "Infinity", "-Infinity", "sNaN", "", "n/a", None])
async def test_get_positions_tolerates_junk_numbers(
    client: BingXClient, router: respx.Router, junk: str | None
) -> None:
    """Unparseable or non-finite numbers become None instead of failing the call."""
    router.get(POSITIONS_PATH).respond(
        json={
            "code": 0,
            "msg": "",
            "data": [
                {
                    "positionId": "1",
                    "leverage": junk,
                    "liquidationPrice": junk,
                    "updateTime": junk,
                    "isolated": junk,
                }
            ],
        }
    )
    [position] = await client.get_positions()
    assert position.position_id == "1"
    assert position.leverage is None
    assert position.liquidation_price is None
    assert position.update_time is None
    assert position.isolated is None


async def test_get_positions_sends_symbol_filter(client: BingXClient, router: respx.Router) -> None:
    """symbol= goes on the wire, signed, before recvWindow and timestamp."""
    route = router.get(POSITIONS_PATH).respond(json={"code": 0, "msg": "", "data": []})
    assert await client.get_positions("BTC-USDT") == []
    pairs = wire_pairs(route.calls.last.request)
    assert [key for key, _ in pairs] == ["recvWindow", "symbol", "timestamp", "signature"]
    assert dict(pairs)["symbol"] == "BTC-USDT"
    assert pairs[-1] == ("signature", expected_signature(pairs[:-1]))


async def test_get_positions_without_symbol_sends_no_symbol(
    client: BingXClient, router: respx.Router
) -> None:
    """No symbol argument, no symbol parameter."""
    route = router.get(POSITIONS_PATH).respond(json={"code": 0, "msg": "", "data": []})
    await client.get_positions()
    assert "symbol" not in route.calls.last.request.url.params


async def test_get_positions_null_data_is_empty(client: BingXClient, router: respx.Router) -> None:
    """data null means no open positions."""
    router.get(POSITIONS_PATH).respond(json={"code": 0, "msg": "", "data": None})
    assert await client.get_positions() == []


async def test_get_positions_refuses_entries_without_id(
    client: BingXClient, router: respx.Router
) -> None:
    """An entry lacking a positionId is an error, never silently dropped."""
    router.get(POSITIONS_PATH).respond(
        json={"code": 0, "msg": "", "data": [{"symbol": "X-USDT"}, {"positionId": 12}]}
    )
    with pytest.raises(ResponseValidationError, match="no usable positionId"):
        await client.get_positions()


async def test_request_rejects_a_path_with_spaces_or_controls(
    client: BingXClient, router: respx.Router
) -> None:
    """A path that could not travel as given fails before anything is sent."""
    for path in ("/openApi/x y", "/openApi/x\x00y", "/openApi/é"):
        with pytest.raises(InvalidArgumentError, match="path"):
            await client.request("GET", path)
    with pytest.raises(InvalidArgumentError, match="not valid text"):
        await client.request("GET", "/openApi/x", {"note": "\ud800"})
    assert not router.calls


async def test_server_time_returns_bingx_time(client: BingXClient, router: respx.Router) -> None:
    """server_time() is BingX's serverTime as an aware datetime."""
    assert await client.server_time() == datetime.fromtimestamp(SERVER_MS / 1000, tz=UTC)
    request = router["server_time"].calls.last.request
    assert request.method == "GET"
    assert request.url.query == b""
    assert "X-BX-APIKEY" not in request.headers


async def test_request_get_sends_sorted_signed_params(
    client: BingXClient, router: respx.Router
) -> None:
    """request("GET", ...) signs and sends its params in the query and returns data."""
    route = router.get("/openApi/swap/v2/user/balance").respond(
        json={"code": 0, "msg": "", "data": {"balance": "1"}}
    )
    data = await client.request("GET", "/openApi/swap/v2/user/balance", {"z": 1, "a": "b"})
    assert data == {"balance": "1"}
    request = route.calls.last.request
    assert request.method == "GET"
    pairs = wire_pairs(request)
    assert [key for key, _ in pairs] == ["a", "recvWindow", "timestamp", "z", "signature"]
    assert pairs[-1] == ("signature", expected_signature(pairs[:-1]))


async def test_request_unsigned_sends_no_signature_or_key(
    client: BingXClient, router: respx.Router
) -> None:
    """signed=False sends just the params: no timestamp, signature or API key header."""
    route = router.get("/openApi/swap/v2/quote/depth").respond(
        json={"code": 0, "msg": "", "data": {"bids": []}}
    )
    data = await client.request(
        "GET", "/openApi/swap/v2/quote/depth", {"symbol": "BTC-USDT", "limit": 5}, signed=False
    )
    assert data == {"bids": []}
    request = route.calls.last.request
    assert request.url.query == b"limit=5&symbol=BTC-USDT"
    assert "X-BX-APIKEY" not in request.headers


async def test_request_unsigned_needs_no_credentials(
    router: respx.Router, clock: FakeClock
) -> None:
    """A client without keys can still make public calls."""
    router.get("/openApi/swap/v2/quote/price").respond(json={"code": 0, "msg": "", "data": 1})
    async with BingXClient(
        clock=clock, transport=httpx.MockTransport(router.async_handler)
    ) as client:
        assert await client.request("GET", "/openApi/swap/v2/quote/price", signed=False) == 1


async def test_request_method_is_case_insensitive(
    client: BingXClient, router: respx.Router
) -> None:
    """ "get" is sent as GET."""
    route = router.get("/openApi/x").respond(json={"code": 0, "msg": "", "data": None})
    await client.request("get", "/openApi/x", signed=False)
    assert route.calls.last.request.method == "GET"


# --- configuration ---------------------------------------------------------------------


async def test_env_vars_supply_credentials(
    router: respx.Router, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BINGX_API_KEY and BINGX_SECRET_KEY are used when no keys are passed."""
    monkeypatch.setenv("BINGX_API_KEY", "env-key")
    monkeypatch.setenv("BINGX_SECRET_KEY", "env-secret")
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    async with BingXClient(
        clock=clock, transport=httpx.MockTransport(router.async_handler)
    ) as client:
        await client.close_position(5)
    request = route.calls.last.request
    assert request.headers["X-BX-APIKEY"] == "env-key"
    pairs = wire_pairs(request)
    payload = "&".join(f"{k}={v}" for k, v in pairs[:-1])
    assert pairs[-1][1] == hmac.new(b"env-secret", payload.encode(), hashlib.sha256).hexdigest()


async def test_arguments_override_env_vars(
    router: respx.Router, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys passed as arguments win over the environment."""
    monkeypatch.setenv("BINGX_API_KEY", "env-key")
    monkeypatch.setenv("BINGX_SECRET_KEY", "env-secret")
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    async with make_client(router, clock) as client:
        await client.close_position(5)
    assert route.calls.last.request.headers["X-BX-APIKEY"] == API_KEY


async def test_env_var_supplies_base_url(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """BINGX_BASE_URL redirects every request to that host."""
    monkeypatch.setenv("BINGX_BASE_URL", DEMO_BASE_URL)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"code": 0, "msg": "", "data": {"serverTime": SERVER_MS}})

    async with BingXClient(clock=clock, transport=httpx.MockTransport(handler)) as client:
        assert client.base_url == DEMO_BASE_URL
        await client.server_time()
    assert [str(r.url) for r in seen] == [f"{DEMO_BASE_URL}/openApi/swap/v2/server/time"]


async def test_base_url_defaults_to_production(clock: FakeClock) -> None:
    """Without argument or environment, the client talks to production."""
    async with BingXClient(clock=clock) as client:
        assert client.base_url == PRODUCTION_BASE_URL == BASE_URL


def test_demo_base_url_constant() -> None:
    """DEMO_BASE_URL is BingX's VST host."""
    assert DEMO_BASE_URL == "https://open-api-vst.bingx.com"


async def test_base_url_trailing_slash_is_ignored(router: respx.Router, clock: FakeClock) -> None:
    """base_url "https://open-api.bingx.com/" yields no double slash."""
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    async with make_client(router, clock, base_url=BASE_URL + "/") as client:
        await client.close_position(5)
    assert route.calls.last.request.url.raw_path.startswith(CLOSE_PATH.encode() + b"?")


async def test_recv_window_seconds_become_milliseconds(
    router: respx.Router, clock: FakeClock
) -> None:
    """recv_window=2.5 (seconds) is sent as recvWindow=2500."""
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    async with make_client(router, clock, recv_window=2.5) as client:
        await client.close_position(5)
    assert dict(wire_pairs(route.calls.last.request))["recvWindow"] == "2500"


# --- lifecycle --------------------------------------------------------------------------


async def test_closed_client_raises_runtime_error(router: respx.Router, clock: FakeClock) -> None:
    """After the context manager exits, calls raise RuntimeError and send nothing."""
    async with make_client(router, clock) as client:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await client.close_position(5)
    assert router.calls.call_count == 0


async def test_aclose_closes_the_client(router: respx.Router, clock: FakeClock) -> None:
    """aclose() without a context manager closes it too, and may be called twice."""
    client = make_client(router, clock)
    await client.aclose()
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.server_time()


async def test_closed_client_cannot_be_reopened(router: respx.Router, clock: FakeClock) -> None:
    """Entering a closed client again raises RuntimeError."""
    client = make_client(router, clock)
    await client.aclose()
    with pytest.raises(RuntimeError, match="reopened"):
        async with client:
            pass


async def test_owned_http_client_is_closed(router: respx.Router, clock: FakeClock) -> None:
    """The connection pool the client created is closed with it."""
    async with make_client(router, clock) as client:
        http = client._connection._http
    assert http.is_closed


async def test_injected_http_client_is_used(router: respx.Router, clock: FakeClock) -> None:
    """Requests go through a caller-supplied httpx.AsyncClient (its headers included)."""
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    async with (
        httpx.AsyncClient(
            transport=httpx.MockTransport(router.async_handler), headers={"X-Mine": "yes"}
        ) as http,
        BingXClient(
            api_key=API_KEY, secret_key=SECRET_KEY, clock=clock, http_client=http
        ) as client,
    ):
        await client.close_position(5)
    assert route.calls.last.request.headers["X-Mine"] == "yes"


async def test_injected_http_client_is_not_closed(router: respx.Router, clock: FakeClock) -> None:
    """Closing the BingXClient leaves a caller-supplied httpx.AsyncClient open."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(router.async_handler)) as http:
        async with BingXClient(
            api_key=API_KEY, secret_key=SECRET_KEY, clock=clock, http_client=http
        ):
            pass
        assert not http.is_closed
        response = await http.get(f"{BASE_URL}/openApi/swap/v2/server/time")
        assert response.status_code == 200


# --- secrets ---------------------------------------------------------------------------


async def test_client_repr_hides_secret(client: BingXClient) -> None:
    """repr(client) names the host and a key fingerprint only."""
    text = repr(client)
    assert SECRET_KEY not in text
    assert API_KEY not in text
    assert BASE_URL in text


def test_credentials_repr_hides_secret() -> None:
    """repr(Credentials) shows neither key."""
    text = repr(Credentials(API_KEY, SECRET_KEY))
    assert SECRET_KEY not in text
    assert API_KEY not in text
    assert "hidden" in text


async def test_api_error_hides_signature(router: respx.Router, clock: FakeClock) -> None:
    """An error page echoing the signature does not leak it into str, repr or msg."""

    def echo(request: httpx.Request) -> httpx.Response:
        signature = request.url.params["signature"]
        return httpx.Response(502, text=f"<html><title>bad signature={signature}</title></html>")

    route = router.post(CLOSE_PATH).mock(side_effect=echo)
    async with make_client(router, clock, retry=NO_RETRY) as client:
        with pytest.raises(ServerError) as caught:
            await client.close_position(5)
    signature = route.calls.last.request.url.params["signature"]
    for text in (str(caught.value), repr(caught.value), caught.value.msg or ""):
        assert signature not in text
        assert SECRET_KEY not in text
        assert "signature=<redacted>" in text


async def test_transport_error_hides_signature(router: respx.Router, clock: FakeClock) -> None:
    """An httpx error quoting the signed URL is redacted in the TransportError."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    route = router.post(CLOSE_PATH).mock(side_effect=refuse)
    async with make_client(router, clock, retry=NO_RETRY) as client:
        with pytest.raises(TransportError) as caught:
            await client.close_position(5)
    signature = route.calls.last.request.url.params["signature"]
    assert signature not in str(caught.value)
    assert signature not in repr(caught.value)


async def test_httpx_log_line_redacts_signature(
    client: BingXClient, router: respx.Router, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx's INFO line for the request shows signature=<redacted>, not the value."""
    caplog.set_level(logging.INFO, logger="httpx")
    route = router.post(CLOSE_PATH).mock(side_effect=closed)
    await client.close_position(5)
    signature = route.calls.last.request.url.params["signature"]
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    [line] = [line for line in lines if CLOSE_PATH in line]
    assert "signature=<redacted>" in line
    assert signature not in caplog.text
    assert SECRET_KEY not in caplog.text
