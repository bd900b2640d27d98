"""Sessions: who owns what clients share, and what ends when a session or client ends."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bingx_async import (
    BingXClient,
    BingXSession,
    ClientClosedError,
    ConfigurationError,
    RateLimitError,
    RetryPolicy,
    _flights,
)
from bingx_async.testing import FakeBingX, FakeClock, LoopClock

from .mock_bingx import EPOCH, MockBingX, close_once, closed, max_in_window

pytestmark = pytest.mark.looptime

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
TIME_PATH = "/openApi/swap/v2/server/time"


async def test_closing_a_session_ends_its_clients_calls() -> None:
    """Queued calls end with "not sent: the session was closed"; later calls are refused."""
    bingx = MockBingX()
    session = BingXSession(clock=bingx.clock)
    client = bingx.client(session=session)
    await asyncio.gather(*(client.close_position(i) for i in range(1, 6)))
    queued = asyncio.create_task(client.close_position(6))
    await asyncio.sleep(0.1)
    await session.aclose()
    (outcome,) = await asyncio.gather(queued, return_exceptions=True)
    assert isinstance(outcome, ClientClosedError)
    assert str(outcome) == "not sent: the session was closed"
    assert outcome.may_have_executed is False
    with pytest.raises(ClientClosedError, match="this BingXSession is closed"):
        await client.close_position(7)
    assert session.closed
    assert len(bingx.sent) == 5


async def test_a_default_session_outlives_its_last_client() -> None:
    """Two clients share the loop's default session; when the second one closes, the
    session stays open, runs nothing, and the loop's next client gets it again."""
    bingx = MockBingX()
    first, second = bingx.client(), bingx.client()
    assert first.session is second.session
    shared = first.session
    await first.close_position(1)
    await first.aclose()
    await second.aclose()
    assert not shared.closed
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()
    async with bingx.client() as third:
        assert third.session is shared
        (usage,) = [u for u in third.rate_limit_usage() if u.key[0] == "account"]
        assert usage.in_window == 1


async def test_short_lived_clients_keep_to_the_rate_limit_together() -> None:
    """12 clients one after another, each closing one position and closing itself: BingX
    sees 5 closes per second at most (12 take over 2 s), no violation, no rate-limit answer."""
    sim = FakeBingX(clock=LoopClock(), seed=12)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(12)]
    for position_id in ids:
        async with BingXClient(
            api_key=account.api_key,
            secret_key=account.secret_key,
            clock=sim.clock,
            transport=sim.transport(),
        ) as client:
            await client.close_position(position_id)
    closes = sim.requests_to(CLOSE_PATH)
    assert [(r.status_code, r.code) for r in closes] == [(200, 0)] * 12
    assert sim.violations == 0
    arrivals = sim.arrivals(CLOSE_PATH)
    assert max_in_window(arrivals, 1.0) == 5
    assert arrivals[-1] - arrivals[0] >= 2.0
    assert len(sim.requests_to(TIME_PATH)) == 1, "the clock offset was measured again"


async def test_the_next_client_finds_the_holds_and_outcomes_of_the_last() -> None:
    """A hold after a rate-limit answer and a close result nobody received outlive the
    client that met them: the loop's next client is refused without sending, and gets the
    result without sending."""
    unblock_ms = int((EPOCH + 30.0) * 1000)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params["positionId"] == "1":
            return httpx.Response(
                200, json={"code": 100410, "msg": f"unblocked after {unblock_ms}"}
            )
        return closed(request)

    bingx = MockBingX(answer=answer, latency=0.5)
    async with bingx.client() as first:
        with pytest.raises(RateLimitError):
            await first.close_position(1)
    async with bingx.client() as second:
        with pytest.raises(RateLimitError, match="not sent") as caught:
            await second.close_position(2)
    assert caught.value.msg == f"unblocked after {unblock_ms}"

    await asyncio.sleep(30.0)
    async with bingx.client() as third:
        caller = asyncio.create_task(third.close_position(3))
        await asyncio.sleep(0.1)  # on the wire
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
    async with bingx.client() as fourth:
        result = await fourth.close_position(3)
    assert result.position_id == "3"
    assert [s.params["positionId"] for s in bingx.sent] == ["1", "3"]


async def test_closing_a_session_leaves_none_of_its_tasks_running() -> None:
    """A clock re-sync running in the background is cancelled and awaited by aclose()."""
    bingx = MockBingX(latency=0.5)
    handle = bingx.handle

    async def slow_time(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("server/time"):
            await asyncio.sleep(1.0)
        return await handle(request)

    bingx.handle = slow_time  # type: ignore[method-assign]
    async with BingXSession(clock=bingx.clock) as session:
        client = bingx.client(session=session, clock_sync_interval=1.0)
        await client.close_position(1)
        await asyncio.sleep(1.5)
        await client.close_position(2)  # due: a re-sync starts in the background
        assert session._tasks
    assert not session._tasks
    assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} == set()


def test_a_session_belongs_to_one_event_loop() -> None:
    """Used from a second loop while its own still runs, a session says so; its own loop's
    end closes it."""
    session = BingXSession(clock=FakeClock())

    async def use() -> None:
        await session.__aenter__()

    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(use())
        with pytest.raises(RuntimeError, match="belongs to the event loop it was first used in"):
            asyncio.run(use())
        assert not session.closed
        first.run_until_complete(first.shutdown_asyncgens())
        assert session.closed
    finally:
        first.close()


def test_a_client_used_from_a_second_event_loop_says_so() -> None:
    """A client of a session, used from a second loop while the session's own still runs,
    refuses as the session does (after having been used in the first)."""
    session = BingXSession(clock=FakeClock())
    client = BingXClient(
        session=session, transport=httpx.MockTransport(lambda _: httpx.Response(404))
    )

    async def use() -> None:
        client.rate_limit_usage()

    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(use())
        with pytest.raises(RuntimeError, match="belongs to the event loop it was first used in"):
            asyncio.run(use())
        first.run_until_complete(use())
        first.run_until_complete(first.shutdown_asyncgens())
    finally:
        first.close()


def test_a_client_takes_its_sessions_clock() -> None:
    """With session=, clock= must be the session's own, or left out."""
    clock = LoopClock()
    session = BingXSession(clock=clock)
    assert BingXClient(session=session)._clock is clock
    assert BingXClient(session=session, clock=clock)._clock is clock
    with pytest.raises(ConfigurationError, match="uses its session's clock"):
        BingXClient(session=session, clock=LoopClock())
    with pytest.raises(ConfigurationError, match="session must be a BingXSession"):
        BingXClient(session="shared")  # type: ignore[arg-type]


async def test_a_session_describes_itself() -> None:
    """repr: open or closed, clients, calls in flight, clock."""
    clock = LoopClock(epoch=5.0)
    session = BingXSession(clock=clock)
    assert repr(session) == (
        "<BingXSession open: 0 client(s), 0 call(s) in flight, clock=LoopClock(epoch=5.0)>"
    )
    await session.aclose()
    assert repr(session).startswith("<BingXSession closed:")
    assert session.clock is clock


async def test_a_closed_client_shows_no_session() -> None:
    """A closed client has no session to report, nor budgets."""
    client = MockBingX().client()
    await client.aclose()
    with pytest.raises(ClientClosedError):
        client.rate_limit_usage()


async def test_a_remembered_result_is_forgotten_after_ten_minutes() -> None:
    """A result nobody received is handed to a later close for 600 s, then no longer."""
    bingx = MockBingX(answer=close_once(), latency=0.2)
    async with bingx.client() as client:
        for position_id, wait in ((7, 599.0), (8, 601.0)):
            first = asyncio.create_task(client.close_position(position_id))
            await asyncio.sleep(0.1)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            await asyncio.sleep(wait)
            outcome = await asyncio.gather(
                client.close_position(position_id), return_exceptions=True
            )
            assert type(outcome[0]).__name__ == (
                "ClosePositionResult" if wait < 600 else "PositionNotFoundError"
            )
    assert [s.params["positionId"] for s in bingx.sent] == ["7", "8", "8"]


async def test_only_so_many_results_are_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the limit, the oldest unheard result is forgotten first."""
    monkeypatch.setattr(_flights, "ORPHAN_LIMIT", 2)
    bingx = MockBingX(answer=close_once(), latency=0.2)
    async with bingx.client() as client:
        callers = []
        for i in (1, 2, 3):
            # One after another, so that their results are kept in this order.
            callers.append(asyncio.create_task(client.close_position(i)))
            await asyncio.sleep(0.01)
        for caller in callers:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await asyncio.sleep(1.0)
        outcomes = await client.close_positions([1, 2, 3])
    assert [type(o).__name__ for o in outcomes] == [
        "PositionNotFoundError",
        "ClosePositionResult",
        "ClosePositionResult",
    ]


async def test_a_close_abandoned_on_the_wire_is_not_retried() -> None:
    """Every caller left while the request was on the wire; its answer was "rate limited":
    the close stops there instead of retrying for nobody."""
    answers = iter([httpx.Response(200, json={"code": 100410, "msg": "rate limited"})])
    bingx = MockBingX(latency=0.5)
    bingx.answer = lambda request: next(answers, None) or httpx.Response(200, json={"code": 0})
    async with bingx.client(retry=RetryPolicy(wait_jitter=0)) as client:
        caller = asyncio.create_task(client.close_position(7))
        await asyncio.sleep(0.1)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        await asyncio.sleep(5.0)
    assert len(bingx.sent) == 1


async def test_a_caller_joining_during_the_wire_keeps_the_close_going() -> None:
    """A new caller arrives while the abandoned request is on the wire: the close retries
    for it and it gets the outcome."""
    answers = iter([httpx.Response(200, json={"code": 100410, "msg": "rate limited"})])
    bingx = MockBingX(latency=0.5)
    bingx.answer = lambda request: (
        next(answers, None)
        or httpx.Response(200, json={"code": 0, "data": {"positionId": "7", "orderId": 3}})
    )
    async with bingx.client(retry=RetryPolicy(wait_jitter=0)) as client:
        caller = asyncio.create_task(client.close_position(7))
        await asyncio.sleep(0.1)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        await asyncio.sleep(0.1)
        result = await client.close_position(7)
    assert result.order_id == "3"
    assert len(bingx.sent) == 2


async def test_closing_one_client_leaves_another_clients_calls_alone() -> None:
    """Client a closes while client b (another key) waits for its budget: b's call goes on."""
    bingx = MockBingX()
    async with bingx.client("key-b") as b:
        a = bingx.client("key-a")
        await asyncio.gather(*(b.close_position(i) for i in range(1, 6)))
        waiting = asyncio.create_task(b.close_position(6))
        await a.close_position(100)
        await a.aclose()
        result = await waiting
    assert result.position_id == "6"


async def test_a_call_refused_by_a_hold_says_how_long_it_lasts() -> None:
    """A refusal before sending keeps the hold's facts (and counts as the call's attempt)."""
    bingx = MockBingX(
        answer=lambda _: httpx.Response(
            200, json={"code": 100410, "msg": "unblocked after 9999999999999"}
        )
    )
    async with bingx.client(retry=RetryPolicy(attempts=3)) as client:
        with pytest.raises(RateLimitError):
            await client.close_position(1)
        with pytest.raises(RateLimitError, match="not sent") as caught:
            await client.close_position(2)
    assert caught.value.attempts == 1
    assert caught.value.refused_locally is True
    assert caught.value.endpoint == "POST /openApi/swap/v1/trade/closePosition"
    assert len(bingx.sent) == 1
