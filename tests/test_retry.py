"""Recovery, in virtual time: waiting out blocks exactly, clock sync, never closing twice."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable

import httpx
import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXError,
    Budget,
    ClosePositionResult,
    ConfigurationError,
    ErrorGuardPolicy,
    ErrorRateGuardError,
    IPBannedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    RateLimitError,
    RequestTimeout,
    RetryPolicy,
    ServerError,
    TimestampError,
    TransportError,
)
from bingx_async._budgets import CLOSE_POSITION

from .mock_bingx import EPOCH, Answer, MockBingX, closed, max_in_window

pytestmark = pytest.mark.looptime

RETRYING = RetryPolicy(attempts=5, total_timeout=60.0, max_server_wait=10.0, unblock_margin=0.05)
CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"


def body(code: int, msg: str, server_ms: int, data: object = None) -> httpx.Response:
    return httpx.Response(
        200, json={"code": code, "msg": msg, "timestamp": server_ms, "data": data}
    )


class BlockingServer:
    """Disables closePosition until ``unblock`` (epoch s, server clock) once triggered."""

    def __init__(self, bingx: MockBingX, *, block_for: float, message: str) -> None:
        self.bingx = bingx
        self.block_for = block_for
        self.message = message
        self.unblock_at: float | None = None
        self.during_block: list[float] = []

    def server_now(self) -> float:
        return self.bingx.clock.time() + self.bingx.server_offset

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self.server_now()
        if self.unblock_at is None:
            self.unblock_at = now + self.block_for
        if now < self.unblock_at:
            self.during_block.append(now)
            unblock_ms = round(self.unblock_at * 1000)
            return body(100410, self.message.format(ms=unblock_ms), round(now * 1000))
        return closed(request)


async def test_a_block_is_waited_out_exactly_and_shared_by_all_callers() -> None:
    """Blocked until T+3 s: nothing more reaches BingX until T+3 s plus the margin."""
    bingx = MockBingX(latency=0.02)
    server = BlockingServer(
        bingx,
        block_for=3.0,
        message="The endpoint trigger frequency limit rule is currently in the disabled "
        "period and will be unblocked after {ms}",
    )
    bingx.answer = server
    async with bingx.client(retry=RETRYING) as client:
        start = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(client.close_position(i) for i in range(1, 51)))
    times = [t - start for t in bingx.times()]
    assert all(isinstance(r, ClosePositionResult) for r in results)
    # Only the first burst (in flight when the block began) met it.
    assert len(server.during_block) == 5
    assert server.unblock_at is not None
    unblock = server.unblock_at - bingx.clock.epoch - start
    assert unblock == pytest.approx(3.02, abs=1e-3)  # blocked as it answered, after 0.02 s
    assert min(t for t in times if t > 0.02) == pytest.approx(unblock + 0.05, abs=1e-3)
    assert len(times) == 55
    assert max_in_window(times, 1.0) == 5


async def test_the_retried_calls_keep_their_place_in_the_queue() -> None:
    """After a block, queued calls go in their original order, the blocked one first."""
    bingx = MockBingX()
    bingx.answer = BlockingServer(bingx, block_for=2.0, message="will be unblocked after {ms}")
    async with bingx.client(retry=RETRYING) as client:
        await asyncio.gather(*(client.close_position(i) for i in range(1, 16)))
    ids = [s.params["positionId"] for s in bingx.sent]
    # The first answer arrived before the others were sent: they never met the block.
    assert ids == ["1"] + [str(i) for i in range(1, 16)]


@pytest.mark.parametrize(
    "message",
    [
        "The endpoint trigger frequency limit rule is currently in the disabled period and "
        "will be unblocked after {ms}",
        "over 20 error code:100202 requests within 480000 ms for this api, please verify and "
        "fix it ,can retry after time: {ms}",
    ],
)
async def test_each_timed_shape_is_waited_out(message: str) -> None:
    """Both 100410 shapes that name a time are honoured to the millisecond."""
    bingx = MockBingX()
    bingx.answer = BlockingServer(bingx, block_for=2.5, message=message)
    async with bingx.client(retry=RETRYING) as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1)
    times = [t - start for t in bingx.times()]
    assert times == pytest.approx([0.0, 2.55], abs=1e-3)


async def test_a_ten_digit_unblock_time_is_read_as_seconds() -> None:
    """An unblock time in epoch seconds is accepted too."""
    bingx = MockBingX()
    server_ms = round(bingx.clock.time() * 1000)
    answers = iter([body(100410, f"unblocked after {server_ms // 1000 + 4}", server_ms)])
    bingx.answer = lambda request: next(answers, None) or closed(request)
    async with bingx.client(retry=RETRYING) as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1)
    retry_at = bingx.times()[1] - start
    assert retry_at == pytest.approx(4.0 - (server_ms % 1000) / 1000 + 0.05, abs=1e-3)


async def test_an_unblock_time_already_past_retries_after_the_margin() -> None:
    """An unblock time in the past costs only the margin."""
    bingx = MockBingX()
    server_ms = round(bingx.clock.time() * 1000)
    answers = iter([body(100410, f"unblocked after {server_ms - 5000}", server_ms)])
    bingx.answer = lambda request: next(answers, None) or closed(request)
    async with bingx.client(retry=RETRYING) as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1)
    assert [t - start for t in bingx.times()] == pytest.approx([0.0, 0.05], abs=1e-3)


async def test_an_unblock_beyond_the_cap_fails_at_once() -> None:
    """A ban minutes away raises RateLimitError now, with the unblock time."""
    bingx = MockBingX()
    server_ms = round(bingx.clock.time() * 1000)
    unblock_ms = server_ms + 480_000
    bingx.answer = lambda _: body(100410, f"will be unblocked after {unblock_ms}", server_ms)
    async with bingx.client(retry=RETRYING) as client:
        start = asyncio.get_running_loop().time()
        with pytest.raises(RateLimitError) as caught:
            await client.close_position(1)
        elapsed = asyncio.get_running_loop().time() - start
        # A sibling call learns of the block without sending anything.
        with pytest.raises(RateLimitError) as sibling:
            await client.close_position(2)
    assert elapsed == pytest.approx(0.0, abs=1e-6)
    assert caught.value.unblock_at == unblock_ms / 1000
    assert caught.value.retry_after == pytest.approx(480.0)
    assert caught.value.attempts == 1
    assert sibling.value.may_have_executed is False
    assert sibling.value.retry_after == pytest.approx(480.05, abs=1e-3)
    assert len(bingx.sent) == 1


async def test_a_long_wait_is_allowed_when_the_policy_allows_it() -> None:
    """max_server_wait is the cap: raising it lets a call wait out an 8-minute ban."""
    bingx = MockBingX()
    bingx.answer = BlockingServer(bingx, block_for=480.0, message="unblocked after {ms}")
    patient = RetryPolicy(max_server_wait=600.0, total_timeout=None)
    async with bingx.client() as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1, retry=patient)
    assert bingx.times()[-1] - start == pytest.approx(480.05, abs=1e-3)


async def test_a_block_does_not_hold_other_endpoints_or_accounts() -> None:
    """Account A's blocked closes hold neither A's position list nor B's closes."""
    bingx = MockBingX()
    blocked = BlockingServer(bingx, block_for=3.0, message="unblocked after {ms}")

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("positions"):
            return httpx.Response(200, json={"code": 0, "msg": "", "data": []})
        if request.headers["X-BX-APIKEY"] == "key-a":
            return blocked(request)
        return closed(request)

    bingx.answer = answer
    async with bingx.client("key-a", retry=RETRYING) as a, bingx.client("key-b") as b:
        start = asyncio.get_running_loop().time()
        held = asyncio.create_task(a.close_position(1))
        await asyncio.sleep(0.5)
        await a.get_positions()
        await b.close_position(2)
        free_at = asyncio.get_running_loop().time() - start
        await held
    assert free_at == pytest.approx(0.5, abs=1e-6)


async def test_untimed_rate_limits_back_off_with_jitter() -> None:
    """'rate limited' names no time: capped exponential back-off plus seeded jitter."""
    bingx = MockBingX()
    busy = iter(
        [
            body(100410, "rate limited", 1),
            body(100410, "The current system is busy, please try again later", 1),
        ]
    )
    bingx.answer = lambda request: next(busy, None) or closed(request)
    policy = RetryPolicy(wait_initial=0.5, wait_exp_base=2.0, wait_jitter=0.5)
    async with bingx.client(retry=policy, rng=random.Random(3)) as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1)
    draws = random.Random(3)
    first = 0.5 + 0.5 * draws.random()
    second = first + 1.0 + 0.5 * draws.random()
    assert [t - start for t in bingx.times()] == pytest.approx([0.0, first, second], abs=1e-3)


async def test_http_429_honours_retry_after() -> None:
    """A 429 with Retry-After: 7 is retried 7 s later."""
    bingx = MockBingX()
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}, text="Too Many")])
    bingx.answer = lambda request: next(answers, None) or closed(request)
    async with bingx.client(retry=RETRYING) as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1)
    assert [t - start for t in bingx.times()] == pytest.approx([0.0, 7.05], abs=1e-3)


@pytest.mark.parametrize("status", [418, 403])
async def test_ip_bans_are_not_retried(status: int) -> None:
    """418 and 403 raise IPBannedError after one request, saying why."""
    bingx = MockBingX(answer=lambda _: httpx.Response(status, text="<html>banned</html>"))
    async with bingx.client(retry=RETRYING) as client:
        with pytest.raises(IPBannedError, match="not retried"):
            await client.close_position(1)
    assert len(bingx.sent) == 1


async def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    """Five attempts at most; the RateLimitError says how many were made."""
    bingx = MockBingX(answer=lambda _: body(100410, "rate limited", 1))
    async with bingx.client(retry=RetryPolicy(attempts=3, wait_jitter=0)) as client:
        with pytest.raises(RateLimitError) as caught:
            await client.close_position(1)
    assert caught.value.attempts == 3
    assert len(bingx.sent) == 3


async def test_the_total_deadline_stops_retrying() -> None:
    """A wait that would overrun the call's timeout raises instead of sleeping."""
    bingx = MockBingX(answer=lambda _: body(100410, "rate limited", 1))
    policy = RetryPolicy(attempts=10, total_timeout=2.0, wait_initial=0.5, wait_jitter=0)
    async with bingx.client(retry=policy) as client:
        start = asyncio.get_running_loop().time()
        with pytest.raises(RateLimitError):
            await client.close_position(1)
        elapsed = asyncio.get_running_loop().time() - start
    # 0.5 + 1.0 fit in 2 s; the next 2.0 s wait would not.
    assert len(bingx.sent) == 3
    assert elapsed == pytest.approx(1.5, abs=1e-3)


async def test_a_per_call_policy_overrides_the_client_default() -> None:
    """retry= on a call replaces the client's policy for that call."""
    bingx = MockBingX(answer=lambda _: body(100410, "rate limited", 1))
    async with bingx.client(retry=RetryPolicy(attempts=5)) as client:
        with pytest.raises(RateLimitError):
            await client.close_position(1, retry=RetryPolicy(attempts=1))
    assert len(bingx.sent) == 1


def skewed_server(bingx: MockBingX, rejections: list[int]) -> Callable[..., httpx.Response]:
    """Rejects timestamps more than 5 s away from its own (skewed) clock."""

    def answer(request: httpx.Request) -> httpx.Response:
        server_ms = round((bingx.clock.time() + bingx.server_offset) * 1000)
        if abs(int(request.url.params["timestamp"]) - server_ms) > 5000:
            rejections.append(server_ms)
            return body(100421, "Null timestamp or timestamp mismatch", server_ms)
        return closed(request)

    return answer


async def test_a_server_clock_eight_seconds_ahead_costs_no_rejection() -> None:
    """The offset is measured before the first signed request."""
    bingx = MockBingX(server_offset=8.0)
    rejections: list[int] = []
    bingx.answer = skewed_server(bingx, rejections)
    async with bingx.client(retry=RETRYING) as client:
        await client.close_position(1)
    sent_ms = int(bingx.sent[0].params["timestamp"])
    assert rejections == []
    assert sent_ms == round((bingx.clock.time() + 8.0) * 1000)


async def test_skew_that_appears_later_costs_at_most_one_rejection() -> None:
    """The clock jumps after the first sync: one rejection, a re-sync, then success."""
    bingx = MockBingX()
    rejections: list[int] = []
    bingx.answer = skewed_server(bingx, rejections)
    async with bingx.client(retry=RETRYING) as client:
        await client.close_position(1)
        bingx.server_offset = 8.0
        await client.close_position(2)
    assert len(rejections) == 1
    assert [s.params["positionId"] for s in bingx.sent] == ["1", "2", "2"]


async def test_a_timestamp_rejection_is_retried_only_once() -> None:
    """If re-syncing does not help, the TimestampError is raised."""
    bingx = MockBingX(answer=lambda _: body(100421, "Null timestamp or timestamp mismatch", 1))
    async with bingx.client(retry=RETRYING) as client:
        with pytest.raises(TimestampError):
            await client.close_position(1)
    assert len(bingx.sent) == 2


async def test_the_clock_is_re_measured_periodically() -> None:
    """Server time is read again once the sync interval has passed."""
    bingx = MockBingX()
    reads: list[float] = []
    handle = bingx.handle

    async def counting(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("server/time"):
            reads.append(asyncio.get_running_loop().time())
        return await handle(request)

    bingx.handle = counting  # type: ignore[method-assign]
    async with bingx.client(clock_sync_interval=60.0) as client:
        await client.close_position(1)
        await asyncio.sleep(30)
        await client.close_position(2)
        await asyncio.sleep(31)
        await client.close_position(3)
    assert len(reads) == 2


async def test_504_then_not_found_is_reported_as_possibly_closed() -> None:
    """A close whose first answer was 504 and whose retry finds nothing: possibly closed."""
    bingx = MockBingX()
    answers = iter(
        [
            httpx.Response(504, json={"code": 100500, "msg": "unknown status"}),
            body(101205, "No position to close", 1),
        ]
    )
    bingx.answer = lambda _: next(answers)
    async with bingx.client(retry=RETRYING, rng=random.Random(1)) as client:
        with pytest.raises(PositionPossiblyClosedError) as caught:
            await client.close_position(1)
    assert isinstance(caught.value, PositionNotFoundError)
    assert isinstance(caught.value.earlier_error, ServerError)
    assert caught.value.earlier_error.status_code == 504
    assert caught.value.code == 101205
    assert caught.value.attempts == 2


async def test_not_found_on_a_first_attempt_is_plain_not_found() -> None:
    """A position that never existed is PositionNotFoundError, not 'possibly closed'."""
    bingx = MockBingX(answer=lambda _: body(101205, "No position to close", 1))
    async with bingx.client(retry=RETRYING) as client:
        with pytest.raises(PositionNotFoundError) as caught:
            await client.close_position(1)
    assert type(caught.value) is PositionNotFoundError
    assert len(bingx.sent) == 1


def failing(
    error: type[httpx.TransportError], *, times: float = math.inf, then: Answer = closed
) -> Answer:
    """An answer that raises ``error`` for the first ``times`` requests, then answers with
    ``then``."""
    calls = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls <= times:
            raise error("failed", request=request)
        return then(request)

    return answer


async def test_a_read_timeout_on_a_close_is_retried() -> None:
    """Closing by ID is safe to repeat after a timeout."""
    bingx = MockBingX(answer=failing(httpx.ReadTimeout, times=1))
    async with bingx.client(retry=RETRYING) as client:
        result = await client.close_position(7)
    assert result.position_id == "7"
    assert len(bingx.sent) == 2


async def test_connection_refused_is_retried() -> None:
    """Nothing was sent, so any request is retried, even a non-idempotent one."""
    ok = httpx.Response(200, json={"code": 0, "msg": "", "data": {"ok": True}})
    bingx = MockBingX(answer=failing(httpx.ConnectError, times=1, then=lambda _: ok))
    async with bingx.client(retry=RETRYING) as client:
        data = await client.request("POST", "/openApi/swap/v2/trade/order", {"symbol": "X-Y"})
    assert data == {"ok": True}
    assert len(bingx.sent) == 2


async def test_a_read_timeout_on_a_generic_post_is_not_retried() -> None:
    """An order-like POST whose outcome is unknown is never sent twice."""
    bingx = MockBingX(answer=failing(httpx.ReadTimeout))
    async with bingx.client(retry=RETRYING) as client:
        with pytest.raises(RequestTimeout) as caught:
            await client.request("POST", "/openApi/swap/v2/trade/order", {"symbol": "X-Y"})
    assert caught.value.may_have_executed is True
    assert len(bingx.sent) == 1


async def test_the_error_guard_refuses_the_twenty_first_error() -> None:
    """After 20 answers with one error code, the next request is refused locally."""
    bingx = MockBingX(answer=lambda _: body(101205, "No position to close", 1))
    async with bingx.client(retry=RETRYING) as client:
        for i in range(20):
            with pytest.raises(PositionNotFoundError):
                await client.close_position(i + 1)
        with pytest.raises(ErrorRateGuardError) as caught:
            await client.close_position(21)
    assert len(bingx.sent) == 20
    assert caught.value.banned_code == 101205
    assert caught.value.count == 20
    assert caught.value.may_have_executed is False
    assert 0 < caught.value.retry_after <= 480.0


async def test_the_error_guard_counts_requests_in_flight() -> None:
    """Gathered failing closes never give BingX its 21st error."""
    bingx = MockBingX(answer=lambda _: body(101205, "No position to close", 1), latency=0.2)
    async with bingx.client(retry=RETRYING) as client:
        outcomes = await client.close_positions(range(1, 41))
    assert len(bingx.sent) == 20
    assert sum(isinstance(o, ErrorRateGuardError) for o in outcomes) == 20


async def test_the_error_guard_threshold_is_configurable() -> None:
    """ErrorGuardPolicy(threshold=3) refuses the fourth."""
    bingx = MockBingX(answer=lambda _: body(101205, "No position to close", 1))
    guard = ErrorGuardPolicy(threshold=3, window=60.0)
    async with bingx.client(retry=RETRYING, error_guard=guard) as client:
        outcomes = await client.close_positions([1, 2, 3, 4])
    assert [type(o).__name__ for o in outcomes] == [
        "PositionNotFoundError",
        "PositionNotFoundError",
        "PositionNotFoundError",
        "ErrorRateGuardError",
    ]


async def test_close_positions_returns_one_outcome_per_id_in_order() -> None:
    """200 IDs with mixed outcomes: 200 outcomes, in input order, none lost."""

    def answer(request: httpx.Request) -> httpx.Response:
        position_id = int(request.url.params["positionId"])
        if position_id % 3 == 0:
            return body(101205, "No position to close", 1)
        if position_id % 7 == 0:
            return body(80020, "risk forbidden", 1)
        return closed(request)

    bingx = MockBingX(answer=answer)
    progress: list[int] = []
    guard = ErrorGuardPolicy(threshold=1000)
    ids: list[str | int] = [*range(1, 200), "bad id"]
    async with bingx.client(retry=RETRYING, error_guard=guard) as client:
        outcomes = await client.close_positions(ids, on_progress=lambda p: progress.append(p.done))
    assert len(outcomes) == 200
    for position_id, outcome in zip(ids, outcomes, strict=True):
        if position_id == "bad id":
            assert isinstance(outcome, BingXError)
            assert "digits" in str(outcome)
        elif position_id % 3 == 0:
            assert type(outcome) is PositionNotFoundError
        elif position_id % 7 == 0:
            assert isinstance(outcome, BingXError)
            assert outcome.code == 80020
        else:
            assert isinstance(outcome, ClosePositionResult)
            assert outcome.position_id == str(position_id)
    assert progress == list(range(1, 201))
    assert len(bingx.sent) == 199


async def test_a_dropped_connection_on_a_close_is_retried_then_reported() -> None:
    """A close that fails on every attempt raises its last TransportError."""
    bingx = MockBingX(answer=failing(httpx.RemoteProtocolError))
    policy = RetryPolicy(attempts=3, wait_jitter=0)
    async with bingx.client(retry=policy) as client:
        with pytest.raises(TransportError) as caught:
            await client.close_position(1)
    assert caught.value.may_have_executed is True
    assert caught.value.attempts == 3


async def test_a_refusal_by_the_guard_does_not_forget_requests_in_flight() -> None:
    """While a possibly-failing request is in flight, every newcomer is refused."""
    bingx = MockBingX(answer=lambda _: body(101205, "No position to close", 1), latency=0.5)
    guard = ErrorGuardPolicy(threshold=3, window=60.0)
    async with bingx.client(retry=RETRYING, error_guard=guard) as client:
        await client.close_positions([1, 2])
        in_flight = asyncio.create_task(client.close_position(3))
        await asyncio.sleep(0.1)
        outcomes = await client.close_positions([4, 5])
        with pytest.raises(PositionNotFoundError):
            await in_flight
    assert [type(o) for o in outcomes] == [ErrorRateGuardError, ErrorRateGuardError]
    assert [s.params["positionId"] for s in bingx.sent] == ["1", "2", "3"]


async def test_ip_bans_can_be_waited_out_when_allowed() -> None:
    """retry_ip_bans=True waits out a 418 whose Retry-After fits the cap."""
    bingx = MockBingX()
    answers = iter([httpx.Response(418, headers={"Retry-After": "2"}, text="banned")])
    bingx.answer = lambda request: next(answers, None) or closed(request)
    policy = RetryPolicy(retry_ip_bans=True, unblock_margin=0.05)
    async with bingx.client(retry=policy) as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1)
    assert [t - start for t in bingx.times()] == pytest.approx([0.0, 2.0], abs=1e-3)


@pytest.mark.parametrize(
    ("threshold", "window"), [(0, 480.0), (True, 480.0), (20, 0), (20, float("inf"))]
)
def test_error_guard_policy_rejects_nonsense(threshold: int, window: float) -> None:
    """ErrorGuardPolicy names the bad field."""
    with pytest.raises(ConfigurationError, match="ErrorGuardPolicy"):
        ErrorGuardPolicy(threshold=threshold, window=window)


async def test_close_positions_closes_a_repeated_id_once() -> None:
    """An ID listed twice costs one request and yields the same outcome twice."""
    bingx = MockBingX()
    async with bingx.client() as client:
        outcomes = await client.close_positions([5, "5", 6])
    assert [s.params["positionId"] for s in bingx.sent] == ["5", "6"]
    assert outcomes[0] is outcomes[1]
    assert isinstance(outcomes[2], ClosePositionResult)


async def test_the_error_guard_holds_a_burst_before_any_error_is_known() -> None:
    """With room for 25 at once, only 20 reach BingX before the first answer."""
    roomy = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(100, 1.0),), ip_group=2
    )
    bingx = MockBingX(answer=lambda _: body(101205, "No position to close", 1), latency=0.2)
    async with bingx.client(retry=RETRYING, rate_limits=roomy) as client:
        outcomes = await client.close_positions(range(1, 26))
    refused = [o for o in outcomes if isinstance(o, ErrorRateGuardError)]
    assert len(bingx.sent) == 20
    assert len(refused) == 5
    assert refused[0].banned_code is None


async def test_an_ip_ban_without_a_time_holds_every_call_to_the_host() -> None:
    """After a bare 418, sibling calls fail at once without reaching the host."""
    bingx = MockBingX(answer=lambda _: httpx.Response(418, text="I'm a teapot"), latency=0.05)
    async with bingx.client(retry=RETRYING) as client:
        first = asyncio.create_task(client.close_position(1))
        await asyncio.sleep(0.1)
        outcomes = await client.close_positions(range(2, 22))
        with pytest.raises(IPBannedError):
            await first
    assert len(bingx.sent) == 1
    assert all(type(o) is IPBannedError for o in outcomes)
    assert all(o.may_have_executed is False for o in outcomes if isinstance(o, BingXError))


async def test_a_block_just_under_the_cap_is_waited_out() -> None:
    """An unblock 9.98 s away fits a 10 s cap, margin included."""
    bingx = MockBingX()
    bingx.answer = BlockingServer(bingx, block_for=9.98, message="unblocked after {ms}")
    async with bingx.client(retry=RETRYING) as client:
        start = asyncio.get_running_loop().time()
        await client.close_position(1)
    assert bingx.times()[-1] - start == pytest.approx(10.03, abs=1e-3)


async def test_a_rate_limit_code_on_a_403_holds_the_whole_host() -> None:
    """A firewall 403 carrying 100410 is an IP ban: other accounts are held too."""
    server_ms = round(EPOCH * 1000)
    bingx = MockBingX(
        answer=lambda _: httpx.Response(
            403, json={"code": 100410, "msg": "rate limited", "timestamp": server_ms}
        )
    )
    async with bingx.client("key-a", retry=RETRYING) as a, bingx.client("key-b") as b:
        with pytest.raises(IPBannedError):
            await a.close_position(1)
        with pytest.raises(IPBannedError, match="not sent"):
            await b.close_position(2)
    assert len(bingx.sent) == 1


async def test_close_all_is_not_repeated_after_an_unknown_outcome() -> None:
    """A second "close all" could close a position opened meanwhile: it is not retried."""
    bingx = MockBingX(answer=failing(httpx.ReadTimeout))
    async with bingx.client(retry=RETRYING) as client:
        with pytest.raises(RequestTimeout):
            await client.close_all_positions()
    assert len(bingx.sent) == 1


async def test_errors_older_than_the_guard_window_stop_counting() -> None:
    """20 errors at t=0 block the 21st until exactly 480 s later, not a moment longer."""
    bingx = MockBingX(answer=lambda _: body(101205, "No position to close", 1))
    async with bingx.client(retry=RETRYING) as client:
        await client.close_positions(range(1, 21))
        await asyncio.sleep(480.0 - asyncio.get_running_loop().time() - 0.01)
        with pytest.raises(ErrorRateGuardError) as caught:
            await client.close_position(21)
        await asyncio.sleep(0.01)
        with pytest.raises(PositionNotFoundError):
            await client.close_position(22)
    assert caught.value.retry_after == pytest.approx(0.01, abs=1e-6)
    assert [s.params["positionId"] for s in bingx.sent][-1] == "22"
    assert len(bingx.sent) == 21


async def test_the_clock_offset_is_corrected_by_half_the_round_trip() -> None:
    """Server time read halfway through a 0.8 s round trip: signed timestamps match BingX's
    clock exactly (without the correction they would be 0.4 s behind)."""
    bingx = MockBingX(server_offset=3.0)
    handle = bingx.handle

    async def slow_server_time(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("server/time"):
            await asyncio.sleep(0.4)
            response = await handle(request)
            await asyncio.sleep(0.4)
            return response
        return await handle(request)

    bingx.handle = slow_server_time  # type: ignore[method-assign]
    async with bingx.client() as client:
        await client.close_position(1)
    (sent,) = bingx.sent
    server_now_ms = round((bingx.clock.epoch + sent.at + 3.0) * 1000)
    assert int(sent.params["timestamp"]) == pytest.approx(server_now_ms, abs=1)


async def test_server_time_draws_on_the_group_one_budget() -> None:
    """Group 1 allows 500 unsigned requests per 10 s per IP: the 501st waits 10 s."""
    bingx = MockBingX()
    reads: list[float] = []
    handle = bingx.handle

    async def counting(request: httpx.Request) -> httpx.Response:
        reads.append(asyncio.get_running_loop().time())
        return await handle(request)

    bingx.handle = counting  # type: ignore[method-assign]
    async with bingx.client() as client:
        start = asyncio.get_running_loop().time()
        await asyncio.gather(*(client.server_time() for _ in range(501)))
    assert [t - start for t in reads[499:]] == pytest.approx([0.0, 10.0], abs=1e-3)


async def test_a_ban_with_retry_after_holds_the_host_that_long_when_not_retried() -> None:
    """A 418 with Retry-After: 5 is not retried; the next call waits the 5 s out (not the
    60 s of a ban that names no time, which it would refuse at once)."""
    answers = iter([httpx.Response(418, headers={"Retry-After": "5"}, text="banned")])
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    async with bingx.client(retry=RetryPolicy(unblock_margin=0.05)) as client:
        start = asyncio.get_running_loop().time()
        with pytest.raises(IPBannedError) as caught:
            await client.close_position(1)
        await client.close_position(2)
    assert caught.value.attempts == 1
    assert [t - start for t in bingx.times()] == pytest.approx([0.0, 5.0], abs=1e-3)


async def test_a_rate_limit_answer_on_the_last_attempt_still_holds_the_others() -> None:
    """With one attempt, the 100410 is raised, and calls queued behind it wait out the block
    instead of meeting it too."""
    bingx = MockBingX()
    server = BlockingServer(bingx, block_for=3.0, message="will be unblocked after {ms}")
    bingx.answer = server
    async with bingx.client(retry=RetryPolicy(attempts=1, max_server_wait=10.0)) as client:
        start = asyncio.get_running_loop().time()
        with pytest.raises(RateLimitError):
            await client.close_position(1)
        await client.close_position(2)
    times = [t - start for t in bingx.times()]
    assert times == pytest.approx([0.0, 3.05], abs=1e-3)
    assert len(server.during_block) == 1
