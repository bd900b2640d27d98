"""Faults a bot meets in production: long blocks, bans, odd bodies, cancellation (virtual time)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXError,
    Budget,
    ClosePositionResult,
    IPBannedError,
    RateLimitError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
)
from bingx_async._budgets import CLOSE_POSITION
from bingx_async._ratelimit import RateLimiter, Release, RequestBudgets
from bingx_async.testing import FakeBingX, LoopClock, SimAccount

from .mock_bingx import EPOCH, MockBingX, closed, max_in_window

pytestmark = pytest.mark.looptime

CLOSE_PATH = CLOSE_POSITION.split(" ", 1)[1]
RETRYING = RetryPolicy(attempts=5, wait_initial=0.1, wait_jitter=0)


def exchange(positions: int = 1) -> tuple[FakeBingX, SimAccount, list[str]]:
    sim = FakeBingX(clock=LoopClock(), seed=3)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(positions)]
    return sim, account, ids


def client_for(sim: FakeBingX, account: SimAccount, retry: RetryPolicy = RETRYING) -> BingXClient:
    return BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        clock=sim.clock,
        transport=sim.transport(),
        retry=retry,
    )


async def test_a_close_that_may_have_happened_never_reports_certainty() -> None:
    """504 (outcome unknown), then a 60 s block: the final error says 'may have executed'."""
    server_ms = round(EPOCH * 1000)
    answers = iter(
        [
            httpx.Response(504, json={"code": 100500, "msg": "unknown status"}),
            httpx.Response(
                200,
                json={
                    "code": 100410,
                    "msg": f"will be unblocked after {server_ms + 60_000}",
                    "timestamp": server_ms,
                },
            ),
        ]
    )
    bingx = MockBingX(answer=lambda _: next(answers))
    async with bingx.client(retry=RETRYING) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.close_position(7)
    assert caught.value.may_have_executed is True
    assert isinstance(caught.value.earlier_error, ServerError)
    assert caught.value.attempts == 2


async def test_refusals_during_a_block_do_not_prolong_it() -> None:
    """200 calls refused locally during a 20 s block: it still ends at 20 s."""
    sim, account, ids = exchange(201)
    sim.block(CLOSE_POSITION, 20.0)
    async with client_for(sim, account) as c:
        with pytest.raises(RateLimitError):
            await c.close_position(ids[0])
        outcomes = await c.close_positions(ids[1:])
        held = max(u.blocked_for for u in c.rate_limit_usage() if u.key[0] == "account")
        await asyncio.sleep(20.1)
        result = await c.close_position(ids[1])
    assert all(isinstance(o, RateLimitError) and o.refused_locally for o in outcomes)
    assert held == pytest.approx(20.05, abs=1e-3)
    assert result.position_id == ids[1]
    assert len(sim.requests_to(CLOSE_PATH)) == 2


async def test_an_ip_ban_holds_every_endpoint_of_the_host() -> None:
    """After a 418 on closePosition, listing positions is refused without a request."""
    bingx = MockBingX(answer=lambda _: httpx.Response(418, text="banned"))
    async with bingx.client() as client:
        with pytest.raises(IPBannedError):
            await client.close_position(1)
        with pytest.raises(IPBannedError, match="not sent"):
            await client.get_positions()
        with pytest.raises(IPBannedError, match="not sent"):
            await client.server_time()
    assert len(bingx.sent) == 1


async def test_clients_with_different_settings_share_one_account_budget() -> None:
    """A margin on one client and not the other still gives BingX at most 5 per window."""
    bingx = MockBingX()
    wide = DEFAULT_RATE_LIMITS.__class__(
        endpoints=DEFAULT_RATE_LIMITS.endpoints,
        ip_groups=DEFAULT_RATE_LIMITS.ip_groups,
        default=DEFAULT_RATE_LIMITS.default,
        margin=0.05,
    )
    async with bingx.client() as plain, bingx.client(rate_limits=wide) as padded:
        await asyncio.gather(
            *(plain.close_position(i) for i in range(1, 6)),
            *(padded.close_position(i) for i in range(6, 11)),
        )
    assert max_in_window(bingx.times(), 1.0) == 5
    assert max(bingx.times()) == pytest.approx(1.05, abs=1e-3)


async def test_a_stricter_limit_from_another_client_applies_to_both() -> None:
    """One client splits the budget between processes; the other then keeps to it too."""
    bingx = MockBingX()
    split = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(2, 1.0),), ip_group=2
    )
    async with bingx.client(rate_limits=split) as strict, bingx.client() as loose:
        await strict.close_position(1)
        await asyncio.gather(*(loose.close_position(i) for i in range(2, 6)))
    assert max_in_window(bingx.times(), 1.0) == 2


@pytest.mark.parametrize(
    "body",
    [
        '{"code":0,"msg":"","data":{"orderId":1E+5000,"positionId":"7"}}',
        '{"code":0,"msg":"","data":{"orderId":"x","origQty":"Infinity","side":[1]}}',
        '{"code":0,"msg":"","data":[1,2,3]}',
    ],
)
async def test_a_successful_close_with_odd_data_still_succeeds(body: str) -> None:
    """After code 0 the position is closed, whatever the data looks like."""
    bingx = MockBingX(answer=lambda _: httpx.Response(200, text=body))
    async with bingx.client() as client:
        result = await client.close_position(7)
    assert isinstance(result, ClosePositionResult)
    assert result.position_id == "7"


async def test_an_absurdly_nested_body_is_a_validation_error() -> None:
    """A 200 answer nested too deeply for the JSON parser is not a crash."""
    bingx = MockBingX(answer=lambda _: httpx.Response(200, text="[" * 200_000))
    async with bingx.client() as client:
        with pytest.raises(ResponseValidationError):
            await client.close_position(7)


async def test_a_string_code_zero_is_success_everywhere() -> None:
    """'00' as a code is success, not an error with code 0."""
    bingx = MockBingX(
        answer=lambda _: httpx.Response(200, json={"code": "00", "data": {"positionId": "7"}})
    )
    async with bingx.client() as client:
        result = await client.close_position(7)
    assert result.position_id == "7"


@pytest.mark.parametrize("value", ["inf", "1e12", "86400"])
async def test_a_huge_retry_after_does_not_freeze_other_accounts(value: str) -> None:
    """A proxy's Retry-After is shared for 15 minutes at most, and inf is ignored."""
    answers = iter([httpx.Response(429, headers={"Retry-After": value}, text="slow down")])
    bingx = MockBingX(answer=lambda request: next(answers, None) or closed(request))
    async with bingx.client("key-a", retry=RetryPolicy(attempts=1)) as a:
        with pytest.raises(RateLimitError):
            await a.close_position(1)
        blocked = max(u.blocked_for for u in a.rate_limit_usage())
    assert blocked <= 900.0


async def test_a_cancelled_waiter_raises_cancelled_even_if_refused_meanwhile() -> None:
    """asyncio.timeout keeps working when a block and the timeout land in one tick."""
    limiter = RateLimiter(LoopClock())
    budget = RequestBudgets(((("account", "a", "E"), Budget(1, 1.0)),), "h", True)
    held = await limiter.acquire(budget)
    waiter = asyncio.create_task(limiter.acquire(budget, max_block_wait=1.0))
    await asyncio.sleep(0)
    blocked = RateLimitError("blocked", code=100410, retry_after=100.0)
    assert limiter.hold(blocked, budget, policy=RetryPolicy(), fallback=None)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    held.release(Release.ANSWERED)


async def test_a_block_ending_on_an_awkward_float_does_not_spin() -> None:
    """Blocked until 0.1 + 0.2 (0.30000000000000004): the waiter is admitted."""
    limiter = RateLimiter(LoopClock())
    budget = RequestBudgets(((("account", "a", "E"), Budget(5, 1.0)),), "h", True)
    (await limiter.acquire(budget)).release(Release.NOT_SENT)
    await asyncio.sleep(0.1)
    blocked = RateLimitError("blocked", code=100410, retry_after=0.2)
    limiter.hold(blocked, budget, policy=RetryPolicy(unblock_margin=0.0), fallback=None)
    (await limiter.acquire(budget)).release(Release.ANSWERED)
    assert asyncio.get_running_loop().time() == pytest.approx(0.3, abs=1e-6)


async def test_an_unexpected_error_in_one_close_does_not_sink_the_others() -> None:
    """A bug-like exception for one ID becomes that ID's outcome; the rest close."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params["positionId"] == "3":
            raise RuntimeError("surprise")
        return closed(request)

    bingx = MockBingX(answer=answer)
    async with bingx.client() as client:
        outcomes = await client.close_positions([1, 2, 3, 4])
    assert [type(o).__name__ for o in outcomes] == [
        "ClosePositionResult",
        "ClosePositionResult",
        "BingXError",
        "ClosePositionResult",
    ]
    assert isinstance(outcomes[2], BingXError)
    assert outcomes[2].may_have_executed is True


async def test_a_slow_clock_measurement_never_holds_up_closes() -> None:
    """A periodic re-sync runs in the background; a hung first one costs at most 2 s."""
    bingx = MockBingX()
    handle = bingx.handle
    hang = False

    async def slow_server_time(request: httpx.Request) -> httpx.Response:
        if hang and request.url.path.endswith("server/time"):
            timeout = request.extensions["timeout"]["read"]
            await asyncio.sleep(timeout)
            raise httpx.ReadTimeout("timed out", request=request)
        return await handle(request)

    bingx.handle = slow_server_time  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    async with bingx.client(clock_sync_interval=60.0) as client:
        await client.close_position(1)
        await asyncio.sleep(61)
        hang = True
        started = loop.time()
        await client.close_position(2)
        periodic = loop.time() - started
    assert periodic == pytest.approx(0.0, abs=1e-6)


async def test_a_hung_first_clock_measurement_costs_two_seconds_at_most() -> None:
    """Before the first signed request the clock is measured, but never for long."""
    bingx = MockBingX()
    handle = bingx.handle

    async def hung_server_time(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("server/time"):
            await asyncio.sleep(request.extensions["timeout"]["read"])
            raise httpx.ReadTimeout("timed out", request=request)
        return await handle(request)

    bingx.handle = hung_server_time  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    async with bingx.client() as client:
        started = loop.time()
        await client.close_position(1)
        elapsed = loop.time() - started
    assert elapsed == pytest.approx(2.0, abs=1e-3)


async def test_a_stricter_limit_from_a_later_client_applies_to_both() -> None:
    """A client that arrives later with 2 per second slows the first one down too."""
    bingx = MockBingX()
    split = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(2, 1.0),), ip_group=2
    )
    async with bingx.client() as loose, bingx.client(rate_limits=split) as strict:
        await loose.close_position(1)
        await strict.close_position(2)
        await asyncio.sleep(1.0)
        await asyncio.gather(*(loose.close_position(i) for i in range(3, 9)))
    assert max_in_window(bingx.times(), 1.0) == 2
