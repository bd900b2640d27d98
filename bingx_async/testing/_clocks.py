"""Clocks for tests: virtual time without real sleeping."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from bingx_async._clock import Timer

__all__ = ["FakeClock", "LoopClock"]


class FakeClock:
    """A clock that only moves when told to, or when something waits on it.

    ``sleep()`` records the duration in ``sleeps`` and advances time at once, without waiting; a
    wake-up scheduled with ``call_at`` likewise moves time to its moment on the next turn of the
    event loop. Deadlines (``timeout_at``) expire only when time is moved past them. Good for
    sequential logic (retry waits); for many concurrent tasks use
    [`LoopClock`][bingx_async.testing.LoopClock] with a virtual-time event loop instead.
    """

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now: float = float(now)
        self._start = self.now
        self.sleeps: list[float] = []
        self._deadlines: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - self._start

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)  # noqa: TID251 - a yield, not a wait: lets other tasks run

    def advance(self, seconds: float) -> None:
        """Move time forward without recording a sleep."""
        self.now += seconds
        while self._deadlines and self._deadlines[0][0] <= self.monotonic():
            heapq.heappop(self._deadlines)[2].expire()

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        def fire() -> None:
            if when > self.monotonic():
                self.advance(when - self.monotonic())
            callback()

        return asyncio.get_running_loop().call_soon(fire)

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        return self._timeout_at(when)

    @asynccontextmanager
    async def _timeout_at(self, when: float) -> AsyncIterator[None]:
        task = asyncio.current_task()
        assert task is not None
        deadline = _Deadline(task)
        if when <= self.monotonic():
            deadline.expire()
        else:
            heapq.heappush(self._deadlines, (when, next(self._order), deadline))
        try:
            yield
            await asyncio.sleep(0)  # noqa: TID251 - deliver an expiry that came at the end
        except asyncio.CancelledError:
            if deadline.expired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            deadline.active = False

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now!r})"


class _Deadline:
    __slots__ = ("active", "expired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.active = True
        self.expired = False

    def expire(self) -> None:
        if self.active and not self.expired:
            self.expired = True
            self.task.cancel()


class LoopClock:
    """The running event loop's clock, offset to an epoch.

    Under a virtual-time loop (the ``looptime`` pytest plugin) every wait the library does —
    rate-limit waits, retry back-off, unblock waits — passes instantly in real time while
    timestamps stay consistent with it.
    """

    def __init__(self, epoch: float = 1_700_000_000.0) -> None:
        self.epoch: float = float(epoch)

    def time(self) -> float:
        return self.epoch + asyncio.get_running_loop().time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))  # noqa: TID251 - this is the clock

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_at(when, callback)

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout_at(when)

    def __repr__(self) -> str:
        return f"LoopClock(epoch={self.epoch!r})"
