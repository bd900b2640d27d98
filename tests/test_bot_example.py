"""How a user tests their own bot: FakeBingX as the client's transport, no network.

``close_all`` stands for code in the user's project; the tests below are what they would
write in theirs, using only the public API and ``bingx_async.testing``.
"""

from __future__ import annotations

import pytest

from bingx_async import BingXClient, ClosePositionResult
from bingx_async.testing import FakeBingX, SimAccount

POSITIONS_PATH = "/openApi/swap/v2/user/positions"
CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"


async def close_all(client: BingXClient) -> int:
    """The bot: close every open position; returns how many were closed."""
    positions = await client.get_positions()
    outcomes = await client.close_positions(p.position_id for p in positions)
    return sum(isinstance(outcome, ClosePositionResult) for outcome in outcomes)


@pytest.fixture
def exchange() -> FakeBingX:
    return FakeBingX(seed=42)


@pytest.fixture
def account(exchange: FakeBingX) -> SimAccount:
    return exchange.add_account()


def client_for(exchange: FakeBingX, account: SimAccount) -> BingXClient:
    return BingXClient(
        api_key=account.api_key, secret_key=account.secret_key, transport=exchange.transport()
    )


async def test_close_all_closes_every_position(exchange: FakeBingX, account: SimAccount) -> None:
    """The bot closes all three positions, one request each, after listing them once."""
    opened = [
        exchange.add_position(account, symbol="BTC-USDT"),
        exchange.add_position(account, symbol="ETH-USDT", position_side="SHORT"),
        exchange.add_position(account, symbol="SOL-USDT", quantity="3"),
    ]
    async with client_for(exchange, account) as client:
        closed = await close_all(client)
    assert closed == 3
    assert exchange.positions(account) == []
    assert len(exchange.requests_to(POSITIONS_PATH)) == 1
    closes = exchange.requests_to(CLOSE_PATH)
    assert sorted(str(r.param("positionId")) for r in closes) == sorted(
        p.position_id for p in opened
    )
    assert [r.code for r in closes] == [0, 0, 0]


async def test_close_all_with_nothing_open_sends_no_close(
    exchange: FakeBingX, account: SimAccount
) -> None:
    """With no open positions the bot lists once and closes nothing."""
    async with client_for(exchange, account) as client:
        closed = await close_all(client)
    assert closed == 0
    assert len(exchange.requests_to(POSITIONS_PATH)) == 1
    assert exchange.requests_to(CLOSE_PATH) == []


async def test_close_all_leaves_other_accounts_alone(
    exchange: FakeBingX, account: SimAccount
) -> None:
    """The bot's key closes its own positions only."""
    mine = exchange.add_position(account)
    other = exchange.add_account()
    theirs = exchange.add_position(other)
    async with client_for(exchange, account) as client:
        closed = await close_all(client)
    assert closed == 1
    assert exchange.positions(account) == []
    assert exchange.positions(other) == [theirs]
    assert [r.param("positionId") for r in exchange.requests_to(CLOSE_PATH)] == [mine.position_id]


async def test_close_all_positions_closes_one_symbol(
    exchange: FakeBingX, account: SimAccount
) -> None:
    """close_all_positions("ETH-USDT") leaves the BTC position open and names its orders."""
    exchange.add_position(account, symbol="BTC-USDT")
    exchange.add_position(account, symbol="ETH-USDT")
    exchange.add_position(account, symbol="ETH-USDT", position_side="SHORT")
    async with client_for(exchange, account) as client:
        result = await client.close_all_positions("ETH-USDT")
    assert len(result.order_ids) == 2
    assert all(order_id.isdigit() for order_id in result.order_ids)
    assert result.failed == ()
    assert [p.symbol for p in exchange.positions(account)] == ["BTC-USDT"]
