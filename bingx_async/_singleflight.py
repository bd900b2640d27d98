"""One request for concurrent calls that ask for the same thing.

Two tasks of a bot closing the same position at the same moment would otherwise send two
requests: the second can only fail with "no position", and counts towards BingX's error-rate
ban. Instead they share one call and both get its outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class _Flight(Generic[T]):
    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        self.waiters = 0


class SingleFlight(Generic[T]):
    """Runs at most one ``work()`` per key at a time; callers of a running key join it.

    The shared call is cancelled only when every caller waiting for it has been cancelled,
    so one impatient caller never takes the outcome away from the others.
    """

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = self._start(key, work)
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                flight.task.cancel()

    def _start(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> _Flight[T]:
        async def call() -> T:
            return await work()

        flight = _Flight(asyncio.get_running_loop().create_task(call()))
        self._flights[key] = flight

        def landed(task: asyncio.Task[T]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not task.cancelled():
                task.exception()  # retrieved here; every waiter re-raises it

        flight.task.add_done_callback(landed)
        return flight
