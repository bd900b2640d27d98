"""BingXClient against FakeBingX: over real loopback HTTP, and in virtual time.

The first part serves the simulator on 127.0.0.1 (``FakeBingX.serve``) and runs in real time,
so every test sends a handful of requests and waits a fraction of a second at most. The last
part talks to the simulator through its httpx transport under ``looptime``, where pacing many
closes costs no real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    AuthenticationError,
    BingXClient,
    Budget,
    ClosePositionResult,
    ErrorRateGuardError,
    Position,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    RetryPolicy,
    ServerError,
)
from bingx_async.testing import (
    BadGatewayPage,
    DropConnection,
    FakeBingX,
    GatewayTimeout,
    LoopClock,
    SimAccount,
)

from .mock_bingx import max_in_window

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_ENDPOINT = f"POST {CLOSE_PATH}"
SERVER_TIME_PATH = "/openApi/swap/v2/server/time"
#: Retries without real waiting to speak of: 10 ms back-off, no jitter.
FAST_RETRY = RetryPolicy(wait_initial=0.01, wait_jitter=0)
#: Budgets loose enough to send a few dozen closes over loopback in well under a second.
LOOSE_LIMITS = DEFAULT_RATE_LIMITS.with_endpoint(
    CLOSE_ENDPOINT, per_account=(Budget(100, 1.0),), ip_group=2
)
#: The message of the simulator's error-rate ban ("shape 3").
BAN_MARKER = "error code:"


@dataclass
class Served:
    """A simulator served on loopback, one account on it, and a client for that account."""

    sim: FakeBingX
    account: SimAccount
    client: BingXClient


@contextlib.asynccontextmanager
async def served(
    sim: FakeBingX, *, secret_key: str | None = None, **options: object
) -> AsyncIterator[Served]:
    account = sim.add_account()
    options.setdefault("retry", FAST_RETRY)
    async with (
        sim.serve() as base_url,
        BingXClient(
            api_key=account.api_key,
            secret_key=secret_key or account.secret_key,
            base_url=base_url,
            **options,  # type: ignore[arg-type]
        ) as client,
    ):
        yield Served(sim, account, client)


@pytest.fixture
async def live() -> AsyncIterator[Served]:
    """FakeBingX on 127.0.0.1 with default budgets, and a client with fast retries."""
    async with served(FakeBingX(seed=7)) as found:
        yield found


def close_requests(sim: FakeBingX) -> list[tuple[int | None, int | None]]:
    """(HTTP status, BingX code) of every closePosition request the simulator recorded."""
    return [(r.status_code, r.code) for r in sim.requests_to(CLOSE_PATH)]


# --- over real loopback HTTP -----------------------------------------------------------------


async def test_close_position_closes_it_at_the_exchange(live: Served) -> None:
    """A close over HTTP answers the closing order and the position is gone."""
    position = live.sim.add_position(live.account, symbol="ETH-USDT", quantity="0.5")
    result = await live.client.close_position(position.position_id)
    assert isinstance(result, ClosePositionResult)
    assert result.position_id == position.position_id
    assert result.symbol == "ETH-USDT"
    assert result.orig_qty == Decimal("0.5")
    assert result.order_id is not None
    assert live.sim.positions(live.account) == []


async def test_close_position_sends_params_in_signed_order(live: Served) -> None:
    """The close carries positionId, recvWindow, timestamp, then the signature."""
    position = live.sim.add_position(live.account)
    await live.client.close_position(position.position_id)
    (request,) = live.sim.requests_to(CLOSE_PATH)
    assert [name for name, _ in request.params] == [
        "positionId",
        "recvWindow",
        "timestamp",
        "signature",
    ]
    assert request.param("positionId") == position.position_id
    assert request.param("recvWindow") == "5000"
    assert request.method == "POST"
    assert request.headers["x-bx-apikey"] == live.account.api_key
    assert (request.status_code, request.code) == (200, 0)


async def test_get_positions_returns_typed_positions(live: Served) -> None:
    """Seeded positions come back as Position objects with their IDs and decimals."""
    seeded = [
        live.sim.add_position(live.account, symbol="BTC-USDT", quantity="0.01"),
        live.sim.add_position(live.account, symbol="ETH-USDT", position_side="SHORT", quantity="2"),
    ]
    positions = await live.client.get_positions()
    assert all(isinstance(p, Position) for p in positions)
    assert [p.position_id for p in positions] == [s.position_id for s in seeded]
    assert [p.symbol for p in positions] == ["BTC-USDT", "ETH-USDT"]
    assert [p.position_side for p in positions] == ["LONG", "SHORT"]
    assert [p.position_amt for p in positions] == [Decimal("0.01"), Decimal("2")]


async def test_get_positions_filters_by_symbol(live: Served) -> None:
    """A symbol argument lists only that symbol's positions."""
    live.sim.add_position(live.account, symbol="BTC-USDT")
    eth = live.sim.add_position(live.account, symbol="ETH-USDT")
    positions = await live.client.get_positions("ETH-USDT")
    assert [p.position_id for p in positions] == [eth.position_id]


async def test_server_time_is_the_simulators_clock(live: Served) -> None:
    """server_time() is an aware UTC datetime close to the simulator's clock."""
    before = datetime.fromtimestamp(live.sim.server_time_ms() / 1000, tz=UTC)
    now = await live.client.server_time()
    after = datetime.fromtimestamp(live.sim.server_time_ms() / 1000, tz=UTC)
    assert now.tzinfo is UTC
    assert before <= now <= after


async def test_wrong_secret_fails_once_without_retrying() -> None:
    """A signature under the wrong secret raises AuthenticationError after one close."""
    sim = FakeBingX(seed=7)
    async with served(sim, secret_key="not-the-secret") as live:
        position = sim.add_position(live.account)
        with pytest.raises(AuthenticationError) as caught:
            await live.client.close_position(position.position_id)
    assert caught.value.code == 100001
    assert caught.value.attempts == 1
    assert close_requests(sim) == [(200, 100001)]
    assert len(sim.positions(live.account)) == 1


async def test_skewed_server_clock_is_measured_not_rejected() -> None:
    """With BingX 8 s ahead, the close succeeds and no timestamp is ever rejected."""
    sim = FakeBingX(seed=7, clock_skew=8.0)
    async with served(sim) as live:
        position = sim.add_position(live.account)
        result = await live.client.close_position(position.position_id)
    assert result.position_id == position.position_id
    assert close_requests(sim) == [(200, 0)]
    assert all(request.code in (0, None) for request in sim.requests)


async def test_bad_gateway_page_is_retried_and_the_close_succeeds(live: Served) -> None:
    """An HTML 502 from a proxy is retried; the second attempt closes the position."""
    position = live.sim.add_position(live.account)
    live.sim.inject(BadGatewayPage(), path=CLOSE_PATH)
    result = await live.client.close_position(position.position_id)
    assert result.position_id == position.position_id
    assert close_requests(live.sim) == [(502, None), (200, 0)]
    assert live.sim.positions(live.account) == []


HISTORY_PATH = "/openApi/swap/v1/trade/positionHistory"
POSITIONS_PATH = "/openApi/swap/v2/user/positions"


def paths_after_setup(sim: FakeBingX) -> list[str]:
    """The signed requests the simulator saw, by path, in order."""
    return [r.path for r in sim.requests if r.path != "/openApi/swap/v2/server/time"]


async def test_a_gateway_timeout_after_closing_is_confirmed_from_the_history(
    live: Served,
) -> None:
    """A 504 after BingX executed the close: the position history confirms it, and no second
    close is sent."""
    position = live.sim.add_position(live.account, symbol="ETH-USDT", avg_price="2500.5")
    live.sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    result = await live.client.close_position(position.position_id, symbol="ETH-USDT")
    assert result.confirmed_from_history is True
    assert result.position_id == position.position_id
    assert (result.symbol, result.avg_close_price) == ("ETH-USDT", Decimal("2500.5"))
    assert result.close_time is not None
    assert result.order_id is None
    assert close_requests(live.sim) == [(504, 100500)]
    assert paths_after_setup(live.sim) == [CLOSE_PATH, HISTORY_PATH]
    assert live.sim.positions(live.account) == []


async def test_symbols_from_listed_positions_are_used_to_confirm_a_close(live: Served) -> None:
    """A position seen in get_positions() needs no symbol= to be confirmed."""
    position = live.sim.add_position(live.account, symbol="SOL-USDT")
    await live.client.get_positions()
    live.sim.inject(DropConnection(after_executing=True), path=CLOSE_PATH)
    result = await live.client.close_position(position.position_id)
    assert result.confirmed_from_history is True
    assert result.symbol == "SOL-USDT"
    assert paths_after_setup(live.sim) == [POSITIONS_PATH, CLOSE_PATH, HISTORY_PATH]


async def test_a_gateway_timeout_after_closing_with_no_known_symbol_is_possibly_closed(
    live: Served,
) -> None:
    """Without the symbol BingX's history cannot be asked: the open positions are, and the
    close is reported possibly closed, with what was checked, and not sent again."""
    position = live.sim.add_position(live.account)
    live.sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    with pytest.raises(PositionPossiblyClosedError) as caught:
        await live.client.close_position(position.position_id)
    earlier = caught.value.earlier_error
    assert isinstance(earlier, ServerError)
    assert earlier.status_code == 504
    assert caught.value.may_have_executed is True
    assert caught.value.checked == (
        f"all open positions: {position.position_id} is not among them",
        "position history: not asked, the position's symbol is not known",
    )
    assert caught.value.attempts == 1
    assert paths_after_setup(live.sim) == [CLOSE_PATH, POSITIONS_PATH]
    assert live.sim.positions(live.account) == []


async def test_a_gateway_timeout_before_closing_retries_the_close(live: Served) -> None:
    """A 504 that executed nothing: the position is still listed, so the close is retried."""
    position = live.sim.add_position(live.account, symbol="ETH-USDT")
    live.sim.inject(GatewayTimeout(after_executing=False), path=CLOSE_PATH)
    result = await live.client.close_position(position.position_id, symbol="ETH-USDT")
    assert result.confirmed_from_history is False
    assert result.order_id is not None
    assert close_requests(live.sim) == [(504, 100500), (200, 0)]
    assert paths_after_setup(live.sim) == [CLOSE_PATH, HISTORY_PATH, POSITIONS_PATH, CLOSE_PATH]


async def test_confirming_can_be_turned_off(live: Served) -> None:
    """confirm_closes=False: after a 504 the close is simply sent again."""
    position = live.sim.add_position(live.account)
    live.sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    async with BingXClient(
        api_key=live.account.api_key,
        secret_key=live.account.secret_key,
        base_url=live.client.base_url,
        retry=RetryPolicy(wait_initial=0.01, wait_jitter=0),
        confirm_closes=False,
    ) as client:
        with pytest.raises(PositionPossiblyClosedError) as caught:
            await client.close_position(position.position_id)
    assert caught.value.code == 101205
    assert close_requests(live.sim) == [(504, 100500), (200, 101205)]


async def test_unknown_position_is_plain_not_found(live: Served) -> None:
    """Closing an ID the account never held raises exactly PositionNotFoundError, once."""
    with pytest.raises(PositionNotFoundError) as caught:
        await live.client.close_position("1234567890")
    assert type(caught.value) is PositionNotFoundError
    assert caught.value.code == 101205
    assert caught.value.may_have_executed is False
    assert close_requests(live.sim) == [(200, 101205)]


async def test_forced_block_is_waited_out_with_one_request(live: Served) -> None:
    """Blocked for 0.3 s: one request meets the block, the retry succeeds after it."""
    position = live.sim.add_position(live.account)
    await live.client.server_time()  # measure the clock first: the block starts below
    loop = asyncio.get_running_loop()
    live.sim.block(CLOSE_ENDPOINT, 0.3)
    started = loop.time()
    result = await live.client.close_position(position.position_id)
    elapsed = loop.time() - started
    assert result.position_id == position.position_id
    assert 0.3 <= elapsed < 0.3 + 0.5
    assert close_requests(live.sim) == [(200, 100410), (200, 0)]
    assert [r.during_block for r in live.sim.requests_to(CLOSE_PATH)] == [True, False]


async def test_error_guard_refuses_the_error_that_would_get_banned() -> None:
    """After 20 "no position" answers the 21st close is refused locally, never banned."""
    sim = FakeBingX(seed=7, rate_limits=LOOSE_LIMITS)
    async with served(sim, rate_limits=LOOSE_LIMITS) as live:
        for n in range(1, 21):
            with pytest.raises(PositionNotFoundError):
                await live.client.close_position(1000 + n)
        with pytest.raises(ErrorRateGuardError) as caught:
            await live.client.close_position(2000)
    assert caught.value.banned_code == 101205
    assert caught.value.count == 20
    assert close_requests(sim) == [(200, 101205)] * 20
    assert not any(BAN_MARKER in (r.msg or "") for r in sim.requests)


# --- virtual time, through the simulator's transport ------------------------------------------


def virtual(sim: FakeBingX, account: SimAccount, **options: object) -> BingXClient:
    """A client on the simulator's transport and clock (use under looptime)."""
    return BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        clock=sim.clock,
        transport=sim.transport(),
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("arrival_jitter", "window"),
    [(0.0, "rolling"), (0.03, "rolling"), (0.03, "fixed")],
)
async def test_thirty_gathered_closes_never_exceed_five_per_second(
    arrival_jitter: float, window: Literal["rolling", "fixed"]
) -> None:
    """30 concurrent closes reach BingX at most 5 in any second, without a violation."""
    sim = FakeBingX(clock=LoopClock(), seed=3, arrival_jitter=arrival_jitter, window=window)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(30)]
    async with virtual(sim, account) as client:
        results = await asyncio.gather(*(client.close_position(i) for i in ids))
    assert [r.position_id for r in results] == ids
    assert max_in_window(sim.arrivals(CLOSE_PATH), 1.0) == 5
    assert sim.violations == 0
    assert close_requests(sim) == [(200, 0)] * 30
    assert sim.positions(account) == []


@pytest.mark.looptime
async def test_close_positions_of_unknown_ids_never_meets_the_ban() -> None:
    """25 unknown IDs at once: at most 20 errors reach BingX, the rest are refused locally."""
    sim = FakeBingX(clock=LoopClock(), seed=3)
    account = sim.add_account()
    async with virtual(sim, account) as client:
        outcomes = await client.close_positions(range(1, 26))
    refused = [o for o in outcomes if isinstance(o, ErrorRateGuardError)]
    not_found = [o for o in outcomes if type(o) is PositionNotFoundError]
    assert len(not_found) == 20
    assert len(refused) == 5
    assert close_requests(sim) == [(200, 101205)] * 20
    assert not any(BAN_MARKER in (r.msg or "") for r in sim.requests)


@pytest.mark.looptime
async def test_virtual_time_close_takes_the_paced_time() -> None:
    """12 closes at 5/s reach BingX five at 0 s, five at 1 s and two at 2 s (virtual)."""
    sim = FakeBingX(clock=LoopClock(), seed=3)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(12)]
    loop = asyncio.get_running_loop()
    async with virtual(sim, account) as client:
        await client.server_time()
        started = loop.time()
        await client.close_positions(ids)
    arrivals = [at - started for at in sim.arrivals(CLOSE_PATH)]
    assert arrivals == pytest.approx([0.0] * 5 + [1.0] * 5 + [2.0] * 2, abs=0.01)
