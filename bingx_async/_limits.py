"""What a session's calls share, behind one interface: ``Limits``.

Every attempt of every call asks its session's ``Limits`` to be admitted, once, for
everything it must respect at the same moment: room in each of its rate-limit budgets (and
no hold on them), the error-rate guard of its endpoint, and, for a call that only one
caller anywhere may make at a time, its claim. What it gets back is a ``Pass``, which
the attempt finishes, once, when it knows how it ended: the slots are dated, the error (if
any) counted, the claim kept or settled.

Two stores implement it: in this process's memory
(``MemoryLimits``,
the default) and in Redis, shared by every process that uses it
(``RedisSharedLimits``). With Redis an admission is one
script and a finish another: two round trips per attempt.
"""

from __future__ import annotations

import abc
import enum
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._config import RetryPolicy
from ._errorguard import ErrorGuardPolicy
from ._exceptions import BingXError, RateLimitError
from ._ratelimit import BudgetUsage, Release, RequestBudgets

__all__ = ["Attempt", "Claim", "ClaimState", "GuardAsk", "Limits", "Pass"]


@dataclass(frozen=True, slots=True)
class GuardAsk:
    """The error-rate guard an attempt is counted by: ``account``'s ``endpoint``."""

    account: str
    endpoint: str
    policy: ErrorGuardPolicy


class ClaimState(enum.Enum):
    """What an attempt says of a claimed call when it finishes."""

    #: Nothing of the call has executed so far (a refusal, a rate-limit answer).
    NOTHING_EXECUTED = "pending"
    #: An attempt may have executed (no answer, an ambiguous one).
    UNKNOWN = "unknown"
    #: The call succeeded; the claim's ``encode`` gives what the others get.
    RESULT = "result"


@dataclass(slots=True, eq=False)
class Claim:
    """A call that only one caller anywhere may make at a time (the close of a position):
    others wait for its outcome instead of sending it again.

    ``name`` identifies the call among every process sharing the store; ``encode`` and
    ``decode`` carry its result to them as text. In one process, ``Flights`` already
    makes concurrent callers share one call, so the in-memory store ignores claims.
    """

    name: str
    encode: Callable[[Any], str]
    decode: Callable[[str], Any]
    #: The same for every attempt of this call (a retry renews the claim it holds).
    token: str = field(default_factory=lambda: os.urandom(8).hex())
    #: Whether the call's outcome was handed to the store (nothing more to settle).
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt of a call must be admitted under."""

    budgets: RequestBudgets
    guard: GuardAsk | None = None
    claim: Claim | None = None


class Pass(abc.ABC):
    """What an admitted attempt holds until ``finish``.

    ``joined`` is set instead when the claimed call already ended elsewhere with a result:
    the attempt sends nothing, and that result is the call's.
    """

    __slots__ = ()

    #: By when the request must have left and been answered (monotonic), or be cut off.
    send_by: float = math.inf
    #: Another caller's result for the claimed call (nothing was admitted), if any.
    joined: Any = None
    #: Whether another caller's claim ended without a known outcome: the call may have
    #: executed already.
    inherited_unknown: bool = False

    @abc.abstractmethod
    def finish(
        self,
        how: Release,
        *,
        code: int | None = None,
        claim: ClaimState | None = None,
        result: Any = None,
        final: bool = False,
    ) -> None:
        """End the attempt (idempotent): date or free its slots by ``how``, count ``code``
        towards the error guard, and tell its claim how the call stands (``final``: the
        call ends with this attempt; its claim is let go)."""


class Limits(abc.ABC):
    """Rate-limit budgets and holds, error counts and claims, as one session shares them."""

    @abc.abstractmethod
    def next_ticket(self) -> int:
        """A place in the queue, kept by a call across its attempts."""

    @abc.abstractmethod
    async def admit(
        self,
        attempt: Attempt,
        *,
        ticket: int | None = None,
        max_block_wait: float = math.inf,
        deadline: float = math.inf,
        since: float | None = None,
    ) -> Pass:
        """Wait until ``attempt`` may be sent, then hold what it takes.

        Raises, with nothing sent: the ``RateLimitError`` of a hold longer than
        ``max_block_wait`` or past ``deadline``, ``QueueTimeoutError`` when
        ``deadline`` (monotonic) passes first (saying how long the call waited since
        ``since``), ``ErrorRateGuardError``, or the error the store was closed with.
        """

    @abc.abstractmethod
    def hold(
        self,
        answer: RateLimitError,
        request: RequestBudgets,
        *,
        policy: RetryPolicy,
        fallback: float | None,
    ) -> bool:
        """Hold what a rate-limit ``answer`` to ``request`` blocks, for every caller (see
        ``RateLimiter.hold``); whether ``request``'s own budgets are held now."""

    @abc.abstractmethod
    def settle(self, claim: Claim, state: ClaimState, result: Any = None) -> None:
        """The claimed call ended between attempts (or after its last one without saying
        so): record ``state`` and let go of the claim."""

    @abc.abstractmethod
    def usage(self) -> list[BudgetUsage]:
        """What every budget holds now; with a shared store, this process's part."""

    @abc.abstractmethod
    def start(self) -> None:
        """Begin serving, in the running event loop."""

    @abc.abstractmethod
    def rest(self) -> None:
        """No caller is left: keep what later callers must know, but nothing that belongs
        to the event loop (wake-ups, tracebacks)."""

    @abc.abstractmethod
    def close(self, error: Callable[[], BingXError]) -> None:
        """Refuse every waiter and every later ``admit`` with ``error()``."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Hand over what is still owed to the store, and let go of it."""
