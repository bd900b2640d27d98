"""Testing a bot against FakeBingX: no network, no keys, no real waiting.

Run with ``pytest docs/examples/bot_test_example.py``. ``close_everything`` stands for code
in your own project; the tests are what you would write next to it.
"""

from __future__ import annotations

import asyncio

import pytest

from bingx_async import (
    BingXClient,
    ClosePositionResult,
    PositionPossiblyClosedError,
    RetryPolicy,
)
from bingx_async.testing import FakeBingX, GatewayTimeout, LoopClock, SimAccount

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"


async def close_everything(client: BingXClient) -> int:
    """The bot: close every open position; returns how many are gone."""
    positions = await client.get_positions()
    outcomes = await client.close_positions(p.position_id for p in positions)
    return sum(
        isinstance(outcome, ClosePositionResult | PositionPossiblyClosedError)
        for outcome in outcomes
    )


def client_for(sim: FakeBingX, account: SimAccount, retry: RetryPolicy) -> BingXClient:
    """A client that talks to the simulator in-process, on the simulator's clock."""
    return BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        clock=sim.clock,
        transport=sim.transport(),
        retry=retry,
    )


@pytest.mark.looptime
async def test_twelve_positions_close_at_five_per_second() -> None:
    """Twelve closes go out 5 + 5 + 2, one second apart, and none is rate limited."""
    sim = FakeBingX(clock=LoopClock(), seed=1)
    account = sim.add_account()
    for _ in range(12):
        sim.add_position(account)
    loop = asyncio.get_running_loop()
    async with client_for(sim, account, RetryPolicy()) as client:
        started = loop.time()
        gone = await close_everything(client)
        elapsed = loop.time() - started
    assert gone == 12
    assert sim.positions(account) == []
    assert sim.violations == 0
    assert elapsed == pytest.approx(2.0, abs=0.01)  # virtual seconds; real time is ~0


@pytest.mark.looptime
async def test_a_close_lost_in_a_gateway_timeout_is_confirmed() -> None:
    """A 504 after BingX executed the close: the position history confirms it, no second
    close is sent, and the bot counts it."""
    sim = FakeBingX(clock=LoopClock(), seed=1)
    account = sim.add_account()
    sim.add_position(account)
    sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    async with client_for(sim, account, RetryPolicy(wait_jitter=0)) as client:
        gone = await close_everything(client)
    assert gone == 1
    assert [(r.status_code, r.code) for r in sim.requests_to(CLOSE_PATH)] == [(504, 100500)]
    assert sim.positions(account) == []
