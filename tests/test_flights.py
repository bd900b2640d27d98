"""Calls in flight: closes of one position share a request; unheard outcomes are kept."""

from __future__ import annotations

import asyncio
import gc

import httpx
import pytest

from bingx_async import (
    BingXError,
    ClosePositionResult,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    RetryPolicy,
    ServerError,
)

from .mock_bingx import MockBingX, close_once

pytestmark = pytest.mark.looptime


def exchange_with_one_position() -> MockBingX:
    """Closes each position once (answering after 0.2 s); after that it is gone."""
    return MockBingX(answer=close_once(), latency=0.2)


async def test_two_clients_closing_one_position_share_the_request() -> None:
    """Two tasks, two clients of one key: one request, the same result for both."""
    bingx = exchange_with_one_position()
    async with bingx.client() as first, bingx.client() as second:
        a, b = await asyncio.gather(first.close_position(7), second.close_position("7"))
    assert len(bingx.sent) == 1
    assert isinstance(a, ClosePositionResult)
    assert a is b


async def test_closing_again_later_sends_again() -> None:
    """Only concurrent calls share: a later close asks BingX again."""
    bingx = exchange_with_one_position()
    async with bingx.client() as client:
        await client.close_position(7)
        with pytest.raises(PositionNotFoundError):
            await client.close_position(7)
    assert len(bingx.sent) == 2


async def test_different_accounts_do_not_share() -> None:
    """The same ID on two accounts is two positions: two requests."""
    bingx = MockBingX(latency=0.2)
    async with bingx.client("key-a") as a, bingx.client("key-b") as b:
        await asyncio.gather(a.close_position(7), b.close_position(7))
    assert len(bingx.sent) == 2


async def test_one_cancelled_caller_does_not_cancel_the_other() -> None:
    """The shared close goes on while anyone still waits for it."""
    bingx = exchange_with_one_position()
    async with bingx.client() as client:
        impatient = asyncio.create_task(client.close_position(7))
        patient = asyncio.create_task(client.close_position(7))
        await asyncio.sleep(0.1)
        impatient.cancel()
        result = await patient
    assert result.position_id == "7"
    assert impatient.cancelled()
    assert len(bingx.sent) == 1


async def test_cancelling_every_caller_frees_the_queue_place() -> None:
    """A close cancelled while it waits for its budget is never sent."""
    bingx = MockBingX(latency=0.2)
    async with bingx.client() as client:
        busy = [asyncio.create_task(client.close_position(i)) for i in range(1, 6)]
        waiting = asyncio.create_task(client.close_position(6))
        await asyncio.sleep(0.5)
        waiting.cancel()
        await asyncio.gather(*busy)
        await client.close_position(7)
    assert [s.params["positionId"] for s in bingx.sent] == ["1", "2", "3", "4", "5", "7"]


async def test_a_close_answered_after_its_caller_left_is_kept_for_the_next_caller() -> None:
    """Cancelled while on the wire: a later close of the position gets that answer, unsent."""
    bingx = exchange_with_one_position()
    async with bingx.client() as client:
        first = asyncio.create_task(client.close_position(7))
        await asyncio.sleep(0.1)
        first.cancel()
        await asyncio.sleep(1.0)
        later = await client.close_position(7)
    assert first.cancelled()
    assert later.position_id == "7"
    assert len(bingx.sent) == 1


async def test_an_unknown_outcome_nobody_heard_makes_a_later_not_found_possibly_closed() -> None:
    """A 504 whose caller was cancelled during the back-off: the next close's "no position"
    is reported as possibly closed by that earlier attempt."""
    answers = iter(
        [
            httpx.Response(504, json={"code": 100500, "msg": "unknown status"}),
            httpx.Response(200, json={"code": 101205, "msg": "No position to close"}),
        ]
    )
    bingx = MockBingX(answer=lambda _: next(answers), latency=0.1)
    async with bingx.client(retry=RetryPolicy(attempts=3, wait_initial=5.0)) as client:
        first = asyncio.create_task(client.close_position(7))
        await asyncio.sleep(1.0)  # answered 504 at 0.1 s, waiting 5 s before retrying
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)  # the close is withdrawn
        with pytest.raises(PositionPossiblyClosedError) as caught:
            await client.close_position(7)
    assert caught.value.may_have_executed is True
    assert isinstance(caught.value.earlier_error, ServerError)
    assert [s.at for s in bingx.sent] == pytest.approx([0.0, 1.0])


async def test_a_close_withdrawn_before_sending_leaves_nothing_to_remember() -> None:
    """Cancelled while queued: the next close of the position is sent and answered afresh."""
    bingx = exchange_with_one_position()
    async with bingx.client() as client:
        await asyncio.gather(*(client.close_position(i) for i in range(1, 6)))
        queued = asyncio.create_task(client.close_position(7))
        await asyncio.sleep(0.5)
        queued.cancel()
        result = await client.close_position(7)
    assert queued.cancelled()
    assert result.position_id == "7"
    assert [s.params["positionId"] for s in bingx.sent] == ["1", "2", "3", "4", "5", "7"]


async def test_a_call_cancelled_from_outside_gives_its_callers_an_error() -> None:
    """A shutdown that cancels every task (the library's too) leaves no caller hanging and
    raises no CancelledError in a caller nobody cancelled."""
    bingx = MockBingX(latency=0.5)
    async with bingx.client() as client:
        caller = asyncio.create_task(client.close_position(7))
        await asyncio.sleep(0.1)
        mine = {caller, asyncio.current_task()}
        for task in asyncio.all_tasks() - mine:
            task.cancel()
        (outcome,) = await asyncio.gather(caller, return_exceptions=True)
    assert type(outcome) is BingXError
    assert outcome.may_have_executed is True
    assert "cancelled from outside" in str(outcome)


async def test_a_failure_nobody_was_left_to_hear_is_not_reported_as_unretrieved() -> None:
    """Its caller left while the request was on the wire, and it failed: asyncio is not told
    of an exception nobody retrieved."""
    bingx = MockBingX(
        answer=lambda _: httpx.Response(400, json={"code": 100400, "msg": "bad"}), latency=0.2
    )
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with bingx.client() as client:
            caller = asyncio.create_task(client.request("GET", "/openApi/swap/v2/trade/order"))
            await asyncio.sleep(0.1)
            caller.cancel()
            await asyncio.sleep(1.0)  # answered at 0.2 s, with nobody waiting
            del caller
            gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert [sent.path for sent in bingx.sent] == ["/openApi/swap/v2/trade/order"]
    assert reported == []
