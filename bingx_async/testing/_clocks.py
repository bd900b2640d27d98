"""Clocks for tests: virtual time without real sleeping."""

from __future__ import annotations

import asyncio

__all__ = ["FakeClock", "LoopClock"]


class FakeClock:
    """A clock that only moves when told to, or when something sleeps on it.

    ``sleep()`` records the duration in :attr:`sleeps` and advances time at once, without
    waiting. Good for sequential logic (retry waits); for many concurrent tasks use
    :class:`LoopClock` with a virtual-time event loop instead.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = float(now)
        self._start = self.now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - self._start

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # noqa: TID251 - a yield, not a wait: lets other tasks run

    def advance(self, seconds: float) -> None:
        """Move time forward without recording a sleep."""
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"


class LoopClock:
    """The running event loop's clock, offset to an epoch.

    Under a virtual-time loop (the ``looptime`` pytest plugin) every wait the library does —
    rate-limit waits, retry back-off, unblock waits — passes instantly in real time while
    timestamps stay consistent with it.
    """

    def __init__(self, epoch: float = 1_700_000_000.0) -> None:
        self.epoch = float(epoch)

    def time(self) -> float:
        return self.epoch + asyncio.get_running_loop().time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))  # noqa: TID251 - this is the clock

    def __repr__(self) -> str:
        return f"LoopClock(epoch={self.epoch!r})"
