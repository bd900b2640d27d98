"""The rate limiter, in virtual time: what BingX would count, and when requests leave."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx
import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    Budget,
    BudgetUsage,
    ClientClosedError,
    ClosePositionResult,
    EndpointBudgets,
    IPGroup,
    RateLimitError,
    RetryPolicy,
)
from bingx_async._budgets import CLOSE_POSITION
from bingx_async._ratelimit import RateLimiter, Release, RequestBudgets
from bingx_async.testing import LoopClock

from .mock_bingx import MockBingX, max_in_window

pytestmark = pytest.mark.looptime


async def test_hundred_gathered_closes_never_exceed_five_per_rolling_second() -> None:
    """100 closes on one key: at most 5 in any rolling second, the 100th at 19 s."""
    bingx = MockBingX()
    async with bingx.client() as client:
        start = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(client.close_position(i) for i in range(1, 101)))
    times = [t - start for t in bingx.times()]
    assert [r.position_id for r in results] == [str(i) for i in range(1, 101)]
    assert len(times) == 100
    assert max_in_window(times, 1.0) == 5
    assert times[99] == pytest.approx(19.0, abs=1e-3)


async def test_a_burst_of_five_goes_out_at_once() -> None:
    """Closing 5 positions does not wait: the budget allows them together."""
    bingx = MockBingX()
    async with bingx.client() as client:
        start = asyncio.get_running_loop().time()
        await asyncio.gather(*(client.close_position(i) for i in range(1, 6)))
        elapsed = asyncio.get_running_loop().time() - start
    assert elapsed == pytest.approx(0.0, abs=1e-6)
    assert len(bingx.times()) == 5


async def test_a_slot_is_dated_by_the_answer_not_the_send() -> None:
    """With a 0.3 s round trip, the sixth close leaves 1 s after the first answer."""
    bingx = MockBingX(latency=0.3)
    async with bingx.client() as client:
        start = asyncio.get_running_loop().time()
        await asyncio.gather(*(client.close_position(i) for i in range(1, 7)))
    times = [t - start for t in bingx.times()]
    assert times[:5] == pytest.approx([0.0] * 5, abs=1e-6)
    assert times[5] == pytest.approx(1.3, abs=1e-3)


async def test_two_keys_on_one_host_each_get_five_per_second() -> None:
    """Account budgets are per key: two keys close twice as fast together."""
    bingx = MockBingX()
    async with bingx.client("key-a") as a, bingx.client("key-b") as b:
        start = asyncio.get_running_loop().time()
        await asyncio.gather(
            *(a.close_position(i) for i in range(1, 51)),
            *(b.close_position(i) for i in range(51, 101)),
        )
    for key in ("key-a", "key-b"):
        times = [t - start for t in bingx.times(key)]
        assert len(times) == 50
        assert max_in_window(times, 1.0) == 5
        assert max(times) == pytest.approx(9.0, abs=1e-3)


async def test_clients_sharing_a_key_share_its_account_budget() -> None:
    """Two clients on one key together stay within the key's 5/s."""
    bingx = MockBingX()
    async with bingx.client("key-a") as first, bingx.client("key-a") as second:
        await asyncio.gather(
            *(first.close_position(i) for i in range(1, 11)),
            *(second.close_position(i) for i in range(11, 21)),
        )
    assert max_in_window(bingx.times(), 1.0) == 5
    assert max(bingx.times()) - min(bingx.times()) == pytest.approx(3.0, abs=1e-3)


async def test_ten_accounts_on_one_host_hold_the_ip_endpoint_budget() -> None:
    """10 accounts x 40 closes: the 300 per 10 s IP budget binds, never exceeded."""
    bingx = MockBingX()
    clients = [bingx.client(f"key-{n}") for n in range(10)]
    start = asyncio.get_running_loop().time()
    await asyncio.gather(
        *(
            client.close_position(n * 100 + i)
            for n, client in enumerate(clients)
            for i in range(1, 41)
        )
    )
    for client in clients:
        await client.aclose()
    times = [t - start for t in bingx.times()]
    assert len(times) == 400
    assert max_in_window(times, 10.0) == 300
    for n in range(10):
        assert max_in_window(bingx.times(f"key-{n}"), 1.0) <= 5
    # Account budgets alone would finish at 7 s; the IP budget holds the last 100 until 10 s.
    assert max(times) >= 10.0


async def test_cancelled_waiters_free_their_place_without_gaps() -> None:
    """Cancelling 50 of 100 waiters at random moments: the rest leave back to back."""
    bingx = MockBingX()
    rng = random.Random(7)
    async with bingx.client() as client:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = [asyncio.create_task(client.close_position(i)) for i in range(1, 101)]
        doomed = rng.sample(tasks, 50)
        for task in doomed:
            loop.call_later(rng.uniform(0.0, 8.0), task.cancel)
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    done = [o for o in outcomes if isinstance(o, ClosePositionResult)]
    cancelled = [o for o in outcomes if isinstance(o, asyncio.CancelledError)]
    times = [t - start for t in bingx.times()]
    assert len(done) + len(cancelled) == 100
    assert len(cancelled) > 0
    assert len(times) == len(done)  # a cancelled waiter never reached BingX
    assert max_in_window(times, 1.0) == 5
    # No idle slot: every send after the first five reuses a slot exactly one window later.
    for i in range(5, len(times)):
        assert times[i] == pytest.approx(times[i - 5] + 1.0, abs=1e-3)


async def test_budgets_can_be_overridden() -> None:
    """A user budget of 2 per second replaces the documented 5."""
    policy = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(2, 1.0),), ip_group=2
    )
    bingx = MockBingX()
    async with bingx.client(rate_limits=policy) as client:
        await asyncio.gather(*(client.close_position(i) for i in range(1, 7)))
    times = bingx.times()
    assert max_in_window(times, 1.0) == 2
    assert max(times) - min(times) == pytest.approx(2.0, abs=1e-3)


async def test_unknown_endpoints_get_the_conservative_default() -> None:
    """An endpoint missing from the table draws on the default 5 per second per account."""
    bingx = MockBingX(answer=lambda _: httpx.Response(200, json={"code": 0, "data": None}))
    async with bingx.client() as client:
        await asyncio.gather(
            *(client.request("POST", "/openApi/swap/v2/trade/leverage") for _ in range(10))
        )
    assert DEFAULT_RATE_LIMITS._for_endpoint("POST /openApi/unknown") == EndpointBudgets(
        (Budget(5, 1.0),), 2
    )
    assert max_in_window(bingx.times(), 1.0) == 5


async def test_endpoints_have_separate_account_budgets() -> None:
    """Listing positions is not held back by closes on the same account."""

    bingx = MockBingX()
    async with bingx.client() as client:
        start = asyncio.get_running_loop().time()
        closes = [asyncio.create_task(client.close_position(i)) for i in range(1, 11)]
        await asyncio.sleep(0.5)  # five closes sent, five waiting for their budget
        await client.get_positions()
        listed_at = asyncio.get_running_loop().time() - start
        await asyncio.gather(*closes)
    assert listed_at == pytest.approx(0.5, abs=1e-6)
    assert bingx.positions_asked == 1
    assert [t - start for t in bingx.times()] == pytest.approx([0.0] * 5 + [1.0] * 5)


async def test_usage_shows_what_each_budget_holds() -> None:
    """rate_limit_usage() reports requests in the window and callers waiting."""
    bingx = MockBingX(latency=0.5)
    async with bingx.client() as client:
        tasks = [asyncio.create_task(client.close_position(i)) for i in range(1, 9)]
        await asyncio.sleep(0.1)
        usage = {u.key[0]: u for u in client.rate_limit_usage() if CLOSE_POSITION in u.key}
        await asyncio.gather(*tasks)
    account = usage["account"]
    assert isinstance(account, BudgetUsage)
    assert (account.limit, account.window) == (5, 1.0)
    assert (account.in_flight, account.in_window, account.waiting) == (5, 5, 3)
    assert usage["ip"].limit == 300


async def test_a_wait_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """A call held by the limiter says so, with how long, in a debug line."""
    bingx = MockBingX()
    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        async with bingx.client() as client:
            await asyncio.gather(*(client.close_position(i) for i in range(1, 7)))
    waits = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
    assert waits == [f"rate limit: {CLOSE_POSITION} waited 1.000 s for its budgets"]


async def test_a_request_takes_all_its_budgets_or_none() -> None:
    """While one budget is full, a waiter holds no slot in the others."""
    limiter = RateLimiter(LoopClock())
    small, big = Budget(1, 1.0), Budget(10, 1.0)
    both = RequestBudgets(((("account", "a", "x"), small), (("ip", "h", "x"), big)), "h", True)
    first = await limiter.acquire(both)
    waiter = asyncio.create_task(limiter.acquire(both))
    await asyncio.sleep(0)
    usage = {u.key[0]: u for u in limiter.usage()}
    assert (usage["ip"].in_flight, usage["ip"].waiting) == (1, 1)
    first.release(Release.ANSWERED)
    permit = await waiter
    permit.release(Release.ANSWERED)
    assert asyncio.get_running_loop().time() == pytest.approx(1.0, abs=1e-6)


async def acquire_in_turn(limiter: RateLimiter, n: int, order: list[int]) -> None:
    """Take a slot of a 100-per-second budget, note our turn, give the slot back."""
    permit = await limiter.acquire(
        RequestBudgets(((("account", "a", "x"), Budget(100, 1.0)),), "h", True)
    )
    order.append(n)
    permit.release(Release.ANSWERED)


async def test_ten_thousand_waiters_are_served_in_order() -> None:
    """First come, first served, with bounded state after everyone is done."""
    limiter = RateLimiter(LoopClock())
    order: list[int] = []
    await asyncio.gather(*(acquire_in_turn(limiter, n, order) for n in range(10_000)))
    assert order == list(range(10_000))
    assert limiter._lanes == {}
    assert limiter.usage()[0].in_window <= 100


def test_ip_groups_are_data() -> None:
    """closePosition: 5/s per UID in IP group 2 (300/10 s per endpoint, 2000/10 s total)."""
    budgets = DEFAULT_RATE_LIMITS._budgets(CLOSE_POSITION, host="h", account="acct")
    assert budgets == [
        (("account", "acct", CLOSE_POSITION), Budget(5, 1.0)),
        (("ip", "h", CLOSE_POSITION), Budget(300, 10.0)),
        (("ip-pool", "h", "group2"), Budget(2000, 10.0)),
    ]
    assert DEFAULT_RATE_LIMITS.ip_groups[3] == IPGroup(
        per_endpoint=(Budget(300, 10.0),), total=(Budget(2000, 10.0),), pool="group3"
    )


async def test_mass_cancellation_leaves_the_rest_in_order() -> None:
    """Cancelling every other one of 10,000 waiters: the others keep their order."""
    limiter = RateLimiter(LoopClock())
    order: list[int] = []
    tasks = [asyncio.create_task(acquire_in_turn(limiter, n, order)) for n in range(10_000)]
    await asyncio.sleep(0.5)
    for task in tasks[1::2]:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order[:100] == list(range(100))
    assert order[100:] == [n for n in range(100, 10_000) if n % 2 == 0]
    assert limiter._lanes == {}


def test_ip_budgets_can_be_split_between_processes() -> None:
    """Three processes on one IP each get a third of every IP budget, accounts untouched."""
    split = DEFAULT_RATE_LIMITS.split_between(3)
    assert split._budgets(CLOSE_POSITION, host="h", account="acct") == [
        (("account", "acct", CLOSE_POSITION), Budget(5, 1.0)),
        (("ip", "h", CLOSE_POSITION), Budget(100, 10.0)),
        (("ip-pool", "h", "group2"), Budget(666, 10.0)),
    ]
    shared_key = DEFAULT_RATE_LIMITS.split_between(2, accounts_too=True)
    assert shared_key._for_endpoint(CLOSE_POSITION).per_account == (Budget(2, 1.0),)
    assert shared_key.default.per_account == (Budget(2, 1.0),)


async def test_a_close_cancelled_on_the_wire_keeps_its_slot_until_the_answer() -> None:
    """Callers cancelled while their closes are on the wire: the slots are dated by the
    answers (0.5 s), so the next close leaves at 1.5 s."""
    bingx = MockBingX(latency=0.5)
    async with bingx.client() as client:
        start = asyncio.get_running_loop().time()
        abandoned = [asyncio.create_task(client.close_position(i)) for i in range(1, 6)]
        await asyncio.sleep(0.1)
        for task in abandoned:
            task.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        await client.close_position(6)
    times = [t - start for t in bingx.times()]
    assert times == pytest.approx([0.0] * 5 + [1.5], abs=1e-3)
    assert all(task.cancelled() for task in abandoned)


async def test_a_request_cut_off_on_the_wire_keeps_its_slot_a_second_longer() -> None:
    """Closing the session cuts requests off without an answer: their slots are dated 1 s
    after the cut, in case they still reach BingX."""
    from bingx_async import BingXSession

    bingx = MockBingX(latency=0.5)
    async with BingXSession(clock=bingx.clock) as session:
        client = bingx.client(session=session)
        start = asyncio.get_running_loop().time()
        cut = [asyncio.create_task(client.close_position(i)) for i in range(1, 6)]
        await asyncio.sleep(0.1)
        limiter = session._limits
        await session.aclose()
        outcomes = await asyncio.gather(*cut, return_exceptions=True)
        cut_at = asyncio.get_running_loop().time() - start
        await asyncio.sleep(1.9)
        usage = limiter.usage()
    assert all(isinstance(outcome, ClientClosedError) for outcome in outcomes)
    assert all(outcome.may_have_executed for outcome in outcomes)  # type: ignore[union-attr]
    assert len(bingx.times()) == 5
    assert cut_at == pytest.approx(0.1, abs=1e-3)
    # Dated at 1.1 s, the slots still count at 2.0 s (dated at the cut, they would not).
    account = next(u for u in usage if u.key[0] == "account")
    assert (account.in_flight, account.in_window) == (0, 5)


ONE_SLOT = RequestBudgets(((("account", "a", "x"), Budget(1, 1.0)),), "h", True)


async def test_a_waiter_cancelled_as_it_is_admitted_gives_its_slot_back() -> None:
    """Admitted and cancelled in the same turn of the loop: the slot is free again at once."""
    limiter = RateLimiter(LoopClock())
    held = await limiter.acquire(ONE_SLOT)
    waiter = asyncio.create_task(limiter.acquire(ONE_SLOT))
    await asyncio.sleep(0)
    held.release(Release.NOT_SENT)  # admits the waiter: its future now holds a permit
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    again = await limiter.acquire(ONE_SLOT)
    assert asyncio.get_running_loop().time() == 0.0
    assert [u.in_flight for u in limiter.usage()] == [1]
    again.release(Release.ANSWERED)


async def test_a_shorter_hold_never_shortens_a_longer_one() -> None:
    """Blocked for 10 s, then told 2 s: the budget stays blocked for 10 s."""
    limiter = RateLimiter(LoopClock())
    policy = RetryPolicy(unblock_margin=0.0)
    long = RateLimitError("blocked", code=100410, retry_after=10.0)
    short = RateLimitError("blocked", code=100410, retry_after=2.0)
    assert limiter.hold(long, ONE_SLOT, policy=policy, fallback=None)
    assert limiter.hold(short, ONE_SLOT, policy=policy, fallback=None)
    permit = await limiter.acquire(ONE_SLOT, max_block_wait=20.0)
    assert asyncio.get_running_loop().time() == pytest.approx(10.0, abs=1e-6)
    permit.release(Release.ANSWERED)


async def test_assumed_answers_count_until_their_window_ends() -> None:
    """What other processes were last known to have sent fills the window until it ends."""
    clock = LoopClock()
    limiter = RateLimiter(clock)
    three = RequestBudgets(((("account", "a", "x"), Budget(3, 1.0)),), "h", True)
    seen_at = clock.monotonic()
    await asyncio.sleep(0.4)
    limiter.assume_answered(three, {(("account", "a", "x"), 1.0): (seen_at, 2)})
    first = await limiter.acquire(three)  # 2 assumed + 1: full
    first.release(Release.ANSWERED)
    second = await limiter.acquire(three)
    assert clock.monotonic() == pytest.approx(seen_at + 1.0)
    second.release(Release.ANSWERED)
    assert [u.in_window for u in limiter.usage()] == [2]
    limiter.assume_answered(three, {(("account", "a", "x"), 1.0): (seen_at, 2)})
    assert [u.in_window for u in limiter.usage()] == [2], "assumed twice, counted once"
