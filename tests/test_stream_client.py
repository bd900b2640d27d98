"""The account stream's client side (``bingx_async._stream``): reading frames, the listen key's
life, the connection and its reconnections, subscribers and fill waiters.

End-to-end tests run against the simulator's stream over real loopback WebSockets, in
virtual time (looptime + LoopClock): hours of listen-key life pass in milliseconds. A raw
``websockets`` server stands in where frames the simulator never sends are needed.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from bingx_async import (
    APIError,
    AuthenticationError,
    ClientClosedError,
    ConfigurationError,
    InvalidArgumentError,
    ResponseValidationError,
    ServerError,
)
from bingx_async._decode import body_code, error_from_response, parse_body
from bingx_async._models import Fill
from bingx_async._redact import install_httpx_log_filter, redact
from bingx_async._signing import ParamValue, canonical_pairs, encode_query, raw_query, sign
from bingx_async._stream import (
    AccountStream,
    AccountUpdate,
    EventsDropped,
    MalformedFrameError,
    OrderUpdate,
    OtherEvent,
    StreamReconnected,
    StreamSettings,
    StreamSubscription,
    parse_frame,
)
from bingx_async._stream._close_fills import fill_from_update
from bingx_async._stream._events import MAX_FRAME, ListenKeyExpired, Ping
from bingx_async._stream._fills import FillBook
from bingx_async._stream._listen_key import ListenKey, ListenKeys
from bingx_async._stream._registry import StreamRegistry
from bingx_async.testing import FakeBingX, FakeClock, LoopClock, SimAccount

from .without_websockets import run_without_websockets

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

LISTEN_KEY = "/openApi/user/auth/userDataStream"
CLOSE_POSITION = "/openApi/swap/v1/trade/closePosition"
EPOCH = 1_700_000_000.0
ORDER_ID = "1770656007907930112"  # above 2**53, as BingX's order IDs are

virtual_time = pytest.mark.looptime
needs_websockets = pytest.mark.usefixtures("websockets_installed")


# --- helpers --------------------------------------------------------------------------------


def gz(event: Mapping[str, object] | str) -> bytes:
    """A frame as BingX sends it: compact JSON (or a text), gzip-compressed."""
    text = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    return gzip.compress(text.encode(), mtime=0)


def order_event(**order: object) -> dict[str, object]:
    """``ORDER_TRADE_UPDATE`` as BingX documents it, decimals as strings."""
    fields: dict[str, object] = {
        "s": "BTC-USDT",
        "c": "",
        "C": "my-close-1",
        "i": int(ORDER_ID),
        "S": "SELL",
        "o": "MARKET",
        "q": "0.5",
        "p": "0",
        "sp": "0",
        "ap": "2100.5",
        "x": "TRADE",
        "X": "FILLED",
        "z": "0.5",
        "Z": "1050.25",
        "n": "-0.5250",
        "N": "USDT",
        "rp": "50.0000",
        "T": 1_700_000_000_123,
        "ps": "LONG",
        "ro": True,
        "wt": "MARK_PRICE",
    }
    fields.update(order)
    return {"e": "ORDER_TRADE_UPDATE", "E": 1_700_000_000_456, "T": 1_700_000_000_123, "o": fields}


def at_ms(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, tz=UTC)


class NoJitter(random.Random):
    """Back-off waits without their random part: exact times in tests."""

    def random(self) -> float:
        return 0.0


@dataclass
class FakeRest:
    """Listen-key REST requests answered in memory: BingX's bare answers, each POST a new key.

    ``fail`` maps a method to errors raised by its next requests, in turn; ``gone`` holds keys
    BingX no longer knows (404); ``hang`` methods never answer.
    """

    fail: dict[str, list[BaseException]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    _called: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, method: str, path: str, params: Mapping[str, str]) -> Any:
        assert path == LISTEN_KEY
        self.calls.append((method, dict(params)))
        self._called.set()
        if method in self.hang:
            await asyncio.Event().wait()
        failures = self.fail.get(method)
        if failures:
            raise failures.pop(0)
        if method == "POST":
            self.keys.append(f"{len(self.keys) + 1:064x}")
            return {"listenKey": self.keys[-1]}
        if params.get("listenKey") in self.gone:
            raise APIError("HTTP 404", status_code=404, endpoint=f"{method} {path}")
        return {}

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    async def until(self, method: str, count: int) -> None:
        """Wait until ``count`` requests with ``method`` were made."""
        while self.methods().count(method) < count:
            self._called.clear()
            await self._called.wait()


def not_found() -> APIError:
    return APIError("HTTP 404", status_code=404, endpoint=f"PUT {LISTEN_KEY}")


async def next_of(events: StreamSubscription, kind: type[Any], *, within: float = 600.0) -> Any:
    """The next event of ``kind``, skipping others (within ``within`` virtual or real
    seconds)."""
    async with asyncio.timeout(within):
        async for event in events:
            if isinstance(event, kind):
                return event
    raise AssertionError(f"the stream ended before a {kind.__name__}")


def loop_now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Exchange:
    """The simulator, served: its stream over loopback WebSocket, REST in process."""

    sim: FakeBingX
    account: SimAccount
    stream_url: str
    http: httpx.AsyncClient
    stack: AsyncExitStack
    #: Every listen key BingX handed out, in order.
    keys: list[str] = field(default_factory=list)

    async def rest(self, method: str, path: str, params: Mapping[str, str]) -> Any:
        """The REST callable, as the client's pipeline would be: BingX's errors raised."""
        headers = {"X-BX-APIKEY": self.account.api_key}
        answer = await self.http.request(method, path, params=dict(params), headers=headers)
        body = parse_body(answer.content)
        failed = body is not None and "code" in body and body_code(body) != 0
        if answer.status_code >= 300 or failed:
            raise error_from_response(
                status_code=answer.status_code,
                body=body,
                text=answer.text,
                endpoint=f"{method} {path}",
                headers=answer.headers,
                server_now=None,
            )
        if body is not None and "listenKey" in body:
            self.keys.append(body["listenKey"])
        return body

    async def open_stream(self, **settings: Any) -> AccountStream:
        """A stream on this exchange, closed before the exchange stops serving."""
        stream = AccountStream(
            self.rest,
            settings=StreamSettings(url=self.stream_url, **settings),
            clock=self.sim.clock,
            rng=NoJitter(),
        )
        self.stack.push_async_callback(stream.aclose)
        return stream

    async def close(self, position_id: str) -> str:
        """Close a position over (simulated) HTTP, signed; returns the answered order ID."""
        params: dict[str, ParamValue] = {
            "positionId": position_id,
            "timestamp": self.sim.server_time_ms(),
        }
        pairs = canonical_pairs(params)
        query = f"{encode_query(pairs)}&signature={sign(self.account.secret_key, raw_query(pairs))}"
        answer = await self.http.post(
            f"{CLOSE_POSITION}?{query}", headers={"X-BX-APIKEY": self.account.api_key}
        )
        return str(answer.json()["data"]["orderId"])


@asynccontextmanager
async def exchange(**stream_options: object) -> AsyncIterator[Exchange]:
    """A simulator on LoopClock, without pings unless asked (``stream_options`` set
    ``sim.stream``'s attributes)."""
    sim = FakeBingX(clock=LoopClock(EPOCH), seed=1)
    sim.stream.ping_interval = None
    for name, value in stream_options.items():
        setattr(sim.stream, name, value)
    account = sim.add_account()
    async with AsyncExitStack() as outer:
        stream_url = await outer.enter_async_context(sim.serve_stream())
        http = await outer.enter_async_context(
            httpx.AsyncClient(transport=sim.transport(), base_url="http://sim")
        )
        # Streams close first (their exit stack unwinds before the server stops).
        async with AsyncExitStack() as streams:
            yield Exchange(sim, account, stream_url, http, streams)


Handler = Callable[["ServerConnection"], Awaitable[None]]


@asynccontextmanager
async def raw_server(
    handler: Handler,
    process_request: Callable[
        [ServerConnection, Request], Response | Awaitable[Response | None] | None
    ]
    | None = None,
) -> AsyncIterator[str]:
    """A bare WebSocket server on loopback, for frames the simulator never sends."""
    from websockets.asyncio.server import serve

    async with serve(
        handler,
        "127.0.0.1",
        0,
        compression=None,
        ping_interval=None,
        process_request=process_request,
    ) as server:
        host, port = next(iter(server.sockets)).getsockname()[:2]
        yield f"ws://{host}:{port}/swap-market"


def raw_stream(rest: FakeRest, url: str, **settings: Any) -> AccountStream:
    return AccountStream(
        rest, settings=StreamSettings(url=url, **settings), clock=LoopClock(EPOCH), rng=NoJitter()
    )


# --- reading frames -------------------------------------------------------------------------


def test_order_update_reads_every_field() -> None:
    """Every documented field, decimals from strings, the ID as a string, times in UTC."""
    update = parse_frame(gz(order_event()))
    assert update == OrderUpdate(
        order_id=ORDER_ID,
        symbol="BTC-USDT",
        client_order_id="my-close-1",
        side="SELL",
        order_type="MARKET",
        status="FILLED",
        execution_type="TRADE",
        quantity=Decimal("0.5"),
        price=Decimal("0"),
        avg_price=Decimal("2100.5"),
        filled_quantity=Decimal("0.5"),
        realized_profit=Decimal("50.0000"),
        fee=Decimal("-0.5250"),
        fee_asset="USDT",
        position_side="LONG",
        reduce_only=True,
        time=at_ms(1_700_000_000_123),
        event_time=at_ms(1_700_000_000_456),
        raw={},
    )
    assert isinstance(update, OrderUpdate)
    assert update.time is not None
    assert update.time.tzinfo is UTC
    assert update.is_final


def test_order_update_reads_json_numbers_exactly() -> None:
    """Amounts as JSON numbers keep every digit (never through float); a 19-digit ID as a
    number or a string is the same string."""
    text = (
        '{"e":"ORDER_TRADE_UPDATE","E":1700000000456,"o":{"i":9223372036854775807,'
        '"q":0.1,"ap":61000.123456789012345678,"z":1e-8,"rp":-12.50,"n":0,"ro":"false",'
        '"T":"1700000000123","X":"PARTIALLY_FILLED"}}'
    )
    update = parse_frame(text.encode())
    as_string = parse_frame(gz(order_event(i="9223372036854775807")))
    assert isinstance(update, OrderUpdate)
    assert isinstance(as_string, OrderUpdate)
    assert update.order_id == as_string.order_id == "9223372036854775807"
    assert update.quantity == Decimal("0.1")
    assert str(update.avg_price) == "61000.123456789012345678"
    assert update.filled_quantity == Decimal("1E-8")
    assert (update.realized_profit, update.fee) == (Decimal("-12.50"), Decimal("0"))
    assert update.reduce_only is False
    assert update.time == at_ms(1_700_000_000_123)  # from a string, and from o.T
    assert not update.is_final
    assert all(
        type(value) is Decimal
        for value in (update.quantity, update.avg_price, update.filled_quantity)
    )


def test_odd_values_read_as_missing_not_as_errors() -> None:
    """Amounts that are no numbers, and missing fields, are None; the event still reads."""
    update = parse_frame(gz(order_event(q="abc", p=None, ap="NaN", ro="maybe", T="x", C="")))
    assert isinstance(update, OrderUpdate)
    assert (update.quantity, update.price, update.avg_price) == (None, None, None)
    assert update.reduce_only is None
    assert update.client_order_id is None
    assert update.time == at_ms(1_700_000_000_123)  # the event's own T stands in


@pytest.mark.parametrize(
    ("status", "final"),
    [
        ("NEW", False),
        ("PARTIALLY_FILLED", False),
        ("FILLED", True),
        ("CANCELED", True),
        ("Cancelled", True),
        ("EXPIRED", True),
        ("REJECTED", True),
        (None, False),
    ],
)
def test_which_statuses_end_an_order(status: str | None, final: bool) -> None:
    """FILLED, CANCELED (either spelling, any case), EXPIRED and REJECTED end an order."""
    update = parse_frame(gz(order_event(X=status)))
    assert isinstance(update, OrderUpdate)
    assert update.is_final is final


def test_account_update_reads_balances_and_positions() -> None:
    """ACCOUNT_UPDATE: reason, each balance and position (no position ID), decimals exact."""
    frame = {
        "e": "ACCOUNT_UPDATE",
        "E": 1_700_000_000_456,
        "T": 1_700_000_000_123,
        "a": {
            "m": "ORDER",
            "B": [{"a": "USDT", "wb": "10009.6950", "cw": 10009.695, "bc": "9.6950"}, "junk"],
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
    }
    update = parse_frame(gz(frame))
    assert isinstance(update, AccountUpdate)
    assert update.reason == "ORDER"
    [balance] = update.balances
    assert (balance.asset, balance.wallet_balance, balance.balance_change) == (
        "USDT",
        Decimal("10009.6950"),
        Decimal("9.6950"),
    )
    assert balance.cross_wallet_balance == Decimal("10009.695")
    [position] = update.positions
    assert (position.symbol, position.position_side, position.margin_mode) == (
        "BTC-USDT",
        "LONG",
        "isolated",
    )
    assert (position.amount, position.realized_profit) == (Decimal("0"), Decimal("10.0000"))
    assert update.time == at_ms(1_700_000_000_123)
    assert update.event_time == at_ms(1_700_000_000_456)


@pytest.mark.parametrize("kind", ["ACCOUNT_CONFIG_UPDATE", "SOMETHING_NEW"])
def test_other_events_keep_their_type_and_data(kind: str) -> None:
    """Any other event type arrives as OtherEvent, with its data as decoded."""
    frame = {"e": kind, "E": 1_700_000_000_456, "ac": {"s": "BTC-USDT", "l": 10}}
    event = parse_frame(gz(frame))
    assert event == OtherEvent(kind, at_ms(1_700_000_000_456), {})
    assert isinstance(event, OtherEvent)
    assert event.raw == frame


def test_frames_may_be_gzip_plain_binary_or_text() -> None:
    """BingX gzips every frame; plain binary and text frames read the same."""
    event = order_event()
    text = json.dumps(event)
    assert parse_frame(gz(event)) == parse_frame(text.encode()) == parse_frame(text)


def test_ping_and_listen_key_expired_are_for_the_connection() -> None:
    """``Ping`` (gzipped or text) and listenKeyExpired are control frames, not events."""
    expired = {"e": "listenKeyExpired", "E": 1_700_000_000_456, "listenKey": "a" * 64}
    assert parse_frame(gz("Ping")) == Ping()
    assert parse_frame("Ping") == Ping()
    assert parse_frame(gz(expired)) == ListenKeyExpired(at_ms(1_700_000_000_456))


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (b"\x1f\x8bnot really gzip", "not valid gzip"),
        (gzip.compress(b'{"e":"X"}', mtime=0)[:-12], "cut short"),
        (gzip.compress(b" " * (MAX_FRAME + 1)), f"inflates to more than {MAX_FRAME} bytes"),
        (b"\xff\xfe\xfd", "neither gzip nor UTF-8 text"),
        (gz("not json"), "not a JSON object"),
        (gz("[1, 2]"), "not a JSON object"),
        (gz('{"code": 0, "msg": ""}'), "no event (it has no 'e')"),
        (gz('{"e": "ORDER_TRADE_UPDATE", "o": "x"}'), "without its order ('o')"),
        (gz('{"e": "ORDER_TRADE_UPDATE", "o": {"s": "BTC-USDT"}}'), "without an order ID"),
        (gz('{"e": "ORDER_TRADE_UPDATE", "o": {"i": 1.5}}'), "without an order ID"),
        (gz('{"e": "ACCOUNT_UPDATE", "a": []}'), "without its account data ('a')"),
    ],
)
def test_malformed_frames_raise_one_error_type(frame: bytes, problem: str) -> None:
    """Whatever is wrong with a frame, the error is MalformedFrameError, saying what."""
    with pytest.raises(MalformedFrameError, match="account stream: ") as caught:
        parse_frame(frame)
    assert problem in str(caught.value)
    assert len(caught.value.excerpt) <= 200


def test_malformed_frame_error_never_quotes_a_listen_key() -> None:
    """The excerpt of a bad frame has any listen key redacted."""
    key = "f" * 64
    with pytest.raises(MalformedFrameError) as caught:
        parse_frame(gz(f'{{"listenKey": "{key}"}}'))
    assert key not in caught.value.excerpt
    assert key not in repr(caught.value)
    assert '"listenKey": "<redacted>"' in caught.value.excerpt


def test_raw_data_stays_out_of_reprs() -> None:
    """The raw event is kept (``raw``) but not shown by repr, nor compared."""
    update = parse_frame(gz(order_event()))
    assert "raw" not in repr(update)
    assert isinstance(update, OrderUpdate)
    assert update.raw["o"]["i"] == int(ORDER_ID)


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"extend_every": 0}, "extend_every must be a finite number > 0"),
        ({"idle_timeout": -1.0}, "idle_timeout must be"),
        ({"open_timeout": float("inf")}, "open_timeout must be"),
        ({"backoff_initial": -0.1}, "backoff_initial must be a finite number >= 0"),
        ({"backoff_jitter": 1.5}, "backoff_jitter must be between 0 and 1"),
        ({"queue_size": 0}, "queue_size must be an integer >= 1"),
        ({"max_kept_fills": True}, "max_kept_fills must be an integer >= 1"),
        ({"keep_fills_for": "60"}, "keep_fills_for must be"),
        ({"url": "https://open-api-swap.bingx.com/swap-market"}, "ws:// or wss://"),
        ({"url": 123}, "url must be a string"),
        ({"url": "wss://u:p@example.com/swap-market"}, "must not carry credentials"),
        ({"url": "wss://example.com/swap-market?listenKey=x"}, "must not name a listenKey"),
        ({"url": "wss://example.com/swap-market#x"}, "must not have a fragment"),
        ({"url": "ws://example.com/swap-market"}, "plain ws:// to example.com"),
    ],
)
def test_settings_refuse_bad_values(options: dict[str, Any], message: str) -> None:
    """Each bad setting raises ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=message):
        StreamSettings(**options)


def test_plain_ws_is_for_this_machine_unless_allowed() -> None:
    """ws:// goes to loopback freely, elsewhere only with allow_insecure."""
    StreamSettings(url="ws://127.0.0.1:1234/swap-market")
    StreamSettings(url="ws://localhost/swap-market?x=1")
    StreamSettings(url="ws://example.com/swap-market", allow_insecure=True)
    assert StreamSettings().url == "wss://open-api-swap.bingx.com/swap-market"


def test_backoff_doubles_up_to_its_cap_less_jitter() -> None:
    """initial * 2**n, capped at backoff_max; the random part takes up to jitter of it."""
    settings = StreamSettings(backoff_initial=0.5, backoff_max=30.0, backoff_jitter=0.5)
    assert [settings._backoff(n, 0.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert settings._backoff(3, 0.999) == pytest.approx(2.002)
    assert settings._backoff(10_000, 0.0) == 30.0


# --- the listen key -------------------------------------------------------------------------


def keys_for(rest: Any, clock: Any, *, extend_every: float = 1800.0) -> ListenKeys:
    return ListenKeys(rest, clock, extend_every=extend_every, delete_timeout=5.0)


@pytest.mark.parametrize(
    "answer",
    [
        {"listenKey": "abc123"},
        {"code": 0, "msg": "", "data": {"listenKey": "abc123"}},
        {"code": "0", "data": {"listenKey": "abc123"}, "listenKey": None},
    ],
)
async def test_create_reads_the_bare_and_the_enveloped_answer(answer: dict[str, Any]) -> None:
    """BingX answers a bare {"listenKey"}; the usual envelope is read as well."""

    async def rest(method: str, path: str, params: Mapping[str, str]) -> Any:
        return answer

    keys = keys_for(rest, FakeClock())
    key = await keys.get()
    assert key.reveal() == "abc123"
    assert await keys.get() is key  # one key until it is discarded
    assert keys.created == 1


@pytest.mark.parametrize(
    "answer",
    [None, [], {}, {"listenKey": ""}, {"listenKey": 42}, {"listenKey": "a b&c"}, {"data": []}],
)
async def test_create_refuses_an_answer_without_a_usable_key(answer: Any) -> None:
    """No key, or one that cannot go into a URL as is: ResponseValidationError."""

    async def rest(method: str, path: str, params: Mapping[str, str]) -> Any:
        return answer

    with pytest.raises(ResponseValidationError, match="no usable listenKey") as caught:
        await keys_for(rest, FakeClock()).get()
    assert caught.value.endpoint == f"POST {LISTEN_KEY}"


async def test_an_enveloped_error_is_raised_as_bingx_errors_are() -> None:
    """An envelope with a code other than 0 raises the mapped error."""

    async def rest(method: str, path: str, params: Mapping[str, str]) -> Any:
        return {"code": 100413, "msg": "Incorrect apiKey", "listenKey": "x"}

    with pytest.raises(AuthenticationError, match="100413") as caught:
        await keys_for(rest, FakeClock()).get()
    assert caught.value.body == {"code": 100413, "msg": "Incorrect apiKey"}


async def test_keep_alive_extends_every_thirty_minutes() -> None:
    """On a FakeClock: a PUT with the key every 1800 s from its creation."""
    clock = FakeClock()
    rest = FakeRest()
    keys = keys_for(rest, clock)
    key = await keys.get()
    task = asyncio.create_task(keys.keep_alive(lambda gone: None))
    await rest.until("PUT", 3)
    task.cancel()
    assert clock.sleeps[:3] == [1800.0, 1800.0, 1800.0]
    assert rest.calls[1:4] == [("PUT", {"listenKey": key.reveal()})] * 3
    assert keys.current is key


async def test_extend_every_is_configurable() -> None:
    """extend_every=600: a PUT every ten minutes."""
    clock = FakeClock()
    rest = FakeRest()
    keys = keys_for(rest, clock, extend_every=600.0)
    await keys.get()
    task = asyncio.create_task(keys.keep_alive(lambda gone: None))
    await rest.until("PUT", 2)
    task.cancel()
    assert clock.sleeps[:2] == [600.0, 600.0]


async def test_a_key_bingx_forgot_is_discarded_and_reported() -> None:
    """A 404 on PUT: the key is dropped, on_gone hears of it, and the next get() makes one."""
    clock = FakeClock()
    rest = FakeRest()
    keys = keys_for(rest, clock)
    first = await keys.get()
    rest.gone.add(first.reveal())
    lost: asyncio.Future[ListenKey] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(keys.keep_alive(lost.set_result))
    assert await lost == first
    assert keys.current is None
    second = await keys.get()
    await asyncio.sleep(0)
    task.cancel()
    assert second != first
    assert rest.methods() == ["POST", "PUT", "POST"]


async def test_a_message_about_the_key_counts_as_forgotten() -> None:
    """An error that says the listen key expired or does not exist is a 404 too."""
    rest = FakeRest(
        fail={"PUT": [APIError("x", msg="listenKey does not exist", code=80015, status_code=200)]}
    )
    keys = keys_for(rest, FakeClock())
    await keys.get()
    assert await keys.extend() is False
    assert keys.current is None


async def test_a_failed_extension_is_tried_again_a_minute_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 5xx on PUT: a warning, then another PUT 60 s later; the key is kept."""
    clock = FakeClock()
    rest = FakeRest(fail={"PUT": [ServerError("busy", code=100500, status_code=200)]})
    keys = keys_for(rest, clock)
    key = await keys.get()
    task = asyncio.create_task(keys.keep_alive(lambda gone: None))
    await rest.until("PUT", 2)
    task.cancel()
    assert clock.sleeps[:2] == [1800.0, 60.0]
    assert keys.current is key
    assert "could not extend the listen key (busy); retrying in 60 s" in caplog.text


async def test_keep_alive_waits_for_a_key_and_counts_from_its_creation() -> None:
    """Without a key nothing is extended; a key made later is extended 1800 s after."""
    clock = FakeClock()
    rest = FakeRest()
    keys = keys_for(rest, clock)
    task = asyncio.create_task(keys.keep_alive(lambda gone: None))
    for _ in range(5):
        await asyncio.sleep(0)
    assert clock.sleeps == []
    clock.advance(100.0)
    await keys.get()
    await rest.until("PUT", 1)
    task.cancel()
    assert clock.sleeps[0] == 1800.0
    assert clock.monotonic() >= 1900.0  # the PUT came 1800 s after the key, made at 100 s


@virtual_time
async def test_delete_is_bounded_and_never_raises() -> None:
    """DELETE that never answers is given up after delete_timeout; failures are logged."""
    rest = FakeRest(hang={"DELETE"})
    keys = keys_for(rest, LoopClock(EPOCH))
    await keys.get()
    started = loop_now()
    await keys.delete()
    assert loop_now() - started == pytest.approx(5.0)
    assert keys.current is None
    failing = FakeRest(fail={"DELETE": [ServerError("busy", status_code=500)]})
    other = keys_for(failing, LoopClock(EPOCH))
    await other.get()
    await other.delete()
    await other.delete()  # nothing left to delete
    assert failing.methods() == ["POST", "DELETE"]


async def test_a_listen_key_shows_only_a_fingerprint() -> None:
    """repr, str and f-strings of a key, and of its keeper, never show it."""
    secret = "0123456789abcdef" * 4
    key = ListenKey(secret)
    keys = keys_for(FakeRest(), FakeClock())
    await keys.get()
    shown = [repr(key), str(key), f"{key}", repr(keys), str([key])]
    assert all(secret not in text for text in shown)
    assert repr(key) == f"<listen key {key.fingerprint}>"
    assert key == ListenKey(secret)
    assert len({key, ListenKey(secret)}) == 1


def test_redact_hides_listen_keys_as_well_as_signatures() -> None:
    """In a query string, in JSON and in a Python repr."""
    assert (
        redact("PUT /x?listenKey=abc&signature=def&b=1")
        == "PUT /x?listenKey=<redacted>&signature=<redacted>&b=1"
    )
    assert redact('{"e": "listenKeyExpired", "listenKey": "abc"}') == (
        '{"e": "listenKeyExpired", "listenKey": "<redacted>"}'
    )
    assert redact("{'listenKey': 'abc'}") == "{'listenKey': '<redacted>'}"


# --- listen keys against the simulator, hours in virtual time -------------------------------


@needs_websockets
@virtual_time
async def test_extensions_keep_one_key_and_one_connection_for_two_hours() -> None:
    """Extended every 30 minutes, the key outlives its 60 minutes: one key, one connection,
    no reconnection, pings answered throughout."""
    async with exchange(ping_interval=60.0) as ex:
        stream = await ex.open_stream(idle_timeout=120.0)
        events = stream.subscribe()
        await stream.ready()
        started = loop_now()
        await asyncio.sleep(7000.0)
        puts = [r for r in ex.sim.requests_to(LISTEN_KEY) if r.method == "PUT"]
        assert [round(r.arrived_at - started) for r in puts] == [1800, 3600, 5400]
        assert [r.status_code for r in puts] == [200, 200, 200]
        assert ex.sim.stream.listen_keys(ex.account) == ex.keys
        assert len(ex.keys) == 1
        assert stream.reconnects == 0
        assert ex.sim.stream.open_connections(ex.account) == 1
        events.close()
        assert [event async for event in events] == []


@needs_websockets
@virtual_time
async def test_without_extension_an_expired_key_is_replaced() -> None:
    """extend_every beyond the key's 60 minutes: at 60 minutes listenKeyExpired, a new key,
    and StreamReconnected saying so."""
    async with exchange() as ex:
        stream = await ex.open_stream(extend_every=5000.0, idle_timeout=None)
        events = stream.subscribe()
        await stream.ready()
        started = loop_now()
        gap = await next_of(events, StreamReconnected, within=4000.0)
        assert loop_now() - started == pytest.approx(3600.5)
        assert gap.reason == "the listen key expired"
        assert gap.new_listen_key
        assert gap.attempts == 1
        assert len(ex.keys) == 2
        assert ex.sim.stream.listen_keys(ex.account) == [ex.keys[1]]


@needs_websockets
@virtual_time
async def test_a_key_bingx_forgot_is_replaced_with_its_connection() -> None:
    """The PUT finds the key gone (404): the open connection is replaced at once, on a new
    key."""
    rest = FakeRest(gone={f"{1:064x}"})

    async def handler(websocket: ServerConnection) -> None:
        await websocket.wait_closed()

    async with (
        raw_server(handler) as url,
        raw_stream(rest, url, extend_every=10.0, idle_timeout=None) as stream,
    ):
        events = stream.subscribe()
        await stream.ready()
        started = loop_now()
        gap = await next_of(events, StreamReconnected)
        assert loop_now() - started == pytest.approx(11.0)  # at 10 s, then a 1 s back-off
    assert (gap.reason, gap.new_listen_key, gap.attempts) == (
        "BingX no longer knows the listen key",
        True,
        1,
    )
    assert rest.methods() == ["POST", "PUT", "POST", "DELETE"]


# --- the stream, end to end against the simulator -------------------------------------------


@needs_websockets
@virtual_time
async def test_a_close_arrives_as_typed_events() -> None:
    """The simulator's gzip frames: ORDER_TRADE_UPDATE, then ACCOUNT_UPDATE, typed."""
    async with exchange() as ex:
        ex.sim.add_position(ex.account, position_id="42", quantity="0.01", mark_price="61000.0")
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        order_id = await ex.close("42")
        fill = await next_of(events, OrderUpdate)
        account = await next_of(events, AccountUpdate)
    assert (fill.order_id, fill.status, fill.avg_price) == (order_id, "FILLED", Decimal("61000.0"))
    assert (fill.filled_quantity, fill.realized_profit, fill.fee) == (
        Decimal("0.01"),
        Decimal("10.0000"),
        Decimal("-0.3050"),
    )
    assert account.balances[0].wallet_balance == Decimal("10009.6950")
    assert stream.malformed_frames == 0


@needs_websockets
@virtual_time
async def test_pings_are_answered_and_keep_the_stream_open() -> None:
    """The simulator pings every 5 s and closes after 2 unanswered: ten minutes, one
    connection."""
    async with exchange(ping_interval=5.0, max_missed_pongs=2) as ex:
        stream = await ex.open_stream(idle_timeout=20.0)
        await stream.ready()
        await asyncio.sleep(600.0)
        assert stream.reconnects == 0
        assert stream.connected
        assert ex.sim.stream.open_connections(ex.account) == 1


@needs_websockets
@virtual_time
async def test_wait_fill_finds_a_fill_that_came_first() -> None:
    """The fill arrived before the wait began (before the close's answer was read): kept."""
    async with exchange() as ex:
        ex.sim.add_position(ex.account, position_id="1")
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        order_id = await ex.close("1")
        await next_of(events, OrderUpdate)
        fill = await stream.wait_fill(order_id, deadline=loop_now())
        again = await stream.wait_fill(int(order_id), deadline=loop_now())
    assert fill is not None
    assert fill.order_id == order_id
    assert again == fill


@needs_websockets
@virtual_time
async def test_wait_fill_wakes_when_the_fill_comes() -> None:
    """Waiting first: the fill ends the wait when it arrives."""
    async with exchange() as ex:
        ex.sim.add_position(ex.account, position_id="1")
        stream = await ex.open_stream()
        await stream.ready()
        ex.sim.stream.hold_events()
        order_id = await ex.close("1")
        waiting = asyncio.create_task(stream.wait_fill(order_id, deadline=loop_now() + 30.0))
        started = loop_now()
        await asyncio.sleep(2.0)
        assert not waiting.done()
        ex.sim.stream.release_events()
        fill = await waiting
        assert loop_now() - started == pytest.approx(2.0, abs=0.01)
    assert fill is not None
    assert fill.status == "FILLED"


@needs_websockets
@virtual_time
async def test_wait_fill_returns_none_at_the_deadline() -> None:
    """No fill by the deadline: None, exactly then."""
    async with exchange() as ex:
        stream = await ex.open_stream()
        await stream.ready()
        started = loop_now()
        assert await stream.wait_fill(ORDER_ID, deadline=started + 5.0) is None
        assert loop_now() - started == pytest.approx(5.0)


@needs_websockets
@virtual_time
async def test_duplicated_events_reach_subscribers_and_waiters_once_each_as_sent() -> None:
    """The simulator sends every event twice: subscribers see both, a waiter gets the fill."""
    async with exchange() as ex:
        ex.sim.add_position(ex.account, position_id="1")
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        ex.sim.stream.duplicate_events()
        order_id = await ex.close("1")
        fill = await stream.wait_fill(order_id, deadline=loop_now() + 5.0)
        first, second = await next_of(events, OrderUpdate), await next_of(events, OrderUpdate)
    assert fill == first == second


@needs_websockets
@virtual_time
async def test_reconnects_after_the_server_drops_the_connection() -> None:
    """A cut connection: reconnected with the same key, StreamReconnected said why and
    when, and events flow again."""
    async with exchange() as ex:
        ex.sim.add_position(ex.account, position_id="1")
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        dropped_at = EPOCH + loop_now()
        assert ex.sim.stream.drop_connections(ex.account) == 1
        gap = await next_of(events, StreamReconnected)
        await ex.close("1")
        fill = await next_of(events, OrderUpdate)
    assert gap.reason == "the connection was lost"
    assert gap.disconnected_at.timestamp() == pytest.approx(dropped_at, abs=0.01)
    # A connection that brought nothing counts as a failed attempt: the wait doubles.
    assert (gap.reconnected_at - gap.disconnected_at).total_seconds() == pytest.approx(1.0)
    assert (gap.attempts, gap.new_listen_key) == (1, False)
    assert stream.reconnects == 1
    assert fill.status == "FILLED"
    assert len(ex.keys) == 1


@needs_websockets
@virtual_time
async def test_an_expired_listen_key_gets_a_new_key() -> None:
    """listenKeyExpired: the old key is dropped, a new one made, and the stream listens on it."""
    async with exchange() as ex:
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        ex.sim.stream.expire_listen_key(ex.keys[0])
        gap = await next_of(events, StreamReconnected)
        assert (gap.reason, gap.new_listen_key) == ("the listen key expired", True)
        assert len(ex.keys) == 2
        assert ex.sim.stream.listen_keys(ex.account) == [ex.keys[1]]
        assert ex.sim.stream.open_connections(ex.account) == 1


@needs_websockets
@virtual_time
async def test_refused_connections_back_off_exponentially() -> None:
    """While handshakes are refused (10 s), attempts wait 0.5, 1, 2, 4, 8 s: the fifth
    attempt, 15.5 s after the drop, connects."""
    async with exchange(ping_interval=1.0) as ex:
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        await asyncio.sleep(1.5)  # a ping arrived: the connection was healthy
        ex.sim.stream.refuse_connections(10.0)
        ex.sim.stream.drop_connections()
        gap = await next_of(events, StreamReconnected)
    assert gap.attempts == 5
    assert (gap.reconnected_at - gap.disconnected_at).total_seconds() == pytest.approx(15.5)
    assert not gap.new_listen_key  # 503 says nothing against the key


@needs_websockets
@virtual_time
async def test_backoff_jitter_comes_from_the_injected_random() -> None:
    """With jitter 0.5 and a random source returning 0.5, the first wait is 0.375 s."""

    class Half(random.Random):
        def random(self) -> float:
            return 0.5

    async with exchange(ping_interval=1.0) as ex:
        stream = AccountStream(
            ex.rest, settings=StreamSettings(url=ex.stream_url), clock=ex.sim.clock, rng=Half()
        )
        ex.stack.push_async_callback(stream.aclose)
        events = stream.subscribe()
        await stream.ready()
        await asyncio.sleep(1.5)
        ex.sim.stream.drop_connections()
        gap = await next_of(events, StreamReconnected)
    assert (gap.reconnected_at - gap.disconnected_at).total_seconds() == pytest.approx(0.375)


@needs_websockets
@virtual_time
async def test_a_silent_connection_is_taken_for_dead_and_replaced() -> None:
    """No frame for idle_timeout seconds: the connection is closed and another opened."""
    async with exchange() as ex:
        stream = await ex.open_stream(idle_timeout=10.0)
        events = stream.subscribe()
        await stream.ready()
        started = loop_now()
        gap = await next_of(events, StreamReconnected)
        assert gap.reason == "no frame for 10 s"
        assert loop_now() - started == pytest.approx(11.0)  # 10 s, then a 1 s back-off
        assert ex.sim.stream.open_connections(ex.account) == 1


@needs_websockets
@virtual_time
async def test_ready_waits_for_a_connection_again_after_a_drop() -> None:
    """ready() returns once a connection is open now, not merely once one was."""
    async with exchange() as ex:
        stream = await ex.open_stream()
        await stream.ready()
        ex.sim.stream.refuse_connections(3.0)
        ex.sim.stream.drop_connections()
        await asyncio.sleep(0.1)
        assert not stream.connected
        started = loop_now()
        await stream.ready()
        assert stream.connected
        assert loop_now() - started >= 2.8


@needs_websockets
@virtual_time
async def test_closing_deletes_the_key_ends_subscribers_and_wakes_waiters() -> None:
    """aclose(): subscribers end after what they queued, waiters and later calls raise
    ClientClosedError, and BingX no longer has the key."""
    async with exchange() as ex:
        ex.sim.add_position(ex.account, position_id="1")
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        await ex.close("1")
        await asyncio.sleep(0.5)
        waiting = asyncio.create_task(stream.wait_fill("1", deadline=loop_now() + 60.0))
        await asyncio.sleep(0.1)
        await stream.aclose()
        left = [type(event).__name__ async for event in events]
        with pytest.raises(ClientClosedError, match="the account stream was closed"):
            await waiting
        await asyncio.sleep(0.1)  # the server notices the close
        assert ex.sim.stream.listen_keys(ex.account) == []
        assert [r.method for r in ex.sim.requests_to(LISTEN_KEY)] == ["POST", "DELETE"]
        assert ex.sim.stream.open_connections() == 0
        with pytest.raises(ClientClosedError):
            await stream.ready()
        with pytest.raises(ClientClosedError):
            stream.subscribe()
        with pytest.raises(ClientClosedError):
            await stream.wait_fill("1", deadline=loop_now())
        await stream.aclose()  # idempotent
    assert left == ["OrderUpdate", "AccountUpdate"]
    assert stream.closed
    assert "closed" in repr(stream)


@needs_websockets
async def test_the_stream_runs_in_real_time_too() -> None:
    """SystemClock and real loopback: connected, pinged and fed within a few hundred ms."""
    from bingx_async import SystemClock

    sim = FakeBingX(clock=SystemClock(), seed=1)
    sim.stream.ping_interval = 0.05
    account = sim.add_account()
    sim.add_position(account, position_id="1")
    async with (
        sim.serve_stream() as url,
        httpx.AsyncClient(transport=sim.transport(), base_url="http://sim") as http,
    ):
        ex = Exchange(sim, account, url, http, AsyncExitStack())
        async with AccountStream(ex.rest, settings=StreamSettings(url=url)) as stream:
            events = stream.subscribe()
            await asyncio.wait_for(stream.ready(), 0.5)
            await asyncio.sleep(0.15)  # a few pings come and are answered
            order_id = await ex.close("1")
            fill = await asyncio.wait_for(stream.wait_fill(order_id, loop_now() + 0.5), 0.6)
            assert fill is not None
            assert isinstance(await asyncio.wait_for(events.__anext__(), 0.5), OrderUpdate)
            assert stream.reconnects == 0


# --- fill waiting and subscribers, in memory ------------------------------------------------


def fill(order_id: str, status: str = "FILLED", filled: str = "0.5") -> OrderUpdate:
    update = parse_frame(gz(order_event(i=order_id, X=status, z=filled)))
    assert isinstance(update, OrderUpdate)
    return update


async def test_kept_fills_are_forgotten_after_keep_for() -> None:
    """A fill nobody waited for is found for 60 s, then forgotten."""
    clock = FakeClock()
    book = FillBook(clock, keep_for=60.0, max_kept=100)
    book.record(fill("1"))
    clock.advance(59.0)
    assert await book.wait("1", deadline=0.0) == fill("1")
    clock.advance(1.0)
    assert len(book) == 0


async def test_kept_fills_are_bounded_in_number() -> None:
    """At most max_kept fills are kept: the oldest go first."""
    book = FillBook(FakeClock(), keep_for=60.0, max_kept=3)
    for order_id in "12345":
        book.record(fill(order_id))
    assert len(book) == 3
    assert [(await book.wait(i, deadline=0.0)) is not None for i in "345"] == [True] * 3
    assert book._kept.keys() == {"3", "4", "5"}


async def test_only_updates_that_end_an_order_are_kept() -> None:
    """NEW and PARTIALLY_FILLED end no wait; CANCELED with a partial fill does."""
    book = FillBook(FakeClock(), keep_for=60.0, max_kept=100)
    book.record(fill("1", status="NEW", filled="0"))
    book.record(fill("2", status="PARTIALLY_FILLED", filled="0.2"))
    book.record(fill("3", status="CANCELED", filled="0.2"))
    assert len(book) == 1
    canceled = await book.wait("3", deadline=0.0)
    assert canceled is not None
    assert (canceled.status, canceled.filled_quantity) == ("CANCELED", Decimal("0.2"))


@virtual_time
async def test_many_waiters_of_one_order_all_get_its_fill() -> None:
    """Two waiters for one order and one for another: each gets its own outcome."""
    book = FillBook(LoopClock(EPOCH), keep_for=60.0, max_kept=100)
    waits = [
        asyncio.create_task(book.wait(order_id, deadline=loop_now() + 10.0))
        for order_id in ("1", "1", "2")
    ]
    await asyncio.sleep(1.0)
    book.record(fill("1"))
    done = await asyncio.gather(*waits)
    assert [update.order_id if update else None for update in done] == ["1", "1", None]
    assert book._waiters == {}


async def test_a_slow_subscriber_loses_its_oldest_events_behind_a_marker() -> None:
    """Queue of 3, five events unread: EventsDropped(2), then the newest three in order."""
    clock = FakeClock()
    closed: list[StreamSubscription] = []
    slow = StreamSubscription(3, clock, closed.append)
    fast = StreamSubscription(10, clock, closed.append)
    updates = [fill(str(n)) for n in range(1, 6)]
    for update in updates:
        slow._put(update)
        fast._put(update)
    slow.close()
    read = [event async for event in slow]
    assert read == [EventsDropped(2, datetime.fromtimestamp(clock.now, UTC)), *updates[2:]]
    assert slow.dropped_total == 2
    assert [await fast.__anext__() for _ in range(5)] == updates
    assert closed == [slow]


async def test_a_subscription_ends_with_the_error_that_stopped_its_stream() -> None:
    """Queued events first, then the error."""
    slow = StreamSubscription(3, FakeClock(), lambda subscription: None)
    slow._put(fill("1"))
    slow._end(AuthenticationError("refused"))
    slow._put(fill("2"))  # nothing arrives after the end
    assert await slow.__anext__() == fill("1")
    with pytest.raises(AuthenticationError):
        await slow.__anext__()


@needs_websockets
@virtual_time
async def test_a_slow_subscriber_does_not_hold_up_the_others() -> None:
    """Ten events over a real connection: the fast subscriber reads all ten, the slow one
    (queue of 3, reading only afterwards) a marker and the last three."""
    frames = [gz(order_event(i=str(n), X="NEW")) for n in range(10)]

    async def handler(websocket: ServerConnection) -> None:
        for frame in frames:
            await websocket.send(frame)
        await websocket.wait_closed()

    async with raw_server(handler) as url, raw_stream(FakeRest(), url) as stream:
        slow = stream.subscribe(queue_size=3)
        fast = stream.subscribe()
        fast_read = [(await next_of(fast, OrderUpdate)).order_id for _ in range(10)]
        slow.close()
        slow_read = [event async for event in slow]
    assert fast_read == [str(n) for n in range(10)]
    assert isinstance(slow_read[0], EventsDropped)
    assert slow_read[0].count == 7
    assert [event.order_id for event in slow_read[1:] if isinstance(event, OrderUpdate)] == [
        "7",
        "8",
        "9",
    ]


@needs_websockets
async def test_subscribe_and_wait_fill_check_their_arguments() -> None:
    """queue_size must be a positive int; order_id a str or int; settings StreamSettings."""
    async with raw_stream(FakeRest(), "ws://127.0.0.1:9/swap-market") as stream:
        for size in (0, True, 1.5):
            with pytest.raises(InvalidArgumentError, match="queue_size"):
                stream.subscribe(queue_size=size)  # type: ignore[arg-type]
        for order_id in (None, "", " ", 1.5, False):
            with pytest.raises(InvalidArgumentError, match="order_id"):
                await stream.wait_fill(order_id, deadline=0.0)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="StreamSettings"):
            AccountStream(FakeRest(), settings={})  # type: ignore[arg-type]
        assert not stream.connected  # never started


# --- frames the simulator never sends (a raw server) ----------------------------------------


@needs_websockets
@virtual_time
async def test_text_frames_plain_binary_and_odd_numbers_are_read() -> None:
    """A text frame, an uncompressed binary one, numbers beyond float and 2**53."""
    big = (
        '{"e":"ORDER_TRADE_UPDATE","E":1700000000456,"o":{"i":1770656007907930112,'
        '"X":"FILLED","z":123456789.123456789123456789,"ap":6.1E+4}}'
    )

    async def handler(websocket: ServerConnection) -> None:
        await websocket.send(big)
        await websocket.send(json.dumps({"e": "ACCOUNT_CONFIG_UPDATE", "E": 1}).encode())
        await websocket.send(gz({"e": "ACCOUNT_UPDATE", "a": {"m": "FUNDING_FEE"}}))
        await websocket.wait_closed()

    async with raw_server(handler) as url, raw_stream(FakeRest(), url) as stream:
        events = stream.subscribe()
        first = await next_of(events, OrderUpdate)
        second = await next_of(events, OtherEvent)
        third = await next_of(events, AccountUpdate)
        kept = await stream.wait_fill(ORDER_ID, deadline=loop_now())
    assert first.order_id == ORDER_ID
    assert str(first.filled_quantity) == "123456789.123456789123456789"
    assert first.avg_price == Decimal("61000")
    assert second.type == "ACCOUNT_CONFIG_UPDATE"
    assert (third.reason, third.balances, third.positions) == ("FUNDING_FEE", (), ())
    assert kept == first


@needs_websockets
@virtual_time
async def test_malformed_frames_are_skipped_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Bad frames are counted and logged (once each, no listen key), never delivered; the
    next good frame is."""
    bad = [
        b"\x1f\x8bgarbage",
        gz("not json"),
        gz('{"e": "ORDER_TRADE_UPDATE"}'),
        gzip.compress(b" " * (MAX_FRAME + 1)),
        b"\xff\xfe",
        gz(f'{{"listenKey": "{"9" * 64}"}}'),
    ]

    async def handler(websocket: ServerConnection) -> None:
        for frame in bad:
            await websocket.send(frame)
        await websocket.send(gz(order_event()))
        await websocket.wait_closed()

    async with raw_server(handler) as url, raw_stream(FakeRest(), url) as stream:
        events = stream.subscribe()
        first = await events.__anext__()
        assert stream.malformed_frames == len(bad)
        assert stream.connected
        assert stream.reconnects == 0
    assert isinstance(first, OrderUpdate)
    skipped = [r for r in caplog.records if "frame skipped" in r.getMessage()]
    assert len(skipped) == len(bad)
    assert all(r.levelno == logging.WARNING for r in skipped)
    assert "9" * 64 not in caplog.text


@needs_websockets
@virtual_time
async def test_ping_is_answered_with_pong_as_text() -> None:
    """``Ping`` gzipped (as BingX sends it) or as text: ``Pong`` as text, each time."""
    replies: list[str | bytes] = []

    async def handler(websocket: ServerConnection) -> None:
        for ping in (gz("Ping"), "Ping"):
            await websocket.send(ping)
            replies.append(await websocket.recv())
        await websocket.send(gz(order_event()))
        await websocket.wait_closed()

    async with raw_server(handler) as url, raw_stream(FakeRest(), url) as stream:
        events = stream.subscribe()
        await next_of(events, OrderUpdate)
    assert replies == ["Pong", "Pong"]


@needs_websockets
@virtual_time
async def test_a_key_refused_at_the_handshake_is_replaced() -> None:
    """HTTP 401 for the first key: a new key, and the stream connects with it."""
    rest = FakeRest()
    paths: list[str] = []

    def check(connection: ServerConnection, request: Request) -> Response | None:
        paths.append(request.path)
        if request.path.endswith(f"listenKey={1:064x}"):
            return connection.respond(401, "invalid listenKey\n")
        return None

    async def handler(websocket: ServerConnection) -> None:
        await websocket.wait_closed()

    async with raw_server(handler, check) as url, raw_stream(rest, url) as stream:
        started = loop_now()
        await stream.ready()
        assert loop_now() - started == pytest.approx(1.0)  # one failed attempt's back-off
    assert rest.methods() == ["POST", "POST", "DELETE"]
    assert paths == [f"/swap-market?listenKey={n:064x}" for n in (1, 2)]
    assert stream.reconnects == 0  # the first connection is no reconnection


@needs_websockets
@virtual_time
async def test_listen_key_failures_are_retried_with_backoff() -> None:
    """A 5xx when creating the key: tried again after the back-off (1 s, then 2 s)."""
    rest = FakeRest(fail={"POST": [ServerError("busy", status_code=503)] * 2})

    async def handler(websocket: ServerConnection) -> None:
        await websocket.wait_closed()

    async with raw_server(handler) as url, raw_stream(rest, url) as stream:
        started = loop_now()
        await stream.ready()
        assert loop_now() - started == pytest.approx(1.0 + 2.0)
    assert rest.methods() == ["POST", "POST", "POST", "DELETE"]


@needs_websockets
@virtual_time
async def test_a_close_for_policy_reasons_gets_a_new_key() -> None:
    """The server closes with 1008 (how a bad key can be refused once open): the close's
    code and reason are the gap's reason, and the stream reconnects with a new key."""
    connections = 0

    async def handler(websocket: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await websocket.close(1008, "invalid listenKey")
            return
        await websocket.wait_closed()

    rest = FakeRest()
    async with raw_server(handler) as url, raw_stream(rest, url) as stream:
        async with stream.subscribe() as events:
            gap = await next_of(events, StreamReconnected)
        assert events.closed
        assert stream.settings.url == url
    assert gap.reason == "the server closed the connection (code 1008: invalid listenKey)"
    assert gap.new_listen_key
    assert rest.methods() == ["POST", "POST", "DELETE"]


@needs_websockets
@virtual_time
async def test_a_handshake_that_hangs_is_given_up_after_open_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that never answers the handshake: the attempt ends after open_timeout, and
    the next one (after its back-off) connects."""
    attempts = 0

    async def stall(connection: ServerConnection, request: Request) -> Response | None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.sleep(3600.0)
        return None

    async def handler(websocket: ServerConnection) -> None:
        await websocket.wait_closed()

    async with (
        raw_server(handler, stall) as url,
        raw_stream(FakeRest(), url, open_timeout=2.0) as stream,
    ):
        started = loop_now()
        await stream.ready()
        assert loop_now() - started == pytest.approx(3.0)  # 2 s, then a 1 s back-off
    assert "opening a connection took over 2 s" in caplog.text


@needs_websockets
def test_a_stream_belongs_to_the_event_loop_it_started_in() -> None:
    """Started in one event loop, it refuses to run in another."""
    stream = raw_stream(FakeRest(hang={"POST"}), "ws://127.0.0.1:9/swap-market")

    async def first() -> None:
        stream.start()
        stream.start()  # idempotent

    async def second() -> None:
        with pytest.raises(RuntimeError, match="belongs to the event loop it was started in"):
            await stream.ready()

    asyncio.run(first())
    asyncio.run(second())


async def test_extending_without_a_key_does_nothing() -> None:
    """No key yet: extend() sends nothing."""
    rest = FakeRest()
    assert await keys_for(rest, FakeClock()).extend() is True
    assert rest.calls == []


@needs_websockets
@virtual_time
async def test_a_refused_api_key_stops_the_stream_for_everyone() -> None:
    """AuthenticationError creating the key: no reconnection mends it; ready(), subscribers
    and fill waiters raise it."""
    rest = FakeRest(fail={"POST": [AuthenticationError("Incorrect apiKey", code=100413)]})
    async with raw_stream(rest, "ws://127.0.0.1:9/swap-market") as stream:
        events = stream.subscribe()
        with pytest.raises(AuthenticationError):
            await stream.ready()
        with pytest.raises(AuthenticationError):
            await events.__anext__()
        with pytest.raises(AuthenticationError):
            await stream.wait_fill(ORDER_ID, deadline=loop_now() + 5.0)
        with pytest.raises(AuthenticationError):
            stream.subscribe()
        assert isinstance(stream.failure, AuthenticationError)
        assert "failed" in repr(stream)
    assert rest.methods() == ["POST"]


@needs_websockets
@virtual_time
async def test_unreachable_server_is_retried_until_it_answers() -> None:
    """Nothing listening: attempts fail and back off (capped), while ready() waits on."""
    rest = FakeRest()
    settings = StreamSettings(url="ws://127.0.0.1:9/swap-market", backoff_max=4.0)
    async with AccountStream(rest, settings=settings, clock=LoopClock(EPOCH)) as stream:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30.0):
                await stream.ready()
        assert not stream.connected
    assert rest.methods() == ["POST", "DELETE"]


# --- secrets and the optional dependency ----------------------------------------------------


@needs_websockets
@virtual_time
async def test_the_listen_key_never_shows_in_logs_or_reprs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With every logger at DEBUG (websockets' handshake lines included), across creation,
    expiry, reconnection and deletion: no key in any log line or repr."""
    caplog.set_level(logging.DEBUG)
    install_httpx_log_filter()  # as every client does; this test's REST goes through httpx
    async with exchange() as ex:
        stream = await ex.open_stream()
        events = stream.subscribe()
        await stream.ready()
        ex.sim.stream.expire_listen_key(ex.keys[0])
        await next_of(events, StreamReconnected)
        shown = [repr(stream), repr(stream._keys), repr(stream._socket), repr(events)]
        await stream.aclose()
    assert len(ex.keys) == 2
    # The simulator's own server logs what it receives: only the client side is checked.
    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith("websockets.server")
    )
    assert "> GET /swap-market?listenKey=<redacted> HTTP/1.1" in logged
    assert "DELETE http://sim/openApi/user/auth/userDataStream?listenKey=<redacted>" in logged
    for key in ex.keys:
        assert key not in logged
        assert all(key not in text for text in shown)


def test_the_stream_needs_websockets_and_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without websockets: a clear ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "websockets.asyncio.client", None)
    with pytest.raises(ImportError, match=r'pip install "bingx-async\[stream\]"'):
        AccountStream(FakeRest())


def test_the_stream_modules_import_without_websockets() -> None:
    """Importing the package's stream modules needs no websockets; only making a stream
    does."""
    script = """
import bingx_async._stream as stream
try:
    stream.AccountStream(lambda *args: None)
except ImportError as error:
    print(error)
"""
    done = run_without_websockets(script)
    assert done.returncode == 0, done.stderr
    assert 'pip install "bingx-async[stream]"' in done.stdout


# --- fills of closes, books and markers, as a bot sees them ---------------------------------


def test_a_fill_is_made_only_from_a_final_update_with_a_price_and_a_quantity() -> None:
    """``fill_from_update``: every field from the update; none from an update without its
    average price or filled quantity, or not final; the event's time when the order has none."""
    full = fill_from_update(fill(ORDER_ID))
    assert full == Fill(
        order_id=ORDER_ID,
        status="FILLED",
        avg_price=Decimal("2100.5"),
        quantity=Decimal("0.5"),
        realized_profit=Decimal("50.0000"),
        fee=Decimal("-0.5250"),
        fee_asset="USDT",
        time=at_ms(1_700_000_000_123),
        source="stream",
    )
    without_price = parse_frame(gz(order_event(ap=None)))
    without_quantity = parse_frame(gz(order_event(z=None)))
    working = parse_frame(gz(order_event(X="PARTIALLY_FILLED")))
    no_status = parse_frame(gz(order_event(X=None)))
    for update in (without_price, without_quantity, working, no_status):
        assert isinstance(update, OrderUpdate)
        assert fill_from_update(update) is None
    timeless = parse_frame(
        gz({"e": "ORDER_TRADE_UPDATE", "E": 1_700_000_000_456, "o": order_event(T=None)["o"]})
    )
    assert isinstance(timeless, OrderUpdate)
    found = fill_from_update(timeless)
    assert found is not None
    assert found.time == at_ms(1_700_000_000_456)


async def test_a_repeated_final_update_counts_as_the_newest_kept() -> None:
    """Kept fills are forgotten oldest first; one sent again becomes the newest."""
    clock = FakeClock()
    book = FillBook(clock, keep_for=60.0, max_kept=2)
    book.record(fill("1"))
    book.record(fill("2"))
    book.record(fill("1"))  # BingX sent it again
    book.record(fill("3"))
    assert book.kept("1") is not None
    assert book.kept("2") is None
    assert book.kept("3") is not None


async def test_an_extension_answered_with_an_error_code_is_no_extension(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PUT answered 200 with a code other than 0: the key is not counted as extended (tried
    again a minute later), and the warning quotes BingX's message."""
    clock = FakeClock()

    class Refusing(FakeRest):
        async def __call__(self, method: str, path: str, params: Mapping[str, str]) -> Any:
            answer = await super().__call__(method, path, params)
            return {"code": 100500, "msg": "internal busy"} if method == "PUT" else answer

    rest = Refusing()
    keys = keys_for(rest, clock)
    await keys.get()
    task = asyncio.create_task(keys.keep_alive(lambda gone: None))
    await rest.until("PUT", 2)
    task.cancel()
    assert clock.sleeps[:2] == [1800.0, 60.0]
    assert (
        "could not extend the listen key (BingX error 100500: internal busy (HTTP 200, "
        "PUT /openApi/user/auth/userDataStream)); retrying in 60 s"
    ) in caplog.text


async def test_the_listen_keys_life_is_logged_by_fingerprint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DEBUG lines name each step of a key's life by its fingerprint, never by the key."""
    clock = FakeClock()
    rest = FakeRest(gone={f"{2:064x}"})
    keys = keys_for(rest, clock)
    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        first = await keys.get()
        assert await keys.extend()
        keys.discard(first)
        second = await keys.get()
        assert not await keys.extend()  # BingX forgot it
        await keys.get()
        await keys.delete()
    lines = [r.getMessage() for r in caplog.records if r.name == "bingx_async"]
    assert lines == [
        f"account stream: created {first!r}",
        f"account stream: extended {first!r}",
        f"account stream: {first!r} is no longer valid",
        f"account stream: created {second!r}",
        f"account stream: {second!r} is no longer valid",
        f"account stream: created <listen key {ListenKey(rest.keys[2]).fingerprint}>",
        f"account stream: deleted <listen key {ListenKey(rest.keys[2]).fingerprint}>",
    ]
    for key in rest.keys:
        assert key not in caplog.text


def test_equal_listen_keys_hash_alike_and_others_apart() -> None:
    assert {ListenKey("a" * 64), ListenKey("a" * 64)} == {ListenKey("a" * 64)}
    assert hash(ListenKey("a" * 64)) != hash(ListenKey("b" * 64))


async def test_markers_count_every_drop_since_the_first() -> None:
    """Two bursts that overflow a queue of 1: each read marker says how many were dropped
    since the first drop it covers, and when that was."""
    clock = FakeClock()
    events = StreamSubscription(1, clock, lambda subscription: None)
    first_drop = clock.now
    events._put(fill("1"))
    events._put(fill("2"))  # drops 1
    clock.now += 5.0
    events._put(fill("3"))  # drops 2
    assert await events.__anext__() == EventsDropped(2, datetime.fromtimestamp(first_drop, UTC))
    assert await events.__anext__() == fill("3")
    second_drop = clock.now
    events._put(fill("4"))
    events._put(fill("5"))  # drops 4
    assert await events.__anext__() == EventsDropped(1, datetime.fromtimestamp(second_drop, UTC))
    assert await events.__anext__() == fill("5")
    assert events.dropped_total == 3


@needs_websockets
async def test_reprs_say_the_state() -> None:
    clock = FakeClock()
    events = StreamSubscription(4, clock, lambda subscription: None)
    events._put(fill("1"))
    assert repr(events) == "<StreamSubscription open: 1 queued, 0 dropped>"
    events.close()
    assert repr(events) == "<StreamSubscription closed: 1 queued, 0 dropped>"
    stream = AccountStream(FakeRest(), clock=LoopClock(EPOCH))
    assert repr(stream) == (
        "<AccountStream unstarted, not connected: 0 subscriber(s), 0 reconnect(s)>"
    )
    assert repr(stream._socket) == "<StreamSocket not connected, 0 reconnect(s)>"


@needs_websockets
@virtual_time
async def test_a_queue_of_one_is_allowed_and_leaving_unsubscribes() -> None:
    async with exchange() as ex:
        stream = await ex.open_stream()
        with pytest.raises(InvalidArgumentError, match="queue_size must be an integer >= 1"):
            stream.subscribe(queue_size=0)
        events = stream.subscribe(queue_size=1)
        await stream.ready()
        assert repr(stream) == (
            "<AccountStream running, connected: 1 subscriber(s), 0 reconnect(s)>"
        )
        assert repr(stream._socket) == "<StreamSocket connected, 0 reconnect(s)>"
        events.close()
        assert "0 subscriber(s)" in repr(stream)


@needs_websockets
async def test_waiting_on_a_closed_stream_says_nothing_was_sent() -> None:
    stream = AccountStream(FakeRest(), clock=LoopClock(EPOCH))
    await stream.aclose()
    with pytest.raises(ClientClosedError, match=r"^the account stream was closed$") as raised:
        await stream.wait_fill(ORDER_ID, 0.0)
    assert raised.value.may_have_executed is False


def test_the_registry_has_no_stream_for_an_account_it_never_saw() -> None:
    assert StreamRegistry().stream_of("1@open-api.bingx.com") is None
