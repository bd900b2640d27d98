"""The request pipeline: retry around [limit -> sign -> send -> decode].

Every call of every client goes through :meth:`Pipeline.call`, inside a flight its session
owns (see :mod:`bingx_async._flights`). One attempt takes a permit from the rate limiter,
signs with a fresh timestamp on BingX's clock, sends through an open connection and decodes
the answer; the permit is released in exactly one place, dated by how the attempt ended.
A rate-limit answer goes to :meth:`RateLimiter.hold`, once, which decides what it holds.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._budgets import RateLimitPolicy
from ._config import RetryPolicy
from ._connection import Connection
from ._decode import decode, server_time_from
from ._endpoints import TIME, Endpoint
from ._errorguard import ErrorGuardPolicy
from ._exceptions import (
    BingXError,
    ClientClosedError,
    PositionNotFoundError,
    RateLimitError,
    RequestTimeout,
    TimestampError,
    TransportError,
)
from ._flights import Flight
from ._limits import Attempt, Claim, ClaimState, GuardAsk, Pass
from ._ratelimit import Release, RequestBudgets
from ._retry import final_error, plan_retry, possibly_closed
from ._session import BingXSession
from ._signing import Params

__all__ = ["SYNC_TIMEOUT", "AfterUnknown", "Pipeline"]

logger = logging.getLogger("bingx_async")

#: Seconds a clock measurement may take in total, queueing included; then it is abandoned.
SYNC_TIMEOUT = 2.0
#: Endpoints whose budgets a pipeline keeps at hand.
_ADMISSION_CACHE = 64


#: See :meth:`Pipeline.call`.
AfterUnknown = Callable[[BingXError], Awaitable[Any]]


class _Answer(NamedTuple):
    data: Any
    #: Wall-clock time when the request left, and seconds until its answer.
    sent_at: float
    round_trip: float


@dataclass(frozen=True, slots=True)
class Pipeline:
    """How one client's calls are made (fixed when the client is made)."""

    host: str
    #: What the account budgets and error counts are kept under (``None``: no credentials).
    account: str | None
    rate_limits: RateLimitPolicy
    error_guard: ErrorGuardPolicy | None
    clock_sync_interval: float | None
    jitter: Callable[[], float]
    #: Per endpoint, what its attempts are admitted under (all of it fixed with the pipeline;
    #: one made for another account starts empty).
    _admission: dict[Endpoint, Attempt] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _admission_for(self, endpoint: Endpoint) -> Attempt:
        """What an attempt at ``endpoint`` is admitted under, without a claim."""
        found = self._admission.get(endpoint)
        if found is None:
            if len(self._admission) >= _ADMISSION_CACHE:
                self._admission.clear()  # endpoints of request() are open-ended
            found = self._admission[endpoint] = Attempt(
                self._budgets(endpoint),
                GuardAsk(self.account or "", endpoint.name, self.error_guard)
                if endpoint.signed and self.error_guard is not None
                else None,
            )
        return found

    def _budgets(self, endpoint: Endpoint) -> RequestBudgets:
        account = self.account if endpoint.signed else None
        found = self.rate_limits.budgets(endpoint.name, host=self.host, account=account)
        return RequestBudgets(
            tuple(found),
            host=self.host,
            signed=endpoint.signed,
            label=endpoint.name,
            margin=self.rate_limits.margin,
            adapt=self.rate_limits.adapt,
        )

    async def call(
        self,
        session: BingXSession,
        flight: Flight[Any],
        endpoint: Endpoint,
        params: Params,
        *,
        policy: RetryPolicy,
        started: float,
        after_unknown: AfterUnknown | None = None,
        claim: Claim | None = None,
    ) -> Any:
        """Run one call to its end; raise the error it ends with.

        ``after_unknown`` is asked, once the wait after an attempt whose outcome is unknown
        is over, whether the call ended after all: it returns the call's result, ``None`` to
        go on retrying, or raises the error the call ends with. ``claim`` makes the call one
        that only one caller anywhere makes at a time (see :class:`Claim`).
        """
        limits = session.limits
        try:
            result = await self._attempts(
                session, flight, endpoint, params, policy, started, after_unknown, claim
            )
        except BaseException as error:
            if claim is not None and not claim.settled:
                limits.settle(claim, _claim_state(flight, error))
            raise
        if claim is not None and not claim.settled:
            limits.settle(claim, ClaimState.RESULT, result)
        return result

    async def _attempts(
        self,
        session: BingXSession,
        flight: Flight[Any],
        endpoint: Endpoint,
        params: Params,
        policy: RetryPolicy,
        started: float,
        after_unknown: AfterUnknown | None,
        claim: Claim | None,
    ) -> Any:
        clock = session.clock
        limits = session.limits
        attempt = self._admission_for(endpoint)
        budgets = attempt.budgets
        if claim is not None:
            attempt = Attempt(budgets, attempt.guard, claim)
        deadline = started + policy.total_timeout if policy.total_timeout is not None else math.inf
        ticket = limits.next_ticket()
        attempts = 0
        resynced = False
        while True:
            attempts += 1
            try:
                if flight.connection() is None:
                    raise _closed(endpoint)
                if endpoint.signed:
                    await self._sync_clock_first(session, flight)
                permit = await limits.admit(
                    attempt,
                    ticket=ticket,
                    max_block_wait=policy.max_server_wait + policy.unblock_margin,
                    deadline=deadline,
                    since=started,
                )
            except BingXError as refused:
                # Refused before sending (a hold too long, total_timeout, a closed client).
                raise final_error(refused, attempts, flight.unknown)  # noqa: B904 - the same error, re-raised
            if permit.joined is not None:
                return permit.joined  # the call ended elsewhere; nothing was sent here
            if permit.inherited_unknown and flight.unknown is None:
                flight.unknown = _unknown_elsewhere(endpoint)
            ending = _Ending()
            try:
                answer = await self._exchange(
                    session,
                    permit,
                    ending,
                    flight.connection(),
                    endpoint,
                    params,
                    flight=flight,
                    deadline=deadline,
                )
            except PositionNotFoundError as error:
                permit.finish(
                    ending.how, code=ending.code, claim=_claim_state(flight, error), final=True
                )
                if flight.unknown is None:
                    raise final_error(error, attempts, None)  # noqa: B904 - the same error, re-raised
                raise possibly_closed(error, attempts, flight.unknown) from error
            except BingXError as error:
                earlier = flight.unknown
                wait = plan_retry(
                    error,
                    policy,
                    attempts,
                    self.jitter,
                    repeat_safe=endpoint.repeat_safe,
                    resynced=resynced,
                )
                if flight.stop_after_answer or (
                    wait is not None and clock.monotonic() + wait > deadline
                ):
                    wait = None
                held = isinstance(error, RateLimitError) and limits.hold(
                    error, budgets, policy=policy, fallback=wait
                )
                if error.may_have_executed:
                    flight.unknown = error
                permit.finish(
                    ending.how,
                    code=ending.code,
                    claim=_claim_state(flight, error),
                    final=wait is None,
                )
                if wait is None:
                    raise final_error(error, attempts, earlier)  # noqa: B904 - the same error, re-raised
                failure = error
            except BaseException as error:
                permit.finish(
                    ending.how, code=ending.code, claim=_claim_state(flight, error), final=True
                )
                raise
            else:
                permit.finish(
                    Release.ANSWERED,
                    code=0,
                    claim=ClaimState.RESULT,
                    result=answer.data,
                    final=True,
                )
                return answer.data
            if isinstance(failure, TimestampError):
                resynced = True
                logger.info("%s: timestamp rejected; re-syncing clock and retrying", endpoint.name)
                await self._resync_clock(session, flight)
                continue
            logger.info(
                "%s: %s; retry %d in %.3f s", endpoint.name, type(failure).__name__, attempts, wait
            )
            if not held:
                # A hold is waited out in the limiter, in queue order; anything else here.
                await clock.sleep(wait)
            if after_unknown is not None and failure.may_have_executed:
                try:
                    settled = await after_unknown(failure)
                except BingXError as error:
                    raise final_error(error, attempts, None) from None
                if settled is not None:
                    return settled

    async def _exchange(
        self,
        session: BingXSession,
        permit: Pass,
        ending: _Ending,
        connection: Connection | None,
        endpoint: Endpoint,
        params: Params,
        *,
        flight: Flight[Any] | None,
        deadline: float,
    ) -> _Answer:
        """Sign, send and decode one request under ``permit``; ``ending`` says how it ended
        (the caller finishes the permit with it).

        ``flight`` (if any) counts the request while it is on the wire. The exchange, the
        answer's body included, ends by ``deadline`` (monotonic): the call's total_timeout.
        """
        clock = session.clock
        try:
            if connection is None:
                raise _closed(endpoint)
            if clock.monotonic() >= deadline:
                # Admitted at once, but nothing is sent once the call's time is up.
                raise RequestTimeout(
                    f"not sent: the call's total_timeout ran out before {endpoint.name} "
                    "could be sent",
                    endpoint=endpoint.name,
                    may_have_executed=False,
                )
            server_clock = session.server_clock(connection.host)
            timestamp_ms = None
            if endpoint.signed:
                self._sync_clock_if_due(session, connection)
                timestamp_ms = int(server_clock.time() * 1000)
            request = connection.build_request(endpoint, params, timestamp_ms=timestamp_ms)
            ending.how = Release.ABANDONED
            if flight is not None:
                flight.on_wire += 1
            sent_at = clock.time()
            started = clock.monotonic()
            # Shared limits: the slot's lease says by when the request has arrived, if ever;
            # one still unanswered then is cut off. So is one still unanswered (or whose
            # body still trickles in) when the call's total_timeout runs out.
            cut_off = min(permit.send_by, deadline)
            try:
                if cut_off == math.inf:
                    response = await connection.send(endpoint, request)
                else:
                    async with clock.timeout_at(cut_off):
                        response = await connection.send(endpoint, request)
            except TimeoutError:
                if deadline <= permit.send_by:
                    raise RequestTimeout(
                        f"{endpoint.name} was cut off when the call's total_timeout ran out, "
                        f"{clock.monotonic() - started:.3f} s after it was sent and before its "
                        "answer was read; it may have executed",
                        endpoint=endpoint.name,
                        may_have_executed=True,
                    ) from None
                raise RequestTimeout(
                    f"{endpoint.name} was cut off when its rate-limit lease ended; "
                    "it may have executed",
                    endpoint=endpoint.name,
                    may_have_executed=True,
                ) from None
            except TransportError as error:
                ending.how = Release.ANSWERED if error.may_have_executed else Release.NOT_SENT
                raise
            except asyncio.CancelledError:
                if flight is not None:
                    flight.unknown = TransportError(
                        f"{endpoint.name} was cut off before its answer came; it may have executed",
                        endpoint=endpoint.name,
                        may_have_executed=True,
                    )
                raise
            finally:
                if flight is not None:
                    flight.on_wire -= 1
            ending.how = Release.ANSWERED
            round_trip = clock.monotonic() - started
            data = decode(endpoint.name, response, server_now=server_clock.time())
            ending.code = 0
            return _Answer(data, sent_at, round_trip)
        except BingXError as error:
            ending.code = error.code
            raise

    # --- BingX's clock ------------------------------------------------------------------

    async def _measure(
        self, session: BingXSession, connection: Connection
    ) -> tuple[int, float, float]:
        """One quick, unretried server-time request, timed from when it leaves.

        The whole measurement, waiting for a rate-limit slot included, gets
        :data:`SYNC_TIMEOUT` seconds; a hold on the host refuses it at once.
        """
        clock = session.clock
        deadline = clock.monotonic() + SYNC_TIMEOUT
        async with clock.timeout_at(deadline):
            permit = await session.limits.admit(
                self._admission_for(TIME), max_block_wait=0.0, deadline=deadline
            )
            ending = _Ending()
            try:
                answer = await self._exchange(
                    session, permit, ending, connection, TIME, {}, flight=None, deadline=deadline
                )
            finally:
                permit.finish(ending.how, code=ending.code)
        return server_time_from(answer.data, TIME.name), answer.sent_at, answer.round_trip

    async def _sync_clock_first(self, session: BingXSession, flight: Flight[Any]) -> None:
        """Measure BingX's clock before the first signed request to a host."""
        connection = flight.connection()
        interval = self.clock_sync_interval
        if connection is None or interval is None:
            return
        server_clock = session.server_clock(connection.host)
        if not server_clock.synced and server_clock.due(interval):
            await server_clock.sync(lambda: self._measure(session, connection))

    def _sync_clock_if_due(self, session: BingXSession, connection: Connection) -> None:
        """Re-measure in the background once the interval has passed (checked as a request
        is about to be signed, so calls that queued for long trigger it too)."""
        interval = self.clock_sync_interval
        server_clock = session.server_clock(connection.host)
        if interval is not None and server_clock.synced and server_clock.due(interval):
            server_clock.sync_in_background(
                lambda: self._measure(session, connection), session.spawn
            )

    async def _resync_clock(self, session: BingXSession, flight: Flight[Any]) -> None:
        connection = flight.connection()
        if connection is not None:
            await session.server_clock(connection.host).sync(
                lambda: self._measure(session, connection)
            )


class _Ending:
    """How an attempt ended: what its permit is finished with."""

    __slots__ = ("code", "how")

    def __init__(self) -> None:
        self.how = Release.NOT_SENT
        self.code: int | None = None


def _claim_state(flight: Flight[Any], error: BaseException) -> ClaimState:
    """What a claimed call's failed (or cancelled) attempt says of it."""
    may_have_executed = isinstance(error, BingXError) and error.may_have_executed
    if may_have_executed or flight.unknown is not None or flight.on_wire:
        return ClaimState.UNKNOWN
    return ClaimState.NOTHING_EXECUTED


def _unknown_elsewhere(endpoint: Endpoint) -> BingXError:
    return BingXError(
        f"another process's {endpoint.name} of the same call ended without a known outcome; "
        "it may have executed",
        endpoint=endpoint.name,
        may_have_executed=True,
    )


def _closed(endpoint: Endpoint) -> ClientClosedError:
    return ClientClosedError(
        f"not sent: the client was closed ({endpoint.name})",
        endpoint=endpoint.name,
        may_have_executed=False,
    )
