"""The :class:`Limits` contract, run against both stores: in this process's memory and in
Redis. Whatever a session keeps its limits in, an attempt is admitted, waits, is refused
and is finished alike.

Real time (a real Redis cannot stand still): windows of 0.2 s.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from bingx_async import (
    Budget,
    ErrorGuardPolicy,
    ErrorRateGuardError,
    QueueTimeoutError,
    RateLimitError,
    RedisLimits,
    RetryPolicy,
    SystemClock,
)
from bingx_async._exceptions import BingXError, ClientClosedError
from bingx_async._limits import Attempt, Claim, ClaimState, GuardAsk, Limits
from bingx_async._memory_limits import MemoryLimits
from bingx_async._ratelimit import Release, RequestBudgets
from bingx_async._redis import RedisSharedLimits

WINDOW = 0.2
ENDPOINT = "POST /openApi/swap/v1/trade/closePosition"
REQUEST = RequestBudgets(
    ((("account", "uid-1@host", ENDPOINT), Budget(2, WINDOW)),),
    host="host",
    signed=True,
    label=ENDPOINT,
)
GUARD = GuardAsk("uid-1@host", ENDPOINT, ErrorGuardPolicy(threshold=2, window=60))


@pytest.fixture(params=["memory", "redis"])
async def limits(request: pytest.FixtureRequest) -> AsyncIterator[Limits]:
    clock = SystemClock()
    made: Limits
    if request.param == "memory":
        made = MemoryLimits(clock)
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisSharedLimits(clock, RedisLimits(url, prefix=uuid.uuid4().hex[:8])._store)
    made.start()
    yield made
    made.close(lambda: ClientClosedError("closed", may_have_executed=False))
    await made.aclose()


def now() -> float:
    return asyncio.get_running_loop().time()


async def test_a_budget_admits_its_limit_then_waits_a_window(limits: Limits) -> None:
    started = now()
    first = await limits.admit(Attempt(REQUEST))
    second = await limits.admit(Attempt(REQUEST))
    first.finish(Release.ANSWERED)
    second.finish(Release.ANSWERED)
    third = await limits.admit(Attempt(REQUEST))
    third.finish(Release.ANSWERED)

    assert now() - started >= WINDOW - 0.01
    assert now() - started < WINDOW + 0.15


async def test_a_request_never_sent_gives_its_slot_back_at_once(limits: Limits) -> None:
    started = now()
    for _ in range(5):
        admitted = await limits.admit(Attempt(REQUEST))
        admitted.finish(Release.NOT_SENT)
    await asyncio.sleep(0.05)  # what a store sends later has arrived

    assert now() - started < WINDOW
    assert [u.in_window for u in limits.usage()] == [0]


async def test_usage_counts_what_is_in_flight_and_answered(limits: Limits) -> None:
    flying = await limits.admit(Attempt(REQUEST))
    answered = await limits.admit(Attempt(REQUEST))
    answered.finish(Release.ANSWERED)

    [usage] = limits.usage()
    flying.finish(Release.ANSWERED)

    assert (usage.limit, usage.in_window, usage.in_flight) == (2, 2, 1)


async def test_a_deadline_ends_the_wait_unsent_saying_how_long(limits: Limits) -> None:
    for _ in range(2):
        (await limits.admit(Attempt(REQUEST))).finish(Release.ANSWERED)
    started = now()

    with pytest.raises(QueueTimeoutError) as caught:
        await limits.admit(Attempt(REQUEST), deadline=started + 0.05, since=started - 1.0)

    assert caught.value.may_have_executed is False
    assert "waited 1.0" in caught.value.message


async def test_a_hold_refuses_what_may_not_wait_that_long(limits: Limits) -> None:
    answer = RateLimitError(
        "disabled", code=100410, retry_after=5.0, endpoint=ENDPOINT, may_have_executed=False
    )
    held = limits.hold(answer, REQUEST, policy=RetryPolicy(), fallback=None)
    await asyncio.sleep(0.05)  # a shared hold reaches Redis

    with pytest.raises(RateLimitError) as caught:
        await limits.admit(Attempt(REQUEST), max_block_wait=1.0)

    assert held is True
    assert caught.value.may_have_executed is False
    assert "not sent" in caught.value.message


async def test_the_error_guard_counts_errors_and_refuses_at_its_threshold(
    limits: Limits,
) -> None:
    for _ in range(2):
        admitted = await limits.admit(Attempt(REQUEST, GUARD))
        admitted.finish(Release.ANSWERED, code=109414)
        await asyncio.sleep(WINDOW)
    await asyncio.sleep(0.05)

    with pytest.raises(ErrorRateGuardError) as caught:
        await limits.admit(Attempt(REQUEST, GUARD))

    assert caught.value.count == 2
    assert caught.value.banned_code == 109414
    await asyncio.sleep(0.05)
    # The refused attempt was never sent: its slot is back, and not counted in the window.
    assert [(u.in_flight, u.in_window) for u in limits.usage()] == [(0, 0)]


async def test_an_answer_naming_no_time_holds_for_the_callers_back_off(limits: Limits) -> None:
    answer = RateLimitError(
        "too many requests", code=100410, endpoint=ENDPOINT, may_have_executed=False
    )
    held = limits.hold(answer, REQUEST, policy=RetryPolicy(), fallback=0.15)
    await asyncio.sleep(0.02)  # a shared hold reaches Redis
    started = now()

    (await limits.admit(Attempt(REQUEST), max_block_wait=1.0)).finish(Release.ANSWERED)

    assert held is True
    assert now() - started >= 0.1


async def test_a_retry_keeps_its_place_in_the_queue(limits: Limits) -> None:
    first = await limits.admit(Attempt(REQUEST))
    second = await limits.admit(Attempt(REQUEST))
    earlier = limits.next_ticket()  # the retrying call's place, taken when it began
    newcomer = asyncio.ensure_future(limits.admit(Attempt(REQUEST)))
    await asyncio.sleep(0.02)
    retry = asyncio.ensure_future(limits.admit(Attempt(REQUEST), ticket=earlier))
    await asyncio.sleep(0.02)

    first.finish(Release.NOT_SENT)  # one slot free: the earlier place gets it
    admitted = await retry
    await asyncio.sleep(0.02)

    assert not newcomer.done()
    admitted.finish(Release.NOT_SENT)
    second.finish(Release.NOT_SENT)
    (await newcomer).finish(Release.NOT_SENT)


async def test_an_attempt_finished_twice_counts_once(limits: Limits) -> None:
    admitted = await limits.admit(Attempt(REQUEST, GUARD))
    admitted.finish(Release.ANSWERED, code=109414)
    admitted.finish(Release.ANSWERED, code=109414)
    await asyncio.sleep(0.05)

    # One error of two allowed: the next attempt is admitted, and uses the last slot.
    (await limits.admit(Attempt(REQUEST, GUARD))).finish(Release.ANSWERED)
    assert [(u.in_flight, u.in_window) for u in limits.usage()] == [(0, 2)]


async def test_closing_refuses_waiters_and_later_admissions(limits: Limits) -> None:
    for _ in range(2):
        (await limits.admit(Attempt(REQUEST))).finish(Release.ANSWERED)
    waiting = asyncio.ensure_future(limits.admit(Attempt(REQUEST)))
    await asyncio.sleep(0.02)

    limits.close(lambda: ClientClosedError("closed for the test", may_have_executed=False))

    with pytest.raises(ClientClosedError):
        await waiting
    with pytest.raises(ClientClosedError):
        await limits.admit(Attempt(REQUEST))


async def test_a_claim_admits_its_first_caller_and_settles(limits: Limits) -> None:
    claim = Claim(f"close|uid-1@host|{uuid.uuid4().hex}", encode=str, decode=str)

    admitted = await limits.admit(Attempt(REQUEST, claim=claim))
    admitted.finish(Release.ANSWERED, claim=ClaimState.RESULT, result="closed", final=True)

    assert admitted.joined is None
    assert admitted.inherited_unknown is False
    assert claim.settled is True


async def test_a_settled_claim_is_not_settled_twice(limits: Limits) -> None:
    claim = Claim(f"close|uid-1@host|{uuid.uuid4().hex}", encode=str, decode=str)
    limits.settle(claim, ClaimState.NOTHING_EXECUTED)
    limits.settle(claim, ClaimState.UNKNOWN)

    assert claim.settled is True


async def test_only_shared_claims_make_a_second_caller_join(redis_url: str) -> None:
    # In memory, one process's flights already join; in Redis, another process joins
    # the claimed close's result, and nothing is sent.
    prefix = uuid.uuid4().hex[:8]
    one = RedisSharedLimits(SystemClock(), RedisLimits(redis_url, prefix=prefix)._store)
    other = RedisSharedLimits(SystemClock(), RedisLimits(redis_url, prefix=prefix)._store)
    for made in (one, other):
        made.start()
    name = f"close|uid-1@host|{uuid.uuid4().hex}"
    try:
        first = Claim(name, encode=str, decode=lambda text: f"joined {text}")
        admitted = await one.admit(Attempt(REQUEST, claim=first))
        joining = asyncio.ensure_future(
            other.admit(Attempt(REQUEST, claim=Claim(name, encode=str, decode=first.decode)))
        )
        await asyncio.sleep(0.05)
        assert not joining.done(), "joined before the claimed call ended"
        admitted.finish(Release.ANSWERED, claim=ClaimState.RESULT, result="done", final=True)
        joined = await asyncio.wait_for(joining, 2.0)
    finally:
        for made in (one, other):
            made.close(lambda: BingXError("closed", may_have_executed=False))
            await made.aclose()

    assert joined.joined == "joined done"
