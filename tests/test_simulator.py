"""Tests for FakeBingX: verification, endpoints, rate limits, bans, faults and serving.

Most tests talk to the simulator through its httpx transport, in virtual time (looptime +
LoopClock); a few go over real loopback HTTP through ``FakeBingX.serve``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence

import httpx
import pytest

from bingx_async._budgets import DEFAULT_RATE_LIMITS, Budget, IPGroup
from bingx_async._clock import SystemClock
from bingx_async._signing import ParamValue, canonical_pairs, encode_query, raw_query, sign
from bingx_async.testing import (
    BadGatewayPage,
    CustomAnswer,
    DropConnection,
    FakeBingX,
    FakeClock,
    GatewayTimeout,
    LoopClock,
    NeverAnswer,
    NoAnswer,
    RefuseConnection,
    SimAccount,
    SimResponse,
)

EPOCH = 1_700_000_000.0
BASE_URL = "https://open-api.bingx.com"
SERVER_TIME = "/openApi/swap/v2/server/time"
CLOSE_POSITION = "/openApi/swap/v1/trade/closePosition"
CLOSE_ALL = "/openApi/swap/v2/trade/closeAllPositions"
POSITIONS = "/openApi/swap/v2/user/positions"
SHAPE_1 = (
    "code:100410:The endpoint trigger frequency limit rule is currently in the disabled "
    "period and will be unblocked after {}"
)

virtual_time = pytest.mark.looptime


# --- helpers --------------------------------------------------------------------------------


def now_ms(sim: FakeBingX) -> int:
    return math.floor(sim.clock.time() * 1000)


def signed_query(secret_key: str, pairs: Sequence[tuple[str, str]]) -> str:
    """Pairs in wire order (raw values), percent-encoded, with the signature appended last."""
    return f"{encode_query(pairs)}&signature={sign(secret_key, raw_query(pairs))}"


async def call(
    http: httpx.AsyncClient,
    sim: FakeBingX,
    account: SimAccount,
    method: str,
    path: str,
    params: Mapping[str, ParamValue] | None = None,
    *,
    timestamp_ms: int | None = None,
) -> httpx.Response:
    """A correctly signed request, like BingXClient sends it."""
    stamp = now_ms(sim) if timestamp_ms is None else timestamp_ms
    pairs = canonical_pairs({**(params or {}), "timestamp": stamp})
    query = signed_query(account.secret_key, pairs)
    return await http.request(method, f"{path}?{query}", headers={"X-BX-APIKEY": account.api_key})


async def raw_call(
    http: httpx.AsyncClient, method: str, path: str, query: str, api_key: str | None
) -> httpx.Response:
    headers = {"X-BX-APIKEY": api_key} if api_key is not None else {}
    return await http.request(method, f"{path}?{query}", headers=headers)


def error(code: int, msg: str, timestamp: int) -> dict[str, object]:
    return {"code": code, "msg": msg, "timestamp": timestamp}


def ok(data: object, timestamp: int) -> dict[str, object]:
    return {"code": 0, "msg": "", "timestamp": timestamp, "data": data}


@pytest.fixture
def sim() -> FakeBingX:
    return FakeBingX(clock=LoopClock(EPOCH), seed=7)


@pytest.fixture
def account(sim: FakeBingX) -> SimAccount:
    return sim.add_account(api_key="key-a", secret_key="secret-a", uid="1001")


@pytest.fixture
def other(sim: FakeBingX) -> SimAccount:
    return sim.add_account(api_key="key-b", secret_key="secret-b", uid="1002")


@pytest.fixture
async def http(sim: FakeBingX) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        yield client


# --- accounts and positions -----------------------------------------------------------------


async def test_generated_accounts_have_keys_and_numeric_uid() -> None:
    """add_account() without arguments generates a 64-char key pair and a numeric UID."""
    sim = FakeBingX(clock=FakeClock(), seed=1)
    account = sim.add_account()
    assert len(account.api_key) == 64
    assert len(account.secret_key) == 64
    assert account.api_key != account.secret_key
    assert account.uid.isdigit()
    assert account.secret_key not in repr(account)


async def test_same_seed_generates_same_accounts() -> None:
    """Generated keys come from the seed, so tests are reproducible."""
    first = FakeBingX(clock=FakeClock(), seed=3).add_account()
    second = FakeBingX(clock=FakeClock(), seed=3).add_account()
    assert first == second


async def test_duplicate_api_key_is_rejected() -> None:
    """Two accounts cannot share one API key."""
    sim = FakeBingX(clock=FakeClock())
    sim.add_account(api_key="k")
    with pytest.raises(ValueError, match="api_key"):
        sim.add_account(api_key="k")


async def test_default_position_id_has_19_digits() -> None:
    """Position ids look like BingX's: 19 decimal digits."""
    sim = FakeBingX(clock=FakeClock(), seed=1)
    position = sim.add_position(sim.add_account())
    assert len(position.position_id) == 19
    assert position.position_id.isdigit()


async def test_positions_lists_open_positions_in_order() -> None:
    """positions() shows what add_position() opened, oldest first."""
    sim = FakeBingX(clock=FakeClock())
    account = sim.add_account()
    first = sim.add_position(account, position_id="1")
    second = sim.add_position(account, symbol="ETH-USDT", position_side="SHORT", position_id="2")
    assert sim.positions(account) == [first, second]


async def test_position_for_unknown_account_is_rejected() -> None:
    """Positions can only be added to registered accounts."""
    sim = FakeBingX(clock=FakeClock())
    stranger = SimAccount(api_key="x", secret_key="y", uid="9")
    with pytest.raises(ValueError, match="unknown account"):
        sim.add_position(stranger)


async def test_invalid_options_are_rejected() -> None:
    """Nonsense settings fail at construction."""
    with pytest.raises(ValueError, match="arrival_jitter"):
        FakeBingX(arrival_jitter=-1.0)
    with pytest.raises(ValueError, match="window"):
        FakeBingX(window="sliding")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="error_ban_threshold"):
        FakeBingX(error_ban_threshold=0)


# --- public endpoint and unknown paths --------------------------------------------------------


@virtual_time
async def test_server_time_answers_the_server_clock(
    sim: FakeBingX, http: httpx.AsyncClient
) -> None:
    """GET server/time answers serverTime and the top-level timestamp in ms."""
    response = await http.get(SERVER_TIME)
    stamp = now_ms(sim)
    assert response.status_code == 200
    assert response.json() == ok({"serverTime": stamp}, stamp)


@virtual_time
async def test_clock_skew_shifts_the_server_clock(sim: FakeBingX, http: httpx.AsyncClient) -> None:
    """clock_skew is added to the server's clock and can be changed at any time."""
    sim.clock_skew = -2.5
    response = await http.get(SERVER_TIME)
    assert response.json()["data"]["serverTime"] == now_ms(sim) - 2500


@virtual_time
async def test_unknown_path_is_http_404(sim: FakeBingX, http: httpx.AsyncClient) -> None:
    """Unknown endpoints get HTTP 404 and code 100400."""
    response = await http.get("/openApi/swap/v9/nothing")
    assert response.status_code == 404
    assert response.json() == error(100400, "this api is not exist", now_ms(sim))


@virtual_time
async def test_wrong_method_is_an_unknown_endpoint(sim: FakeBingX, http: httpx.AsyncClient) -> None:
    """closePosition exists as POST only."""
    response = await http.get(CLOSE_POSITION)
    assert response.status_code == 404
    assert response.json()["code"] == 100400


# --- closePosition, positions, closeAllPositions ---------------------------------------------


@virtual_time
async def test_close_position_closes_and_answers_the_order(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """A held position is removed and the answer describes the closing market order."""
    sim.add_position(account, symbol="LTC-USDT", quantity="0.2", position_id="1751667128353910784")
    response = await call(
        http, sim, account, "POST", CLOSE_POSITION, {"positionId": "1751667128353910784"}
    )
    body = response.json()
    order_id = body["data"]["orderId"]
    assert response.status_code == 200
    assert isinstance(order_id, int)
    assert order_id > 2**53
    assert f'"orderId":{order_id},' in response.text  # an unquoted JSON number
    expected_data = {
        "orderId": order_id,
        "positionId": "1751667128353910784",
        "symbol": "LTC-USDT",
        "side": "Ask",
        "type": "MARKET",
        "positionSide": "Long",
        "origQty": "0.2",
    }
    assert body == ok(expected_data, now_ms(sim))
    assert sim.positions(account) == []


@virtual_time
@pytest.mark.parametrize(
    ("position_side", "side", "answered_side"),
    [("SHORT", "Bid", "Short"), ("BOTH", "Ask", "BOTH")],
)
async def test_close_position_side_follows_the_position(
    sim: FakeBingX,
    http: httpx.AsyncClient,
    account: SimAccount,
    position_side: str,
    side: str,
    answered_side: str,
) -> None:
    """Shorts close with a Bid; one-way (BOTH) positions answer positionSide BOTH."""
    sim.add_position(account, position_side=position_side, position_id="5")  # type: ignore[arg-type]
    response = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "5"})
    data = response.json()["data"]
    assert (data["side"], data["positionSide"]) == (side, answered_side)


@virtual_time
async def test_closing_twice_answers_no_position(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """The second close of one position gets 101205 "No position to close"."""
    sim.add_position(account, position_id="42")
    first = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "42"})
    second = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "42"})
    assert first.json()["code"] == 0
    assert second.status_code == 200
    assert second.json() == error(101205, "No position to close", now_ms(sim))


@virtual_time
async def test_not_found_code_is_configurable() -> None:
    """not_found_code=80017 answers "position not exist"."""
    sim = FakeBingX(clock=LoopClock(EPOCH), not_found_code=80017)
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        response = await call(client, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert response.json() == error(80017, "position not exist", now_ms(sim))


@virtual_time
async def test_positions_are_per_account(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, other: SimAccount
) -> None:
    """One account cannot close another account's position."""
    sim.add_position(other, position_id="77")
    response = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "77"})
    assert response.json()["code"] == 101205
    assert [p.position_id for p in sim.positions(other)] == ["77"]


@virtual_time
async def test_close_position_without_position_id_is_a_bad_parameter(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """positionId is required."""
    response = await call(http, sim, account, "POST", CLOSE_POSITION)
    assert response.json() == error(109400, "positionId is required", now_ms(sim))


@virtual_time
async def test_positions_endpoint_lists_open_positions(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """GET user/positions answers BingX's position shape, liquidationPrice as a number."""
    sim.add_position(account, quantity="0.5", position_id="11", avg_price="60000.0", leverage=10)
    response = await call(http, sim, account, "GET", POSITIONS)
    stamp = now_ms(sim)
    assert response.json() == ok(
        [
            {
                "positionId": "11",
                "symbol": "BTC-USDT",
                "currency": "USDT",
                "positionSide": "LONG",
                "isolated": True,
                "positionAmt": "0.5",
                "availableAmt": "0.5",
                "avgPrice": "60000.0",
                "unrealizedProfit": "0.0000",
                "realisedProfit": "0.0000",
                "initialMargin": "3000.0000",
                "leverage": 10,
                "liquidationPrice": 54000.0,
                "markPrice": "60000.0",
                "updateTime": stamp,
            }
        ],
        stamp,
    )


@virtual_time
async def test_positions_endpoint_filters_by_symbol(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """The optional symbol parameter narrows the list."""
    sim.add_position(account, symbol="BTC-USDT", position_id="1")
    sim.add_position(account, symbol="ETH-USDT", position_side="SHORT", position_id="2")
    response = await call(http, sim, account, "GET", POSITIONS, {"symbol": "ETH-USDT"})
    listed = response.json()["data"]
    assert [(p["positionId"], p["positionSide"]) for p in listed] == [("2", "SHORT")]
    assert listed[0]["liquidationPrice"] == 66000.0


@virtual_time
async def test_close_all_positions_answers_order_ids(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """closeAllPositions closes every position and answers their closing order ids."""
    sim.add_position(account, position_id="1")
    sim.add_position(account, symbol="ETH-USDT", position_id="2")
    response = await call(http, sim, account, "POST", CLOSE_ALL)
    body = response.json()
    success = body["data"]["success"]
    assert body == ok({"success": success, "failed": None}, now_ms(sim))
    assert len(success) == 2
    assert all(isinstance(order_id, int) and order_id > 2**53 for order_id in success)
    assert len(set(success)) == 2
    assert sim.positions(account) == []


@virtual_time
async def test_close_all_positions_by_symbol(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """With a symbol, only that symbol's positions are closed."""
    sim.add_position(account, position_id="1")
    kept = sim.add_position(account, symbol="ETH-USDT", position_id="2")
    response = await call(http, sim, account, "POST", CLOSE_ALL, {"symbol": "BTC-USDT"})
    assert len(response.json()["data"]["success"]) == 1
    assert sim.positions(account) == [kept]


# --- signature and API key -------------------------------------------------------------------


@virtual_time
async def test_missing_api_key_is_rejected(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """No X-BX-APIKEY header: 100413."""
    query = signed_query(account.secret_key, [("timestamp", str(now_ms(sim)))])
    response = await raw_call(http, "GET", POSITIONS, query, None)
    assert response.status_code == 200
    assert response.json() == error(100413, "Incorrect apiKey", now_ms(sim))


@virtual_time
async def test_unknown_api_key_is_rejected(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """An API key the exchange does not know: 100413."""
    query = signed_query(account.secret_key, [("timestamp", str(now_ms(sim)))])
    response = await raw_call(http, "GET", POSITIONS, query, "nope")
    assert response.json() == error(100413, "Incorrect apiKey", now_ms(sim))


@virtual_time
async def test_signature_under_the_wrong_secret_is_rejected(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """A signature made with another secret: 100001."""
    query = signed_query("not-the-secret", [("timestamp", str(now_ms(sim)))])
    response = await raw_call(http, "GET", POSITIONS, query, account.api_key)
    assert response.json() == error(100001, "Signature verification failed", now_ms(sim))


@virtual_time
async def test_missing_signature_is_rejected(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """No signature parameter: 100001."""
    response = await raw_call(http, "GET", POSITIONS, f"timestamp={now_ms(sim)}", account.api_key)
    assert response.json() == error(100001, "Signature verification failed", now_ms(sim))


@virtual_time
async def test_signature_must_be_the_last_parameter(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """A correct signature that is not the last parameter: 100001."""
    pairs = [("timestamp", str(now_ms(sim)))]
    signature = sign(account.secret_key, raw_query(pairs))
    query = f"signature={signature}&timestamp={now_ms(sim)}"
    response = await raw_call(http, "GET", POSITIONS, query, account.api_key)
    assert response.json()["code"] == 100001


@virtual_time
async def test_parameters_are_verified_in_received_order(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """The server signs in the order received: any order works if signed in that order."""
    stamp = str(now_ms(sim))
    in_order = [("timestamp", stamp), ("symbol", "BTC-USDT")]
    good = await raw_call(
        http, "GET", POSITIONS, signed_query(account.secret_key, in_order), account.api_key
    )
    signature = sign(account.secret_key, raw_query(in_order))
    reordered = f"symbol=BTC-USDT&timestamp={stamp}&signature={signature}"
    bad = await raw_call(http, "GET", POSITIONS, reordered, account.api_key)
    assert good.json()["code"] == 0
    assert bad.json()["code"] == 100001


@virtual_time
async def test_encoded_values_are_verified_decoded(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """Percent-encoded values are decoded before verification; the signature is over raw text."""
    sim.add_position(account, symbol="A B[1]&{x}", position_id="1")
    response = await call(http, sim, account, "GET", POSITIONS, {"symbol": "A B[1]&{x}"})
    assert response.json()["code"] == 0
    assert [p["symbol"] for p in response.json()["data"]] == ["A B[1]&{x}"]


@virtual_time
async def test_plus_is_a_literal_plus(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """'+' on the wire decodes to '+' (not a space), as does %2B."""
    stamp = str(now_ms(sim))
    pairs = [("symbol", "A+B"), ("timestamp", stamp)]
    signature = sign(account.secret_key, raw_query(pairs))
    literal = await raw_call(
        http,
        "GET",
        POSITIONS,
        f"symbol=A+B&timestamp={stamp}&signature={signature}",
        account.api_key,
    )
    encoded = await raw_call(
        http,
        "GET",
        POSITIONS,
        f"symbol=A%2BB&timestamp={stamp}&signature={signature}",
        account.api_key,
    )
    assert literal.json()["code"] == 0
    assert encoded.json()["code"] == 0
    assert sim.requests[0].params[0] == ("symbol", "A+B")


# --- timestamps ------------------------------------------------------------------------------

TIMESTAMP_ERROR = "Null timestamp or timestamp mismatch"


@virtual_time
async def test_missing_timestamp_is_rejected(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """A signed request without timestamp: 100421."""
    query = signed_query(account.secret_key, [("symbol", "BTC-USDT")])
    response = await raw_call(http, "GET", POSITIONS, query, account.api_key)
    assert response.json() == error(100421, TIMESTAMP_ERROR, now_ms(sim))


@virtual_time
async def test_non_integer_timestamp_is_rejected(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """A timestamp that is not an integer: 100421."""
    query = signed_query(account.secret_key, [("timestamp", f"{now_ms(sim)}.5")])
    response = await raw_call(http, "GET", POSITIONS, query, account.api_key)
    assert response.json() == error(100421, TIMESTAMP_ERROR, now_ms(sim))


@virtual_time
@pytest.mark.parametrize(
    ("offset_ms", "params", "code"),
    [
        (-5000, {}, 0),
        (-5001, {}, 100421),
        (1000, {}, 0),
        (1001, {}, 100421),
        (-9000, {"recvWindow": 10000}, 0),
        (-2001, {"recvWindow": 2000}, 100421),
    ],
)
async def test_timestamp_must_be_within_recv_window(
    sim: FakeBingX,
    http: httpx.AsyncClient,
    account: SimAccount,
    offset_ms: int,
    params: dict[str, ParamValue],
    code: int,
) -> None:
    """Timestamps may lag by recvWindow (default 5000 ms) and lead by at most 1000 ms."""
    stamp = now_ms(sim) + offset_ms
    response = await call(http, sim, account, "GET", POSITIONS, params, timestamp_ms=stamp)
    assert response.json()["code"] == code


@virtual_time
async def test_timestamp_is_checked_against_the_skewed_server_clock(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """With the server 6 s ahead, a timestamp from the local clock is too old."""
    sim.clock_skew = 6.0
    response = await call(http, sim, account, "GET", POSITIONS)
    assert response.json()["code"] == 100421


@virtual_time
async def test_timestamp_error_code_is_configurable() -> None:
    """timestamp_error_code=80014 answers "timestamp is invalid"."""
    sim = FakeBingX(clock=LoopClock(EPOCH), timestamp_error_code=80014)
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        stamp = now_ms(sim) - 60_000
        response = await call(client, sim, account, "GET", POSITIONS, timestamp_ms=stamp)
    assert response.json() == error(80014, "timestamp is invalid", now_ms(sim))


# --- recording -------------------------------------------------------------------------------


@virtual_time
async def test_requests_are_recorded(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """Each request is recorded with its decoded params, headers and answer."""
    stamp = now_ms(sim)
    await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "9"}, timestamp_ms=stamp)
    [recorded] = sim.requests
    signature = sign(account.secret_key, f"positionId=9&timestamp={stamp}")
    assert recorded.method == "POST"
    assert recorded.path == CLOSE_POSITION
    assert recorded.params == [
        ("positionId", "9"),
        ("timestamp", str(stamp)),
        ("signature", signature),
    ]
    assert recorded.param("positionId") == "9"
    assert recorded.param("missing") is None
    assert recorded.headers["x-bx-apikey"] == "key-a"
    assert recorded.arrived_at == sim.clock.monotonic()
    assert (recorded.status_code, recorded.code, recorded.msg) == (
        200,
        101205,
        "No position to close",
    )
    assert recorded.account == "1001"
    assert recorded.during_block is False
    assert recorded.fault is None


@virtual_time
async def test_requests_to_and_arrivals_filter(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, other: SimAccount
) -> None:
    """requests_to() filters by path, arrivals() by path and account."""
    await call(http, sim, account, "GET", POSITIONS)
    await sim.clock.sleep(0.25)
    await call(http, sim, other, "GET", POSITIONS)
    await http.get(SERVER_TIME)
    start = sim.requests[0].arrived_at
    assert [r.account for r in sim.requests_to(POSITIONS)] == ["1001", "1002"]
    assert [t - start for t in sim.arrivals(POSITIONS)] == pytest.approx([0.0, 0.25])
    assert [t - start for t in sim.arrivals(POSITIONS, other)] == pytest.approx([0.25])
    assert sim.requests_to(SERVER_TIME)[0].account is None


@virtual_time
async def test_arrival_jitter_delays_arrival_through_the_clock() -> None:
    """Each request waits a seeded random 0..jitter before it arrives."""
    arrivals = []
    for _ in range(2):
        sim = FakeBingX(clock=LoopClock(EPOCH), arrival_jitter=0.5, seed=11)
        async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
            start = sim.clock.monotonic()
            await asyncio.gather(*(client.get(SERVER_TIME) for _ in range(5)))
        arrivals.append(sorted(t - start for t in sim.arrivals(SERVER_TIME)))
    assert arrivals[0] == pytest.approx(arrivals[1])
    assert all(0.0 <= t <= 0.5 for t in arrivals[0])
    assert len(set(arrivals[0])) == 5


# --- rate limits -----------------------------------------------------------------------------


@virtual_time
async def test_sixth_request_in_a_second_disables_the_endpoint(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """positions allows 5/s per UID: the 6th arrival is a violation answered with shape 1."""
    codes = [(await call(http, sim, account, "GET", POSITIONS)).json()["code"] for _ in range(5)]
    sixth = await call(http, sim, account, "GET", POSITIONS)
    unblock = now_ms(sim) + 3000
    assert codes == [0] * 5
    assert sixth.status_code == 200
    assert sixth.json() == error(100410, SHAPE_1.format(unblock), now_ms(sim))
    assert sim.violations == 1
    assert sim.requests[-1].during_block is False


@virtual_time
async def test_disabled_endpoint_keeps_its_unblock_time(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """While disabled every request gets the same unblock time; the block is not extended."""
    for _ in range(6):
        await call(http, sim, account, "GET", POSITIONS)
    unblock = now_ms(sim) + 3000
    await sim.clock.sleep(2.0)
    during = await call(http, sim, account, "GET", POSITIONS)
    await sim.clock.sleep(1.0)
    after = await call(http, sim, account, "GET", POSITIONS)
    assert during.json() == error(100410, SHAPE_1.format(unblock), now_ms(sim) - 1000)
    assert sim.requests[-2].during_block is True
    assert after.json()["code"] == 0
    assert sim.requests[-1].during_block is False
    assert sim.violations == 1


@virtual_time
async def test_account_block_leaves_other_accounts_and_endpoints_alone(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, other: SimAccount
) -> None:
    """A per-UID violation disables that endpoint for that account only."""
    for _ in range(6):
        await call(http, sim, account, "GET", POSITIONS)
    other_account = await call(http, sim, other, "GET", POSITIONS)
    other_endpoint = await call(http, sim, account, "POST", CLOSE_ALL)
    assert other_account.json()["code"] == 0
    assert other_endpoint.json()["code"] == 0


@virtual_time
async def test_ip_budget_violation_blocks_every_account() -> None:
    """Overflowing an IP budget disables the endpoint for the whole IP."""
    group = IPGroup(per_endpoint=(Budget(3, 1.0),), total=(Budget(100, 1.0),), pool="group3")
    sim = FakeBingX(clock=LoopClock(EPOCH), rate_limits=DEFAULT_RATE_LIMITS.with_ip_group(3, group))
    first, second = sim.add_account(), sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        codes = [
            (await call(client, sim, first, "GET", POSITIONS)).json()["code"] for _ in range(3)
        ]
        violating = await call(client, sim, second, "GET", POSITIONS)
        blocked = await call(client, sim, first, "GET", POSITIONS)
    assert codes == [0, 0, 0]
    assert violating.json()["code"] == 100410
    assert blocked.json()["code"] == 100410
    assert sim.requests[-1].during_block is True


@virtual_time
async def test_rolling_window_counts_arrivals_in_the_last_second(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """Rolling: 5 at t=0.9 and 5 at t=1.0 overflow (t - 1, t]; one at t=1.9 fits again."""
    await sim.clock.sleep(0.9)
    for _ in range(5):
        await call(http, sim, account, "GET", POSITIONS)
    await sim.clock.sleep(0.1)
    late = await call(http, sim, account, "GET", POSITIONS)
    assert late.json()["code"] == 100410


@virtual_time
async def test_fixed_window_resets_at_window_boundaries() -> None:
    """Fixed: 5 at t=0.9 and 5 at t=1.0 fall into different one-second buckets."""
    sim = FakeBingX(clock=LoopClock(EPOCH), window="fixed")
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        await sim.clock.sleep(0.9 - sim.clock.monotonic() % 1.0)
        first = [
            (await call(client, sim, account, "GET", POSITIONS)).json()["code"] for _ in range(5)
        ]
        await sim.clock.sleep(0.1)
        second = [
            (await call(client, sim, account, "GET", POSITIONS)).json()["code"] for _ in range(6)
        ]
    assert first == [0] * 5
    assert second == [0] * 5 + [100410]


@virtual_time
async def test_rejected_arrivals_count_towards_the_window() -> None:
    """A rejected arrival still occupies the rolling window."""
    sim = FakeBingX(clock=LoopClock(EPOCH), disabled_period=0.0)
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        for _ in range(5):
            await call(client, sim, account, "GET", POSITIONS)
        await sim.clock.sleep(0.5)
        rejected = await call(client, sim, account, "GET", POSITIONS)
        await sim.clock.sleep(0.5)
        codes = [
            (await call(client, sim, account, "GET", POSITIONS)).json()["code"] for _ in range(5)
        ]
    assert rejected.json()["code"] == 100410
    assert codes == [0, 0, 0, 0, 100410]
    assert sim.violations == 2


@virtual_time
async def test_rate_limit_code_and_status_are_configurable() -> None:
    """rate_limit_code=109429 and rate_limit_status_code=429 change the answer, not the text."""
    sim = FakeBingX(clock=LoopClock(EPOCH), rate_limit_code=109429, rate_limit_status_code=429)
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        for _ in range(5):
            await call(client, sim, account, "GET", POSITIONS)
        response = await call(client, sim, account, "GET", POSITIONS)
    assert response.status_code == 429
    assert response.json() == error(
        109429, SHAPE_1.replace("100410", "109429").format(now_ms(sim) + 3000), now_ms(sim)
    )


@virtual_time
async def test_server_time_draws_on_the_ip_group_budget() -> None:
    """The public endpoint is counted in IP group 1 (here shrunk to 2 per 10 s)."""
    group = IPGroup(per_endpoint=(), total=(Budget(2, 10.0),), pool="group1")
    sim = FakeBingX(clock=LoopClock(EPOCH), rate_limits=DEFAULT_RATE_LIMITS.with_ip_group(1, group))
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        codes = [(await client.get(SERVER_TIME)).json()["code"] for _ in range(3)]
    assert codes == [0, 0, 100410]


# --- forced blocks ---------------------------------------------------------------------------


@virtual_time
@pytest.mark.parametrize(
    ("shape", "message"),
    [
        (1, SHAPE_1),
        (2, "rate limited"),
        (
            3,
            "over 20 error code:100202 requests within 480000 ms for this api, please verify "
            "and fix it ,can retry after time: {}",
        ),
        (4, "The current system is busy, please try again later"),
    ],
)
async def test_forced_block_answers_the_chosen_shape(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, shape: int, message: str
) -> None:
    """block() disables an endpoint with any of the four known 100410 messages."""
    sim.block(CLOSE_POSITION, 5.0, shape=shape)  # type: ignore[arg-type]
    unblock = now_ms(sim) + 5000
    response = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert response.json() == error(100410, message.format(unblock), now_ms(sim))
    assert sim.requests[-1].during_block is True
    assert sim.violations == 0


@virtual_time
async def test_forced_block_for_one_account_expires(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, other: SimAccount
) -> None:
    """block(account=...) spares other accounts and lifts after the given seconds."""
    sim.block("GET /openApi/swap/v2/user/positions", 2.0, account=account)
    blocked = await call(http, sim, account, "GET", POSITIONS)
    spared = await call(http, sim, other, "GET", POSITIONS)
    await sim.clock.sleep(2.0)
    lifted = await call(http, sim, account, "GET", POSITIONS)
    assert [r.json()["code"] for r in (blocked, spared, lifted)] == [100410, 0, 0]


async def test_block_rejects_unknown_paths() -> None:
    """block() needs a known path or an explicit 'METHOD /path' name."""
    sim = FakeBingX(clock=FakeClock())
    with pytest.raises(ValueError, match="unknown endpoint"):
        sim.block("/openApi/nothing", 1.0)
    with pytest.raises(ValueError, match="shape"):
        sim.block(POSITIONS, 1.0, shape=5)  # type: ignore[arg-type]


# --- error-rate ban --------------------------------------------------------------------------


@virtual_time
async def test_error_rate_ban_after_threshold_identical_errors(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, other: SimAccount
) -> None:
    """The 21st 101205 within 480 s is answered with shape 3 and bans the endpoint for 60 s."""
    sim.add_position(account, position_id="real")
    codes = []
    for _ in range(20):
        response = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "x"})
        codes.append(response.json()["code"])
        await sim.clock.sleep(0.25)  # stay within 5 requests per second
    banned = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "x"})
    unblock = now_ms(sim) + 60_000
    expected = (
        "over 20 error code:101205 requests within 480000 ms for this api, please verify and "
        f"fix it ,can retry after time: {unblock}"
    )
    await sim.clock.sleep(59.0)
    still_banned = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "real"})
    others = await call(http, sim, other, "POST", CLOSE_POSITION, {"positionId": "x"})
    await sim.clock.sleep(1.0)
    lifted = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "real"})
    assert codes == [101205] * 20
    assert banned.json() == error(100410, expected, unblock - 60_000)
    assert still_banned.json()["msg"] == expected
    assert others.json()["code"] == 101205
    assert lifted.json()["code"] == 0


@virtual_time
async def test_error_rate_ban_counts_each_code_separately() -> None:
    """Different error codes have separate counts."""
    sim = FakeBingX(clock=LoopClock(EPOCH), error_ban_threshold=2)
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        codes = []
        for params in [{"positionId": "x"}, {}, {"positionId": "x"}, {}, {"positionId": "x"}]:
            response = await call(client, sim, account, "POST", CLOSE_POSITION, params)
            codes.append(response.json()["code"])
    assert codes == [101205, 109400, 101205, 109400, 100410]


@virtual_time
async def test_error_rate_window_is_rolling() -> None:
    """Errors older than error_ban_window stop counting."""
    sim = FakeBingX(clock=LoopClock(EPOCH), error_ban_threshold=2, error_ban_window=10.0)
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url=BASE_URL) as client:
        codes = []
        for pause in [0.0, 0.0, 10.0, 0.0]:
            await sim.clock.sleep(pause)
            response = await call(client, sim, account, "POST", CLOSE_POSITION, {"positionId": "x"})
            codes.append(response.json()["code"])
    assert codes == [101205, 101205, 101205, 101205]
    assert sim.requests[-1].during_block is False


# --- faults ----------------------------------------------------------------------------------


@virtual_time
async def test_bad_gateway_page_is_html_and_does_not_execute(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """BadGatewayPage answers an HTML 502 before the exchange sees the request."""
    sim.add_position(account, position_id="1")
    sim.inject(BadGatewayPage())
    response = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert response.status_code == 502
    assert response.headers["content-type"] == "text/html"
    assert "<title>502 Bad Gateway</title>" in response.text
    assert len(sim.positions(account)) == 1
    [recorded] = sim.requests
    assert (recorded.status_code, recorded.code, recorded.fault) == (502, None, BadGatewayPage())
    assert recorded.reached_exchange is False
    assert sim.arrivals(CLOSE_POSITION) == []


@virtual_time
async def test_bad_gateway_after_executing_closes_the_position(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """after_executing=True: the close happens, the client only sees the 502."""
    sim.add_position(account, position_id="1")
    sim.inject(BadGatewayPage(after_executing=True))
    response = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert response.status_code == 502
    assert sim.positions(account) == []
    assert sim.requests[0].reached_exchange is True
    assert len(sim.arrivals(CLOSE_POSITION)) == 1


@virtual_time
@pytest.mark.parametrize("after_executing", [False, True])
async def test_gateway_timeout_answers_unknown_status(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, after_executing: bool
) -> None:
    """GatewayTimeout answers HTTP 504 "unknown status", executed or not as asked."""
    sim.add_position(account, position_id="1")
    sim.inject(GatewayTimeout(after_executing=after_executing))
    response = await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert response.status_code == 504
    assert response.json() == {"code": 100500, "msg": "unknown status"}
    assert len(sim.positions(account)) == (0 if after_executing else 1)
    assert sim.requests[0].code == 100500


@virtual_time
async def test_custom_answer_is_sent_as_given(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """CustomAnswer sends any status and JSON body."""
    sim.inject(CustomAnswer(status_code=418, body={"code": 100410, "msg": "banned"}))
    response = await call(http, sim, account, "GET", POSITIONS)
    assert response.status_code == 418
    assert response.json() == {"code": 100410, "msg": "banned"}


@virtual_time
@pytest.mark.parametrize("after_executing", [False, True])
async def test_never_answer_times_out_after_the_read_timeout(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, after_executing: bool
) -> None:
    """NeverAnswer: the transport waits the read timeout on the clock, then ReadTimeout."""
    sim.add_position(account, position_id="1")
    sim.inject(NeverAnswer(after_executing=after_executing))
    pairs = [("positionId", "1"), ("timestamp", str(now_ms(sim)))]
    start = sim.clock.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            f"{CLOSE_POSITION}?{signed_query(account.secret_key, pairs)}",
            headers={"X-BX-APIKEY": account.api_key},
            timeout=httpx.Timeout(7.0),
        )
    assert sim.clock.monotonic() - start == pytest.approx(7.0)
    assert len(sim.positions(account)) == (0 if after_executing else 1)
    assert sim.requests[0].status_code is None


@virtual_time
@pytest.mark.parametrize("after_executing", [False, True])
async def test_dropped_connection_raises_remote_protocol_error(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount, after_executing: bool
) -> None:
    """DropConnection: no answer, httpx.RemoteProtocolError; executed only if asked."""
    sim.add_position(account, position_id="1")
    sim.inject(DropConnection(after_executing=after_executing))
    with pytest.raises(httpx.RemoteProtocolError):
        await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert len(sim.positions(account)) == (0 if after_executing else 1)
    assert sim.requests[0].fault == DropConnection(after_executing=after_executing)


@virtual_time
async def test_refused_connection_is_not_executed_nor_recorded(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """RefuseConnection: httpx.ConnectError, nothing executed, nothing recorded."""
    sim.add_position(account, position_id="1")
    sim.inject(RefuseConnection())
    with pytest.raises(httpx.ConnectError):
        await call(http, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert len(sim.positions(account)) == 1
    assert sim.requests == []


@virtual_time
async def test_fault_count_and_path(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """A fault hits the next `count` requests for its path; other paths pass."""
    sim.inject(BadGatewayPage(), path=POSITIONS, count=2)
    assert sim.pending_faults() == 2
    statuses = [(await http.get(SERVER_TIME)).status_code]
    for _ in range(3):
        statuses.append((await call(http, sim, account, "GET", POSITIONS)).status_code)
    assert statuses == [200, 502, 502, 200]
    assert sim.pending_faults() == 0


@virtual_time
async def test_faults_strike_before_rate_limiting(
    sim: FakeBingX, http: httpx.AsyncClient, account: SimAccount
) -> None:
    """Requests stopped by a fault before the exchange do not use up rate-limit budgets."""
    sim.inject(BadGatewayPage(), count=10)
    for _ in range(10):
        await call(http, sim, account, "GET", POSITIONS)
    codes = [(await call(http, sim, account, "GET", POSITIONS)).json()["code"] for _ in range(5)]
    assert codes == [0] * 5
    assert sim.violations == 0


async def test_handle_is_usable_without_http() -> None:
    """The core answers SimResponse or NoAnswer directly."""
    sim = FakeBingX(clock=FakeClock(now=EPOCH))
    answer = await sim.handle("GET", SERVER_TIME, "", {})
    stamp = int(EPOCH * 1000)
    assert answer == SimResponse(
        200, b'{"code":0,"msg":"","timestamp":%d,"data":{"serverTime":%d}}' % (stamp, stamp)
    )
    sim.inject(NeverAnswer())
    assert await sim.handle("GET", SERVER_TIME, "", {}) is NoAnswer.HANG


# --- real loopback HTTP ----------------------------------------------------------------------


async def test_serve_answers_over_real_http() -> None:
    """serve() yields a base URL that answers like the transport does."""
    sim = FakeBingX(seed=1)
    account = sim.add_account()
    sim.add_position(account, position_id="123")
    async with sim.serve() as base_url, httpx.AsyncClient(base_url=base_url) as client:
        assert base_url.startswith("http://127.0.0.1:")
        time_answer = await client.get(SERVER_TIME)
        closed = await call(client, sim, account, "POST", CLOSE_POSITION, {"positionId": "123"})
        missing = await client.get("/nothing")
    assert time_answer.json()["code"] == 0
    assert closed.json()["data"]["positionId"] == "123"
    assert isinstance(closed.json()["data"]["orderId"], int)
    assert missing.status_code == 404
    assert sim.positions(account) == []


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


async def test_server_keeps_connections_alive() -> None:
    """Several requests are answered on one connection, in order."""
    sim = FakeBingX()
    async with sim.serve() as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        request = f"GET {SERVER_TIME} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        writer.write(request * 3)
        answers = [await _read_response(reader) for _ in range(3)]
        writer.close()
        await writer.wait_closed()
    assert all(head.startswith(b"HTTP/1.1 200 OK\r\n") for head, _ in answers)
    assert all(b"Connection: keep-alive" in head for head, _ in answers)
    assert len(sim.requests) == 3


async def test_server_rejects_chunked_bodies() -> None:
    """Chunked request bodies are not supported: 411 and the connection closes."""
    sim = FakeBingX()
    async with sim.serve() as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        head, _ = await _read_response(reader)
        rest = await reader.read()
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 411 Length Required\r\n")
    assert rest == b""


async def test_server_handles_hundreds_of_concurrent_connections() -> None:
    """300 clients with their own keep-alive connections are served concurrently."""
    sim = FakeBingX()
    async with sim.serve() as base_url:
        host, port = base_url.removeprefix("http://").split(":")

        async def client() -> list[bytes]:
            reader, writer = await asyncio.open_connection(host, int(port))
            request = f"GET {SERVER_TIME} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            heads = []
            for _ in range(2):
                writer.write(request)
                heads.append((await _read_response(reader))[0].split(b"\r\n")[0])
            writer.close()
            await writer.wait_closed()
            return heads

        results = await asyncio.gather(*(client() for _ in range(300)))
    assert all(heads == [b"HTTP/1.1 200 OK"] * 2 for heads in results)
    assert len(sim.requests) == 600


async def test_server_hang_keeps_the_socket_open_until_the_client_leaves() -> None:
    """NeverAnswer over HTTP: the client times out; the request executed if asked."""
    sim = FakeBingX()
    account = sim.add_account()
    sim.add_position(account, position_id="1")
    sim.inject(NeverAnswer(after_executing=True))
    async with sim.serve() as base_url, httpx.AsyncClient(base_url=base_url, timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await call(client, sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert sim.positions(account) == []


async def test_server_closes_cleanly_with_a_hanging_request_open() -> None:
    """Leaving serve() while a request hangs ends that connection too."""
    sim = FakeBingX()
    sim.inject(NeverAnswer())
    async with sim.serve() as base_url:
        host, port = base_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {SERVER_TIME} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        while not sim.requests:
            await SystemClock().sleep(0.01)
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


async def test_server_drop_closes_without_answer() -> None:
    """DropConnection over HTTP: the client sees the connection closed unanswered."""
    sim = FakeBingX()
    sim.inject(DropConnection())
    async with sim.serve() as base_url, httpx.AsyncClient(base_url=base_url) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(SERVER_TIME)
        after = await client.get(SERVER_TIME)
    assert after.status_code == 200
    assert len(sim.requests) == 2


async def test_server_refusal_closes_before_reading() -> None:
    """RefuseConnection over HTTP: the next connection is closed before any request is read."""
    sim = FakeBingX()
    sim.inject(RefuseConnection())
    async with sim.serve() as base_url, httpx.AsyncClient(base_url=base_url) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(SERVER_TIME)
        after = await client.get(SERVER_TIME)
    assert after.status_code == 200
    assert len(sim.requests) == 1
    assert sim.pending_faults() == 0
