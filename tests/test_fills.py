"""Fills of closes (``wait_fill=True``) and ``account_stream()``, against FakeBingX over real
loopback HTTP and WebSocket connections, in virtual time (looptime + LoopClock).

The simulator fills each close at its position's mark price and pushes the fill on the
account stream; it records every request it answered, so the tests count order queries,
listen-key requests and rate-limit answers as BingX would see them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal

import pytest

import bingx_async
from bingx_async import (
    BingXClient,
    ClosePositionResult,
    ConfigurationError,
    Fill,
    OrderUpdate,
    RetryPolicy,
    StreamReconnected,
    StreamSettings,
)
from bingx_async.testing import (
    CustomAnswer,
    FakeBingX,
    LoopClock,
    NeverAnswer,
    SimAccount,
    SimOrder,
)

from .without_websockets import run_without_websockets

LISTEN_KEY = "/openApi/user/auth/userDataStream"
CLOSE = "/openApi/swap/v1/trade/closePosition"
CLOSE_ALL = "/openApi/swap/v2/trade/closeAllPositions"
ORDER = "/openApi/swap/v2/trade/order"
SERVER_TIME = "/openApi/swap/v2/server/time"
RATE_LIMIT_CODES = {100410, 109400}
EPOCH = 1_700_000_000.0

pytestmark = [pytest.mark.looptime, pytest.mark.usefixtures("websockets_installed")]


@dataclass
class Exchange:
    sim: FakeBingX
    account: SimAccount
    base_url: str
    stream_url: str
    clock: LoopClock

    def client(self, **options: object) -> BingXClient:
        settings = options.pop("stream", None) or StreamSettings(url=self.stream_url)
        assert isinstance(settings, StreamSettings)
        return BingXClient(
            api_key=self.account.api_key,
            secret_key=self.account.secret_key,
            base_url=self.base_url,
            allow_insecure_http=True,
            clock=self.clock,
            stream=settings,
            **options,  # type: ignore[arg-type]
        )

    def open(self, count: int, *, symbol: str = "BTC-USDT") -> list[str]:
        """Open ``count`` positions, each with its own mark price (so fills differ)."""
        return [
            self.sim.add_position(
                self.account,
                symbol=symbol,
                quantity=f"0.0{1 + n % 9}",
                avg_price="60000.0",
                mark_price=f"{60100 + 10 * n}.5",
            ).position_id
            for n in range(count)
        ]

    def orders(self) -> dict[str, SimOrder]:
        return {order.order_id: order for order in self.sim.orders(self.account)}

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.sim.requests if r.method == method and r.path == path)

    def rate_limited(self) -> int:
        return sum(1 for r in self.sim.requests if r.code in RATE_LIMIT_CODES)


@asynccontextmanager
async def exchange() -> AsyncIterator[Exchange]:
    clock = LoopClock(EPOCH)
    sim = FakeBingX(clock=clock, seed=7)
    sim.stream.ping_interval = None
    account = sim.add_account()
    async with AsyncExitStack() as stack:
        base_url = await stack.enter_async_context(sim.serve())
        stream_url = await stack.enter_async_context(sim.serve_stream())
        yield Exchange(sim, account, base_url, stream_url, clock)


def assert_fill_is_the_simulators(result: ClosePositionResult, order: SimOrder) -> None:
    fill = result.fill
    assert fill is not None, result
    assert fill.order_id == order.order_id == result.order_id
    assert fill.status == "FILLED"
    assert fill.avg_price == Decimal(order.avg_price)
    assert fill.quantity == Decimal(order.quantity)
    assert fill.realized_profit == Decimal(order.realized_profit)
    assert fill.fee == Decimal(order.commission)
    assert fill.time is not None
    assert fill.time.timestamp() * 1000 == order.time_ms
    # The stream names the fee's asset; the order query does not.
    assert fill.fee_asset == ("USDT" if fill.source == "stream" else None)


# --- the stream -------------------------------------------------------------------------------


async def test_fifty_closes_get_their_fills_from_the_stream_and_no_order_query() -> None:
    """50 closes at once: 50 fills equal to the simulator's, all from the stream; the only
    REST requests are the closes, one listen key and one clock reading; no rate-limit answer;
    the closes span within 1.05 x the 9 s that 5/s allows."""
    async with exchange() as ex:
        ids = ex.open(50)
        async with ex.client() as client:
            results = await client.close_positions(ids, wait_fill=True)
        orders = ex.orders()
        assert len(orders) == 50
        for result in results:
            assert isinstance(result, ClosePositionResult), result
            assert result.order_id is not None
            assert_fill_is_the_simulators(result, orders[result.order_id])
            assert result.fill is not None
            assert result.fill.source == "stream"
        assert ex.count("GET", ORDER) == 0
        assert ex.count("POST", CLOSE) == 50
        assert ex.count("POST", LISTEN_KEY) == 1
        assert {(r.method, r.path) for r in ex.sim.requests} == {
            ("POST", CLOSE),
            ("POST", LISTEN_KEY),
            ("DELETE", LISTEN_KEY),
            ("GET", SERVER_TIME),
        }
        assert ex.rate_limited() == 0
        closes = [r.arrived_at for r in ex.sim.requests if r.path == CLOSE]
        assert max(closes) - min(closes) <= 1.05 * 9.0


async def test_a_fill_that_arrives_before_the_answer_is_kept_for_its_close() -> None:
    """The stream pushes the fill before the HTTP answer leaves: the close still gets it."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        async with ex.client() as client:
            result = await client.close_position(position_id, wait_fill=True)
        assert result.fill is not None
        assert result.fill.source == "stream"
        assert ex.count("GET", ORDER) == 0


async def test_the_stream_is_listening_before_the_close_is_sent() -> None:
    """The listen key is made and the stream connected before the close leaves."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        async with ex.client() as client:
            await client.close_position(position_id, wait_fill=True)
        paths = [r.path for r in ex.sim.requests if r.path in (LISTEN_KEY, CLOSE)]
        assert paths[:2] == [LISTEN_KEY, CLOSE]


async def test_without_wait_fill_there_is_no_stream_and_no_fill() -> None:
    async with exchange() as ex:
        [position_id] = ex.open(1)
        async with ex.client() as client:
            result = await client.close_position(position_id)
        assert result.fill is None
        assert ex.count("POST", LISTEN_KEY) == 0
        assert ex.sim.stream.open_connections() == 0


async def test_fills_lost_while_the_stream_reconnects_are_asked_over_rest_once() -> None:
    """Events that reach a dropped connection are lost: those closes ask BingX's order query,
    once each, and every close still gets the simulator's fill; no rate-limit answer."""
    async with exchange() as ex:
        ids = ex.open(20)
        ex.sim.stream.delay_events(0.2)  # fills still on their way when the stream drops

        async def drop_twice() -> None:
            for _ in range(2):
                await asyncio.sleep(1.5)
                ex.sim.stream.drop_connections()

        async with ex.client() as client:
            dropping = asyncio.create_task(drop_twice())
            results = await client.close_positions(ids, wait_fill=True)
            await dropping
        orders = ex.orders()
        sources = {"stream": 0, "rest": 0}
        for result in results:
            assert isinstance(result, ClosePositionResult), result
            assert result.order_id is not None
            assert_fill_is_the_simulators(result, orders[result.order_id])
            assert result.fill is not None
            sources[result.fill.source] += 1
        assert sources["rest"] >= 1
        assert sources["stream"] >= 1
        assert ex.count("GET", ORDER) == sources["rest"]
        assert ex.rate_limited() == 0


async def test_a_stream_that_cannot_connect_delays_the_close_by_ready_timeout_only() -> None:
    """Connections refused: the close is sent after ``ready_timeout`` and its fill comes from
    one order query."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        ex.sim.stream.refuse_connections(600)
        settings = StreamSettings(url=ex.stream_url, ready_timeout=2.0)
        async with ex.client(stream=settings) as client:
            started = ex.clock.monotonic()
            result = await client.close_position(position_id, wait_fill=True)
        [close] = [r for r in ex.sim.requests if r.path == CLOSE]
        assert 2.0 <= close.arrived_at - started < 2.5
        assert result.fill is not None
        assert result.fill.source == "rest"
        assert_fill_is_the_simulators(result, ex.orders()[result.fill.order_id])
        assert ex.count("GET", ORDER) == 1


async def test_a_fill_seen_nowhere_is_none_and_the_close_is_still_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stream silent and the order query failing: the close's result comes back with
    ``fill=None`` (never invented), after as many queries as the call's own ``retry``
    allows (one), and a warning says why."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        ex.sim.stream.hold_events()
        failing = CustomAnswer(status_code=503, body={"code": 100500, "msg": "busy"})
        ex.sim.inject(failing, path=ORDER, count=5)
        settings = StreamSettings(url=ex.stream_url, fill_timeout=1.0)
        with caplog.at_level(logging.WARNING, logger="bingx_async"):
            async with ex.client(stream=settings) as client:
                result = await client.close_position(
                    position_id, wait_fill=True, retry=RetryPolicy(attempts=1)
                )
        assert result.order_id is not None
        assert result.fill is None
        assert ex.count("GET", ORDER) == 1
        assert [r.getMessage() for r in caplog.records if r.name == "bingx_async"] == [
            f"wait_fill: order {result.order_id}: the order query failed (BingX error 100500: "
            f"busy (HTTP 503, GET {ORDER}))"
        ]


async def test_an_order_the_query_shows_unfinished_has_no_fill(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The order query says the order is still working: no fill is made up from it."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        ex.sim.stream.hold_events()
        unfinished = {"order": {"orderId": 1, "status": "NEW", "avgPrice": "0", "executedQty": "0"}}
        ex.sim.inject(
            CustomAnswer(status_code=200, body={"code": 0, "msg": "", "data": unfinished}),
            path=ORDER,
        )
        settings = StreamSettings(url=ex.stream_url, fill_timeout=1.0)
        async with ex.client(stream=settings) as client:
            with caplog.at_level(logging.WARNING, logger="bingx_async"):
                result = await client.close_position(position_id, wait_fill=True)
        assert result.fill is None
        assert ex.count("GET", ORDER) == 1
        assert [r.getMessage() for r in caplog.records if r.name == "bingx_async"] == [
            f"wait_fill: order {result.order_id}: BingX does not say it is done"
        ]


async def test_the_fill_wait_ends_within_total_timeout(caplog: pytest.LogCaptureFixture) -> None:
    """No fill on the stream and no time left for the query: ``fill`` is None by
    ``total_timeout``; no order query is sent after it."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        ex.sim.stream.hold_events()
        settings = StreamSettings(url=ex.stream_url, fill_timeout=60.0)
        async with ex.client(stream=settings) as client:
            started = ex.clock.monotonic()
            with caplog.at_level(logging.WARNING, logger="bingx_async"):
                result = await client.close_position(
                    position_id, wait_fill=True, retry=RetryPolicy(total_timeout=3.0)
                )
            took = ex.clock.monotonic() - started
        assert [r.getMessage() for r in caplog.records if r.name == "bingx_async"] == [
            f"wait_fill: order {result.order_id}: fill not seen before total_timeout"
        ]
        assert result.fill is None
        assert result.order_id is not None
        assert took <= 3.0 + 1e-6
        assert ex.count("GET", ORDER) == 0


# --- refused before anything is sent -----------------------------------------------------------


async def test_wait_fill_without_a_known_stream_address_is_refused_before_sending() -> None:
    async with exchange() as ex:
        [position_id] = ex.open(1)
        async with BingXClient(
            api_key=ex.account.api_key,
            secret_key=ex.account.secret_key,
            base_url=ex.base_url,
            allow_insecure_http=True,
            clock=ex.clock,
        ) as client:
            with pytest.raises(ConfigurationError, match=r"stream=StreamSettings\(url="):
                await client.close_position(position_id, wait_fill=True)
            with pytest.raises(ConfigurationError, match="stream=StreamSettings"):
                await client.close_positions([position_id], wait_fill=True)
        assert ex.sim.requests == []


def test_the_stream_address_is_known_for_bingx_hosts_only() -> None:
    assert BingXClient()._stream_settings == StreamSettings()
    demo = BingXClient(base_url=bingx_async.DEMO_BASE_URL)._stream_settings
    assert demo is not None
    assert demo.url == "wss://vst-open-api-ws.bingx.com/swap-market"
    assert BingXClient(base_url="https://proxy.example")._stream_settings is None


def test_stream_must_be_stream_settings() -> None:
    with pytest.raises(ConfigurationError, match="stream must be a StreamSettings"):
        BingXClient(stream="wss://x")  # type: ignore[arg-type]


# --- listen keys through the pipeline ---------------------------------------------------------


async def test_listen_key_requests_carry_the_api_key_and_no_signature() -> None:
    async with exchange() as ex:
        [position_id] = ex.open(1)
        async with ex.client() as client:
            await client.close_position(position_id, wait_fill=True)
        keys = [r for r in ex.sim.requests if r.path == LISTEN_KEY]
        assert [r.method for r in keys] == ["POST", "DELETE"]
        for request in keys:
            assert request.headers["x-bx-apikey"] == ex.account.api_key
            assert request.param("signature") is None
            assert request.param("timestamp") is None
        assert keys[1].param("listenKey")
        assert ex.sim.stream.listen_keys(ex.account) == []  # deleted


async def test_listen_key_requests_are_signed_when_asked() -> None:
    async with exchange() as ex:
        ex.sim.stream.require_signature = True
        [position_id] = ex.open(1)
        settings = StreamSettings(url=ex.stream_url, sign_listen_key=True)
        async with ex.client(stream=settings) as client:
            result = await client.close_position(position_id, wait_fill=True)
        assert result.fill is not None
        assert result.fill.source == "stream"
        [create] = [r for r in ex.sim.requests if r.path == LISTEN_KEY and r.method == "POST"]
        assert create.param("signature") is not None
        assert create.status_code == 200


async def test_listen_key_requests_count_towards_the_accounts_budget() -> None:
    async with exchange() as ex:
        async with ex.client() as client, client.account_stream():
            usage = {
                u.key: u
                for u in client.rate_limit_usage()
                if u.key[0] == "account" and LISTEN_KEY in u.key[2]
            }
        assert [u.limit for u in usage.values()] == [2]
        assert [u.in_window for u in usage.values()] == [1]


async def test_clients_of_one_account_share_one_stream_and_the_last_deletes_its_key() -> None:
    async with exchange() as ex:
        ids = ex.open(2)
        first = ex.client()
        second = ex.client()
        async with first, second:
            await first.close_position(ids[0], wait_fill=True)
            result = await second.close_position(ids[1], wait_fill=True)
            assert result.fill is not None
            assert result.fill.source == "stream"
            assert ex.count("POST", LISTEN_KEY) == 1
            await first.aclose()
            assert ex.count("DELETE", LISTEN_KEY) == 0
            assert ex.sim.stream.open_connections(ex.account) == 1
        assert ex.count("DELETE", LISTEN_KEY) == 1
        assert ex.sim.stream.open_connections(ex.account) == 0


# --- close_all_positions ------------------------------------------------------------------------


async def test_close_all_positions_gets_one_fill_per_order() -> None:
    async with exchange() as ex:
        ex.open(3)
        async with ex.client() as client:
            result = await client.close_all_positions(wait_fill=True)
        orders = ex.orders()
        assert set(result.fills) == set(result.order_ids) == set(orders)
        for order_id, fill in result.fills.items():
            assert isinstance(fill, Fill)
            assert fill.avg_price == Decimal(orders[order_id].avg_price)
            assert fill.source == "stream"


# --- account_stream() ---------------------------------------------------------------------------


async def test_account_stream_yields_the_close_and_announces_a_reconnect() -> None:
    async with exchange() as ex:
        [position_id] = ex.open(1)
        async with ex.client() as client, client.account_stream() as events:
            result = await client.close_position(position_id)
            update = await anext(events)
            while not (isinstance(update, OrderUpdate) and update.status == "FILLED"):
                update = await anext(events)
            assert isinstance(update, OrderUpdate)
            assert update.order_id == result.order_id
            ex.sim.stream.drop_connections()
            after = [await anext(events)]
            while not isinstance(after[-1], StreamReconnected):
                after.append(await anext(events))
            assert [type(event).__name__ for event in after] == [
                "AccountUpdate",
                "StreamReconnected",
            ]


# --- what deployments bring: no stream, a hung stream, a refused key, no websockets -----------


async def test_after_one_wait_in_vain_closes_no_longer_wait_for_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stream that cannot connect delays the first close by ``ready_timeout`` once, with
    one warning; the next close is sent at once; both fills come from the order query."""
    async with exchange() as ex:
        ids = ex.open(2)
        ex.sim.stream.refuse_connections(600)
        settings = StreamSettings(url=ex.stream_url, ready_timeout=2.0)
        async with ex.client(stream=settings) as client:
            with caplog.at_level(logging.WARNING, logger="bingx_async"):
                first = await client.close_position(ids[0], wait_fill=True)
                started = ex.clock.monotonic()
                second = await client.close_position(ids[1], wait_fill=True)
        waited = [r.getMessage() for r in caplog.records if "not connected after" in r.getMessage()]
        assert waited == [
            "account stream: not connected after 2 s; going on without waiting for it "
            "(it keeps trying)"
        ]
        [_, close] = [r for r in ex.sim.requests if r.path == CLOSE]
        assert close.arrived_at - started < 0.1
        assert [first.fill and first.fill.source, second.fill and second.fill.source] == [
            "rest",
            "rest",
        ]


async def test_a_close_sent_while_the_stream_reconnects_does_not_wait_for_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the stream has listened, a close made while it reconnects is sent at once; its
    fill comes from the stream if it reconnects in time, else from the order query."""
    async with exchange() as ex:
        ids = ex.open(2)
        async with ex.client() as client:
            await client.close_position(ids[0], wait_fill=True)
            ex.sim.stream.refuse_connections(30)
            ex.sim.stream.drop_connections()
            started = ex.clock.monotonic()
            with caplog.at_level(logging.WARNING, logger="bingx_async"):
                result = await client.close_position(ids[1], wait_fill=True)
        assert "account stream failed" not in caplog.text
        [_, close] = [r for r in ex.sim.requests if r.path == CLOSE]
        assert close.arrived_at - started < 0.1
        assert result.fill is not None
        assert result.fill.source == "rest"
        assert_fill_is_the_simulators(result, ex.orders()[result.fill.order_id])


async def test_a_stream_server_that_never_answers_the_handshake_delays_only_the_first_close() -> (
    None
):
    """A stream address that accepts connections and never answers: the close goes after
    ``ready_timeout``, gets its fill over REST, and closing the client does not hang."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server, exchange() as ex:
        [position_id] = ex.open(1)
        settings = StreamSettings(url=f"ws://127.0.0.1:{port}/swap-market", ready_timeout=1.0)
        async with ex.client(stream=settings) as client:
            started = ex.clock.monotonic()
            result = await client.close_position(position_id, wait_fill=True)
            [close] = [r for r in ex.sim.requests if r.path == CLOSE]
            assert 1.0 <= close.arrived_at - started < 1.5
        assert result.fill is not None
        assert result.fill.source == "rest"
        assert ex.count("DELETE", LISTEN_KEY) == 1


async def test_a_refused_listen_key_leaves_the_close_and_its_fill_to_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """BingX refuses the listen key (permission): the close is still made, its fill comes
    from the order query, and the log says why the stream is not used."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        refused = {
            "code": 100004,
            "msg": "Permission denied as the API key was created without the permission",
        }
        ex.sim.inject(CustomAnswer(status_code=200, body=refused), path=LISTEN_KEY, count=5)
        with caplog.at_level(logging.WARNING, logger="bingx_async"):
            async with ex.client() as client:
                result = await client.close_position(position_id, wait_fill=True)
        assert result.order_id is not None
        assert result.fill is not None
        assert result.fill.source == "rest"
        assert "account stream" in caplog.text


async def test_no_listen_key_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG, with the stream dropped and reconnected, no log line carries a listen key."""
    async with exchange() as ex:
        ids = ex.open(2)
        keys: set[str] = set()
        with caplog.at_level(logging.DEBUG):
            async with ex.client() as client:
                await client.close_position(ids[0], wait_fill=True)
                keys.update(ex.sim.stream.listen_keys(ex.account))
                ex.sim.stream.drop_connections()
                await client.close_position(ids[1], wait_fill=True)
                keys.update(ex.sim.stream.listen_keys(ex.account))
        # The simulator's own WebSocket server (websockets.server) is not the client's.
        client_lines = "\n".join(
            record.getMessage()
            for record in caplog.records
            if not record.name.startswith("websockets.server")
        )
        assert keys
        assert "account stream: created <listen key" in client_lines
        assert "listenKey=<redacted>" in client_lines
        for key in keys:
            assert key not in client_lines


def test_wait_fill_without_websockets_is_refused_before_anything_is_sent() -> None:
    """Without the ``stream`` extra the core works, and ``wait_fill`` is a
    ``ConfigurationError`` naming the extra, raised before any request."""
    script = """
import asyncio
import bingx_async
from bingx_async.testing import FakeBingX, LoopClock

async def main():
    sim = FakeBingX(clock=LoopClock())
    account = sim.add_account()
    position = sim.add_position(account)
    async with bingx_async.BingXClient(
        api_key=account.api_key, secret_key=account.secret_key, base_url="http://sim",
        allow_insecure_http=True, transport=sim.transport(), clock=sim.clock,
        stream=bingx_async.StreamSettings(url="ws://127.0.0.1:9/swap-market"),
    ) as client:
        for call in (
            lambda: client.close_position(position.position_id, wait_fill=True),
            lambda: client.close_positions([position.position_id], wait_fill=True),
            lambda: client.close_all_positions(wait_fill=True),
        ):
            try:
                await call()
            except bingx_async.ConfigurationError as error:
                print(error)
        print("requests:", len(sim.requests))
        print("closed:", (await client.close_position(position.position_id)).order_id is not None)

asyncio.run(main())
"""
    done = run_without_websockets(script)
    assert done.returncode == 0, done.stderr
    hint = 'the account stream needs the websockets package: pip install "bingx-async[stream]"'
    assert done.stdout.splitlines() == [hint, hint, hint, "requests: 0", "closed: True"]


# --- the listen key's life, through the client, in virtual time ---------------------------------


async def test_two_hours_of_stream_extend_one_key_every_thirty_minutes() -> None:
    """Two idle hours pass in milliseconds: one key, extended four times through the client's
    pipeline, one connection all along, and a close's fill still comes from the stream."""
    async with exchange() as ex:
        ex.sim.stream.ping_interval = 5.0  # as BingX does; answered with Pong
        [position_id] = ex.open(1)
        async with ex.client() as client, client.account_stream() as events:
            await asyncio.sleep(2 * 3600 + 60)
            assert ex.count("POST", LISTEN_KEY) == 1
            assert ex.count("PUT", LISTEN_KEY) == 4
            assert ex.sim.stream.open_connections(ex.account) == 1
            assert events.dropped_total == 0
            names = {task.get_name() for task in asyncio.all_tasks()}
            assert {"bingx_async account stream", "bingx_async listen key"} <= names
            stream = client.session._streams.stream_of(client._pipeline.account or "")
            assert stream is not None
            assert stream.reconnects == 0
            result = await client.close_position(position_id, wait_fill=True)
        assert result.fill is not None
        assert result.fill.source == "stream"
        assert ex.count("GET", ORDER) == 0


async def test_an_expired_listen_key_is_replaced_and_fills_still_come_from_the_stream() -> None:
    async with exchange() as ex:
        [position_id] = ex.open(1)
        async with ex.client() as client, client.account_stream() as events:
            [key] = ex.sim.stream.listen_keys(ex.account)
            ex.sim.stream.expire_listen_key(key)
            marker = await anext(events)
            assert isinstance(marker, StreamReconnected)
            assert marker.new_listen_key
            result = await client.close_position(position_id, wait_fill=True)
        assert ex.count("POST", LISTEN_KEY) == 2
        assert result.fill is not None
        assert result.fill.source == "stream"


async def test_waiting_for_the_stream_takes_at_most_half_of_total_timeout() -> None:
    """A stream that does not connect: with ``total_timeout=3`` the close leaves after 1.5 s
    (not ``ready_timeout``'s 5), and the whole call, fill included, ends within 3 s."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        ex.sim.stream.refuse_connections(600)
        settings = StreamSettings(url=ex.stream_url, ready_timeout=5.0)
        async with ex.client(stream=settings) as client:
            await asyncio.sleep(10.0)  # the call starts at no special time
            started = ex.clock.monotonic()
            result = await client.close_position(
                position_id, wait_fill=True, retry=RetryPolicy(total_timeout=3.0)
            )
            took = ex.clock.monotonic() - started
        [close] = [r for r in ex.sim.requests if r.path == CLOSE]
        assert 1.5 <= close.arrived_at - started < 1.6
        assert took <= 3.0
        assert result.fill is not None
        assert result.fill.source == "rest"


async def test_closes_sent_after_a_reconnect_get_their_fills_from_the_stream() -> None:
    """The stream drops while closes wait for their rate-limit slot and is back before they
    leave: their fills, pushed on the new connection after their answers, come from the
    stream; no order query is sent."""
    async with exchange() as ex:
        ids = ex.open(10)
        ex.sim.stream.delay_events(0.1)  # each fill reaches the stream after its answer

        async def drop_while_the_second_five_wait() -> None:
            await asyncio.sleep(0.3)
            assert ex.sim.stream.drop_connections() == 1

        async with ex.client() as client:
            dropping = asyncio.create_task(drop_while_the_second_five_wait())
            results = await client.close_positions(ids, wait_fill=True)
            await dropping
        sources = [r.fill.source for r in results if isinstance(r, ClosePositionResult) and r.fill]
        assert sources == ["stream"] * 10
        assert ex.count("GET", ORDER) == 0


async def test_an_order_query_that_hangs_is_cut_off_at_total_timeout() -> None:
    """The stream shows nothing and the order query never answers: the query gets only the
    time left (the call ends by ``total_timeout``, fill None), not a timeout of its own."""
    async with exchange() as ex:
        [position_id] = ex.open(1)
        ex.sim.stream.hold_events()
        ex.sim.inject(NeverAnswer(), path=ORDER)
        settings = StreamSettings(url=ex.stream_url, fill_timeout=1.0)
        async with ex.client(stream=settings, timeout=30.0) as client:
            started = ex.clock.monotonic()
            result = await client.close_position(
                position_id, wait_fill=True, retry=RetryPolicy(total_timeout=3.0)
            )
            took = ex.clock.monotonic() - started
        assert result.order_id is not None
        assert result.fill is None
        assert ex.count("GET", ORDER) == 1
        assert 3.0 <= took < 3.1


async def test_the_order_query_is_asked_with_half_a_second_left() -> None:
    async with exchange() as ex:
        [position_id] = ex.open(1)
        ex.sim.stream.hold_events()
        settings = StreamSettings(url=ex.stream_url, fill_timeout=2.5)
        async with ex.client(stream=settings) as client:
            result = await client.close_position(
                position_id, wait_fill=True, retry=RetryPolicy(total_timeout=3.0)
            )
        assert result.fill is not None
        assert result.fill.source == "rest"
        assert ex.count("GET", ORDER) == 1


async def test_close_all_asks_the_order_query_only_with_a_symbol(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Fills not seen on the stream: with ``symbol`` each order is asked once; without it
    nothing can be asked (the query needs the symbol) and the fills are None."""
    async with exchange() as ex:
        ex.open(2)
        ex.sim.stream.hold_events()
        settings = StreamSettings(url=ex.stream_url, fill_timeout=1.0)
        async with ex.client(stream=settings) as client:
            asked = await client.close_all_positions("BTC-USDT", wait_fill=True)
        orders = ex.orders()
        assert len(asked.fills) == 2
        for order_id, fill in asked.fills.items():
            assert fill is not None
            assert fill.source == "rest"
            assert fill.avg_price == Decimal(orders[order_id].avg_price)
        assert ex.count("GET", ORDER) == 2

    async with exchange() as ex:
        ex.open(2)
        ex.sim.stream.hold_events()
        settings = StreamSettings(url=ex.stream_url, fill_timeout=1.0)
        async with ex.client(stream=settings) as client:
            with caplog.at_level(logging.WARNING, logger="bingx_async"):
                unasked = await client.close_all_positions(wait_fill=True)
        assert list(unasked.fills.values()) == [None, None]
        assert ex.count("GET", ORDER) == 0
        assert sorted(r.getMessage() for r in caplog.records if r.name == "bingx_async") == sorted(
            f"wait_fill: order {order_id}: fill not seen, and no symbol to ask"
            for order_id in unasked.order_ids
        )
