"""The one place where the library reads time or waits.

Everything else takes a :class:`Clock`, so tests can run limiter and retry logic in
virtual time (see :mod:`bingx_async.testing`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Source of time for signing, rate limiting and retry waits."""

    def time(self) -> float:
        """Wall-clock time as epoch seconds (used for request timestamps)."""
        ...

    def monotonic(self) -> float:
        """A clock that never jumps (used for rate-limit windows and deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (every wait the library does goes through here)."""
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

    # Every SystemClock is the same clock: clients using it share one rate limiter.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, SystemClock)

    def __hash__(self) -> int:
        return hash(SystemClock)

    def __repr__(self) -> str:
        return "SystemClock()"
