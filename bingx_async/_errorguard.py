"""A local guard against BingX's error-rate ban.

BingX disables an endpoint when it answers more than 20 errors with the same code within
480 s ("over 20 error code:100202 requests within 480000 ms for this api"). Whether BingX
counts per UID, API key or IP is not documented; this guard counts per account (the client's
``uid``, or else its API key) and endpoint.
A request that could become the threshold-crossing error — counting requests still in flight
as possible errors — is refused locally with ``ErrorRateGuardError`` instead of sent.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ._clock import Clock
from ._codes import RATE_LIMIT_CODES
from ._exceptions import ConfigurationError, ErrorRateGuardError

__all__ = [
    "DEFAULT_ERROR_GUARD",
    "ErrorGuardPolicy",
    "ErrorRateGuard",
    "counted_code",
    "guard_error",
]

#: Rate-limit answers are the ban itself, so they are not counted towards it.
_NOT_COUNTED = RATE_LIMIT_CODES | {0}


@dataclass(frozen=True, slots=True)
class ErrorGuardPolicy:
    """At most ``threshold`` answers with one error code per ``window`` seconds per endpoint."""

    threshold: int = 20
    window: float = 480.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise ConfigurationError(
                f"ErrorGuardPolicy.threshold must be an int, got {self.threshold!r}"
            )
        if self.threshold < 1:
            raise ConfigurationError(
                f"ErrorGuardPolicy.threshold must be >= 1, got {self.threshold}"
            )
        if not (isinstance(self.window, int | float) and 0 < self.window < math.inf):
            raise ConfigurationError(
                f"ErrorGuardPolicy.window must be seconds > 0, got {self.window!r}"
            )


DEFAULT_ERROR_GUARD = ErrorGuardPolicy()
"""At most 20 answers with one error code per 480 s, per account and endpoint."""


class ErrorRateGuard:
    """Error answers per (account, endpoint, code) in a rolling window, plus requests in flight."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._errors: dict[tuple[str, str], dict[int, deque[float]]] = {}
        self._in_flight: dict[tuple[str, str], int] = {}

    def admit(self, account: str, endpoint: str, policy: ErrorGuardPolicy) -> None:
        """Count one more request in flight, or raise if it could cross the threshold."""
        key = (account, endpoint)
        pending = self._in_flight.get(key, 0)
        codes = self._errors.get(key)
        if not codes and pending < policy.threshold:
            self._in_flight[key] = pending + 1  # no error counted: nothing to look at
            return
        now = self._clock.monotonic()
        # Every request in flight may yet fail with the most frequent code (or a new one).
        worst_code, worst = None, 0
        for code, times in (codes or {}).items():
            while times and times[0] <= now - policy.window:
                times.popleft()
            if len(times) > worst:
                worst_code, worst = code, len(times)
        if worst + pending >= policy.threshold:
            oldest = self._errors[key][worst_code][0] if worst_code is not None else now
            retry_after = max(0.0, oldest + policy.window - now)
            raise guard_error(endpoint, worst_code, worst, pending, policy.window, retry_after)
        self._in_flight[key] = pending + 1

    def finish(self, account: str, endpoint: str, code: int | None) -> None:
        """The request admitted by ``admit`` got an answer with ``code`` (or none)."""
        key = (account, endpoint)
        remaining = self._in_flight.get(key, 1) - 1
        if remaining:
            self._in_flight[key] = remaining
        else:
            self._in_flight.pop(key, None)
        if code is not None and counted_code(code):
            codes = self._errors.setdefault(key, {})
            codes.setdefault(code, deque()).append(self._clock.monotonic())


def counted_code(code: int) -> bool:
    """Whether an answer with ``code`` counts towards the ban."""
    return code not in _NOT_COUNTED


def guard_error(
    endpoint: str,
    worst_code: int | None,
    worst: int,
    pending: int,
    window: float,
    retry_after: float,
) -> ErrorRateGuardError:
    """The refusal of a request that could become the threshold-crossing error."""
    seen = (
        f"{worst} answers with error {worst_code} from {endpoint} in the last "
        f"{window:g} s and {pending} in flight"
        if worst_code is not None
        else f"{pending} requests to {endpoint} in flight"
    )
    return ErrorRateGuardError(
        f"not sent: {seen}; if they fail alike, one more error could get the endpoint "
        f"banned by BingX. Fix the cause, or retry in {retry_after:.1f} s",
        banned_code=worst_code,
        count=worst,
        window=window,
        retry_after=retry_after,
        endpoint=endpoint,
    )
