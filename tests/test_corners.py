"""Corners of the limiter, the error guard, the clock and the retry loop, in virtual time."""

from __future__ import annotations

import asyncio
import dataclasses
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


async def test_a_window_added_to_a_budget_later_counts_for_requests_seen_before() -> None:
    """Another client configures a 60 s window for a budget key already in use: from then
    on, requests of the first configuration count against that window too."""
    limiter = RateLimiter(LoopClock())
    mine = budgets((ACCOUNT, Budget(5, 1.0)))
    (await limiter.acquire(mine)).release(Release.ANSWERED)
    theirs = budgets((ACCOUNT, Budget(2, 60.0)))
    (await limiter.acquire(theirs)).release(Release.ANSWERED)
    (await limiter.acquire(mine)).release(Release.ANSWERED)  # the 60 s window's second
    assert now() == 0.0
    (await limiter.acquire(mine)).release(Release.ANSWERED)
    assert now() == pytest.approx(60.0)


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
    assert not server.due(60.0, clock.monotonic())
    clock.advance(0.1)
    assert server.due(60.0, clock.monotonic())

    async def measured() -> tuple[int, float, float]:
        return round((clock.time() + 2.0) * 1000), clock.time(), 0.2

    await server.sync(measured)
    assert server.offset == pytest.approx(1.9)
    assert server.round_trip == 0.2
    assert not server.due(59.9, clock.monotonic())
    clock.advance(60.0)
    assert server.due(60.0, clock.monotonic())
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


# --- holds, told exactly --------------------------------------------------------------------


def test_hold_says_whether_the_request_itself_is_held() -> None:
    """True when the answer holds the request's own budgets; False when it holds nothing."""

    async def run() -> None:
        limiter = RateLimiter(LoopClock())
        account_only = budgets((ACCOUNT, Budget(5, 1.0)))
        with_ip = budgets((ACCOUNT, Budget(5, 1.0)), (("ip", "h", "E"), Budget(5, 1.0)))
        ban = IPBannedError("banned", status_code=418, retry_after=5.0)
        untimed = RateLimitError("busy", code=100410)
        assert limiter.hold(ban, account_only, policy=POLICY, fallback=None) is False
        assert limiter.hold(ban, with_ip, policy=POLICY, fallback=None) is True
        assert limiter.hold(untimed, account_only, policy=POLICY, fallback=None) is False
        assert limiter.hold(untimed, account_only, policy=POLICY, fallback=1.0) is True
        bare = RateLimitError("429", status_code=429, retry_after=1.0)
        assert limiter.hold(bare, account_only, policy=POLICY, fallback=None) is False

    asyncio.run(run())


async def test_a_shorter_ip_ban_never_shortens_the_hosts_hold() -> None:
    """Banned 30 s, then 5 s: an IP budget first used after both is held 30 s."""
    limiter = RateLimiter(LoopClock())
    first = budgets((("ip", "h", "E"), Budget(5, 1.0)))
    later = budgets((("ip", "h", "F"), Budget(5, 1.0)))
    for seconds in (30.0, 5.0):
        ban = IPBannedError("banned", status_code=418, retry_after=seconds)
        limiter.hold(ban, first, policy=POLICY, fallback=None)
    permit = await limiter.acquire(later, max_block_wait=60.0)
    permit.release(Release.ANSWERED)
    assert now() == pytest.approx(30.0)


async def test_an_ip_ban_leaves_other_hosts_budgets_alone_even_when_known() -> None:
    """A budget of host g, in use before host h is banned, is not held by h's ban."""
    limiter = RateLimiter(LoopClock())
    on_g = budgets((("ip", "g", "E"), Budget(5, 1.0)), host="g")
    on_h = budgets((("ip", "h", "E"), Budget(5, 1.0)))
    (await limiter.acquire(on_g)).release(Release.ANSWERED)
    ban = IPBannedError("banned", status_code=418, retry_after=30.0)
    limiter.hold(ban, on_h, policy=POLICY, fallback=None)
    (await limiter.acquire(on_g)).release(Release.ANSWERED)
    assert now() == 0.0


async def test_an_ip_ban_never_lowers_a_limit() -> None:
    """Two bans met at a full budget leave its limit as it was."""
    limiter = RateLimiter(LoopClock())
    request = budgets((("ip", "h", "E"), Budget(2, 1.0)))
    for _ in range(2):
        permits = [await limiter.acquire(request, max_block_wait=60.0) for _ in range(2)]
        ban = IPBannedError("banned", status_code=418, retry_after=2.0)
        limiter.hold(ban, request, policy=POLICY, fallback=None)
        for permit in permits:
            permit.release(Release.ANSWERED)
    assert [u.limit for u in limiter.usage()] == [2]


async def test_a_refusal_carries_the_holds_facts() -> None:
    """Refused while held: the answer's code, status, endpoint, unblock time and banned code,
    nothing executed, and a message quoting what BingX said."""
    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(5, 1.0)))
    reason = RateLimitError(
        "BingX error 100410",
        code=100410,
        status_code=200,
        endpoint="POST /e",
        unblock_at=1.5e9,
        retry_after=30.0,
        banned_code=100202,
    )
    limiter.hold(reason, request, policy=POLICY, fallback=None)
    with pytest.raises(RateLimitError) as caught:
        await limiter.acquire(request, max_block_wait=1.0)
    refused = caught.value
    assert (refused.code, refused.status_code, refused.endpoint) == (100410, 200, "POST /e")
    assert (refused.unblock_at, refused.banned_code) == (1.5e9, 100202)
    assert (refused.refused_locally, refused.may_have_executed) == (True, False)
    assert str(refused) == (
        "not sent: account a E is blocked for another 30.000 s (longer than this call may "
        "wait); BingX said: BingX error 100410"
    )


async def test_a_call_that_cannot_wait_at_all_times_out_at_once() -> None:
    """A deadline already reached, with the budget full: QueueTimeoutError saying 0 s waited."""
    from bingx_async import QueueTimeoutError

    limiter = RateLimiter(LoopClock())
    request = RequestBudgets(((ACCOUNT, Budget(1, 1.0)),), host="h", signed=True, label="E")
    held = await limiter.acquire(request)
    with pytest.raises(QueueTimeoutError) as caught:
        await limiter.acquire(request, deadline=now())
    held.release(Release.ANSWERED)
    assert str(caught.value) == (
        "not sent: E waited 0.000 s for its rate-limit budgets and the call's total_timeout ran out"
    )
    assert (caught.value.endpoint, caught.value.may_have_executed) == ("E", False)


async def test_a_closed_limiter_admits_nobody() -> None:
    """After close(), every acquire is refused with the given error, and nothing is armed."""
    from bingx_async import ClientClosedError

    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(1, 1.0)))
    (await limiter.acquire(request)).release(Release.ANSWERED)
    waiter = asyncio.create_task(limiter.acquire(request))
    await asyncio.sleep(0)
    limiter.close(lambda: ClientClosedError("closed"))
    with pytest.raises(ClientClosedError):
        await waiter
    with pytest.raises(ClientClosedError):
        await limiter.acquire(budgets((("account", "z", "E"), Budget(9, 1.0))))
    assert limiter._timer is None


async def test_releasing_twice_changes_nothing() -> None:
    """A permit gives its slots back once."""
    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(2, 1.0)))
    permit = await limiter.acquire(request)
    permit.release(Release.ANSWERED)
    permit.release(Release.ANSWERED)
    assert [(u.in_flight, u.in_window) for u in limiter.usage()] == [(0, 1)]


async def test_a_budget_nobody_waits_for_shows_no_waiters() -> None:
    """usage().waiting is 0 for a budget no queued call draws on."""
    limiter = RateLimiter(LoopClock())
    idle = budgets((("account", "idle", "E"), Budget(5, 1.0)))
    busy = budgets((ACCOUNT, Budget(1, 1.0)))
    (await limiter.acquire(idle)).release(Release.ANSWERED)
    held = await limiter.acquire(busy)
    waiter = asyncio.create_task(limiter.acquire(busy))
    await asyncio.sleep(0)
    usage = {u.key: u.waiting for u in limiter.usage()}
    assert usage == {("account", "idle", "E"): 0, ACCOUNT: 1}
    held.release(Release.ANSWERED)
    (await waiter).release(Release.ANSWERED)


# --- learning a lowered limit, at its edges -------------------------------------------------


def disabled(retry_after: float) -> RateLimitError:
    return RateLimitError("disabled", code=100410, unblock_at=1.0, retry_after=retry_after)


async def fill(limiter: RateLimiter, request: RequestBudgets, count: int) -> None:
    for _ in range(count):
        (await limiter.acquire(request, max_block_wait=60.0)).release(Release.ANSWERED)


async def test_a_lowered_limit_climbs_back_one_step_every_ten_minutes() -> None:
    """Lowered 5 -> 4 -> 3 by repeated blocks; back to 4 exactly 600 s later, 5 after 1200."""
    limiter = RateLimiter(LoopClock())
    request = budgets((ACCOUNT, Budget(5, 1.0)))
    adapt = dataclasses.replace(request, adapt=True)
    for limit in (5, 5, 4):
        await fill(limiter, request, limit)
        limiter.hold(disabled(0.5), adapt, policy=POLICY, fallback=None)
        await asyncio.sleep(1.0)
    lowered_at = now() - 1.0
    assert [u.limit for u in limiter.usage()] == [3]
    await asyncio.sleep(lowered_at + 600.0 - now() - 0.001)
    assert [u.limit for u in limiter.usage()] == [3]
    await asyncio.sleep(0.001)
    assert [u.limit for u in limiter.usage()] == [4]
    await asyncio.sleep(600.0)
    assert [u.limit for u in limiter.usage()] == [5]


async def test_a_block_lowers_only_when_met_at_a_nearly_full_budget() -> None:
    """Strikes count when the budget held at least limit - 1; below that they do not."""
    limiter = RateLimiter(LoopClock())
    request = dataclasses.replace(budgets((ACCOUNT, Budget(5, 1.0))), adapt=True)
    for count in (3, 3):
        await fill(limiter, request, count)
        limiter.hold(disabled(0.5), request, policy=POLICY, fallback=None)
        await asyncio.sleep(1.0)
    assert [u.limit for u in limiter.usage()] == [5]
    for count in (4, 4):
        await fill(limiter, request, count)
        limiter.hold(disabled(0.5), request, policy=POLICY, fallback=None)
        await asyncio.sleep(1.0)
    assert [u.limit for u in limiter.usage()] == [4]


async def test_two_blocks_six_hundred_seconds_apart_are_not_a_repeat() -> None:
    """The second strike must come within 600 s of the first."""
    limiter = RateLimiter(LoopClock())
    request = dataclasses.replace(budgets((ACCOUNT, Budget(2, 1.0))), adapt=True)
    await fill(limiter, request, 2)
    limiter.hold(disabled(0.5), request, policy=POLICY, fallback=None)
    await asyncio.sleep(600.0)
    await fill(limiter, request, 2)
    limiter.hold(disabled(0.5), request, policy=POLICY, fallback=None)
    assert [u.limit for u in limiter.usage()] == [2]


async def test_a_limit_of_one_is_never_lowered() -> None:
    """One per window is the floor, however often BingX blocks."""
    limiter = RateLimiter(LoopClock())
    request = dataclasses.replace(budgets((ACCOUNT, Budget(1, 1.0))), adapt=True)
    for _ in range(3):
        await fill(limiter, request, 1)
        limiter.hold(disabled(0.5), request, policy=POLICY, fallback=None)
        await asyncio.sleep(1.0)
    assert [u.limit for u in limiter.usage()] == [1]


async def test_a_stricter_setting_takes_the_limit_down_by_the_difference() -> None:
    """5 per second, then another client says 2, then 1: the limit in force follows."""
    limiter = RateLimiter(LoopClock())
    for limit in (5, 2, 1):
        (await limiter.acquire(budgets((ACCOUNT, Budget(limit, 1.0))))).release(Release.NOT_SENT)
        assert [u.limit for u in limiter.usage()] == [limit]
    (await limiter.acquire(budgets((ACCOUNT, Budget(3, 1.0))))).release(Release.NOT_SENT)
    assert [u.limit for u in limiter.usage()] == [1]


# --- the retry loop at its edges ------------------------------------------------------------


async def test_a_wait_exactly_at_the_cap_is_waited_out() -> None:
    """An unblock time exactly max_server_wait + margin away is waited for, not refused."""
    server_ms = round(EPOCH * 1000)
    answers = iter(
        [
            httpx.Response(
                200,
                json={
                    "code": 100410,
                    "msg": f"unblocked after {server_ms + 2000}",
                    "timestamp": server_ms,
                },
            )
        ]
    )
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    policy = RetryPolicy(max_server_wait=2.0, unblock_margin=0.5)
    async with bingx.client(retry=policy) as client:
        await client.close_position(1)
    assert [s.at for s in bingx.sent] == pytest.approx([0.0, 2.5])


async def test_a_timestamp_rejection_is_retried_at_once() -> None:
    """No back-off after a re-measure: the retry goes as soon as the clock is read."""
    answers = iter([httpx.Response(200, json={"code": 100421, "msg": "timestamp mismatch"})])
    bingx = MockBingX(latency=0.1)
    bingx.answer = lambda request: next(answers, None) or closed(request)
    async with bingx.client(retry=RetryPolicy()) as client:
        await client.close_position(1)
    assert [s.at for s in bingx.sent] == pytest.approx([0.0, 0.1])


async def test_possibly_closed_keeps_the_not_found_answers_facts() -> None:
    """The error says what the "not found" answer said, and what the unknown attempt was."""
    from bingx_async import PositionPossiblyClosedError

    answers = iter(
        [
            httpx.Response(504, json={"code": 100500, "msg": "unknown status"}),
            httpx.Response(200, json={"code": 101205, "msg": "No position to close"}),
        ]
    )
    bingx = MockBingX(answer=lambda _: next(answers))
    policy = RetryPolicy(wait_jitter=0)
    async with bingx.client(retry=policy, confirm_closes=False) as client:
        with pytest.raises(PositionPossiblyClosedError) as caught:
            await client.close_position(1)
    error = caught.value
    assert (error.msg, error.status_code, error.endpoint) == (
        "No position to close",
        200,
        CLOSE_POSITION,
    )
    assert error.body == {"code": 101205, "msg": "No position to close"}
    assert str(error).endswith(
        "an earlier attempt whose outcome was unknown (ServerError) most likely closed it"
    )


async def test_a_rate_limit_answer_was_not_refused_locally() -> None:
    """refused_locally is for refusals before sending; BingX's own answer is not one."""
    bingx = MockBingX(answer=lambda _: httpx.Response(200, json={"code": 100410, "msg": "x"}))
    async with bingx.client(retry=RetryPolicy(attempts=1)) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.close_position(1)
    assert caught.value.refused_locally is False


async def test_a_retried_call_queues_ahead_of_calls_made_after_it() -> None:
    """A close that got a 504 backs off; calls made meanwhile queue behind its first place."""
    answers = iter([httpx.Response(504, json={"code": 100500, "msg": "unknown status"})])
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    two_per_second = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(2, 1.0),), ip_group=2
    )
    async with bingx.client(
        rate_limits=two_per_second, retry=RetryPolicy(wait_initial=0.5, wait_jitter=0)
    ) as client:
        first = [asyncio.create_task(client.close_position(i)) for i in (1, 2)]
        await asyncio.sleep(0.1)
        later = [asyncio.create_task(client.close_position(i)) for i in (3, 4)]
        await asyncio.gather(*first, *later)
    assert [(s.params["positionId"], s.at) for s in bingx.sent] == [
        ("1", 0.0),
        ("2", 0.0),
        ("1", 1.0),
        ("3", 1.0),
        ("4", 2.0),
    ]


async def test_a_failed_measurement_long_after_the_start_waits_five_seconds_too() -> None:
    """The back-off after a failed measurement counts from the failure, whenever it was."""
    clock = FakeClock()
    server = ServerClock(clock)

    async def measured() -> tuple[int, float, float]:
        return round(clock.time() * 1000), clock.time(), 0.0

    async def failing() -> tuple[int, float, float]:
        raise ValueError("no answer")

    await server.sync(measured)
    clock.advance(100.0)
    await server.sync(failing)
    clock.advance(4.0)
    assert not server.due(60.0, clock.monotonic())
    clock.advance(1.0)
    assert server.due(60.0, clock.monotonic())
    await server.sync(measured)
    clock.advance(59.0)
    assert not server.due(60.0, clock.monotonic())
