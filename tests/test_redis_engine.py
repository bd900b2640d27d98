"""The Redis engine's own promises, seen from processes sharing one real ``redis-server``:
what one process learns holds the others, what is in flight counts, leases are what they
say, and a caller that gives up keeps nothing.

Each "process" is a :class:`BingXSession` with its own :class:`RedisLimits`. Budgets are
scaled down (5 closes per 0.25 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXError,
    BingXSession,
    Budget,
    ErrorGuardPolicy,
    ErrorRateGuardError,
    IPBannedError,
    QueueTimeoutError,
    RedisLimits,
    RetryPolicy,
    TransportError,
)
from bingx_async.testing import CustomAnswer, FakeBingX, NeverAnswer, RefuseConnection

from .redis_server import RedisServer

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_NAME = f"POST {CLOSE_PATH}"
FAST = DEFAULT_RATE_LIMITS.with_endpoint(CLOSE_NAME, per_account=(Budget(5, 0.25),), ip_group=2)
#: Four closes per 30 s: a quarter of it, while Redis is away, is one close per 30 s.
SLOW = DEFAULT_RATE_LIMITS.with_endpoint(CLOSE_NAME, per_account=(Budget(4, 30.0),), ip_group=2)


class Hung(httpx.AsyncBaseTransport):
    """Closes that never come back (server time answers at once)."""

    def __init__(self) -> None:
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == CLOSE_PATH:
            self.sent += 1
            await asyncio.Event().wait()
        return httpx.Response(
            200, json={"code": 0, "data": {"serverTime": int(time.time() * 1000)}}
        )


def client(
    session: BingXSession, account: Any, transport: httpx.AsyncBaseTransport, **options: Any
) -> BingXClient:
    options.setdefault("rate_limits", FAST)
    return BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        session=session,
        transport=transport,
        **options,
    )


async def wait_until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.002)  # admissions go through Redis, in real time
    raise AssertionError("the condition never held")


async def test_an_ip_ban_one_process_heard_of_holds_the_others(redis_url: str) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=41)
    account = sim.add_account()
    first, second = (sim.add_position(account).position_id for _ in range(2))
    prefix = uuid.uuid4().hex[:8]
    once = RetryPolicy(attempts=1)
    async with (
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix)) as one,
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix)) as other,
    ):
        a, b = client(one, account, sim.transport()), client(other, account, sim.transport())
        await b.server_time()  # b is up and has measured BingX's clock before the ban
        banned = CustomAnswer(status_code=418, body={"code": 418, "msg": "banned"})
        sim.inject(banned, path=CLOSE_PATH, count=1)
        with pytest.raises(IPBannedError):
            await a.close_position(first, retry=once)
        sent = len(sim.requests_to(CLOSE_PATH))
        await asyncio.sleep(0.1)  # the ban reaches Redis

        with pytest.raises(IPBannedError) as caught:
            await b.close_position(second, retry=once)
        # An endpoint of another IP group, never used before the ban: banned all the same.
        with pytest.raises(IPBannedError) as listing:
            await b.get_positions()

    for error in (caught.value, listing.value):
        assert error.may_have_executed is False
        assert "not sent" in error.message
    assert len(sim.requests_to(CLOSE_PATH)) == sent, "sent from a banned IP"
    assert sim.requests_to("/openApi/swap/v2/user/positions") == []


async def test_requests_in_flight_elsewhere_count_towards_the_error_guard(
    redis_url: str,
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=42)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(4)]
    prefix = uuid.uuid4().hex[:8]
    guard = ErrorGuardPolicy(threshold=3, window=60)
    hung = Hung()
    async with (
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix)) as one,
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix)) as other,
    ):
        stuck = client(one, account, hung, error_guard=guard)
        flying = [asyncio.ensure_future(stuck.close_position(i)) for i in ids[:3]]
        await wait_until(lambda: hung.sent == 3)

        with pytest.raises(ErrorRateGuardError) as caught:
            await client(other, account, sim.transport(), error_guard=guard).close_position(ids[3])
        for task in flying:
            task.cancel()
        await asyncio.gather(*flying, return_exceptions=True)

    # Three requests that may all fail alike are in flight: a fourth could cross the line.
    assert caught.value.may_have_executed is False
    assert "3 requests to" in caught.value.message
    assert sim.requests_to(CLOSE_PATH) == []


async def test_a_lease_is_the_seconds_it_says_in_redis(redis_url: str) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=43)
    account = sim.add_account()
    position = sim.add_position(account).position_id
    prefix = uuid.uuid4().hex[:8]
    limits = RedisLimits(redis_url, prefix=prefix, lease=3.0)
    hung = Hung()
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with BingXSession(shared_limits=limits) as session:
            closing = asyncio.ensure_future(client(session, account, hung).close_position(position))
            await wait_until(lambda: hung.sent == 1)
            found: Any = await redis.time()
            now = int(found[0]) * 1000 + int(found[1]) / 1000
            flying = [key async for key in redis.scan_iter(f"{{{prefix}}}:f:account*")]
            claims = [key async for key in redis.scan_iter(f"{{{prefix}}}:c:*")]
            members: Any = await redis.zrange(flying[0], 0, -1, withscores=True)
            scores = [float(score) for _, score in members]
            claim_left = await redis.pttl(claims[0])
            closing.cancel()
            await asyncio.gather(closing, return_exceptions=True)
    finally:
        await redis.aclose()

    assert len(scores) == 1
    assert 2800 <= scores[0] - now <= 3000
    assert 2800 <= claim_left <= 3000


async def test_a_caller_that_gives_up_waiting_keeps_no_slot(redis_url: str) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=44)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(11)]
    prefix = uuid.uuid4().hex[:8]
    hung = Hung()
    async with (
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix, lease=2.0)) as one,
        BingXSession(shared_limits=RedisLimits(redis_url, prefix=prefix, lease=2.0)) as other,
    ):
        stuck = client(one, account, hung, retry=RetryPolicy(attempts=1))
        flying = [asyncio.ensure_future(stuck.close_position(i)) for i in ids[:5]]
        await wait_until(lambda: hung.sent == 5)
        waiter = client(other, account, sim.transport())
        # Five callers wait in Redis for the full budget, and give up.
        waiting = [asyncio.ensure_future(waiter.close_position(i)) for i in ids[5:10]]
        await asyncio.sleep(0.2)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await asyncio.sleep(0)
        usage = other.rate_limit_usage()
        # The dead process's leases end; the budget is the other process's again.
        result = await waiter.close_position(ids[10], retry=RetryPolicy(total_timeout=4.0))
        for task in flying:
            task.cancel()
        await asyncio.gather(*flying, return_exceptions=True)

    assert [(u.name, u.in_flight, u.waiting) for u in usage if u.in_flight or u.waiting] == []
    assert result.position_id == ids[10]
    assert [r.param("positionId") for r in sim.requests_to(CLOSE_PATH)] == [ids[10]]


async def test_a_request_unanswered_when_its_lease_ends_is_cut_off_and_checked(
    redis_url: str,
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=45)
    account = sim.add_account()
    position = sim.add_position(account).position_id
    sim.inject(NeverAnswer(), path=CLOSE_PATH, count=1)
    # A slot of a 1.5 s lease: the request must have arrived 0.5 s after it was admitted.
    limits = RedisLimits(redis_url, prefix=uuid.uuid4().hex[:8], lease=1.5)
    async with BingXSession(shared_limits=limits) as session:
        closer = client(session, account, sim.transport(), timeout=8.0)
        await closer.server_time()
        started = time.monotonic()
        result = await asyncio.wait_for(closer.close_position(position), 6.0)
        took = time.monotonic() - started

    # Cut off at the lease, found still open, and closed by a second request.
    assert result.position_id == position
    assert len(sim.requests_to(CLOSE_PATH)) == 2
    assert 0.45 <= took < 2.5


async def test_the_error_guard_keeps_counting_while_redis_is_away(
    redis_server: RedisServer,
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=46)
    account = sim.add_account()
    positions = [sim.add_position(account).position_id for _ in range(4)]
    guard = ErrorGuardPolicy(threshold=3, window=60)
    limits = RedisLimits(redis_server.url, outage_retry=30.0)
    async with BingXSession(shared_limits=limits) as session:
        closer = client(session, account, sim.transport(), error_guard=guard)
        await closer.server_time()
        redis_server.stop()
        # Answers without an error end their flights: four closes in a row are not four
        # requests in flight.
        for position in positions:
            await closer.close_position(position)
        missing = ["11", "12", "13", "14"]
        failures: list[BingXError] = []
        for position in missing:
            try:
                await closer.close_position(position, retry=RetryPolicy(attempts=1))
            except BingXError as error:
                failures.append(error)

    assert len(sim.requests_to(CLOSE_PATH)) == 4 + 3
    assert [type(error).__name__ for error in failures[:3]] == ["PositionNotFoundError"] * 3
    refused = failures[3]
    assert isinstance(refused, ErrorRateGuardError)
    assert refused.may_have_executed is False
    assert f"3 answers with error {failures[0].code} from {CLOSE_NAME}" in refused.message


async def test_the_stand_in_keeps_to_the_calls_total_timeout(redis_server: RedisServer) -> None:
    sim = FakeBingX(rate_limits=SLOW, seed=47)
    account = sim.add_account()
    first, second = (sim.add_position(account).position_id for _ in range(2))
    limits = RedisLimits(redis_server.url, outage_share=0.25, outage_retry=30.0)
    async with BingXSession(shared_limits=limits) as session:
        closer = client(session, account, sim.transport(), rate_limits=SLOW)
        await closer.server_time()
        redis_server.stop()
        await closer.close_position(first)
        started = time.monotonic()
        with pytest.raises(QueueTimeoutError) as caught:
            await asyncio.wait_for(
                closer.close_position(second, retry=RetryPolicy(total_timeout=0.3)), 2.0
            )
        took = time.monotonic() - started

    # A quarter of 4 per 30 s while Redis is away: the second close cannot go for 30 s.
    assert caught.value.may_have_executed is False
    assert took < 1.0
    assert [r.param("positionId") for r in sim.requests_to(CLOSE_PATH)] == [first]


async def test_a_request_never_sent_while_redis_is_away_gives_its_slot_back(
    redis_server: RedisServer,
) -> None:
    sim = FakeBingX(rate_limits=SLOW, seed=48)
    account = sim.add_account()
    first, second = (sim.add_position(account).position_id for _ in range(2))
    sim.inject(RefuseConnection(), path=CLOSE_PATH, count=1)
    limits = RedisLimits(redis_server.url, outage_share=0.25, outage_retry=30.0)
    async with BingXSession(shared_limits=limits) as session:
        closer = client(session, account, sim.transport(), rate_limits=SLOW)
        await closer.server_time()
        redis_server.stop()
        with pytest.raises(TransportError) as refused:
            await closer.close_position(first, retry=RetryPolicy(attempts=1))
        # The stand-in's one slot per 30 s was given back: the next close goes at once.
        result = await asyncio.wait_for(
            closer.close_position(second, retry=RetryPolicy(total_timeout=0.5)), 2.0
        )

    assert refused.value.may_have_executed is False
    assert result.position_id == second
    assert [r.param("positionId") for r in sim.requests_to(CLOSE_PATH)] == [second]


async def test_a_process_told_to_wait_still_waits_when_redis_goes_away(
    redis_server: RedisServer,
) -> None:
    sim = FakeBingX(rate_limits=SLOW, seed=49)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(6)]
    short = RetryPolicy(total_timeout=0.4)
    async with (
        BingXSession(shared_limits=RedisLimits(redis_server.url, outage_retry=30.0)) as one,
        BingXSession(shared_limits=RedisLimits(redis_server.url, outage_retry=30.0)) as other,
    ):
        filler = client(one, account, sim.transport(), rate_limits=SLOW)
        waiter = client(other, account, sim.transport(), rate_limits=SLOW)
        await waiter.server_time()
        for position in ids[:4]:
            await filler.close_position(position)
        # Redis says the budget is full for about 30 s; the caller gives up before.
        with pytest.raises(QueueTimeoutError):
            await waiter.close_position(ids[4], retry=short)
        redis_server.stop()
        # Standing in for Redis, this process still knows the budget is full.
        with pytest.raises(QueueTimeoutError) as caught:
            await asyncio.wait_for(waiter.close_position(ids[5], retry=short), 2.0)

    assert caught.value.may_have_executed is False
    assert [r.param("positionId") for r in sim.requests_to(CLOSE_PATH)] == ids[:4]
