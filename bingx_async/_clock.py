"""The one place where the library reads time, waits, or schedules a wake-up.

Everything else takes a ``Clock``, so tests can run limiter and retry logic in
virtual time (see ``bingx_async.testing``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "Timer"]


class Timer(Protocol):
    """A scheduled wake-up (``Clock.call_at``); ``asyncio.TimerHandle`` is one."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Source of time for signing, rate limiting, retry waits and deadlines."""

    def time(self) -> float:
        """Wall-clock time as epoch seconds (used for request timestamps)."""
        ...

    def monotonic(self) -> float:
        """A clock that never jumps (used for rate-limit windows and deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (every wait the library does in a task goes through here)."""
        ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        """Run ``callback`` once [`monotonic`][bingx_async.Clock.monotonic] reaches ``when``.

        The rate limiter wakes its waiters this way rather than with a task, so that a
        shutdown that cancels every task cannot kill the wake-up.
        """
        ...

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        """Cancel the block inside once [`monotonic`][bingx_async.Clock.monotonic] passes ``when``;
        raise ``TimeoutError`` then (like ``asyncio.timeout_at``)."""
        ...


class SystemClock:
    """The real clock: ``time.time`` and the running event loop's monotonic time."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        # The loop's clock rather than time.monotonic(): timers and sleeps are scheduled on
        # it, so deadlines computed here line up with when asyncio actually wakes us.
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_at(when, callback)

    def timeout_at(self, when: float) -> AbstractAsyncContextManager[object]:
        return asyncio.timeout_at(when)

    # Every SystemClock is the same clock: clients using it share one default session.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, SystemClock)

    def __hash__(self) -> int:
        return hash(SystemClock)

    def __repr__(self) -> str:
        return "SystemClock()"
