"""What one process tells the others through Redis, read where it arrives: the answer
behind a hold, a limit learned lower, how a claimed call ended, and how long a joiner
waits for it.

Each "process" is a :class:`RedisSharedLimits` of its own on the session's real
``redis-server``, driven directly through the :class:`Limits` interface.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from bingx_async import (
    Budget,
    ErrorGuardPolicy,
    ErrorRateGuardError,
    IPBannedError,
    QueueTimeoutError,
    RateLimitError,
    RedisLimits,
    RetryPolicy,
    SystemClock,
)
from bingx_async._exceptions import BingXError
from bingx_async._limits import Attempt, Claim, ClaimState, GuardAsk
from bingx_async._ratelimit import Release, RequestBudgets
from bingx_async._redis import RedisSharedLimits
from bingx_async._redis._engine import _decode_reason

ENDPOINT = "POST /openApi/swap/v1/trade/closePosition"
ACCOUNT = ("account", "uid-7@host", ENDPOINT)
REQUEST = RequestBudgets(((ACCOUNT, Budget(5, 1.0)),), host="host", signed=True, label=ENDPOINT)
POLICY = RetryPolicy(unblock_margin=0.0)

Process = Callable[..., RedisSharedLimits]


@pytest.fixture
async def process(redis_url: str) -> AsyncIterator[Process]:
    """``process(**options)``: one more process sharing this test's prefix."""
    prefix = uuid.uuid4().hex[:8]
    made: list[RedisSharedLimits] = []

    def start(**options: Any) -> RedisSharedLimits:
        engine = RedisSharedLimits(
            SystemClock(), RedisLimits(redis_url, prefix=prefix, **options)._store
        )
        engine.start()
        made.append(engine)
        return engine

    yield start
    for engine in made:
        engine.close(lambda: BingXError("closed", may_have_executed=False))
        await engine.aclose()


def claim(name: str, decode: Callable[[str], Any] = str) -> Claim:
    return Claim(name, encode=str, decode=decode)


async def test_a_hold_reaches_another_process_with_what_bingx_said(process: Process) -> None:
    one, other = process(), process()
    await one.admit(Attempt(REQUEST))  # both are up and checked
    await other.admit(Attempt(REQUEST))
    answer = RateLimitError(
        "disabled",
        code=100410,
        msg="disabled until 1760000000000",
        status_code=200,
        endpoint=ENDPOINT,
        retry_after=4.0,
        may_have_executed=False,
    )
    one.hold(answer, REQUEST, policy=POLICY, fallback=None)
    await asyncio.sleep(0.1)

    with pytest.raises(RateLimitError) as caught:
        await other.admit(Attempt(REQUEST), max_block_wait=1.0)

    refused = caught.value
    assert type(refused) is RateLimitError
    assert (refused.code, refused.msg, refused.status_code, refused.endpoint) == (
        100410,
        "disabled until 1760000000000",
        200,
        ENDPOINT,
    )
    assert refused.banned_code is None
    assert refused.retry_after == pytest.approx(3.9, abs=0.1)
    assert refused.refused_locally is True
    assert refused.may_have_executed is False
    assert "BingX said: disabled until 1760000000000" in refused.message


async def test_an_ip_ban_reaches_another_process_as_an_ip_ban(process: Process) -> None:
    one, other = process(), process()
    await one.admit(Attempt(REQUEST))
    await other.admit(Attempt(REQUEST))
    ip_request = RequestBudgets(
        ((("ip", "host", ENDPOINT), Budget(300, 10.0)),), host="host", signed=True, label=ENDPOINT
    )
    ban = IPBannedError("banned", status_code=418, retry_after=30.0, may_have_executed=False)
    one.hold(ban, ip_request, policy=POLICY, fallback=None)
    await asyncio.sleep(0.1)

    with pytest.raises(IPBannedError) as caught:
        await other.admit(Attempt(ip_request), max_block_wait=1.0)
    # A budget of the host that no process had used before the ban is banned as well; the
    # account's own budgets are not (as in one process).
    unseen = RequestBudgets(
        ((("ip", "host", "GET /v1/other"), Budget(100, 10.0)),), host="host", signed=False
    )
    with pytest.raises(IPBannedError):
        await other.admit(Attempt(unseen), max_block_wait=1.0)
    (await other.admit(Attempt(REQUEST), max_block_wait=1.0)).finish(Release.ANSWERED)

    assert caught.value.status_code == 418
    # An answer without a BingX message is quoted by what the client made of it.
    assert caught.value.message.endswith("BingX said: banned")
    assert caught.value.retry_after == pytest.approx(29.9, abs=0.1)


async def test_a_hold_without_a_named_time_holds_for_the_callers_back_off(
    process: Process,
) -> None:
    one, other = process(), process()
    await other.admit(Attempt(REQUEST))
    busy = RateLimitError("busy", code=100410, msg="busy", may_have_executed=False)

    held = one.hold(busy, REQUEST, policy=POLICY, fallback=2.0)
    await asyncio.sleep(0.1)

    assert held is True
    with pytest.raises(RateLimitError) as caught:
        await other.admit(Attempt(REQUEST), max_block_wait=1.0)
    assert caught.value.retry_after == pytest.approx(1.9, abs=0.1)


def test_a_reason_that_cannot_be_read_still_refuses() -> None:
    refused = _decode_reason("{not json")

    assert type(refused) is RateLimitError
    assert refused.message == "a budget is held by another process"
    assert refused.may_have_executed is False


async def test_a_limit_learned_lower_is_written_for_every_process(
    process: Process, redis_url: str
) -> None:
    one = process()
    # Blocked twice while the budget was full ("disabled until T": a frequency rule).
    for _ in range(2):
        permits = [await one.admit(Attempt(REQUEST)) for _ in range(5)]
        for permit in permits:
            permit.finish(Release.ANSWERED)
        one.hold(
            RateLimitError(
                "disabled",
                code=100410,
                unblock_at=time.time() + 0.01,
                retry_after=0.01,
                may_have_executed=False,
            ),
            REQUEST,
            policy=POLICY,
            fallback=None,
        )
        await asyncio.sleep(1.05)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        [key] = [k async for k in redis.scan_iter(f"{one.store.prefix}l:*")]
        learned, kept = await redis.get(key), await redis.pttl(key)
    finally:
        await redis.aclose()

    assert key == one.store.key("l", one.store.budget_id(ACCOUNT, 1.0))
    assert learned == "4"
    assert 598_000 <= kept <= 600_000
    # Another process keeps to it: four in the window, and the fifth waits.
    other = process()
    for _ in range(4):
        (await other.admit(Attempt(REQUEST))).finish(Release.ANSWERED)
    started = asyncio.get_running_loop().time()
    with pytest.raises(QueueTimeoutError):
        await other.admit(Attempt(REQUEST), deadline=started + 0.3)


async def test_a_result_settled_after_the_last_attempt_is_every_process_result(
    process: Process,
) -> None:
    one, other = process(lease=2.0), process(lease=2.0)
    name = f"close|{uuid.uuid4().hex}"
    mine = claim(name)
    admitted = await one.admit(Attempt(REQUEST, claim=mine))
    admitted.finish(Release.ANSWERED, claim=ClaimState.UNKNOWN)  # a retry would follow

    one.settle(mine, ClaimState.RESULT, "closed from the history")
    theirs = claim(name, decode=lambda text: f"got {text}")
    joined = await other.admit(
        Attempt(REQUEST, claim=theirs), deadline=asyncio.get_running_loop().time() + 0.5
    )

    assert joined.joined == "got closed from the history"
    assert mine.settled is True
    # The joiner has nothing left to tell Redis when its call ends.
    assert theirs.settled is True


@pytest.mark.parametrize(
    ("state", "inherited"), [(ClaimState.NOTHING_EXECUTED, False), (ClaimState.UNKNOWN, True)]
)
async def test_a_claim_settled_without_a_result_lets_the_next_caller_send(
    process: Process, state: ClaimState, inherited: bool
) -> None:
    one, other = process(lease=2.0), process(lease=2.0)
    name = f"close|{uuid.uuid4().hex}"
    mine = claim(name)
    await one.admit(Attempt(REQUEST, claim=mine))

    one.settle(mine, state)
    started = asyncio.get_running_loop().time()
    admitted = await other.admit(Attempt(REQUEST, claim=claim(name)), deadline=started + 0.5)

    assert admitted.joined is None
    # Only a call that may have executed tells the next one so.
    assert admitted.inherited_unknown is inherited


@pytest.mark.parametrize("late", [0.0, 0.8])
async def test_a_joiner_sleeps_until_the_claim_lapses_then_sends(
    process: Process, redis_url: str, late: float
) -> None:
    one, other = process(lease=1.2), process(lease=1.2)
    name = f"close|{uuid.uuid4().hex}"
    await one.admit(Attempt(REQUEST, claim=claim(name)))  # and is never heard of again
    await asyncio.sleep(late)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        before = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
        started = asyncio.get_running_loop().time()
        admitted = await other.admit(Attempt(REQUEST, claim=claim(name)), deadline=started + 3)
        took = asyncio.get_running_loop().time() - started
        after = (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)
    finally:
        await redis.aclose()

    assert 1.0 - late <= took < 1.6 - late
    assert admitted.inherited_unknown is True
    assert after - before <= 3, "the joiner asked again and again instead of sleeping"


async def test_a_joiner_out_of_time_names_the_call_and_says_it_may_have_executed(
    process: Process,
) -> None:
    one, other = process(lease=5.0), process(lease=5.0)
    name = f"close|{uuid.uuid4().hex}"
    unlabelled = RequestBudgets(REQUEST.budgets, host="host", signed=True)
    await one.admit(Attempt(REQUEST, claim=claim(name)))

    errors = []
    for request in (REQUEST, unlabelled):
        started = asyncio.get_running_loop().time()
        with pytest.raises(QueueTimeoutError) as caught:
            await other.admit(
                Attempt(request, claim=claim(name)), deadline=started + 0.2, since=started
            )
        errors.append(caught.value)

    labelled, anonymous = errors
    assert labelled.message.startswith(f"{ENDPOINT}: another process holds this call")
    assert labelled.endpoint == ENDPOINT
    assert anonymous.message.startswith("the call: another process holds this call")
    assert anonymous.endpoint is None
    for error in errors:
        assert error.refused_locally is True
        assert error.may_have_executed is True
        assert "(waited 0.2" in error.message


async def test_an_error_rate_ban_reaches_another_process_with_its_code(process: Process) -> None:
    one, other = process(), process()
    await other.admit(Attempt(REQUEST))
    ban = RateLimitError(
        "",
        code=100410,
        retry_after=3.0,
        banned_code=100202,
        endpoint=ENDPOINT,
        may_have_executed=False,
    )
    one.hold(ban, REQUEST, policy=POLICY, fallback=None)
    await asyncio.sleep(0.1)

    with pytest.raises(RateLimitError) as caught:
        await other.admit(Attempt(REQUEST), max_block_wait=1.0)

    assert caught.value.banned_code == 100202
    # BingX said nothing in words: the refusal says who held it.
    assert caught.value.message.endswith("BingX said: held by another process")


async def test_errors_are_counted_for_the_guards_whole_window(process: Process) -> None:
    one = process()
    guard = GuardAsk("uid-7@host", ENDPOINT, ErrorGuardPolicy(threshold=1, window=60))
    admitted = await one.admit(Attempt(REQUEST, guard))
    admitted.finish(Release.ANSWERED, code=109414)
    await asyncio.sleep(1.2)  # longer than a window in seconds read as milliseconds

    with pytest.raises(ErrorRateGuardError):
        await one.admit(Attempt(REQUEST, guard))


async def test_a_request_cut_off_counts_a_second_longer_everywhere(process: Process) -> None:
    one, other = process(), process()
    await other.admit(Attempt(REQUEST))  # up and checked
    single = RequestBudgets(((ACCOUNT, Budget(1, 0.2)),), host="host", signed=True, label=ENDPOINT)
    admitted = await one.admit(Attempt(single))
    admitted.finish(Release.ABANDONED)  # it may still be on its way to BingX
    started = asyncio.get_running_loop().time()

    (await other.admit(Attempt(single))).finish(Release.NOT_SENT)

    assert asyncio.get_running_loop().time() - started >= 1.0 + 0.2 - 0.05


async def test_a_claim_is_kept_through_a_retrys_back_off(process: Process) -> None:
    one, other = process(lease=2.0), process(lease=2.0)
    name = f"close|{uuid.uuid4().hex}"
    admitted = await one.admit(Attempt(REQUEST, claim=claim(name)))
    admitted.finish(Release.ANSWERED, claim=ClaimState.NOTHING_EXECUTED)  # a retry follows
    await asyncio.sleep(0.1)

    started = asyncio.get_running_loop().time()
    with pytest.raises(QueueTimeoutError):
        await other.admit(Attempt(REQUEST, claim=claim(name)), deadline=started + 0.3)


async def test_a_finish_notices_that_redis_lost_its_state(
    process: Process, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    one = process()
    admitted = await one.admit(Attempt(REQUEST))
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await redis.delete(one.store.epoch_key)
    finally:
        await redis.aclose()

    admitted.finish(Release.ANSWERED)
    await asyncio.sleep(0.1)

    assert one.store.outages == 1
    assert [r.message for r in caplog.records if "lost the shared state" in r.message]


async def test_a_hold_notices_that_redis_lost_its_state(process: Process, redis_url: str) -> None:
    one = process()
    (await one.admit(Attempt(REQUEST))).finish(Release.ANSWERED)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await redis.delete(one.store.epoch_key)
    finally:
        await redis.aclose()
    busy = RateLimitError("busy", code=100410, retry_after=2.0, may_have_executed=False)

    one.hold(busy, REQUEST, policy=POLICY, fallback=None)
    await asyncio.sleep(0.1)

    assert one.store.outages == 1


async def test_the_keys_of_a_close_are_the_documented_ones(
    process: Process, redis_url: str
) -> None:
    # The layout other versions of this library, and operators, rely on: see the scripts.
    one = process()
    store = one.store
    guard = GuardAsk("uid-7@host", ENDPOINT, ErrorGuardPolicy(threshold=5, window=60))
    ip = ("ip", "host", ENDPOINT)
    request = RequestBudgets(
        ((ACCOUNT, Budget(5, 1.0)), (ip, Budget(300, 10.0))), host="host", signed=True
    )
    mine = claim(f"close|{uuid.uuid4().hex}")
    flying = await one.admit(Attempt(request, guard, mine))
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        during = {key async for key in redis.scan_iter(f"{store.prefix}*")}
        flying.finish(Release.ANSWERED, code=109414, claim=ClaimState.UNKNOWN, final=True)
        await asyncio.sleep(0.1)
        after = {key async for key in redis.scan_iter(f"{store.prefix}*")}
        short, (claim_key, outcome_key, _) = store.claim_keys(mine.name)
        outcome_kept = await redis.pttl(outcome_key)
    finally:
        await redis.aclose()

    account_id, ip_id = store.budget_id(ACCOUNT, 1.0), store.budget_id(ip, 10.0)
    # How the call ended is remembered for ten minutes, for a later caller of the same close.
    assert 599_000 <= outcome_kept <= 600_000
    error_key, guard_flying = store.guard_keys("uid-7@host", ENDPOINT)
    assert during == {
        store.epoch_key,
        store.key("f", account_id),
        store.key("f", ip_id),
        claim_key,
        outcome_key,
        guard_flying,
    }
    assert after == {
        store.epoch_key,
        store.key("s", account_id),
        store.key("s", ip_id),
        outcome_key,
        error_key,
    }
    assert claim_key == f"{store.prefix}c:{short}"
    assert store.key("s", account_id) == f"{store.prefix}s:{account_id}"
    assert ip_id == f"ip|{store.egress}@host|{ENDPOINT.replace(' ', '_')}|10"


async def test_the_shared_error_guard_says_what_it_counted_and_when_to_retry(
    process: Process,
) -> None:
    one, other = process(), process()
    guard = GuardAsk("uid-7@host", ENDPOINT, ErrorGuardPolicy(threshold=1, window=60))
    admitted = await one.admit(Attempt(REQUEST, guard))
    admitted.finish(Release.ANSWERED, code=109414)
    await asyncio.sleep(0.3)

    with pytest.raises(ErrorRateGuardError) as caught:
        await other.admit(Attempt(REQUEST, guard))

    refused = caught.value
    assert (refused.endpoint, refused.banned_code, refused.count, refused.window) == (
        ENDPOINT,
        109414,
        1,
        60,
    )
    assert refused.retry_after == pytest.approx(59.7, abs=0.15)
    assert refused.may_have_executed is False


async def test_the_shared_error_guard_refusing_for_flights_alone_names_no_code(
    process: Process,
) -> None:
    one, other = process(), process()
    guard = GuardAsk("uid-7@host", ENDPOINT, ErrorGuardPolicy(threshold=1, window=60))
    flying = await one.admit(Attempt(REQUEST, guard))

    with pytest.raises(ErrorRateGuardError) as caught:
        await other.admit(Attempt(REQUEST, guard))
    flying.finish(Release.ANSWERED)

    assert (caught.value.banned_code, caught.value.count, caught.value.retry_after) == (
        None,
        0,
        0.0,
    )
    assert "1 requests to" in caught.value.message


async def test_every_loss_of_the_state_is_noticed_not_only_the_first(
    process: Process, redis_url: str
) -> None:
    one = process()
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for losses in (1, 2):
            (await one.admit(Attempt(REQUEST))).finish(Release.NOT_SENT)
            await redis.delete(one.store.epoch_key)
            (await one.admit(Attempt(REQUEST))).finish(Release.NOT_SENT)
            assert one.store.outages == losses
    finally:
        await redis.aclose()


async def test_processes_waiting_for_one_lane_take_turns_in_its_documented_keys(
    process: Process, redis_url: str
) -> None:
    one, other = process(), process()
    for _ in range(5):
        (await one.admit(Attempt(REQUEST))).finish(Release.ANSWERED)
    waiting = [asyncio.ensure_future(one.admit(Attempt(REQUEST)))]
    await asyncio.sleep(0.05)
    waiting.append(asyncio.ensure_future(other.admit(Attempt(REQUEST))))
    await asyncio.sleep(0.1)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = {key async for key in redis.scan_iter(f"{one.store.prefix}*")}
    finally:
        await redis.aclose()
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)

    lane = one.store.lane_id([one.store.budget_id(ACCOUNT, 1.0)])
    # The processes that wait, and whose turn it is.
    assert {f"{one.store.prefix}w:{lane}", f"{one.store.prefix}x:{lane}"} <= keys


async def test_the_shared_error_guard_says_when_its_oldest_error_leaves_the_window(
    process: Process,
) -> None:
    one = process()
    guard = GuardAsk("uid-7@host", ENDPOINT, ErrorGuardPolicy(threshold=1, window=1.0))
    (await one.admit(Attempt(REQUEST, guard))).finish(Release.ANSWERED, code=109414)
    await asyncio.sleep(0.6)

    with pytest.raises(ErrorRateGuardError) as caught:
        await one.admit(Attempt(REQUEST, guard))

    assert caught.value.retry_after == pytest.approx(0.4, abs=0.15)


async def test_callers_admitted_in_one_write_take_one_slot_each(
    process: Process, redis_url: str
) -> None:
    one = process()
    (await one.admit(Attempt(REQUEST))).finish(Release.ANSWERED)  # up, with room known

    # Four at once: the first asks Redis, the others ride in its write when there is room.
    passes = await asyncio.wait_for(
        asyncio.gather(*(one.admit(Attempt(REQUEST)) for _ in range(4))), 0.5
    )
    for admitted in passes:
        admitted.finish(Release.ANSWERED)
    await asyncio.sleep(0.1)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        bid = one.store.budget_id(ACCOUNT, 1.0)
        answered = await redis.zcard(one.store.key("s", bid))
        flying = await redis.zcard(one.store.key("f", bid))
    finally:
        await redis.aclose()

    assert (answered, flying) == (5, 0)
    with pytest.raises(QueueTimeoutError):
        await one.admit(Attempt(REQUEST), deadline=asyncio.get_running_loop().time() + 0.2)


async def test_a_hold_longer_than_the_calls_time_left_refuses_at_once(process: Process) -> None:
    one, other = process(), process()
    await one.admit(Attempt(REQUEST))  # both are up and checked
    await other.admit(Attempt(REQUEST))
    busy = RateLimitError("busy", code=100410, retry_after=2.0, may_have_executed=False)
    one.hold(busy, REQUEST, policy=POLICY, fallback=None)
    await asyncio.sleep(0.1)
    started = asyncio.get_running_loop().time()

    # The call could wait that long for a hold, but its deadline comes first.
    with pytest.raises(RateLimitError) as caught:
        await other.admit(Attempt(REQUEST), max_block_wait=10.0, deadline=started + 0.5)

    assert asyncio.get_running_loop().time() - started < 0.3
    assert caught.value.refused_locally is True
    assert caught.value.retry_after == pytest.approx(1.9, abs=0.1)
