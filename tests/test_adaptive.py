"""When BingX enforces less than the budget table says, the client learns it (virtual time)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    Budget,
    ClosePositionResult,
    RateLimitPolicy,
    RetryPolicy,
)
from bingx_async._budgets import CLOSE_POSITION
from bingx_async._ratelimit import RELEARN_AFTER
from bingx_async.testing import FakeBingX, LoopClock

from .mock_bingx import max_in_window

pytestmark = pytest.mark.looptime

CLOSE_PATH = CLOSE_POSITION.split(" ", 1)[1]
#: BingX lowered closePosition to 4 per second; the client still believes 5.
STRICTER = DEFAULT_RATE_LIMITS.with_endpoint(
    CLOSE_POSITION, per_account=(Budget(4, 1.0),), ip_group=2
)
PATIENT = RetryPolicy(attempts=10, total_timeout=None)


def exchange(
    *,
    rate_limits: RateLimitPolicy = STRICTER,
    client_limits: RateLimitPolicy = DEFAULT_RATE_LIMITS,
) -> tuple[FakeBingX, BingXClient, list[str]]:
    """A simulator enforcing ``rate_limits``, 40 positions, and a client for them."""
    sim = FakeBingX(clock=LoopClock(), rate_limits=rate_limits, seed=1)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(40)]
    client = BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        clock=sim.clock,
        transport=sim.transport(),
        retry=PATIENT,
        rate_limits=client_limits,
    )
    return sim, client, ids


async def test_a_lowered_limit_is_learned_after_two_blocks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two blocks while the budget was full: the client settles at 4 per second."""
    sim, client, ids = exchange()
    with caplog.at_level(logging.WARNING, logger="bingx_async"):
        async with client:
            outcomes = await client.close_positions(ids)
            usage = [u for u in client.rate_limit_usage() if u.key[0] == "account"]
    assert all(isinstance(o, ClosePositionResult) for o in outcomes)
    assert sim.violations == 2
    assert usage[0].limit == 4
    assert any("assuming 4 from now on" in r.getMessage() for r in caplog.records)
    last_block = max(r.arrived_at for r in sim.requests_to(CLOSE_PATH) if r.code == 100410)
    after = [t for t in sim.arrivals(CLOSE_PATH) if t > last_block]
    assert max_in_window(after, 1.0) == 4


async def test_one_block_does_not_slow_the_client_down() -> None:
    """A single forced block is waited out; the budget stays at 5 per second."""
    sim, client, ids = exchange(rate_limits=DEFAULT_RATE_LIMITS)
    async with client:
        await client.close_positions(ids[:5])
        sim.block(CLOSE_POSITION, 2.0)
        await client.close_positions(ids[5:])
        usage = [u for u in client.rate_limit_usage() if u.key[0] == "account"]
    assert usage[0].limit == 5
    after = [r.arrived_at for r in sim.requests_to(CLOSE_PATH) if r.code == 0]
    assert max_in_window(after, 1.0) == 5


async def test_a_learned_limit_climbs_back() -> None:
    """After RELEARN_AFTER seconds without trouble the limit rises by one."""
    _, client, ids = exchange()
    async with client:
        await client.close_positions(ids[:30])
        learned = [u.limit for u in client.rate_limit_usage() if u.key[0] == "account"]
        await asyncio.sleep(RELEARN_AFTER + 1)
        await client.close_position(ids[30])
        usage = [u.limit for u in client.rate_limit_usage() if u.key[0] == "account"]
    assert (learned, usage) == ([4], [5])


async def test_adaptation_can_be_turned_off() -> None:
    """adapt=False keeps the configured 5 per second, and keeps meeting blocks."""
    sim, client, ids = exchange(client_limits=dataclasses.replace(DEFAULT_RATE_LIMITS, adapt=False))
    async with client:
        await client.close_positions(ids[:30])
        usage = [u for u in client.rate_limit_usage() if u.key[0] == "account"]
    assert usage[0].limit == 5
    assert sim.violations > 2
