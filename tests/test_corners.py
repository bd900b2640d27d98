"""Corners of the limiter, the error guard, the clock and the retry loop, in virtual time."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    Budget,
    ErrorGuardPolicy,
    ErrorRateGuardError,
    IPBannedError,
    RateLimitError,
    ResponseValidationError,
    RetryPolicy,
)
from bingx_async._budgets import CLOSE_POSITION, POSITIONS
from bingx_async._errorguard import ErrorRateGuard
from bingx_async._ratelimit import RateLimiter, Release, RequestBudgets
from bingx_async._timesync import ServerClock
from bingx_async.testing import FakeClock, LoopClock

from .mock_bingx import EPOCH, MockBingX, closed

pytestmark = pytest.mark.looptime

POLICY = RetryPolicy(unblock_margin=0.0)
ACCOUNT = ("account", "a", "E")


def budgets(*pairs: tuple[tuple[str, str, str], Budget], host: str = "h") -> RequestBudgets:
    return RequestBudgets(tuple(pairs), host=host, signed=True)


def now() -> float:
    return asyncio.get_running_loop().time()


# --- the limiter ----------------------------------------------------------------------------


async def test_an_unsent_request_frees_every_budget_it_held() -> None:
    """A two-budget permit released unsent leaves nothing in flight in either budget."""
    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(1, 1.0)), (("ip", "h", "E"), Budget(9, 1.0)))
    (await limiter.acquire(request)).release(Release.NOT_SENT)
    assert [(u.in_flight, u.in_window) for u in limiter.usage()] == [(0, 0), (0, 0)]
    (await limiter.acquire(request)).release(Release.ANSWERED)
    assert now() == 0.0


async def test_slots_released_out_of_order_free_up_the_earliest_first() -> None:
    """One request cut off at 0 (dated 1.0), another answered at 0.5 (dated 0.5): the next
    fits at 1.5, when the earlier-dated slot leaves the window."""
    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(2, 1.0)))
    first, second = await limiter.acquire(request), await limiter.acquire(request)
    first.release(Release.ABANDONED)
    await asyncio.sleep(0.5)
    second.release(Release.ANSWERED)
    (await limiter.acquire(request)).release(Release.ANSWERED)
    assert now() == pytest.approx(1.5)


async def test_a_queued_waiter_is_refused_when_a_long_hold_comes() -> None:
    """Waiting for its turn, a call refuses a hold longer than it may wait, at once."""
    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(1, 1.0)))
    held = await limiter.acquire(request)
    waiter = asyncio.create_task(limiter.acquire(request, max_block_wait=5.0))
    await asyncio.sleep(0.1)
    blocked = RateLimitError("blocked", code=100410, retry_after=30.0, msg="disabled")
    limiter.hold(blocked, request, policy=POLICY, fallback=None)
    with pytest.raises(RateLimitError, match=r"blocked for another 30\.000 s") as caught:
        await waiter
    held.release(Release.ANSWERED)
    assert (caught.value.code, caught.value.msg) == (100410, "disabled")
    assert caught.value.retry_after == pytest.approx(30.0)
    assert caught.value.may_have_executed is False
    assert now() == pytest.approx(0.1)


async def test_a_waiter_is_woken_for_an_earlier_moment_than_the_one_armed() -> None:
    """A lane held for 10 s arms a wake-up at 10; a later lane that fits at 1 s goes at 1 s."""
    limiter = RateLimiter(LoopClock())
    held_lane = budgets((ACCOUNT, Budget(1, 1.0)))
    other = budgets((("account", "b", "E"), Budget(1, 1.0)))
    limiter.hold(
        RateLimitError("held", code=100410, retry_after=10.0),
        held_lane,
        policy=POLICY,
        fallback=None,
    )
    first = asyncio.create_task(limiter.acquire(held_lane, max_block_wait=20.0))
    await asyncio.sleep(0)
    (await limiter.acquire(other)).release(Release.ANSWERED)
    (await limiter.acquire(other)).release(Release.ANSWERED)
    assert now() == pytest.approx(1.0)
    (await first).release(Release.ANSWERED)
    assert now() == pytest.approx(10.0)


async def test_several_waiters_of_a_lane_go_in_one_pass() -> None:
    """Two slots freed at once admit both waiters of the lane at that moment."""
    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(2, 1.0)))
    permits = [await limiter.acquire(request) for _ in range(2)]
    waiters = [asyncio.create_task(limiter.acquire(request)) for _ in range(2)]
    await asyncio.sleep(0)
    for permit in permits:
        permit.release(Release.NOT_SENT)
    await asyncio.sleep(0)
    assert all(waiter.done() for waiter in waiters)


async def test_usage_reports_each_budget_exactly() -> None:
    """in_window, in_flight, waiting (over every lane) and blocked_for, per budget."""
    limiter = RateLimiter(LoopClock())
    shared = ("ip", "h", "E")
    one = budgets((ACCOUNT, Budget(1, 1.0)), (shared, Budget(10, 1.0)))
    two = budgets((("account", "b", "E"), Budget(1, 1.0)), (shared, Budget(10, 1.0)))
    (await limiter.acquire(one)).release(Release.ANSWERED)
    held = await limiter.acquire(two)
    waiting = [asyncio.create_task(limiter.acquire(r)) for r in (one, two)]
    await asyncio.sleep(0.25)
    limiter.hold(
        RateLimitError("held", code=100410, retry_after=2.0), two, policy=POLICY, fallback=None
    )
    usage = {u.key: u for u in limiter.usage()}
    assert (usage[ACCOUNT].in_window, usage[ACCOUNT].in_flight, usage[ACCOUNT].waiting) == (
        1,
        0,
        1,
    )
    assert usage[ACCOUNT].blocked_for == 0.0
    assert (usage[shared].in_window, usage[shared].in_flight, usage[shared].waiting) == (2, 1, 2)
    assert usage[("account", "b", "E")].blocked_for == pytest.approx(2.0)
    held.release(Release.ANSWERED)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_an_ip_ban_holds_its_own_host_only() -> None:
    """A 418 on host h holds h's IP budgets, not host g's, and never lowers a limit."""
    limiter = RateLimiter(LoopClock())
    on_h = budgets((ACCOUNT, Budget(5, 1.0)), (("ip", "h", "E"), Budget(5, 1.0)))
    on_g = budgets(
        (("account", "a", "F"), Budget(5, 1.0)), (("ip", "g", "E"), Budget(5, 1.0)), host="g"
    )
    ban = IPBannedError("banned", status_code=418, retry_after=30.0)
    shorter = IPBannedError("banned", status_code=418, retry_after=5.0)
    assert limiter.hold(ban, on_h, policy=POLICY, fallback=None)
    limiter.hold(shorter, on_h, policy=POLICY, fallback=None)
    with pytest.raises(IPBannedError, match="not sent"):
        await limiter.acquire(on_h, max_block_wait=10.0)
    (await limiter.acquire(on_g)).release(Release.ANSWERED)
    limits = {u.key: u.limit for u in limiter.usage()}
    assert limits[("ip", "h", "E")] == 5
    blocked = {u.key: u.blocked_for for u in limiter.usage()}
    assert blocked[("ip", "h", "E")] == pytest.approx(30.0)
    assert blocked[ACCOUNT] == 0.0


# --- the error guard ------------------------------------------------------------------------


def test_the_guard_counts_each_answered_request_once() -> None:
    """Finishing one of two requests in flight leaves the other counted."""
    guard = ErrorRateGuard(FakeClock())
    policy = ErrorGuardPolicy(threshold=2, window=60.0)
    guard.admit("a", "E", policy)
    guard.admit("a", "E", policy)
    guard.finish("a", "E", 0)
    guard.admit("a", "E", policy)
    with pytest.raises(ErrorRateGuardError) as caught:
        guard.admit("a", "E", policy)
    assert (caught.value.banned_code, caught.value.count) == (None, 0)
    assert (caught.value.window, caught.value.endpoint) == (60.0, "E")


def test_the_guard_counts_per_account_and_endpoint() -> None:
    """Errors of account a say nothing about account b, or about another endpoint."""
    clock = FakeClock()
    guard = ErrorRateGuard(clock)
    policy = ErrorGuardPolicy(threshold=1, window=60.0)
    guard.admit("a", "E", policy)
    guard.finish("a", "E", 101205)
    with pytest.raises(ErrorRateGuardError) as caught:
        guard.admit("a", "E", policy)
    guard.admit("b", "E", policy)
    guard.admit("a", "F", policy)
    assert (caught.value.banned_code, caught.value.count) == (101205, 1)
    assert caught.value.retry_after == pytest.approx(60.0)
    clock.advance(59.5)
    with pytest.raises(ErrorRateGuardError) as later:
        guard.admit("a", "E", policy)
    assert later.value.retry_after == pytest.approx(0.5)


async def test_unsigned_requests_are_not_guarded() -> None:
    """Server time is never refused by the guard, even with every slot in flight."""
    bingx = MockBingX(latency=1.0)
    guard = ErrorGuardPolicy(threshold=1, window=60.0)
    async with bingx.client(error_guard=guard) as client:
        times = await asyncio.gather(*(client.server_time() for _ in range(3)))
    assert len(times) == 3


async def test_a_refusal_by_the_guard_takes_no_rate_limit_slot() -> None:
    """Refused locally: the budget's slot stays free for the next close."""
    bingx = MockBingX(answer=lambda _: httpx.Response(200, json={"code": 101205, "msg": "x"}))
    guard = ErrorGuardPolicy(threshold=1, window=60.0)
    async with bingx.client(error_guard=guard) as client:
        outcomes = await client.close_positions([1, 2, 3, 4, 5, 6])
        usage = {u.key[0]: u for u in client.rate_limit_usage()}
    assert [type(o).__name__ for o in outcomes].count("ErrorRateGuardError") == 5
    assert usage["account"].in_window == 1


# --- BingX's clock --------------------------------------------------------------------------


async def test_a_failed_measurement_is_tried_again_after_five_seconds() -> None:
    """Offset 0 until measured; after a failure, no new attempt for 5 s, then one."""
    clock = FakeClock()
    server = ServerClock(clock)
    attempts: list[float] = []

    async def failing() -> tuple[int, float, float]:
        attempts.append(clock.monotonic())
        raise ValueError("no answer")

    await server.sync(failing)
    assert (server.offset, server.synced, server.round_trip) == (0.0, False, None)
    clock.advance(4.9)
    assert not server.due(60.0)
    clock.advance(0.1)
    assert server.due(60.0)

    async def measured() -> tuple[int, float, float]:
        return round((clock.time() + 2.0) * 1000), clock.time(), 0.2

    await server.sync(measured)
    assert server.offset == pytest.approx(1.9)
    assert server.round_trip == 0.2
    assert not server.due(59.9)
    clock.advance(60.0)
    assert server.due(60.0)
    assert attempts == [0.0]


async def test_clock_offsets_are_kept_per_host() -> None:
    """Two hosts, two offsets: BingX's demo host may run on another clock."""
    first, second = MockBingX(server_offset=3.0), MockBingX(server_offset=-3.0)
    second.clock = first.clock
    async with first.client() as a, second.client(base_url="https://open-api-vst.bingx.com") as b:
        await a.close_position(1)
        await b.close_position(2)
    (sent_a,), (sent_b,) = first.sent, second.sent
    assert int(sent_a.params["timestamp"]) == round((EPOCH + sent_a.at + 3.0) * 1000)
    assert int(sent_b.params["timestamp"]) == round((EPOCH + sent_b.at - 3.0) * 1000)


# --- the retry loop -------------------------------------------------------------------------


async def test_a_retried_call_keeps_its_place_ahead_of_later_calls() -> None:
    """A call rate-limited once retries before calls that queued after it."""
    answers = iter([httpx.Response(200, json={"code": 100410, "msg": "rate limited"})])
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    one_per_second = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(1, 1.0),), ip_group=2
    )
    async with bingx.client(
        rate_limits=one_per_second, retry=RetryPolicy(wait_initial=0.1, wait_jitter=0)
    ) as client:
        first = asyncio.create_task(client.close_position(1))
        await asyncio.sleep(0.05)
        later = [asyncio.create_task(client.close_position(i)) for i in (2, 3)]
        await asyncio.gather(first, *later)
    assert [s.params["positionId"] for s in bingx.sent] == ["1", "1", "2", "3"]


async def test_a_connection_refused_takes_no_slot() -> None:
    """Nothing was sent: the retry does not wait for the budget's window."""
    calls = 0

    def refuse_once(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        return closed(request)

    one_per_second = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(1, 1.0),), ip_group=2
    )
    bingx = MockBingX(answer=refuse_once)
    async with bingx.client(
        rate_limits=one_per_second, retry=RetryPolicy(wait_initial=0.2, wait_jitter=0)
    ) as client:
        await client.close_position(1)
    assert [s.at for s in bingx.sent] == pytest.approx([0.0, 0.2])


async def test_a_bare_429_on_a_signed_call_holds_the_hosts_ip_budgets() -> None:
    """No body code: the IP is limited, so listing positions on the host waits too."""
    answers = iter([httpx.Response(429, headers={"Retry-After": "2"}, text="Too Many")])
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    async with bingx.client(retry=RetryPolicy(unblock_margin=0.0)) as client:
        blocked = asyncio.create_task(client.close_position(1))
        await asyncio.sleep(0.5)
        usage = {u.key: u.blocked_for for u in client.rate_limit_usage()}
        await blocked
    ip = ("ip", "open-api.bingx.com", CLOSE_POSITION)
    assert usage[ip] == pytest.approx(1.5)
    assert all(v == 0.0 for k, v in usage.items() if k[0] == "account")


async def test_only_a_disabled_period_teaches_a_lower_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Error-rate bans and untimed limits met at a full budget never lower it."""
    server_ms = round(EPOCH * 1000)
    ban = f"over 20 error code:100202 requests within 480000 ms, retry after time: {server_ms}"
    answers = iter(
        [httpx.Response(200, json={"code": 100410, "msg": ban, "timestamp": server_ms})] * 5
        + [httpx.Response(200, json={"code": 100410, "msg": "rate limited"})] * 5
    )
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    with caplog.at_level(logging.WARNING, logger="bingx_async"):
        async with bingx.client(retry=RetryPolicy(wait_jitter=0)) as client:
            await client.close_positions(range(1, 6))
            await asyncio.sleep(2)
            await client.close_positions(range(6, 11))
            limits = [u.limit for u in client.rate_limit_usage() if u.key[0] == "account"]
    assert limits == [5]
    assert "assuming" not in caplog.text


async def test_each_call_passes_its_own_policy_on() -> None:
    """retry= on close_positions, get_positions and close_all_positions is the one used."""
    bingx = MockBingX(
        answer=lambda _: httpx.Response(200, json={"code": 100410, "msg": "rate limited"})
    )
    once = RetryPolicy(attempts=1)
    async with bingx.client(retry=RetryPolicy(attempts=5, wait_jitter=0)) as client:
        (outcome,) = await client.close_positions([1], retry=once)
        with pytest.raises(RateLimitError) as all_failed:
            await client.close_all_positions(retry=once)
        with pytest.raises(RateLimitError) as read:
            await client.request("GET", "/openApi/swap/v2/user/balance", retry=once)
    assert isinstance(outcome, RateLimitError)
    assert (outcome.attempts, all_failed.value.attempts, read.value.attempts) == (1, 1, 1)
    assert len(bingx.sent) == 3


async def test_listed_positions_that_are_not_objects_are_refused() -> None:
    """A list entry that is not an object: ResponseValidationError, never a crash."""

    async def positions(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"code": 0, "data": [{"positionId": "1"}, 7]})

    bingx = MockBingX()
    bingx.handle = positions  # type: ignore[method-assign]
    async with bingx.client(clock_sync_interval=None) as client:
        with pytest.raises(ResponseValidationError) as caught:
            await client.get_positions()
    assert caught.value.endpoint == f"{POSITIONS}"
    assert caught.value.may_have_executed is False
