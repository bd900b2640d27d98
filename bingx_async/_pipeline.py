"""The request pipeline: retry around [limit -> sign -> send -> decode].

Every call of every client goes through :meth:`Pipeline.call`, inside a flight its session
owns (see :mod:`bingx_async._flights`). The call hands over through layers, each with one
job::

    call                  settles the call's claim, however the call ends
    _call_retrying        attempts until one ends the call
      _attempt            one attempt; its permit finished in exactly one place
        _admit            a rate-limit permit (BingX's clock measured first, if never yet)
        _exchange         sign with a fresh timestamp on BingX's clock, send, decode
          _on_wire        the request on the wire, cut off at its lease or deadline
        _plan_retry       whether and when to try again; what the limiter holds
      _between_attempts   re-sync the clock, or wait; then confirm an unknown close

A rate-limit answer goes to :meth:`RateLimiter.hold`, once, which decides what it holds.
Confirming a close whose outcome is unknown is :mod:`bingx_async._confirm`'s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx

from ._budgets import RateLimitPolicy
from ._clock import Clock, Timer
from ._config import RetryPolicy
from ._confirm import CloseConfirmation
from ._connection import Connection, Reply
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

__all__ = ["SYNC_TIMEOUT", "Pipeline"]

logger = logging.getLogger("bingx_async")

#: Seconds a clock measurement may take in total, queueing included; then it is abandoned.
SYNC_TIMEOUT = 2.0
#: Endpoints whose budgets a pipeline keeps at hand.
_ADMISSION_CACHE = 64


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
    _cut_offs: _CutOffs = field(
        default_factory=lambda: _CutOffs(), init=False, repr=False, compare=False
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
                if endpoint.for_account and self.error_guard is not None
                else None,
            )
        return found

    def _budgets(self, endpoint: Endpoint) -> RequestBudgets:
        account = self.account if endpoint.for_account else None
        found = self.rate_limits._budgets(endpoint.name, host=self.host, account=account)
        return RequestBudgets(
            tuple(found),
            host=self.host,
            signed=endpoint.for_account,
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
        confirm: CloseConfirmation | None = None,
        claim: Claim | None = None,
    ) -> Any:
        """Run one call to its end; raise the error it ends with.

        The call hands over, layer by layer: :meth:`_call_retrying` makes attempts until one
        ends the call, :meth:`_attempt` makes one (admitted, sent, its permit finished) and
        :meth:`_between_attempts` waits, re-syncs the clock or confirms an unknown outcome
        before the next. This layer settles the call's ``claim`` (one that only one caller
        anywhere makes at a time, see :class:`Claim`) however the call ends.

        ``confirm`` says how to find out, after an attempt whose outcome is unknown, whether
        the close it sent closed the position after all (see :mod:`bingx_async._confirm`).
        """
        try:
            result = await self._call_retrying(
                self._begin(session, flight, endpoint, params, policy, started, confirm, claim)
            )
        except BaseException as error:
            if claim is not None and not claim.settled:
                session._limits.settle(claim, _claim_state(flight, error))
            raise
        if claim is not None and not claim.settled:
            session._limits.settle(claim, ClaimState.RESULT, result)
        return result

    def _begin(
        self,
        session: BingXSession,
        flight: Flight[Any],
        endpoint: Endpoint,
        params: Params,
        policy: RetryPolicy,
        started: float,
        confirm: CloseConfirmation | None,
        claim: Claim | None,
    ) -> _CallState:
        """What the call's attempts share: admission, queue place, deadline."""
        admission = self._admission_for(endpoint)
        if claim is not None:
            admission = Attempt(admission.budgets, admission.guard, claim)
        return _CallState(
            session=session,
            flight=flight,
            endpoint=endpoint,
            params=params,
            policy=policy,
            started=started,
            deadline=(
                started + policy.total_timeout if policy.total_timeout is not None else math.inf
            ),
            admission=admission,
            ticket=session._limits.next_ticket(),
            confirm=confirm,
            began=session._server_clock(self.host).time() if confirm is not None else math.nan,
        )

    async def _call_retrying(self, call: _CallState) -> Any:
        """Make attempts until one ends the call (or raises what it ends with)."""
        while True:
            attempt = await self._attempt(call)
            if isinstance(attempt, _Ended):
                return attempt.result
            ended = await self._between_attempts(call, attempt)
            if ended is not None:
                return ended.result

    async def _attempt(self, call: _CallState) -> _Ended | _Retry:
        """One attempt: admitted, sent and decoded, its permit finished exactly once.

        Returns how the call ended, or when to try again; raises what the call ends with.
        """
        call.attempts += 1
        permit = await self._admit(call)
        if permit.joined is not None:
            return _Ended(permit.joined)  # the call ended elsewhere; nothing was sent here
        flight = call.flight
        if permit.inherited_unknown and flight.unknown is None:
            flight.unknown = _unknown_elsewhere(call.endpoint)
        ending = _Ending()
        try:
            answer = await self._exchange(
                call.session,
                permit,
                ending,
                flight.connection(),
                call.endpoint,
                call.params,
                flight=flight,
                deadline=call.deadline,
            )
        except PositionNotFoundError as error:
            permit.finish(
                ending.how, code=ending.code, claim=_claim_state(flight, error), final=True
            )
            if flight.unknown is None:
                raise final_error(error, call.attempts, None)  # noqa: B904 - the same error, re-raised
            raise possibly_closed(error, call.attempts, flight.unknown) from error
        except BingXError as error:
            return self._plan_retry(call, permit, ending, error)
        except BaseException as error:
            permit.finish(
                ending.how, code=ending.code, claim=_claim_state(flight, error), final=True
            )
            raise
        permit.finish(
            Release.ANSWERED, code=0, claim=ClaimState.RESULT, result=answer.data, final=True
        )
        return _Ended(answer.data)

    async def _admit(self, call: _CallState) -> Pass:
        """The next attempt's permit (BingX's clock measured first, before a signed call's
        first request to a host). A refusal (a hold too long, total_timeout, a closed
        client) ends the call: nothing was sent."""
        try:
            if call.flight.connection() is None:
                raise _closed(call.endpoint)
            if call.endpoint.signed:
                await self._sync_clock_first(call.session, call.flight)
            return await call.session._limits.admit(
                call.admission,
                ticket=call.ticket,
                max_block_wait=call.policy.max_server_wait + call.policy.unblock_margin,
                deadline=call.deadline,
                since=call.started,
            )
        except BingXError as refused:
            raise final_error(refused, call.attempts, call.flight.unknown)  # noqa: B904 - the same error, re-raised

    def _plan_retry(
        self, call: _CallState, permit: Pass, ending: _Ending, error: BingXError
    ) -> _Retry:
        """After an attempt that failed with ``error``: whether and when to try again, what
        the limiter holds, and the permit finished accordingly. Raises ``error`` when the
        call ends with it."""
        flight = call.flight
        earlier = flight.unknown
        wait = plan_retry(
            error,
            call.policy,
            call.attempts,
            self.jitter,
            repeat_safe=call.endpoint.repeat_safe,
            resynced=call.resynced,
        )
        if flight.stop_after_answer or (
            wait is not None and call.session.clock.monotonic() + wait > call.deadline
        ):
            wait = None
        held = isinstance(error, RateLimitError) and call.session._limits.hold(
            error, call.admission.budgets, policy=call.policy, fallback=wait
        )
        if error.may_have_executed:
            flight.unknown = error
        permit.finish(
            ending.how, code=ending.code, claim=_claim_state(flight, error), final=wait is None
        )
        if wait is None:
            raise final_error(error, call.attempts, earlier)
        return _Retry(error, wait, held)

    async def _between_attempts(self, call: _CallState, retry: _Retry) -> _Ended | None:
        """Before the next attempt: re-sync BingX's clock after a timestamp error; else wait
        (a hold is waited out in the limiter, in queue order) and, after an attempt whose
        outcome is unknown, ask whether the call ended after all."""
        failure = retry.failure
        if isinstance(failure, TimestampError):
            call.resynced = True
            logger.info("%s: timestamp rejected; re-syncing clock and retrying", call.endpoint.name)
            await self._resync_clock(call.session, call.flight)
            return None
        logger.info(
            "%s: %s; retry %d in %.3f s",
            call.endpoint.name,
            type(failure).__name__,
            call.attempts,
            retry.wait,
        )
        if not retry.held:
            await call.session.clock.sleep(retry.wait)
        if call.confirm is not None and failure.may_have_executed:
            return await self._confirm_unknown(call, call.confirm, failure)
        return None

    async def _confirm_unknown(
        self, call: _CallState, confirm: CloseConfirmation, unknown: BingXError
    ) -> _Ended | None:
        """Whether BingX's records show the call ended after all (``None``: retry)."""
        try:
            found = await confirm.confirm(
                unknown,
                functools.partial(self._lookup, call),
                symbols=call.session._symbols,
                began=call.began,
            )
        except BingXError as error:
            raise final_error(error, call.attempts, None) from None
        return _Ended(found) if found is not None else None

    async def _lookup(self, call: _CallState, endpoint: Endpoint, params: Params) -> Any:
        """A read on the call's behalf: its budgets and deadline, retried at most once."""
        policy = dataclasses.replace(call.policy, attempts=min(call.policy.attempts, 2))
        return await self.call(
            call.session, call.flight.child(), endpoint, params, policy=policy, started=call.started
        )

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
            now = clock.monotonic()
            if now >= deadline:
                # Admitted at once, but nothing is sent once the call's time is up.
                raise RequestTimeout(
                    f"not sent: the call's total_timeout ran out before {endpoint.name} "
                    "could be sent",
                    endpoint=endpoint.name,
                    may_have_executed=False,
                )
            server_clock = session._server_clock(connection.host)
            timestamp_ms = None
            if endpoint.signed:
                self._sync_clock_if_due(session, connection, now)
                timestamp_ms = int(server_clock.time() * 1000)
            request = connection.build_request(endpoint, params, timestamp_ms=timestamp_ms)
            # Shared limits: the slot's lease says by when the request has arrived, if ever;
            # one still unanswered then is cut off. So is one still unanswered (or whose
            # body still trickles in) when the call's total_timeout runs out.
            response, sent_at, started = await _on_wire(
                clock,
                connection,
                endpoint,
                request,
                ending,
                flight,
                min(permit.send_by, deadline),
                self._cut_offs,
                by_deadline=deadline <= permit.send_by,
            )
            round_trip = clock.monotonic() - started
            data = decode(
                endpoint.name,
                response,
                server_now=server_clock.time(),
                enveloped=endpoint.enveloped,
            )
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
            permit = await session._limits.admit(
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
        server_clock = session._server_clock(connection.host)
        if not server_clock.synced and server_clock.due(interval, session.clock.monotonic()):
            await server_clock.sync(lambda: self._measure(session, connection))

    def _sync_clock_if_due(self, session: BingXSession, connection: Connection, now: float) -> None:
        """Re-measure in the background once the interval has passed (checked as a request
        is about to be signed, so calls that queued for long trigger it too)."""
        interval = self.clock_sync_interval
        server_clock = session._server_clock(connection.host)
        if interval is not None and server_clock.synced and server_clock.due(interval, now):
            server_clock.sync_in_background(
                lambda: self._measure(session, connection), session._spawn
            )

    async def _resync_clock(self, session: BingXSession, flight: Flight[Any]) -> None:
        connection = flight.connection()
        if connection is not None:
            await session._server_clock(connection.host).sync(
                lambda: self._measure(session, connection)
            )


@dataclass(slots=True)
class _CallState:
    """One call, across its attempts."""

    session: BingXSession
    flight: Flight[Any]
    endpoint: Endpoint
    params: Params
    policy: RetryPolicy
    #: When the call began, and by when it must end (monotonic; total_timeout).
    started: float
    deadline: float
    #: What each attempt is admitted under, and the call's place in the queue.
    admission: Attempt
    ticket: int
    confirm: CloseConfirmation | None
    #: BingX's time (epoch seconds) as the call began; only a close to confirm asks it.
    began: float
    attempts: int = 0
    #: Whether BingX's clock was re-measured after a timestamp error (once per call).
    resynced: bool = False


class _Ended(NamedTuple):
    """How the call ended: its result."""

    result: Any


class _Retry(NamedTuple):
    """A failed attempt to be retried: its error, the wait before the next, and whether the
    limiter holds the call meanwhile (a hold is waited out there, in queue order)."""

    failure: BingXError
    wait: float
    held: bool


async def _on_wire(
    clock: Clock,
    connection: Connection,
    endpoint: Endpoint,
    request: httpx.Request,
    ending: _Ending,
    flight: Flight[Any] | None,
    cut_off: float,
    cut_offs: _CutOffs,
    *,
    by_deadline: bool,
) -> tuple[Reply, float, float]:
    """Send ``request`` and read its answer, cut off at ``cut_off`` (the call's deadline if
    ``by_deadline``, else the slot's lease); the answer, and when it was sent (wall clock,
    monotonic). ``ending`` says from when the request may have left, and ``flight`` (if
    any) counts it while it is on the wire."""
    ending.how = Release.ABANDONED
    sent_at = clock.time()
    started = clock.monotonic()
    if flight is not None:
        flight.on_wire += 1
        flight.sent_at = started
    task = asyncio.current_task()
    assert task is not None
    cut = None if cut_off == math.inf else cut_offs.arm(clock, cut_off, task)
    try:
        response = await connection.send(endpoint, request)
    except TransportError as error:
        ending.how = Release.ANSWERED if error.may_have_executed else Release.NOT_SENT
        raise
    except asyncio.CancelledError:
        if cut is not None and cut.fired and task.uncancel() == 0:
            raise _cut_off(endpoint, clock.monotonic() - started, by_deadline=by_deadline) from None
        if flight is not None:
            flight.unknown = TransportError(
                f"{endpoint.name} was cut off before its answer came; it may have executed",
                endpoint=endpoint.name,
                may_have_executed=True,
            )
        raise
    finally:
        if cut is not None:
            cut_offs.disarm(cut)
        if flight is not None:
            flight.on_wire -= 1
    ending.how = Release.ANSWERED
    return response, sent_at, started


class _CutOff:
    __slots__ = ("done", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.done = False
        self.fired = False


class _CutOffs:
    """Cuts requests off at their times with one timer, set for the earliest time of the
    requests on the wire: a timer of their own, set and cancelled for every request, cost
    about a tenth of a close's CPU when many were in flight. Times mostly come in order, so
    the timer is set again only when it fires, or after the wire emptied (which cancels it).

    The timer is set on the event loop's next turn after a request is armed, not at once: a
    request answered within the turn it was sent (by an in-memory transport) then costs no
    timer at all, and one still on the wire waits a turn longer for a cut-off seconds away.
    """

    __slots__ = ("_heap", "_on_wire", "_order", "_settling", "_timer", "_timer_at")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _CutOff]] = []
        self._order = itertools.count()
        self._on_wire = 0
        self._timer: Timer | None = None
        self._timer_at = math.inf
        #: The loop whose next turn sets the timer (weakly: a loop closed before that turn
        #: must not keep this from setting it on the next loop).
        self._settling: weakref.ref[asyncio.AbstractEventLoop] | None = None

    def arm(self, clock: Clock, when: float, task: asyncio.Task[Any]) -> _CutOff:
        """Cancel ``task`` once ``when`` passed, unless it is disarmed first (then the cut's
        ``fired`` says so)."""
        cut = _CutOff(task)
        heapq.heappush(self._heap, (when, next(self._order), cut))
        self._on_wire += 1
        if when < self._timer_at:
            loop = task.get_loop()
            settling = self._settling
            if settling is None or settling() is not loop:
                self._settling = weakref.ref(loop)
                loop.call_soon(self._settle, clock)
        return cut

    def disarm(self, cut: _CutOff) -> None:
        cut.done = True
        self._on_wire -= 1
        heap = self._heap
        if not self._on_wire:
            heap.clear()
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, math.inf
            return
        while heap and heap[0][2].done:
            heapq.heappop(heap)

    def _settle(self, clock: Clock) -> None:
        """Set the timer for the earliest request still on the wire, if it is set later."""
        self._settling = None
        if self._heap and self._heap[0][0] < self._timer_at:
            self._set_timer(clock, self._heap[0][0])

    def _set_timer(self, clock: Clock, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = clock.call_at(when, functools.partial(self._fire, clock))

    def _fire(self, clock: Clock) -> None:
        self._timer, self._timer_at = None, math.inf
        heap, now = self._heap, clock.monotonic()
        while heap and (heap[0][2].done or heap[0][0] <= now):
            cut = heapq.heappop(heap)[2]
            if not cut.done:
                cut.fired = True
                cut.task.cancel()
        if heap:
            self._set_timer(clock, heap[0][0])


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


def _cut_off(endpoint: Endpoint, after: float, *, by_deadline: bool) -> RequestTimeout:
    """A request cut off ``after`` seconds on the wire, by the call's total_timeout or else
    by its rate-limit lease."""
    if by_deadline:
        return RequestTimeout(
            f"{endpoint.name} was cut off when the call's total_timeout ran out, "
            f"{after:.3f} s after it was sent and before its answer was read; it may have executed",
            endpoint=endpoint.name,
            may_have_executed=True,
        )
    return RequestTimeout(
        f"{endpoint.name} was cut off when its rate-limit lease ended; it may have executed",
        endpoint=endpoint.name,
        may_have_executed=True,
    )


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
