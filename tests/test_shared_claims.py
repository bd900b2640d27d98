"""Closes claimed through Redis: a claim is taken when a close is admitted, for its lease
only, so that no process, dead or alive, strands another's closes.

Each "process" is a :class:`BingXSession` with its own :class:`RedisLimits` on one real
``redis-server``; a process that dies is one whose requests never come back and whose
store sends nothing more. Budgets are scaled down (5 closes per 0.25 s), leases to 1.5 s.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXSession,
    Budget,
    ClosePositionResult,
    QueueTimeoutError,
    RedisLimits,
    RetryPolicy,
)
from bingx_async.testing import FakeBingX

from .test_redis_engine import Hung, client

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_NAME = f"POST {CLOSE_PATH}"
FAST = DEFAULT_RATE_LIMITS.with_endpoint(CLOSE_NAME, per_account=(Budget(5, 0.25),), ip_group=2)
LEASE = 1.5


def kill(limits: RedisLimits) -> None:
    """Nothing more of this process reaches Redis, as if it had died."""
    limits._store._closed = True
    limits._store._pending.clear()
    limits._store._queue.clear()


async def test_a_dead_process_strands_none_of_the_closes_of_another(redis_url: str) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=31)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(15)]
    prefix = uuid.uuid4().hex[:8]
    policy = RetryPolicy(total_timeout=4.0)
    a_limits = RedisLimits(redis_url, prefix=prefix, lease=LEASE)
    b_limits = RedisLimits(redis_url, prefix=prefix, lease=LEASE)
    hung = Hung()
    async with (
        BingXSession(shared_limits=a_limits) as a_session,
        BingXSession(shared_limits=b_limits) as b_session,
    ):
        a = client(a_session, account, hung, retry=policy)
        b = client(b_session, account, sim.transport(), retry=policy)
        a_closes = [asyncio.ensure_future(a.close_position(i)) for i in ids]
        for _ in range(500):
            if hung.sent:
                break
            await asyncio.sleep(0.002)
        # A dies with its first closes on the wire and the rest queued.
        kill(a_limits)
        for task in a_closes:
            task.cancel()
        sent_by_a = hung.sent
        started = time.monotonic()

        async def timed(position_id: str) -> tuple[Any, float]:
            try:
                outcome: Any = await b.close_position(position_id)
            except Exception as error:  # noqa: BLE001 - the outcome is what is checked
                outcome = error
            return outcome, time.monotonic() - started

        outcomes = await asyncio.gather(*(timed(i) for i in ids))
        await asyncio.gather(*a_closes, return_exceptions=True)

    assert 1 <= sent_by_a <= 5, "A was admitted only what the budget held"
    assert [type(outcome) for outcome, _ in outcomes] == [ClosePositionResult] * 15
    assert sim.positions(account) == []
    # B never waits past its own deadline for A: A's claims lapse within one lease.
    assert max(took for _, took in outcomes) < 4.0
    assert sim.violations == 0
    assert [r.code for r in sim.requests_to(CLOSE_PATH) if r.code != 0] == []


async def test_a_joiner_never_waits_past_its_own_deadline(redis_url: str) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=32)
    account = sim.add_account()
    position = sim.add_position(account)
    prefix = uuid.uuid4().hex[:8]
    hung = Hung()
    async with (
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix, lease=LEASE)) as first,
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix, lease=LEASE)) as second,
    ):
        holder = asyncio.ensure_future(
            client(first, account, hung).close_position(position.position_id)
        )
        for _ in range(500):
            if hung.sent:
                break
            await asyncio.sleep(0.002)
        started = time.monotonic()
        with pytest.raises(QueueTimeoutError) as caught:
            await client(
                second, account, sim.transport(), retry=RetryPolicy(total_timeout=0.4)
            ).close_position(position.position_id)
        took = time.monotonic() - started
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)

    assert 0.35 <= took < 0.6
    error = caught.value
    # The other process may have sent it: that is what the caller must know.
    assert error.may_have_executed is True
    assert "another process" in error.message
    assert "waited 0.4" in error.message or "waited 0.3" in error.message
    assert sim.requests_to(CLOSE_PATH) == []


async def test_a_close_never_sent_says_so_and_how_long_it_waited(redis_url: str) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=33)
    account = sim.add_account()
    positions = [sim.add_position(account).position_id for _ in range(6)]
    prefix = uuid.uuid4().hex[:8]
    hung = Hung()
    async with (
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix, lease=LEASE)) as first,
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix, lease=LEASE)) as second,
    ):
        stuck = client(first, account, hung)
        holders = [asyncio.ensure_future(stuck.close_position(p)) for p in positions[:5]]
        for _ in range(500):
            if hung.sent == 5:
                break
            await asyncio.sleep(0.002)
        with pytest.raises(QueueTimeoutError) as caught:
            await client(
                second, account, sim.transport(), retry=RetryPolicy(total_timeout=0.5)
            ).close_position(positions[5])
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)

    error = caught.value
    assert error.may_have_executed is False
    assert error.message.startswith("not sent:")
    waited = float(error.message.split("waited ")[1].split(" s")[0])
    assert 0.45 <= waited <= 0.7
    assert sim.requests_to(CLOSE_PATH) == []
