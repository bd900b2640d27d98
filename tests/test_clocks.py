"""The clocks of bingx_async.testing: what waits, wake-ups and deadlines do to time."""

from __future__ import annotations

import asyncio

import pytest

from bingx_async import Clock, SystemClock
from bingx_async.testing import FakeClock, LoopClock


async def test_fake_clock_sleep_records_and_advances_at_once() -> None:
    """sleep() moves time by its argument (never backwards) and records it."""
    clock = FakeClock(now=100.0)
    await clock.sleep(2.5)
    await clock.sleep(-1.0)
    assert clock.sleeps == [2.5, 0.0]
    assert (clock.time(), clock.monotonic()) == (102.5, 2.5)


async def test_fake_clock_wake_up_moves_time_to_its_moment() -> None:
    """call_at() fires on the next turn of the loop, with time moved to its moment."""
    clock = FakeClock()
    fired: list[float] = []
    clock.call_at(7.0, lambda: fired.append(clock.monotonic()))
    assert fired == []
    await asyncio.sleep(0)
    assert fired == [7.0]
    assert clock.sleeps == []


async def test_fake_clock_cancelled_wake_up_never_fires() -> None:
    """A cancelled call_at() neither runs nor moves time."""
    clock = FakeClock()
    fired: list[float] = []
    clock.call_at(7.0, lambda: fired.append(clock.monotonic())).cancel()
    await asyncio.sleep(0)
    assert (fired, clock.monotonic()) == ([], 0.0)


async def test_fake_clock_deadline_expires_only_when_time_passes_it() -> None:
    """timeout_at() lets work finish while time stands still; a sleep past it times out."""
    clock = FakeClock()
    async with clock.timeout_at(1.0):
        await asyncio.sleep(0)
    reached: list[str] = []

    async def sleeps_past_it() -> None:
        async with clock.timeout_at(2.0):
            await clock.sleep(5.0)
            reached.append("after the sleep")

    with pytest.raises(TimeoutError):
        await sleeps_past_it()
    assert (reached, clock.monotonic()) == ([], 5.0)


async def test_fake_clock_deadline_in_the_past_expires_at_the_first_wait() -> None:
    """A deadline already passed times out at the block's first suspension."""
    clock = FakeClock()
    clock.advance(3.0)
    with pytest.raises(TimeoutError):
        async with clock.timeout_at(1.0):
            await asyncio.sleep(0)


async def test_fake_clock_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    """A task cancelled from outside inside timeout_at() sees CancelledError."""
    clock = FakeClock()

    async def waits() -> None:
        async with clock.timeout_at(100.0):
            await asyncio.get_running_loop().create_future()

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.looptime
async def test_loop_clock_wake_ups_and_deadlines_follow_the_loop() -> None:
    """LoopClock schedules on the loop's own (here virtual) time."""
    clock = LoopClock(epoch=1000.0)
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    clock.call_at(3.0, lambda: fired.append(loop.time()))
    with pytest.raises(TimeoutError):
        async with clock.timeout_at(5.0):
            await clock.sleep(10.0)
    assert fired == [3.0]
    assert (clock.monotonic(), clock.time()) == (5.0, 1005.0)


def test_every_clock_here_is_a_clock() -> None:
    """The shipped clocks satisfy the Clock protocol."""
    for clock in (SystemClock(), FakeClock(), LoopClock()):
        assert isinstance(clock, Clock)
