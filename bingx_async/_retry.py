"""The retry layer around limit -> sign -> send -> decode.

Which failures are retried (and the rule that keeps a retry from executing twice):

* BingX said "not now" — rate limits (100410/109429/100409, HTTP 429) and timestamp rejections:
  the request provably did not execute, so it is repeated. A server-named unblock time is
  waited out exactly, plus a margin; it is also shared with every other call on the same budget
  (through the limiter) so none of them spends a request rediscovering the block.
* Nothing was sent (connection refused): repeated after a back-off.
* The outcome is unknown (read timeout, dropped connection, 5xx, 504): repeated only when the
  request is safe to repeat — reads, and closing a position by ID, which cannot close anything
  twice. If the repeat then finds no position, the earlier attempt most likely closed it, and
  the call raises :class:`PositionPossiblyClosedError` rather than plain "not found".
* Everything else (bad input, auth, "position not found" on a first attempt, IP bans) is final.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ._clock import Clock
from ._config import RetryPolicy
from ._exceptions import (
    BingXError,
    ErrorRateGuardError,
    IPBannedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    RateLimitError,
    TimestampError,
    TransportError,
)

__all__ = ["RetryHooks", "call_with_retries"]

logger = logging.getLogger("bingx_async")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryHooks:
    """What the retry layer asks of the pipeline it wraps."""

    #: Hold the budgets this error names for ``wait`` seconds, for every caller; ``False``
    #: when the request draws on no budget that could hold it.
    share_block: Callable[[RateLimitError, float], bool]
    #: Re-measure BingX's clock.
    resync_clock: Callable[[], Awaitable[None]]


async def call_with_retries(
    attempt: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    jitter: Callable[[], float],
    repeat_safe: bool,
    hooks: RetryHooks,
    endpoint: str,
) -> T:
    """Run ``attempt`` until it succeeds or a failure is final; raise the last error."""
    attempts = 0
    deadline = math.inf
    earlier_unknown: BingXError | None = None
    resynced = False
    while True:
        attempts += 1
        try:
            return await attempt()
        except PositionNotFoundError as error:
            if earlier_unknown is None:
                error.attempts = attempts
                raise
            possibly_closed = PositionPossiblyClosedError(
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
            possibly_closed.attempts = attempts
            raise possibly_closed from error
        except BingXError as error:
            held_by_limiter = False
            now = clock.monotonic()
            if deadline == math.inf and policy.timeout is not None:
                deadline = now + policy.timeout
            wait = _plan(error, policy, attempts, jitter, repeat_safe, resynced)
            if wait is None or attempts >= policy.attempts:
                _share_if_rate_limited(error, policy, hooks)
                raise _given_up(error, attempts, earlier_unknown)  # noqa: B904 - same object
            if isinstance(error, RateLimitError) and not error.refused_locally:
                server_named = error.retry_after is not None
                if server_named and wait > policy.max_server_wait + policy.unblock_margin:
                    hooks.share_block(error, wait)
                    raise _given_up(error, attempts, earlier_unknown)  # noqa: B904
                held_by_limiter = hooks.share_block(error, wait)
            elif isinstance(error, RateLimitError):
                # The limiter refused it for a block someone else already shared.
                raise _given_up(error, attempts, earlier_unknown)  # noqa: B904
            if now + wait > deadline:
                raise _given_up(error, attempts, earlier_unknown)  # noqa: B904
            if error.may_have_executed:
                earlier_unknown = error
            if isinstance(error, TimestampError):
                resynced = True
                logger.info("%s: timestamp rejected; re-syncing clock and retrying", endpoint)
                await hooks.resync_clock()
                continue
            logger.info(
                "%s: %s; retry %d in %.3f s", endpoint, type(error).__name__, attempts, wait
            )
            # A shared block is waited out in the limiter, in queue order.
            if not (isinstance(error, RateLimitError) and held_by_limiter):
                await clock.sleep(wait)


def _plan(
    error: BingXError,
    policy: RetryPolicy,
    attempts: int,
    jitter: Callable[[], float],
    repeat_safe: bool,
    resynced: bool,
) -> float | None:
    """Seconds to wait before retrying ``error``, or ``None`` when it is final."""
    if isinstance(error, ErrorRateGuardError):
        return None
    if isinstance(error, IPBannedError):
        if policy.retry_ip_bans and error.retry_after is not None:
            return error.retry_after
        return None
    if isinstance(error, RateLimitError):
        if error.retry_after is not None:
            return error.retry_after + policy.unblock_margin
        return policy.backoff(attempts, jitter())
    if isinstance(error, TimestampError):
        return None if resynced else 0.0
    if isinstance(error, TransportError) and not error.may_have_executed:
        return policy.backoff(attempts, jitter())
    if error.may_have_executed and repeat_safe:
        return policy.backoff(attempts, jitter())
    return None


def _given_up(error: BingXError, attempts: int, earlier_unknown: BingXError | None) -> BingXError:
    """The error a call ends with. If an earlier attempt's outcome was unknown, so is the
    call's, whatever the last attempt said."""
    error.attempts = attempts
    if earlier_unknown is not None and earlier_unknown is not error:
        error.may_have_executed = True
        error.earlier_error = earlier_unknown
    return error


def _share_if_rate_limited(error: BingXError, policy: RetryPolicy, hooks: RetryHooks) -> None:
    """Even a call that gives up tells its siblings about the block it met."""
    if isinstance(error, RateLimitError) and error.refused_locally:
        return
    if isinstance(error, IPBannedError):
        hooks.share_block(error, error.retry_after or policy.ip_ban_hold)
    elif isinstance(error, RateLimitError) and error.retry_after is not None:
        hooks.share_block(error, error.retry_after + policy.unblock_margin)
