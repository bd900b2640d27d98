"""Retry decisions: which failures are tried again, after how long, and what a call ends with.

* BingX said "not now" — rate limits (100410/109429/100409, HTTP 429) and timestamp rejections:
  the request provably did not execute, so it is repeated. A server-named unblock time is
  waited out exactly, plus a margin; the rate limiter holds it for every other call on the
  same budgets too (see ``RateLimiter.hold``), so none of them spends a request
  rediscovering the block.
* Nothing was sent (connection refused): repeated after a back-off.
* The outcome is unknown (read timeout, dropped connection, 5xx, 504): repeated only when the
  request is safe to repeat — reads, and closing a position by ID, which cannot close anything
  twice. If the repeat then finds no position, the earlier attempt most likely closed it, and
  the call raises ``PositionPossiblyClosedError`` rather than plain "not found".
* Everything else (bad input, auth, "position not found" on a first attempt, IP bans, local
  refusals) is final.

The loop itself is the pipeline's (``bingx_async._pipeline``).
"""

from __future__ import annotations

from collections.abc import Callable

from ._config import RetryPolicy
from ._exceptions import (
    BingXError,
    ClientClosedError,
    ErrorRateGuardError,
    IPBannedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    RateLimitError,
    TimestampError,
    TransportError,
    restate,
)

__all__ = ["final_error", "plan_retry", "possibly_closed"]


def plan_retry(
    error: BingXError,
    policy: RetryPolicy,
    attempts: int,
    jitter: Callable[[], float],
    *,
    repeat_safe: bool,
    resynced: bool,
) -> float | None:
    """Seconds to wait before retrying ``error``, or ``None`` when it is final.

    The policy's limits on attempts, on waits BingX imposes and on the whole call's time
    are applied here too.
    """
    if attempts >= policy.attempts:
        return None
    wait = _wait_for(error, policy, attempts, jitter, repeat_safe, resynced)
    server_named = isinstance(error, RateLimitError) and error.retry_after is not None
    if wait is not None and server_named and wait > policy.max_server_wait + policy.unblock_margin:
        return None
    return wait


def _wait_for(
    error: BingXError,
    policy: RetryPolicy,
    attempts: int,
    jitter: Callable[[], float],
    repeat_safe: bool,
    resynced: bool,
) -> float | None:
    if isinstance(error, ErrorRateGuardError | ClientClosedError):
        return None
    if isinstance(error, IPBannedError):
        if policy.retry_ip_bans and error.retry_after is not None:
            return error.retry_after
        return None
    if isinstance(error, RateLimitError):
        if error.retry_after is not None:
            return error.retry_after + policy.unblock_margin
        return policy._backoff(attempts, jitter())
    if isinstance(error, TimestampError):
        return None if resynced else 0.0
    if isinstance(error, TransportError) and not error.may_have_executed:
        return policy._backoff(attempts, jitter())
    if error.may_have_executed and repeat_safe:
        return policy._backoff(attempts, jitter())
    return None


def final_error(error: BingXError, attempts: int, earlier_unknown: BingXError | None) -> BingXError:
    """The error a call ends with. If an earlier attempt's outcome was unknown, so is the
    call's, whatever the last attempt said."""
    error.attempts = attempts
    if earlier_unknown is not None and earlier_unknown is not error:
        error.may_have_executed = True
        error.earlier_error = earlier_unknown
        if error.message.startswith(_NOT_SENT):
            # This attempt was not sent, but the call may have executed: say both.
            restate(
                error,
                f"{error.message.removeprefix(_NOT_SENT)}; this attempt was not sent, but an "
                f"earlier one's outcome is unknown ({type(earlier_unknown).__name__}), so the "
                "call may have executed",
            )
    return error


_NOT_SENT = "not sent: "


def possibly_closed(
    error: PositionNotFoundError, attempts: int, earlier_unknown: BingXError
) -> PositionPossiblyClosedError:
    """ "No such position" after an attempt whose outcome was unknown: that attempt most
    likely closed it."""
    possibly = PositionPossiblyClosedError(
        f"{error.message}; an earlier attempt whose outcome was unknown "
        f"({type(earlier_unknown).__name__}) most likely closed it",
        earlier_error=earlier_unknown,
        code=error.code,
        msg=error.msg,
        status_code=error.status_code,
        endpoint=error.endpoint,
        body=error.body,
        may_have_executed=True,
    )
    possibly.attempts = attempts
    return possibly
