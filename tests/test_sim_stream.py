"""Tests for FakeBingX's account stream: listen keys, the order query, and the WebSocket side
over real loopback connections, read by a plain ``websockets`` client (not the library's).

Most run in virtual time (looptime + LoopClock): the stream's pings, key expiry and delays
pass at once in real time. Tests that serve the stream need ``websockets`` (the ``stream``
extra) and skip without it, except in CI.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
import pytest

from bingx_async._budgets import DEFAULT_RATE_LIMITS, Budget
from bingx_async._clock import SystemClock
from bingx_async._exceptions import ConfigurationError
from bingx_async._signing import ParamValue, canonical_pairs, encode_query, raw_query, sign
from bingx_async.testing import FakeBingX, FakeClock, LoopClock, SimAccount

from .without_websockets import run_without_websockets

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

LISTEN_KEY = "/openApi/user/auth/userDataStream"
CLOSE_POSITION = "/openApi/swap/v1/trade/closePosition"
CLOSE_ALL = "/openApi/swap/v2/trade/closeAllPositions"
ORDER = "/openApi/swap/v2/trade/order"
HISTORY = "/openApi/swap/v1/trade/positionHistory"
POSITIONS = "/openApi/swap/v2/user/positions"
EPOCH = 1_700_000_000.0
EPOCH_MS = 1_700_000_000_000

virtual_time = pytest.mark.looptime
needs_websockets = pytest.mark.usefixtures("websockets_installed")


# --- helpers --------------------------------------------------------------------------------


async def signed(
    http: httpx.AsyncClient,
    sim: FakeBingX,
    account: SimAccount,
    method: str,
    path: str,
    params: Mapping[str, ParamValue] | None = None,
) -> httpx.Response:
    """A correctly signed request, as BingX's docs describe one."""
    pairs = canonical_pairs({**(params or {}), "timestamp": sim.server_time_ms()})
    query = f"{encode_query(pairs)}&signature={sign(account.secret_key, raw_query(pairs))}"
    headers = {"X-BX-APIKEY": account.api_key}
    return await http.request(method, f"{path}?{query}", headers=headers)


async def keyed(
    http: httpx.AsyncClient, account: SimAccount, method: str, listen_key: str | None = None
) -> httpx.Response:
    """A listen-key request as BingX's examples send it: the API key header, no signature."""
    query = f"?listenKey={listen_key}" if listen_key is not None else ""
    headers = {"X-BX-APIKEY": account.api_key}
    return await http.request(method, f"{LISTEN_KEY}{query}", headers=headers)


@dataclass
class Exchange:
    """A simulator served over loopback HTTP and WebSocket, with one account."""

    sim: FakeBingX
    account: SimAccount
    http: httpx.AsyncClient
    stream_url: str

    async def listen_key(self, account: SimAccount | None = None) -> str:
        response = await keyed(self.http, account or self.account, "POST")
        key = response.json()["listenKey"]
        assert isinstance(key, str)
        return key

    async def connect(self, listen_key: str) -> ClientConnection:
        from websockets.asyncio.client import connect

        return await connect(
            f"{self.stream_url}?listenKey={listen_key}", compression=None, ping_interval=None
        )

    async def close(self, position_id: str, account: SimAccount | None = None) -> int:
        """Close a position over HTTP; returns the orderId the close answered."""
        answer = await signed(
            self.http,
            self.sim,
            account or self.account,
            "POST",
            CLOSE_POSITION,
            {"positionId": position_id},
        )
        order_id = answer.json()["data"]["orderId"]
        assert isinstance(order_id, int)
        return order_id


@asynccontextmanager
async def served(sim: FakeBingX) -> AsyncIterator[Exchange]:
    account = sim.add_account()
    async with AsyncExitStack() as stack:
        base_url = await stack.enter_async_context(sim.serve())
        stream_url = await stack.enter_async_context(sim.serve_stream())
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url))
        yield Exchange(sim, account, http, stream_url)


def virtual_sim(**options: object) -> FakeBingX:
    sim = FakeBingX(clock=LoopClock(EPOCH), seed=1)
    sim.stream.ping_interval = None  # tests that want pings turn them on
    for name, value in options.items():
        setattr(sim.stream, name, value)
    return sim


async def receive(ws: ClientConnection) -> str:
    """The next frame's text: every frame must be gzip-compressed binary."""
    data = await ws.recv()
    assert isinstance(data, bytes)
    return gzip.decompress(data).decode()


async def next_event(ws: ClientConnection) -> dict[str, object]:
    """The next event, answering any Ping on the way."""
    while True:
        text = await receive(ws)
        if text == "Ping":
            await ws.send("Pong")
            continue
        event = json.loads(text)
        assert isinstance(event, dict)
        return event


async def nothing_within(ws: ClientConnection, seconds: float) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return True
    return False


def close_code(error: BaseException) -> int | None:
    from websockets.exceptions import ConnectionClosed

    assert isinstance(error, ConnectionClosed)
    return error.rcvd.code if error.rcvd is not None else None


def now() -> float:
    return asyncio.get_running_loop().time()


def tick(sim: FakeBingX) -> None:
    """One second on a FakeClock: room in the listen-key endpoints' 2/s budgets again."""
    assert isinstance(sim.clock, FakeClock)
    sim.clock.advance(1.0)


# --- listen keys over REST (no WebSocket needed) --------------------------------------------


@pytest.fixture
def fake_sim() -> FakeBingX:
    return FakeBingX(clock=FakeClock(EPOCH), seed=1)


async def test_listen_key_create_extend_delete(fake_sim: FakeBingX) -> None:
    """POST answers the bare {"listenKey"} object; PUT and DELETE answer 200, then 404."""
    account = fake_sim.add_account()
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        created = await keyed(http, account, "POST")
        key = created.json()["listenKey"]
        extended = await keyed(http, account, "PUT", key)
        assert fake_sim.stream.listen_keys(account) == [key]
        deleted = await keyed(http, account, "DELETE", key)
        tick(fake_sim)
        again = [await keyed(http, account, method, key) for method in ("PUT", "DELETE")]
        missing = await keyed(http, account, "PUT")
    assert created.status_code == 200
    assert created.json() == {"listenKey": key}
    assert len(key) == 64
    assert int(key, 16) >= 0
    assert (extended.status_code, extended.json()) == (200, {})
    assert (deleted.status_code, deleted.json()) == (200, {})
    assert [(r.status_code, r.content) for r in again] == [(404, b""), (404, b"")]
    assert (missing.status_code, missing.content) == (204, b"")
    assert fake_sim.stream.listen_keys(account) == []


async def test_each_post_hands_out_a_new_key(fake_sim: FakeBingX) -> None:
    """Keys are per request, not one per account."""
    account = fake_sim.add_account()
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        first = (await keyed(http, account, "POST")).json()["listenKey"]
        second = (await keyed(http, account, "POST")).json()["listenKey"]
    assert first != second
    assert fake_sim.stream.listen_keys(account) == [first, second]


async def test_listen_key_of_another_account_is_not_found(fake_sim: FakeBingX) -> None:
    """One account cannot extend or delete another's key."""
    owner, other = fake_sim.add_account(), fake_sim.add_account()
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        key = (await keyed(http, owner, "POST")).json()["listenKey"]
        answers = [await keyed(http, other, method, key) for method in ("PUT", "DELETE")]
    assert [r.status_code for r in answers] == [404, 404]
    assert fake_sim.stream.listen_keys(owner) == [key]


async def test_listen_key_needs_a_known_api_key(fake_sim: FakeBingX) -> None:
    """Without a known X-BX-APIKEY the answer is 100413, as for signed endpoints."""
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        answer = await http.post(LISTEN_KEY, headers={"X-BX-APIKEY": "nobody"})
    assert answer.json()["code"] == 100413


async def test_listen_key_expires_sixty_minutes_after_creation_or_extension(
    fake_sim: FakeBingX,
) -> None:
    """Validity is 60 minutes on the simulator's clock, counted again from each PUT."""
    clock = fake_sim.clock
    assert isinstance(clock, FakeClock)
    account = fake_sim.add_account()
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        key = (await keyed(http, account, "POST")).json()["listenKey"]
        clock.advance(3599.0)
        still_there = await keyed(http, account, "PUT", key)
        clock.advance(3599.0)
        extended_there = await keyed(http, account, "PUT", key)
        clock.advance(3600.0)
        gone = await keyed(http, account, "PUT", key)
    assert [still_there.status_code, extended_there.status_code] == [200, 200]
    assert gone.status_code == 404
    assert fake_sim.stream.listen_keys(account) == []


async def test_listen_key_signature_is_optional_unless_required(fake_sim: FakeBingX) -> None:
    """A signed request is accepted too; with require_signature, only a signed one is."""
    account = fake_sim.add_account()
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        unsigned = await keyed(http, account, "POST")
        signed_answer = await signed(http, fake_sim, account, "POST", LISTEN_KEY)
        tick(fake_sim)
        fake_sim.stream.require_signature = True
        refused = await keyed(http, account, "POST")
        accepted = await signed(http, fake_sim, account, "POST", LISTEN_KEY)
    assert "listenKey" in unsigned.json()
    assert "listenKey" in signed_answer.json()
    assert refused.json()["code"] == 100001
    assert "listenKey" in accepted.json()


async def test_listen_key_endpoints_allow_two_per_second(fake_sim: FakeBingX) -> None:
    """BingX documents 2/s per UID: a third POST within a second is rate limited."""
    account = fake_sim.add_account()
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        answers = [await keyed(http, account, "POST") for _ in range(3)]
    assert ["listenKey" in answer.json() for answer in answers] == [True, True, False]
    assert answers[2].json()["code"] == 100410
    assert fake_sim.violations == 1
    assert fake_sim.rate_limits.endpoints[f"POST {LISTEN_KEY}"].ip_group == 2


async def test_stream_budgets_can_be_overridden() -> None:
    """A policy that names the listen-key endpoint keeps its own budget."""
    policy = DEFAULT_RATE_LIMITS.with_endpoint(
        f"POST {LISTEN_KEY}", per_account=(Budget(3, 1.0),), ip_group=2
    )
    sim = FakeBingX(clock=FakeClock(EPOCH), rate_limits=policy)
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim") as http:
        answers = [await keyed(http, account, "POST") for _ in range(4)]
    assert ["listenKey" in answer.json() for answer in answers] == [True, True, True, False]


# --- fills and the order query --------------------------------------------------------------


async def test_a_close_fills_at_the_mark_price_with_profit_and_fee(fake_sim: FakeBingX) -> None:
    """The fill: mark price, (mark - entry) * qty realised, 0.05 % taker fee, balance booked."""
    account = fake_sim.add_account(balance="1000.0")
    fake_sim.add_position(
        account, position_id="5", quantity="0.5", avg_price="2000.0", mark_price="2100.0"
    )
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        listed = await signed(http, fake_sim, account, "GET", POSITIONS)
        closed = await signed(http, fake_sim, account, "POST", CLOSE_POSITION, {"positionId": "5"})
        history = await signed(http, fake_sim, account, "GET", HISTORY, {"symbol": "BTC-USDT"})
    [order] = fake_sim.orders(account)
    assert order.order_id == str(closed.json()["data"]["orderId"])
    assert (order.side, order.avg_price, order.quantity) == ("SELL", "2100.0", "0.5")
    assert (order.realized_profit, order.commission) == ("50.0000", "-0.5250")
    assert fake_sim.balance(account) == "1049.4750"
    position = listed.json()["data"][0]
    assert (position["markPrice"], position["unrealizedProfit"]) == ("2100.0", "50.0000")
    entry = history.json()["data"]["positionHistory"][0]
    assert entry["avgClosePrice"] == 2100.0
    assert (entry["realisedProfit"], entry["positionCommission"]) == ("50.0000", "-0.5250")
    assert entry["netProfit"] == "49.4750"


async def test_a_short_closes_with_a_buy(fake_sim: FakeBingX) -> None:
    """A short realises (entry - fill) * qty and is closed by a BUY."""
    account = fake_sim.add_account()
    fake_sim.add_position(
        account,
        position_id="6",
        position_side="SHORT",
        quantity="2",
        avg_price="10",
        mark_price="9",
    )
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        await signed(http, fake_sim, account, "POST", CLOSE_POSITION, {"positionId": "6"})
    [order] = fake_sim.orders(account)
    assert (order.side, order.realized_profit, order.commission) == ("BUY", "2.0000", "-0.0090")


async def test_order_query_shows_the_closing_order(fake_sim: FakeBingX) -> None:
    """GET trade/order answers data.order with the fill the close made; requests are recorded."""
    account = fake_sim.add_account()
    fake_sim.add_position(account, position_id="9", quantity="0.01", mark_price="61000.0")
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        closed = await signed(http, fake_sim, account, "POST", CLOSE_POSITION, {"positionId": "9"})
        order_id = closed.json()["data"]["orderId"]
        query: dict[str, ParamValue] = {"symbol": "BTC-USDT", "orderId": order_id}
        found = await signed(http, fake_sim, account, "GET", ORDER, query)
        wrong_symbol = await signed(
            http, fake_sim, account, "GET", ORDER, {**query, "symbol": "ETH-USDT"}
        )
        unknown = await signed(http, fake_sim, account, "GET", ORDER, {**query, "orderId": 1})
        no_symbol = await signed(http, fake_sim, account, "GET", ORDER, {"orderId": order_id})
    assert found.json()["data"] == {
        "order": {
            "symbol": "BTC-USDT",
            "orderId": order_id,
            "side": "SELL",
            "positionSide": "LONG",
            "type": "MARKET",
            "origQty": "0.01",
            "price": "0",
            "executedQty": "0.01",
            "avgPrice": "61000.0",
            "cumQuote": "610.0000",
            "stopPrice": "",
            "profit": "10.0000",
            "commission": "-0.3050",
            "status": "FILLED",
            "time": EPOCH_MS,
            "updateTime": EPOCH_MS,
            "clientOrderId": "",
            "workingType": "MARK_PRICE",
        }
    }
    assert [wrong_symbol.json()["code"], unknown.json()["code"]] == [80016, 80016]
    assert no_symbol.json()["code"] == 109400
    assert len(fake_sim.requests_to(ORDER)) == 4


async def test_order_query_allows_five_per_second(fake_sim: FakeBingX) -> None:
    """The order query has its own budget, 5/s per UID: the sixth within a second is refused."""
    account = fake_sim.add_account()
    query: dict[str, ParamValue] = {"symbol": "BTC-USDT", "orderId": 1}
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        answers = [await signed(http, fake_sim, account, "GET", ORDER, query) for _ in range(6)]
    assert [answer.json()["code"] for answer in answers] == [80016] * 5 + [100410]


async def test_no_events_are_made_without_a_stream_server(fake_sim: FakeBingX) -> None:
    """Closes cost no event building while nothing serves the stream."""
    account = fake_sim.add_account()
    fake_sim.add_position(account, position_id="1")
    async with httpx.AsyncClient(transport=fake_sim.transport(), base_url="http://sim") as http:
        await signed(http, fake_sim, account, "POST", CLOSE_POSITION, {"positionId": "1"})
    assert fake_sim.stream.published(account) == []
    assert len(fake_sim.orders(account)) == 1


def test_testing_imports_and_works_without_websockets() -> None:
    """bingx_async.testing, listen keys included, needs no websockets; serve_stream says why."""
    script = """
import asyncio
import httpx
from bingx_async.testing import FakeBingX, LoopClock
from bingx_async._exceptions import ConfigurationError

async def main():
    sim = FakeBingX(clock=LoopClock())
    account = sim.add_account()
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim") as http:
        answer = await http.post(
            "/openApi/user/auth/userDataStream", headers={"X-BX-APIKEY": account.api_key}
        )
    assert "listenKey" in answer.json()
    try:
        async with sim.serve_stream():
            pass
    except ConfigurationError as error:
        print(error)

asyncio.run(main())
"""
    done = run_without_websockets(script)
    assert done.returncode == 0, done.stderr
    assert "needs the websockets package" in done.stdout


async def test_serve_stream_refuses_a_fake_clock(fake_sim: FakeBingX) -> None:
    """FakeClock's waits take no time: the stream's pings would spin, so it is refused."""
    with pytest.raises(ConfigurationError, match="SystemClock or LoopClock"):
        async with fake_sim.serve_stream():
            pass


# --- the WebSocket stream -------------------------------------------------------------------


@needs_websockets
@virtual_time
async def test_frames_are_gzip_and_pongs_keep_the_stream_open() -> None:
    """Ping comes gzipped every ping_interval; answered, the stream stays open for an hour."""
    sim = virtual_sim(ping_interval=5.0)
    async with served(sim) as exchange:
        ws = await exchange.connect(await exchange.listen_key())
        started = now()
        ping_times = []
        while now() - started < 3000:
            assert await receive(ws) == "Ping"
            ping_times.append(now() - started)
            await ws.send("Pong")
        assert sim.stream.open_connections(exchange.account) == 1
        await ws.close()
    assert ping_times[:3] == [pytest.approx(5.0), pytest.approx(10.0), pytest.approx(15.0)]
    assert len(ping_times) == 600


@needs_websockets
@virtual_time
async def test_missing_pongs_end_the_stream() -> None:
    """Two pings in a row without Pong (max_missed_pongs=2): closed with 1008 at the third."""
    from websockets.exceptions import ConnectionClosed

    sim = virtual_sim(ping_interval=5.0, max_missed_pongs=2)
    async with served(sim) as exchange:
        ws = await exchange.connect(await exchange.listen_key())
        started = now()
        texts = [await receive(ws), await receive(ws)]
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        ended = now() - started
    assert texts == ["Ping", "Ping"]
    assert ended == pytest.approx(15.0)
    assert close_code(closed.value) == 1008


@needs_websockets
@virtual_time
async def test_close_over_http_pushes_order_trade_update_and_account_update() -> None:
    """A close made over real HTTP pushes FILLED with the answered orderId and the fill, then
    ACCOUNT_UPDATE, exactly in BingX's shape."""
    sim = virtual_sim()
    async with served(sim) as exchange:
        sim.add_position(exchange.account, position_id="42", quantity="0.01", mark_price="61000.0")
        ws = await exchange.connect(await exchange.listen_key())
        order_id = await exchange.close("42")
        events = [await next_event(ws), await next_event(ws)]
    [order] = sim.orders(exchange.account)
    assert order.order_id == str(order_id)
    assert events == [
        {
            "e": "ORDER_TRADE_UPDATE",
            "E": EPOCH_MS,
            "T": EPOCH_MS,
            "o": {
                "s": "BTC-USDT",
                "c": "",
                "C": "",
                "i": order_id,
                "S": "SELL",
                "o": "MARKET",
                "q": "0.01",
                "p": "0",
                "sp": "0",
                "ap": "61000.0",
                "x": "TRADE",
                "X": "FILLED",
                "l": "0.01",
                "L": "61000.0",
                "z": "0.01",
                "Z": "610.0000",
                "n": "-0.3050",
                "N": "USDT",
                "rp": "10.0000",
                "T": EPOCH_MS,
                "ps": "LONG",
                "ro": True,
                "wt": "MARK_PRICE",
            },
        },
        {
            "e": "ACCOUNT_UPDATE",
            "E": EPOCH_MS,
            "T": EPOCH_MS,
            "a": {
                "m": "ORDER",
                "B": [{"a": "USDT", "wb": "10009.6950", "cw": "10009.6950", "bc": "9.6950"}],
                "P": [
                    {
                        "s": "BTC-USDT",
                        "pa": "0",
                        "ep": "0",
                        "up": "0",
                        "mt": "isolated",
                        "iw": "0",
                        "ps": "LONG",
                        "cr": "10.0000",
                    }
                ],
            },
        },
    ]
    assert sim.stream.published(exchange.account) == events


@needs_websockets
@virtual_time
async def test_new_order_event_comes_first_when_asked() -> None:
    """With new_order_events, ORDER_TRADE_UPDATE NEW (nothing filled yet) precedes FILLED."""
    sim = virtual_sim(new_order_events=True)
    async with served(sim) as exchange:
        sim.add_position(exchange.account, position_id="1")
        ws = await exchange.connect(await exchange.listen_key())
        order_id = await exchange.close("1")
        events = [await next_event(ws) for _ in range(3)]
    kinds = [(e["e"], e["o"]["X"] if "o" in e else None) for e in events]  # type: ignore[index]
    assert kinds == [
        ("ORDER_TRADE_UPDATE", "NEW"),
        ("ORDER_TRADE_UPDATE", "FILLED"),
        ("ACCOUNT_UPDATE", None),
    ]
    new = events[0]["o"]
    assert isinstance(new, dict)
    assert (new["i"], new["x"], new["z"], new["ap"]) == (order_id, "NEW", "0", "0")


@needs_websockets
@virtual_time
async def test_close_all_positions_pushes_one_fill_per_position() -> None:
    """closeAllPositions: a FILLED event per closed position, IDs as in the answer's success."""
    sim = virtual_sim()
    async with served(sim) as exchange:
        for position_id in ("1", "2"):
            sim.add_position(exchange.account, position_id=position_id)
        ws = await exchange.connect(await exchange.listen_key())
        answer = await signed(exchange.http, sim, exchange.account, "POST", CLOSE_ALL)
        events = [await next_event(ws) for _ in range(4)]
    fills = [e["o"]["i"] for e in events if e["e"] == "ORDER_TRADE_UPDATE"]  # type: ignore[index]
    assert fills == answer.json()["data"]["success"]
    assert [e["e"] for e in events] == ["ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"] * 2


@needs_websockets
@virtual_time
async def test_events_reach_every_stream_of_the_account_and_no_other() -> None:
    """Two streams of one account both get the fill; another account's stream gets nothing."""
    sim = virtual_sim()
    async with served(sim) as exchange:
        other = sim.add_account()
        sim.add_position(exchange.account, position_id="1")
        first = await exchange.connect(await exchange.listen_key())
        second = await exchange.connect(await exchange.listen_key())
        stranger = await exchange.connect(await exchange.listen_key(other))
        await exchange.close("1")
        got = [(await next_event(ws))["e"] for ws in (first, second)]
        assert await nothing_within(stranger, 10.0)
        assert sim.stream.open_connections() == 3
        assert sim.stream.open_connections(other) == 1
    assert got == ["ORDER_TRADE_UPDATE", "ORDER_TRADE_UPDATE"]


@needs_websockets
@virtual_time
async def test_unknown_key_is_refused_at_the_handshake() -> None:
    """An unknown listen key: HTTP 401 at the handshake (reject_invalid_keys, the default)."""
    from websockets.exceptions import InvalidStatus

    sim = virtual_sim()
    async with served(sim) as exchange:
        with pytest.raises(InvalidStatus) as refused:
            await exchange.connect("0" * 64)
    assert refused.value.response.status_code == 401


@needs_websockets
@virtual_time
async def test_unknown_key_can_be_accepted_then_closed() -> None:
    """With reject_invalid_keys off, the stream opens and is closed at once with 1008."""
    from websockets.exceptions import ConnectionClosed

    sim = virtual_sim(reject_invalid_keys=False)
    async with served(sim) as exchange:
        ws = await exchange.connect("0" * 64)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert close_code(closed.value) == 1008


@needs_websockets
@virtual_time
async def test_other_paths_are_not_found() -> None:
    """Only /swap-market serves the stream."""
    from websockets.exceptions import InvalidStatus

    sim = virtual_sim()
    async with served(sim) as exchange:
        key = await exchange.listen_key()
        from websockets.asyncio.client import connect

        url = exchange.stream_url.replace("/swap-market", "/market")
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{url}?listenKey={key}")
    assert refused.value.response.status_code == 404


@needs_websockets
@virtual_time
async def test_expiry_sends_listen_key_expired_and_closes() -> None:
    """Sixty virtual minutes after creation: listenKeyExpired, then a normal close."""
    from websockets.exceptions import ConnectionClosed

    sim = virtual_sim()
    async with served(sim) as exchange:
        key = await exchange.listen_key()
        ws = await exchange.connect(key)
        started = now()
        event = await next_event(ws)
        expired_after = now() - started
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert sim.stream.listen_keys(exchange.account) == []
    assert event == {"e": "listenKeyExpired", "E": EPOCH_MS + 3_600_000, "listenKey": key}
    assert expired_after == pytest.approx(3600.0)
    assert close_code(closed.value) == 1000


@needs_websockets
@virtual_time
async def test_extending_the_key_keeps_the_stream_open() -> None:
    """A PUT after 30 minutes moves the expiry to 90 minutes."""
    sim = virtual_sim()
    async with served(sim) as exchange:
        key = await exchange.listen_key()
        ws = await exchange.connect(key)
        started = now()
        assert await nothing_within(ws, 1800.0)
        await keyed(exchange.http, exchange.account, "PUT", key)
        event = await next_event(ws)
        expired_after = now() - started
    assert event["e"] == "listenKeyExpired"
    assert expired_after == pytest.approx(5400.0)


@needs_websockets
@virtual_time
async def test_deleting_the_key_closes_its_streams() -> None:
    """DELETE ends the key's streams with a normal close, without an event."""
    from websockets.exceptions import ConnectionClosed

    sim = virtual_sim()
    async with served(sim) as exchange:
        key = await exchange.listen_key()
        ws = await exchange.connect(key)
        await keyed(exchange.http, exchange.account, "DELETE", key)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert close_code(closed.value) == 1000
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.reason == "listenKey deleted"


@needs_websockets
async def test_the_stream_runs_in_real_time_too() -> None:
    """With SystemClock: pings every 50 ms, a close's event within a few hundred ms."""
    sim = FakeBingX(clock=SystemClock(), seed=1)
    sim.stream.ping_interval = 0.05
    async with served(sim) as exchange:
        sim.add_position(exchange.account, position_id="1")
        ws = await exchange.connect(await exchange.listen_key())
        assert await asyncio.wait_for(receive(ws), 0.5) == "Ping"
        await ws.send("Pong")
        await exchange.close("1")
        event = await asyncio.wait_for(next_event(ws), 0.5)
    assert event["e"] == "ORDER_TRADE_UPDATE"


# --- faults ---------------------------------------------------------------------------------


@needs_websockets
@virtual_time
async def test_drop_connections_cuts_streams_without_a_close_frame() -> None:
    """drop_connections(account) cuts that account's streams only, as a network failure."""
    from websockets.exceptions import ConnectionClosedError

    sim = virtual_sim()
    async with served(sim) as exchange:
        other = sim.add_account()
        ws = await exchange.connect(await exchange.listen_key())
        kept = await exchange.connect(await exchange.listen_key(other))
        assert sim.stream.drop_connections(exchange.account) == 1
        assert sim.stream.open_connections() == 1
        with pytest.raises(ConnectionClosedError) as cut:
            await ws.recv()
        assert await nothing_within(kept, 1.0)
        assert sim.stream.drop_connections() == 1
    assert close_code(cut.value) is None  # no close frame


@needs_websockets
@virtual_time
async def test_delayed_events_arrive_late_and_in_order() -> None:
    """delay_events(3): a close's events arrive 3 virtual seconds later, in order."""
    sim = virtual_sim()
    async with served(sim) as exchange:
        for position_id in ("1", "2"):
            sim.add_position(exchange.account, position_id=position_id)
        ws = await exchange.connect(await exchange.listen_key())
        sim.stream.delay_events(3.0)
        started = now()
        first = await exchange.close("1")
        sim.stream.delay_events(0.0)
        second = await exchange.close("2")
        events = [await next_event(ws) for _ in range(4)]
        arrived_after = now() - started
    ids = [e["o"]["i"] for e in events if e["e"] == "ORDER_TRADE_UPDATE"]  # type: ignore[index]
    assert ids == [first, second]  # the undelayed one waited for the delayed one
    assert arrived_after == pytest.approx(3.0)


@needs_websockets
@virtual_time
async def test_duplicated_events_come_twice() -> None:
    """duplicate_events(): every event is sent twice in a row."""
    sim = virtual_sim()
    async with served(sim) as exchange:
        sim.add_position(exchange.account, position_id="1")
        ws = await exchange.connect(await exchange.listen_key())
        sim.stream.duplicate_events()
        await exchange.close("1")
        events = [await next_event(ws) for _ in range(4)]
        assert await nothing_within(ws, 1.0)
    assert [e["e"] for e in events] == ["ORDER_TRADE_UPDATE"] * 2 + ["ACCOUNT_UPDATE"] * 2
    assert events[0] == events[1]


@needs_websockets
@virtual_time
async def test_held_events_wait_for_release() -> None:
    """hold_events(): nothing arrives; release_events() sends what was held, in order."""
    sim = virtual_sim()
    async with served(sim) as exchange:
        sim.add_position(exchange.account, position_id="1")
        ws = await exchange.connect(await exchange.listen_key())
        sim.stream.hold_events()
        order_id = await exchange.close("1")
        assert await nothing_within(ws, 60.0)
        sim.stream.release_events()
        events = [await next_event(ws) for _ in range(2)]
    assert [e["e"] for e in events] == ["ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"]
    assert events[0]["o"]["i"] == order_id  # type: ignore[index]


@needs_websockets
@virtual_time
async def test_expire_listen_key_now() -> None:
    """expire_listen_key(): listenKeyExpired at once, then close; the key is gone for PUT."""
    from websockets.exceptions import ConnectionClosed

    sim = virtual_sim()
    async with served(sim) as exchange:
        key = await exchange.listen_key()
        ws = await exchange.connect(key)
        sim.stream.expire_listen_key(key)
        event = await next_event(ws)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        extended = await keyed(exchange.http, exchange.account, "PUT", key)
    assert event == {"e": "listenKeyExpired", "E": EPOCH_MS, "listenKey": key}
    assert extended.status_code == 404
    with pytest.raises(ConfigurationError):
        sim.stream.expire_listen_key("f" * 64)


@needs_websockets
@virtual_time
async def test_refused_connections_for_a_while() -> None:
    """refuse_connections(10): handshakes get 503 for 10 virtual seconds, then succeed."""
    from websockets.exceptions import InvalidStatus

    sim = virtual_sim()
    async with served(sim) as exchange:
        key = await exchange.listen_key()
        sim.stream.refuse_connections(10.0)
        with pytest.raises(InvalidStatus) as refused:
            await exchange.connect(key)
        await sim.clock.sleep(10.0)
        ws = await exchange.connect(key)
        assert sim.stream.open_connections(exchange.account) == 1
        await ws.close()
    assert refused.value.response.status_code == 503
