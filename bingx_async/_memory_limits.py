"""MemoryLimits: a session's limits kept in this process (the default store).

Budgets and holds live in a ``RateLimiter``, error counts in an ``ErrorRateGuard``.
Claims need nothing here: concurrent callers of one call already share one flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._clock import Clock
from ._config import RetryPolicy
from ._errorguard import ErrorRateGuard
from ._exceptions import BingXError, RateLimitError
from ._limits import Attempt, Claim, ClaimState, GuardAsk, Limits, Pass
from ._ratelimit import BudgetUsage, Permit, RateLimiter, Release, RequestBudgets

__all__ = ["MemoryLimits"]


class _MemoryPass(Pass):
    __slots__ = ("_claim", "_guard", "_guards", "_permit", "finished")

    def __init__(
        self,
        permit: Permit,
        guards: ErrorRateGuard,
        guard: GuardAsk | None,
        claim: Claim | None,
    ) -> None:
        self._permit = permit
        self._guards = guards
        self._guard = guard
        self._claim = claim
        self.finished = False

    def finish(
        self,
        how: Release,
        *,
        code: int | None = None,
        claim: ClaimState | None = None,
        result: Any = None,
        final: bool = False,
    ) -> None:
        if self.finished:
            return
        self.finished = True
        self._permit.release(how)
        if self._guard is not None:
            self._guards.finish(self._guard.account, self._guard.endpoint, code)
        if self._claim is not None and (final or claim is ClaimState.RESULT):
            self._claim.settled = True


class MemoryLimits(Limits):
    """Limits that this process's callers share, in its memory."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.limiter = RateLimiter(clock)
        self.errors = ErrorRateGuard(clock)

    def next_ticket(self) -> int:
        return self.limiter.next_ticket()

    async def admit(
        self,
        attempt: Attempt,
        *,
        ticket: int | None = None,
        max_block_wait: float = math.inf,
        deadline: float = math.inf,
        since: float | None = None,
    ) -> Pass:
        permit = await self.limiter.acquire(
            attempt.budgets,
            ticket=ticket,
            max_block_wait=max_block_wait,
            deadline=deadline,
            since=since,
        )
        guard = attempt.guard
        if guard is not None:
            try:
                self.errors.admit(guard.account, guard.endpoint, guard.policy)
            except BaseException:
                permit.release(Release.NOT_SENT)
                raise
        return _MemoryPass(permit, self.errors, guard, attempt.claim)

    def hold(
        self,
        answer: RateLimitError,
        request: RequestBudgets,
        *,
        policy: RetryPolicy,
        fallback: float | None,
    ) -> bool:
        return self.limiter.hold(answer, request, policy=policy, fallback=fallback)

    def settle(self, claim: Claim, state: ClaimState, result: Any = None) -> None:
        claim.settled = True

    def usage(self) -> list[BudgetUsage]:
        return self.limiter.usage()

    def start(self) -> None:
        pass

    def rest(self) -> None:
        self.limiter.rest()

    def close(self, error: Callable[[], BingXError]) -> None:
        self.limiter.close(error)

    async def aclose(self) -> None:
        pass
