"""Lifecycles: cancellation, shutdown, closing clients, shared state, whole-call deadlines.

Most tests run in virtual time (looptime); the event-loop tests use plain asyncio.run() and the
CLI test a real subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import logging
import os
import signal
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import httpx
import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    Budget,
    ClientClosedError,
    ClosePositionResult,
    IPBannedError,
    QueueTimeoutError,
    RateLimitError,
    RequestTimeout,
    RetryPolicy,
)
from bingx_async._budgets import CLOSE_POSITION
from bingx_async.testing import FakeBingX, LoopClock

from .mock_bingx import EPOCH, Answer, MockBingX, close_once, closed, max_in_window

T = TypeVar("T")

TIME_PATH = "/openApi/swap/v2/server/time"
TICKER_PATH = "/openApi/swap/v2/quote/ticker"
DOCS = Path(__file__).resolve().parent.parent / "docs"

TimeAnswer = Callable[[httpx.Request], Awaitable[httpx.Response]]


@dataclass
class Exchange(MockBingX):
    """A MockBingX that closes each ID once and also records (or scripts) server-time asks."""

    answer: Answer = field(default_factory=close_once)
    #: When each server-time request arrived (virtual seconds).
    time_asked: list[float] = field(default_factory=list)
    #: Answers server-time requests instead of the mock, when set.
    time_answer: TimeAnswer | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == TIME_PATH:
            self.time_asked.append(asyncio.get_running_loop().time())
            if self.time_answer is not None:
                return await self.time_answer(request)
        return await super().handle(request)

    def closes_of(self, position_id: str) -> int:
        """How many close requests for ``position_id`` reached BingX."""
        return sum(1 for s in self.sent if s.params.get("positionId") == position_id)

    def closed_ids(self) -> list[str]:
        return [s.params["positionId"] for s in self.sent]


async def ended(call: Awaitable[T]) -> tuple[float, T | BaseException]:
    """When ``call`` ended (virtual seconds) and its result or exception."""
    (outcome,) = await asyncio.gather(call, return_exceptions=True)
    return asyncio.get_running_loop().time(), outcome


async def fill_the_budget(client: BingXClient, first_id: int = 1) -> None:
    """Five closes answered at once: the key's 5-per-second budget is full for a second."""
    await asyncio.gather(*(client.close_position(i) for i in range(first_id, first_id + 5)))


def banned_at(nth: int) -> TimeAnswer:
    """Server time answered normally, except the ``nth`` ask, which gets HTTP 418."""
    asked = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal asked
        asked += 1
        if asked == nth:
            return httpx.Response(418, text="banned")
        server_ms = int((EPOCH + asyncio.get_running_loop().time()) * 1000)
        return httpx.Response(200, json={"code": 0, "msg": "", "data": {"serverTime": server_ms}})

    return answer


# --- 1, 2: joining a close whose only caller is cancelling it -------------------------------

#: (latency, budget full): the abandoned close is on the wire, or still queued.
ABANDONED = pytest.mark.parametrize(
    ("latency", "queued"), [(0.2, False), (0.0, True)], ids=["on-the-wire", "queued"]
)


@pytest.mark.looptime
@ABANDONED
async def test_close_positions_gives_one_outcome_per_id_after_a_timed_out_close(
    latency: float, queued: bool
) -> None:
    """An ID whose close another caller just timed out on still gets its own outcome, in place."""
    bingx = Exchange(latency=latency)
    async with bingx.client() as client:
        if queued:
            await fill_the_budget(client, 100)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.close_position(7)
        outcomes = await client.close_positions([1, 7, 3])
    assert len(outcomes) == 3, f"3 IDs, {len(outcomes)} outcomes: {outcomes!r}"
    assert [getattr(o, "position_id", o) for o in outcomes] == ["1", "7", "3"]


@pytest.mark.looptime
@ABANDONED
async def test_retrying_a_timed_out_close_at_once_gets_its_outcome(
    latency: float, queued: bool
) -> None:
    """close_position(x) right after a timed-out close_position(x) returns x's result."""
    bingx = Exchange(latency=latency)
    async with bingx.client() as client:
        if queued:
            await fill_the_budget(client, 100)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await client.close_position(7)
        _, outcome = await ended(client.close_position(7))
    assert not isinstance(outcome, asyncio.CancelledError), "nobody cancelled the retry"
    assert isinstance(outcome, ClosePositionResult), repr(outcome)
    assert outcome.position_id == "7"
    assert bingx.closes_of("7") == 1


# --- 3: a shutdown that cancels every task ------------------------------------------------------


@pytest.mark.looptime
async def test_closing_the_rest_after_cancelling_every_task_finishes() -> None:
    """A shutdown handler cancels all other tasks, then closes what is left: it completes."""
    bingx = Exchange()
    ids = [str(i) for i in range(1, 13)]
    async with bingx.client() as client:
        bot = asyncio.create_task(client.close_positions(ids[:10]))
        await asyncio.sleep(0.5)  # 5 closed, 5 waiting for the next second's budget
        assert not bot.done()

        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        rest = [i for i in ids if i not in bingx.closed_ids()]
        assert len(rest) > 5  # more than one second's budget: the limiter must wait

        try:
            async with asyncio.timeout(60):
                outcomes = await client.close_positions(rest)
        except TimeoutError:
            pytest.fail(f"closing {len(rest)} positions after the shutdown hung for 60 s")
    assert [getattr(o, "position_id", o) for o in outcomes] == rest
    assert sorted(bingx.closed_ids(), key=int) == ids


# --- 4, 5: closing a client --------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_shared_close_survives_the_other_client_closing() -> None:
    """Two clients of one key share a queued close; closing the first does not fail the second."""
    bingx = Exchange()
    async with bingx.client() as first, bingx.client() as second:
        await fill_the_budget(first)
        first_call = asyncio.create_task(first.close_position(7))
        await asyncio.sleep(0.1)
        second_call = asyncio.create_task(second.close_position(7))
        await asyncio.sleep(0.1)
        await first.aclose()
        _, outcome = await ended(second_call)
        await asyncio.gather(first_call, return_exceptions=True)
    assert isinstance(outcome, ClosePositionResult), repr(outcome)
    assert outcome.position_id == "7"
    assert bingx.closes_of("7") == 1


@pytest.mark.looptime
async def test_closing_a_client_ends_its_queued_calls_at_once_unsent() -> None:
    """aclose() fails the calls still queued at once, with nothing sent."""
    bingx = Exchange()
    loop = asyncio.get_running_loop()
    async with bingx.client() as client:
        await fill_the_budget(client)
        queued = [asyncio.create_task(ended(client.close_position(i))) for i in range(6, 16)]
        await asyncio.sleep(0.5)
        closed_at = loop.time()
        await client.aclose()
        results = await asyncio.gather(*queued)

    assert [at for at, _ in results] == pytest.approx([closed_at] * len(queued))
    assert bingx.closed_ids() == ["1", "2", "3", "4", "5"]
    for _, outcome in results:
        assert isinstance(outcome, ClientClosedError), repr(outcome)
        assert outcome.may_have_executed is False


@pytest.mark.looptime
async def test_calls_queued_on_a_closed_client_use_no_budget() -> None:
    """After aclose() withdrew queued calls, a new client of the key sends a full burst at once."""
    bingx = Exchange()
    loop = asyncio.get_running_loop()
    async with bingx.client() as keeper:  # keeps the key's shared budget alive throughout
        await fill_the_budget(keeper)
        async with bingx.client() as closing:
            queued = [asyncio.create_task(ended(closing.close_position(i))) for i in range(6, 11)]
            await asyncio.sleep(0.5)
            await closing.aclose()
        await asyncio.sleep(1.5 - loop.time())  # the first burst has left its window
        async with bingx.client() as fresh:
            await asyncio.gather(*(fresh.close_position(i) for i in range(11, 16)))
        await asyncio.gather(*queued)
    burst = [s.at for s in bingx.sent if int(s.params["positionId"]) >= 11]
    assert burst == pytest.approx([1.5] * 5), "the fresh client waited for its budget"


# --- 6: IP bans and the clock measurement -------------------------------------------------------


@pytest.mark.looptime
async def test_first_signed_call_during_an_ip_ban_fails_at_once() -> None:
    """After a 418, the first signed call raises IPBannedError without waiting out the hold."""
    bingx = Exchange(time_answer=banned_at(1))
    loop = asyncio.get_running_loop()
    async with bingx.client() as client:
        with pytest.raises(IPBannedError):
            await client.server_time()
        started = loop.time()
        _, outcome = await ended(client.close_position(1))
        elapsed = loop.time() - started
    assert elapsed == pytest.approx(0.0, abs=0.01), f"held {elapsed:.1f} s by the ban"
    assert isinstance(outcome, IPBannedError), repr(outcome)
    assert bingx.sent == []


@pytest.mark.looptime
async def test_timestamp_retry_during_an_ip_ban_fails_at_once() -> None:
    """A timestamp rejection answered during a 418 hold raises IPBannedError without waiting."""
    rejected: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        position_id = request.url.params["positionId"]
        if position_id not in rejected:
            rejected.add(position_id)
            msg = "Null timestamp or timestamp mismatch"
            return httpx.Response(200, json={"code": 100421, "msg": msg})
        return closed(request)

    # The first server-time ask is the clock measurement; the second, server_time(), is banned.
    bingx = Exchange(answer=answer, latency=0.5, time_answer=banned_at(2))
    async with bingx.client(retry=RetryPolicy(attempts=3)) as client:
        call = asyncio.create_task(ended(client.close_position(1)))
        await asyncio.sleep(0.1)
        with pytest.raises(IPBannedError):
            await client.server_time()
        ended_at, outcome = await call
    assert ended_at == pytest.approx(0.5, abs=0.01), f"ended at {ended_at:.1f} s, not 0.5 s"
    assert isinstance(outcome, IPBannedError), repr(outcome)
    assert bingx.closes_of("1") == 1


# --- 7: a trickling server-time answer ----------------------------------------------------------


async def trickle_server_time(request: httpx.Request) -> httpx.Response:
    """A server-time answer whose body arrives one byte per second (each read well inside 2 s)."""
    server_ms = int((EPOCH + asyncio.get_running_loop().time()) * 1000)
    body = b'{"code":0,"msg":"","data":{"serverTime":%d}}' % server_ms

    async def chunks() -> AsyncIterator[bytes]:
        for byte in body:
            await asyncio.sleep(1.0)
            yield bytes([byte])

    return httpx.Response(200, content=chunks())


@pytest.mark.looptime
async def test_a_trickling_clock_measurement_holds_signed_calls_two_seconds_at_most() -> None:
    """A server-time body trickled over 55 s holds the first signed call for 2 s at most."""
    bingx = Exchange(time_answer=trickle_server_time)
    loop = asyncio.get_running_loop()
    async with bingx.client() as client:
        started = loop.time()
        await client.close_position(1)
        elapsed = loop.time() - started
    assert elapsed <= 2.0 + 1e-3, f"the first signed call waited {elapsed:.1f} s"


@pytest.mark.looptime
async def test_a_trickling_clock_measurement_does_not_skew_timestamps() -> None:
    """After a trickled server-time answer, signed timestamps still match BingX's clock."""
    bingx = Exchange(time_answer=trickle_server_time)
    async with bingx.client() as client:
        await client.close_position(1)
    (sent,) = bingx.sent  # answered at once: BingX's clock read it at sent.at
    skew = int(sent.params["timestamp"]) / 1000 - (bingx.clock.epoch + sent.at)
    assert abs(skew) < 0.5, f"signed timestamp off BingX's clock by {skew:+.1f} s"


# --- 8: nothing outlives the event loop ---------------------------------------------------------


def answer_at_once(request: httpx.Request) -> httpx.Response:
    """A BingX that answers every request at once (server time from the real clock)."""
    if request.url.path == TIME_PATH:
        server_ms = int(time.time() * 1000)
        return httpx.Response(200, json={"code": 0, "msg": "", "data": {"serverTime": server_ms}})
    return closed(request)


def real_client(clock_sync_interval: float = 300.0) -> BingXClient:
    """A client on the real clock (for plain asyncio.run, no virtual time)."""
    return BingXClient(
        api_key="key-a",
        secret_key="secret",
        transport=httpx.MockTransport(answer_at_once),
        retry=RetryPolicy(attempts=1),
        clock_sync_interval=clock_sync_interval,
    )


async def timed_out_batch() -> None:
    """Seven closes (two must wait for the next second's budget), given up after 10 ms."""
    async with real_client() as client:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await client.close_positions([str(i) for i in range(1, 8)])


async def background_resync() -> None:
    """Two signed calls, the second after the clock is due for a (background) re-measure."""
    async with real_client(clock_sync_interval=0.001) as client:
        await client.close_position(1)
        await asyncio.sleep(0.005)
        await client.close_position(2)
        await asyncio.sleep(0)


async def short_lived_clients() -> None:
    """Clients one after another, leaving the resting default session all it keeps: rate-limit
    windows, holds after a rate-limit answer and an IP ban, an outcome nobody received (with
    a traceback through the transport), BingX's clock offset."""
    unblock_ms = int((time.time() + 600) * 1000)

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == TICKER_PATH:
            return httpx.Response(418, text="banned")
        if request.url.path == TIME_PATH:
            return answer_at_once(request)
        position_id = request.url.params["positionId"]
        if position_id == "2":
            await asyncio.sleep(0.01)
            raise httpx.ReadTimeout("The read operation timed out", request=request)
        if position_id == "3":
            msg = f"unblocked after {unblock_ms}"
            return httpx.Response(200, json={"code": 100410, "msg": msg})
        return closed(request)

    def client() -> BingXClient:
        return BingXClient(
            api_key="key-a",
            secret_key="secret",
            transport=httpx.MockTransport(answer),
            retry=RetryPolicy(attempts=1),
            confirm_closes=False,
        )

    async with client() as first:
        await first.close_position(1)
    async with client() as second:
        caller = asyncio.create_task(second.close_position(2))
        await asyncio.sleep(0.005)  # on the wire: its outcome is never received
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
    async with client() as third:
        with pytest.raises(RateLimitError):
            await third.close_position(3)
        with pytest.raises(RateLimitError, match="not sent"):
            await third.close_position(4)
        with pytest.raises(IPBannedError):
            await third.request("GET", TICKER_PATH, signed=False)


@pytest.mark.parametrize("work", [timed_out_batch, background_resync, short_lived_clients])
def test_asyncio_run_leaves_nothing_of_its_loop_behind(
    work: Callable[[], Awaitable[None]],
) -> None:
    """After asyncio.run() returns, its event loop can be freed."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def main() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await work()

    for _ in range(3):
        asyncio.run(main())
    gc.collect()
    assert [ref() is None for ref in loops] == [True] * 3, "closed event loops kept alive"


@pytest.mark.parametrize("finalised", [True, False], ids=["shutdown_asyncgens", "close-only"])
@pytest.mark.parametrize("work", [timed_out_batch, background_resync, short_lived_clients])
def test_a_hand_managed_loop_closes_without_pending_library_tasks(
    work: Callable[[], Awaitable[None]], finalised: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """new_event_loop / run_until_complete / close (after shutdown_asyncgens or not), once
    the clients are closed: no task is left pending, nothing logged, the loop can be freed."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(work())
        if finalised:
            loop.run_until_complete(loop.shutdown_asyncgens())
        pending = [repr(task) for task in asyncio.all_tasks(loop)]
    finally:
        loop.close()
    freed = weakref.ref(loop)
    del loop
    gc.collect()
    assert pending == [], "tasks still pending when the loop closed"
    assert "Task was destroyed but it is pending!" not in caplog.text
    assert freed() is None, "the closed loop is kept alive"


# --- 9: periodic clock re-measure while queued --------------------------------------------------


@pytest.mark.looptime
async def test_calls_queued_past_the_sync_interval_re_measure_the_clock() -> None:
    """75 closes take 15 s at 5/s; with clock_sync_interval=10 the clock is measured again."""
    bingx = Exchange()
    async with bingx.client(clock_sync_interval=10.0) as client:
        await client.close_positions(range(1, 76))
    first, last = bingx.sent[0].at, bingx.sent[-1].at
    assert last - first >= 14.0
    assert any(first + 10.0 - 1e-6 <= at <= last for at in bingx.time_asked), (
        f"server time asked at {bingx.time_asked}, closes sent from {first} to {last}"
    )


# --- 10: a whole-call deadline ------------------------------------------------------------------


@pytest.mark.looptime
async def test_total_timeout_bounds_a_queued_batch() -> None:
    """With total_timeout=2.0, every call of a 30-close batch ends within 2 s; the rest unsent."""
    policy = RetryPolicy(total_timeout=2.0)
    bingx = Exchange()
    loop = asyncio.get_running_loop()
    async with bingx.client(retry=policy) as client:
        started = loop.time()
        results = await asyncio.gather(*(ended(client.close_position(i)) for i in range(1, 31)))
    sent = set(bingx.closed_ids())
    assert max(at for at, _ in results) - started <= 2.0 + 1e-6
    for position_id, (_, outcome) in enumerate(results, start=1):
        if isinstance(outcome, ClosePositionResult):
            assert outcome.position_id == str(position_id)
            continue
        assert isinstance(outcome, QueueTimeoutError), repr(outcome)
        assert outcome.may_have_executed is False
        assert str(position_id) not in sent
    assert 10 <= len(sent) <= 15
    assert sum(isinstance(o, QueueTimeoutError) for _, o in results) == 30 - len(sent)


@pytest.mark.looptime
async def test_total_timeout_cuts_off_a_request_whose_answer_comes_after_it() -> None:
    """A close sent before the deadline whose answer would come after it ends at the
    deadline: RequestTimeout, saying so, with may_have_executed=True."""
    policy = RetryPolicy(total_timeout=2.0)
    bingx = Exchange(latency=2.5)
    loop = asyncio.get_running_loop()
    async with bingx.client(retry=policy) as client:
        started = loop.time()
        with pytest.raises(RequestTimeout) as caught:
            await client.close_position(7)
        assert loop.time() - started == pytest.approx(2.0, abs=1e-3)
    assert caught.value.may_have_executed is True
    assert "cut off when the call's total_timeout ran out" in str(caught.value)
    assert bingx.closes_of("7") == 1


# --- 11: Ctrl+C in the CLI ----------------------------------------------------------------------


async def test_cli_close_interrupted_reports_the_positions_already_closed() -> None:
    """SIGINT during `bingx-async close` still prints every position closed before it."""
    sim = FakeBingX(seed=5)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(30)]
    env = {**os.environ, "BINGX_API_KEY": account.api_key, "BINGX_SECRET_KEY": account.secret_key}

    async with sim.serve() as url:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bingx_async",
            "close",
            "--base-url",
            url,
            *ids,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            async with asyncio.timeout(10):
                # The first second's five closes, then a moment for their answers to arrive
                # (the next five go a second later).
                while len(sim.positions(account)) > 25:  # noqa: ASYNC110 - another process
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                closed_before = set(ids) - {p.position_id for p in sim.positions(account)}
                process.send_signal(signal.SIGINT)
                out, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert 5 <= len(closed_before) < 30
    missing = [pid for pid in ids if pid in closed_before and pid not in out.decode()]
    assert missing == [], f"closed but not reported; stdout {out!r}, stderr {err!r}"


# --- 12: one budget key, different settings -----------------------------------------------------


@pytest.mark.looptime
async def test_clients_with_different_windows_for_one_key_share_the_strictest() -> None:
    """5 per 1 s on one client and 8 per 2 s on another: BingX sees at most both."""
    per_second = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(5, 1.0),), ip_group=2
    )
    per_two_seconds = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(8, 2.0),), ip_group=2
    )
    bingx = Exchange()
    async with (
        bingx.client(rate_limits=per_second) as a,
        bingx.client(rate_limits=per_two_seconds) as b,
    ):
        # One close each first, so both settings are known before the burst.
        await a.close_position(1)
        await b.close_position(2)
        await asyncio.sleep(2.0)
        await asyncio.gather(
            *(a.close_position(i) for i in range(3, 23)),
            *(b.close_position(i) for i in range(23, 43)),
        )
    times = bingx.times()
    assert len(times) == 42
    assert max_in_window(times, 1.0) <= 5
    assert max_in_window(times, 2.0) <= 8


def test_docs_no_longer_say_different_settings_are_counted_separately() -> None:
    """The rate-limit page does not promise separate counting for differing settings."""
    text = " ".join((DOCS / "rate-limits-and-retries.md").read_text().split())
    assert "## How the limiter works" in text
    assert "counted separately" not in text


# --- the shutdown example of docs/sessions.md --------------------------------------------------


def load_example(name: str) -> ModuleType:
    path = DOCS / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.looptime
async def test_the_shutdown_example_closes_everything_after_cancelling_every_task() -> None:
    """docs/examples/shutdown.py: cancel every other task, then close all 12 positions."""
    example = load_example("shutdown")
    sim = FakeBingX(clock=LoopClock(EPOCH), seed=2)
    account = sim.add_account()
    for _ in range(12):
        sim.add_position(account)
    async with BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        clock=sim.clock,
        transport=sim.transport(),
    ) as client:
        bot = asyncio.create_task(example.strategy(client))
        await asyncio.sleep(7)
        current = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not current]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        left = await example.close_everything(client)
    assert bot.cancelled()
    assert left == []
    assert sim.positions(account) == []
