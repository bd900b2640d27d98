"""Concurrent closes of one position share one request (virtual time)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bingx_async import ClosePositionResult, PositionNotFoundError

from .mock_bingx import MockBingX, closed

pytestmark = pytest.mark.looptime


def exchange_with_one_position() -> MockBingX:
    """Closes position 7 once; after that it is gone."""
    gone: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        position_id = request.url.params["positionId"]
        if position_id in gone:
            return httpx.Response(200, json={"code": 101205, "msg": "No position to close"})
        gone.add(position_id)
        return closed(request)

    return MockBingX(answer=answer, latency=0.2)


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
