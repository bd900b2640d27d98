"""The limiter under 10,000 waiting calls: wake-ups, CPU time and memory per send.

Runs in virtual time (a clock whose sleeps advance instantly), so it measures the limiter's
own cost, not the budget's pacing. Prints, for N waiters on one 5-per-second budget:
task resumptions per send (target: 1, no thundering herd), dispatcher passes per send,
timer firings, CPU microseconds per send, and peak memory per waiter.

    python benchmarks/limiter_scale.py --waiters 10000
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc
from collections.abc import Callable

from bingx_async import Budget
from bingx_async._clock import Timer
from bingx_async._ratelimit import RateLimiter, Release, RequestBudgets
from bingx_async.testing import FakeClock


class CountingLimiter(RateLimiter):
    """Counts dispatcher passes."""

    passes = 0

    def _dispatch(self) -> None:
        self.passes += 1
        super()._dispatch()


class CountingClock(FakeClock):
    """Counts the limiter's wake-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.wake_ups = 0

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        def counted() -> None:
            self.wake_ups += 1
            callback()

        return super().call_at(when, counted)


async def run(waiters: int) -> None:
    clock = CountingClock()
    limiter = CountingLimiter(clock)
    budgets = RequestBudgets(((("account", "bench", "POST /close"), Budget(5, 1.0)),), "h", True)
    resumptions = 0

    async def call() -> None:
        nonlocal resumptions
        # acquire() suspends at most once: on its own future, resolved when it is admitted.
        permit = await limiter.acquire(budgets)
        resumptions += 1
        permit.release(Release.ANSWERED)

    tracemalloc.start()
    started = time.process_time()
    await asyncio.gather(*(call() for _ in range(waiters)))
    cpu = time.process_time() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"waiters={waiters} sends={resumptions} resumptions/send={resumptions / waiters:.2f} "
        f"dispatcher passes/send={limiter.passes / waiters:.2f} "
        f"wake-ups={clock.wake_ups} (virtual time {clock.monotonic():.0f} s) "
        f"cpu/send={cpu / waiters * 1e6:.1f} us peak memory/waiter={peak / waiters:.0f} B "
        f"left queued={sum(len(lane) for lane in limiter._lanes.values())}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, nargs="+", default=[1_000, 10_000])
    args = parser.parse_args()
    for waiters in args.waiters:
        asyncio.run(run(waiters))


if __name__ == "__main__":
    main()
