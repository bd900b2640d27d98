"""State shared by every client of a process: budgets, blocks, error counts, server clocks.

Two accounts in one bot share their host's IP budgets; two clients using one key share its
account budgets and its closes in flight. So this state lives per event loop and clock, not
per client.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field

from ._clock import Clock
from ._errorguard import ErrorRateGuard
from ._models import ClosePositionResult
from ._ratelimit import RateLimiter
from ._singleflight import SingleFlight
from ._timesync import ServerClock

__all__ = ["ProcessState", "process_state"]


@dataclass(slots=True)
class ProcessState:
    limiter: RateLimiter
    errors: ErrorRateGuard
    server_clocks: dict[str, ServerClock] = field(default_factory=dict)
    #: Closes in flight, by (account, position ID): concurrent closes of one position share.
    closes: SingleFlight[ClosePositionResult] = field(default_factory=SingleFlight)

    def server_clock(self, host: str) -> ServerClock:
        found = self.server_clocks.get(host)
        if found is None:
            found = self.server_clocks[host] = ServerClock(self.limiter.clock)
        return found


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Clock, ProcessState]] = (
    weakref.WeakKeyDictionary()
)


def process_state(clock: Clock) -> ProcessState:
    """The shared state for the running event loop and ``clock``."""
    per_loop = _BY_LOOP.setdefault(asyncio.get_running_loop(), {})
    found = per_loop.get(clock)
    if found is None:
        found = per_loop[clock] = ProcessState(RateLimiter(clock), ErrorRateGuard(clock))
    return found
