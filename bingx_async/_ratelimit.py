"""The rate limiter: never more than N requests in any rolling window, at the server.

How a slot is dated: BingX counts a request when it *arrives*, which is somewhere between our
send and its answer. A slot is therefore held from admission until the answer comes back,
and only then dated — with the answer's time, an upper bound of the arrival. The next
request to reuse that slot waits until that date plus the window, so at the server any two
requests sharing a slot arrive at least one window apart, whatever the network jitter or the
delay between admission and the bytes leaving (connection set-up in a first burst).
Among any N+1 requests two share a slot, so no rolling window ever holds more than N.

Each budget keeps ``in_flight`` (admitted, not yet answered) and the ascending answer times
still inside the window; a request fits when ``in_flight + recent < limit``. Clients that
configure one budget key differently share it under the strictest setting: a request counts
against every window anyone configured for its keys, each at the lowest limit given for it.

Waiters queue first come, first served. Requests that draw on the same set of budgets form a
lane; only lane heads are ever examined, and a single wake-up (``Clock.call_at``, not a task,
so cancelling tasks cannot kill it) runs the dispatcher at the next moment a head could fit:
a send wakes exactly the task it admits, however many wait. A request takes its slots in all
of its budgets at once, or none.

The limiter also owns *holds*: ``RateLimiter.hold`` turns a rate-limit answer into the
budgets it blocks and for how long, for every caller at once.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import heapq
import itertools
import logging
import math
import operator
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from ._budgets import Budget, BudgetKey
from ._clock import Clock, Timer
from ._config import RetryPolicy
from ._exceptions import (
    BingXError,
    IPBannedError,
    QueueTimeoutError,
    RateLimitError,
    detached,
)

__all__ = [
    "ABANDONED_REQUEST_TRANSIT",
    "LONGEST_SHARED_HOLD",
    "RELEARN_AFTER",
    "BudgetUsage",
    "Permit",
    "RateLimiter",
    "Release",
    "RequestBudgets",
    "held_refusal",
    "queue_timeout",
]

logger = logging.getLogger("bingx_async")

#: Tolerance for float deadlines: a wake-up firing a hair early must not re-arm for ~0 s.
_EPSILON = 1e-6

#: Seconds after which a limit lowered by a block climbs back by one.
RELEARN_AFTER = 600.0

#: The longest any hold is shared with other calls, whatever BingX or a proxy said
#: (a ``Retry-After: 86400`` must not freeze every account of the process for a day).
LONGEST_SHARED_HOLD = 900.0

#: Requests whose budget states a limiter keeps at hand (each client's endpoints: a few).
_KNOWN_REQUESTS = 256

#: Seconds a request cut off without an answer may still need to reach BingX; its slot is
#: dated that much later.
ABANDONED_REQUEST_TRANSIT = 1.0


class Release(enum.Enum):
    """How a request that held a permit ended."""

    #: It never left: the slots are free again at once.
    NOT_SENT = "not sent"
    #: Its answer came back: the slots are dated now.
    ANSWERED = "answered"
    #: It was cut off without an answer and may still be on its way: dated a little later.
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class RequestBudgets:
    """The budgets one call's requests draw on, and how BingX's answers about them are read.

    ``margin`` (seconds) is added to every window; ``adapt`` lets a repeated "disabled"
    answer lower a budget (see ``RateLimiter.hold``).
    """

    budgets: tuple[tuple[BudgetKey, Budget], ...]
    host: str
    signed: bool
    label: str = ""
    margin: float = 0.0
    adapt: bool = True


class _BudgetState:
    __slots__ = (
        "block_reason",
        "blocked_until",
        "budget",
        "in_flight",
        "key",
        "limit",
        "lowered_at",
        "margin",
        "released",
        "struck_at",
    )

    def __init__(self, key: BudgetKey, budget: Budget, margin: float) -> None:
        self.key = key
        self.budget = budget
        self.margin = margin
        #: The limit in force: the budget's, or lower after BingX rejected it (see ``lower``).
        self.limit = budget.limit
        self.lowered_at = -math.inf
        self.struck_at = -math.inf
        self.in_flight = 0
        self.released: deque[float] = deque()
        self.blocked_until = -math.inf
        self.block_reason: RateLimitError | None = None

    def ready_at(self, now: float) -> float:
        """Earliest moment a new request fits; ``inf`` while every slot is in flight."""
        released = self.released
        window = self.budget.window + self.margin
        cutoff = now + _EPSILON - window
        while released and released[0] <= cutoff:
            released.popleft()
        if self.limit < self.budget.limit and now - self.lowered_at >= RELEARN_AFTER:
            self.limit += 1
            self.lowered_at = now
        excess = self.in_flight + len(released) - self.limit
        if excess < 0:
            fits = now
        elif len(released) > excess:
            # The slot that frees up the room is the (excess + 1)-th oldest answer.
            fits = released[excess] + window
        else:
            fits = math.inf
        blocked = self.blocked_until if self.blocked_until - _EPSILON > now else -math.inf
        return max(fits, blocked)

    def merge(self, budget: Budget, margin: float) -> None:
        """Another client configured this budget differently: keep the stricter of both."""
        if budget.limit < self.budget.limit:
            self.limit = max(1, self.limit - (self.budget.limit - budget.limit))
            self.budget = budget
        self.margin = max(self.margin, margin)

    def lower(self, now: float) -> bool:
        """BingX blocked this budget while it was full: the second time within
        ``RELEARN_AFTER`` seconds, assume BingX allows one less per window.

        Only blocks met while the budget was (nearly) full count, so a block caused by
        something else (another program on the account, the IP) does not slow us down, and
        a single block proves nothing.
        """
        self.ready_at(now)
        if self.in_flight + len(self.released) < self.limit - 1:
            return False
        repeated = now - self.struck_at < RELEARN_AFTER
        self.struck_at = now
        if not repeated or self.limit <= 1:
            return False
        self.limit -= 1
        self.lowered_at = now
        return True


class Permit:
    """Slots held in every budget of one request, from admission until ``release``."""

    __slots__ = ("_limiter", "_states", "released")

    #: By when the request must have left (monotonic time): never, in-process.
    send_by = math.inf

    def __init__(self, limiter: RateLimiter, states: Sequence[_BudgetState]) -> None:
        self._limiter = limiter
        self._states = states
        self.released = False

    def release(self, how: Release) -> None:
        """Give the slots back, dated according to ``how`` the request ended."""
        if self.released:
            return
        self.released = True
        at = self._limiter.clock.monotonic()
        if how is Release.ABANDONED:
            at += ABANDONED_REQUEST_TRANSIT
        for state in self._states:
            state.in_flight -= 1
            if how is Release.NOT_SENT:
                continue
            if state.released and at < state.released[-1]:
                bisect.insort(state.released, at)
            else:
                state.released.append(at)
        self._limiter._dispatch()


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """A snapshot of one budget: requests counted in its current window, and who waits.

    ``limit`` is the limit in force, lower than the configured one for a while after BingX
    rejected the budget while it was full.
    """

    key: BudgetKey
    limit: int
    window: float
    in_window: int
    in_flight: int
    waiting: int
    blocked_for: float

    @property
    def name(self) -> str:
        return " ".join(self.key)


_Lane = tuple[tuple[BudgetKey, float], ...]


class _Waiter:
    __slots__ = ("deadline", "future", "max_block_wait", "seq", "states")

    def __init__(
        self,
        seq: int,
        states: Sequence[_BudgetState],
        future: asyncio.Future[Permit],
        max_block_wait: float,
        deadline: float,
    ) -> None:
        self.seq = seq
        self.states = states
        self.future = future
        self.max_block_wait = max_block_wait
        self.deadline = deadline


_blocked_until = operator.attrgetter("blocked_until")


def _refusal(states: Sequence[_BudgetState], now: float, max_wait: float) -> RateLimitError | None:
    """The error for a request whose budgets stay blocked longer than it may wait."""
    state = max(states, key=_blocked_until)
    remaining = state.blocked_until - now
    reason = state.block_reason
    if remaining <= max_wait or reason is None:
        return None
    return held_refusal(" ".join(state.key), remaining, reason)


def held_refusal(name: str, remaining: float, reason: RateLimitError) -> RateLimitError:
    """The error for a request refused because budget ``name`` is held ``remaining`` more
    seconds for ``reason`` (an answer of BingX)."""
    return type(reason)(
        refused_locally=True,
        message=f"not sent: {name} is blocked for another {remaining:.3f} s "
        f"(longer than this call may wait); BingX said: {reason.msg or reason.message}",
        code=reason.code,
        msg=reason.msg,
        status_code=reason.status_code,
        endpoint=reason.endpoint,
        unblock_at=reason.unblock_at,
        retry_after=remaining,
        banned_code=reason.banned_code,
        may_have_executed=False,
    )


class RateLimiter:
    """Admits requests so that none of their budgets is ever exceeded (see module docs).

    One limiter belongs to one ``BingXSession``, and through it to every
    client of that session: accounts share their host's IP budgets, and clients using the
    same key share its account budgets.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        #: Budget key -> window -> state.
        self._states: dict[BudgetKey, dict[float, _BudgetState]] = {}
        #: Host -> (until, reason): IP bans, applied to the host's budgets seen later too.
        self._host_blocks: dict[str, tuple[float, RateLimitError]] = {}
        self._lanes: dict[_Lane, list[tuple[int, _Waiter]]] = {}
        #: id(request) -> (request, its states, its lane), for requests seen since the
        #: last state was created (a new state can belong to a request seen before).
        self._known: dict[int, tuple[RequestBudgets, tuple[_BudgetState, ...], _Lane]] = {}
        self._seq = itertools.count()
        self._timer: Timer | None = None
        self._timer_at = math.inf
        self._closed: Callable[[], BingXError] | None = None

    def next_ticket(self) -> int:
        """A place in the queue; pass it back to ``acquire`` to keep it across retries."""
        return next(self._seq)

    async def acquire(
        self,
        request: RequestBudgets,
        *,
        ticket: int | None = None,
        max_block_wait: float = math.inf,
        deadline: float = math.inf,
        since: float | None = None,
    ) -> Permit:
        """Wait until every budget of ``request`` has room, then take one slot in each.

        Raises at once, without queueing, the ``RateLimitError`` of a hold (see
        ``hold``) that lasts longer than ``max_block_wait`` seconds or past ``deadline``
        (monotonic time), and ``QueueTimeoutError`` if ``deadline`` passes while waiting
        (saying how long the call waited since ``since``, by default since this wait began).
        """
        if self._closed is not None:
            raise self._closed()
        _, states, lane = self._request_states(request)
        now = self.clock.monotonic()
        began = now if since is None else since
        if states:
            refused = _refusal(states, now, min(max_block_wait, deadline - now))
            if refused is not None:
                raise refused
        if self._lanes:
            # Serve waiters whose moment has come before this newcomer (first come, first
            # served even when a newcomer arrives before the wake-up fires).
            self._dispatch()
        if lane not in self._lanes and all(s.ready_at(now) <= now for s in states):
            return self._admit(states)
        if deadline <= now:
            raise queue_timeout(request, now - began)

        waiter = _Waiter(
            self.next_ticket() if ticket is None else ticket,
            states,
            asyncio.get_running_loop().create_future(),
            max_block_wait,
            deadline,
        )
        heapq.heappush(self._lanes.setdefault(lane, []), (waiter.seq, waiter))
        self._dispatch()
        try:
            if deadline == math.inf:
                permit = await self._wait(waiter)
            else:
                async with self.clock.timeout_at(deadline):
                    permit = await self._wait(waiter)
        except TimeoutError:
            raise queue_timeout(request, self.clock.monotonic() - began) from None
        waited = self.clock.monotonic() - now
        if waited > 0:
            logger.debug(
                "rate limit: %s waited %.3f s for its budgets", request.label or lane, waited
            )
        return permit

    async def _wait(self, waiter: _Waiter) -> Permit:
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.exception() is None:
                # Admitted in the same turn of the loop as it was cancelled: never sent.
                future.result().release(Release.NOT_SENT)
            else:
                # A cancelled future is skipped when it reaches the head of its lane: O(1)
                # here, and its place goes to the next waiter at once.
                self._dispatch()
            raise

    def hold(
        self,
        answer: RateLimitError,
        request: RequestBudgets,
        *,
        policy: RetryPolicy,
        fallback: float | None,
    ) -> bool:
        """Decide what a rate-limit answer BingX gave to ``request`` holds, and hold it.

        * An IP ban (HTTP 418/403) holds every budget of the host, also ones first used
          later, for its ``Retry-After``, else ``policy.ip_ban_hold``.
        * An answer naming a time ("unblocked after T", ``Retry-After``) holds until then
          plus ``policy.unblock_margin``; one that names none holds for ``fallback`` seconds
          (the caller's back-off; ``None``: hold nothing).
        * A signed request's coded answer holds its account budgets; an answer without a
          body code, or to an unsigned request, holds its IP budgets.
        * "Disabled until T" (a frequency rule broken) met twice while a budget was full
          lowers that budget by one, with ``request.adapt``.

        Holds never exceed ``LONGEST_SHARED_HOLD`` (or ``policy.ip_ban_hold``, if longer).
        Returns whether ``request``'s own budgets are now held, so that waiting for its next
        attempt in ``acquire`` waits the hold out.
        """
        longest = max(LONGEST_SHARED_HOLD, policy.ip_ban_hold)
        now = self.clock.monotonic()
        self._states_for(request)
        if isinstance(answer, IPBannedError):
            wait = answer.retry_after if answer.retry_after is not None else policy.ip_ban_hold
            until = now + min(wait, longest)
            current = self._host_blocks.get(request.host)
            if current is None or until > current[0]:
                self._host_blocks[request.host] = (until, answer)
            keys = [key for key in self._states if key[0] != "account" and key[1] == request.host]
            self._block(keys, until, answer, learn=False)
            return any(key[0] != "account" for key, _ in request.budgets)
        if answer.retry_after is not None:
            wait = answer.retry_after + policy.unblock_margin
        elif fallback is not None:
            wait = fallback
        else:
            return False
        ip_wide = answer.code is None or not request.signed
        keys = [key for key, _ in request.budgets if (key[0] != "account") == ip_wide]
        # Only "disabled until T" says a frequency rule was broken; other shapes (busy,
        # error-rate ban) say nothing about the budget's size.
        frequency_rule = answer.unblock_at is not None and answer.banned_code is None
        self._block(keys, now + min(wait, longest), answer, learn=frequency_rule and request.adapt)
        return bool(keys)

    def held_by(self, answer: RateLimitError) -> list[tuple[BudgetKey, float, float]]:
        """The budgets ``answer`` holds now: (key, window, seconds left)."""
        now = self.clock.monotonic()
        return [
            (state.key, state.budget.window, state.blocked_until - now)
            for state in self._all_states()
            if state.block_reason is answer and state.blocked_until > now
        ]

    def learned_limits(self, request: RequestBudgets) -> list[tuple[BudgetKey, float, int]]:
        """``request``'s budgets whose limit was learned lower: (key, window, limit)."""
        return [
            (state.key, state.budget.window, state.limit)
            for state in self._states_for(request)
            if state.limit < state.budget.limit
        ]

    def assume_answered(
        self, request: RequestBudgets, seen: dict[tuple[BudgetKey, float], tuple[float, int]]
    ) -> None:
        """Count, in each budget of ``request``, ``n`` requests answered at ``at`` for every
        ``(key, window): (at, n)`` of ``seen`` (what other processes were known to have sent,
        when this limiter stands in for a shared one)."""
        now = self.clock.monotonic()
        for state in self._states_for(request):
            at, count = seen.get((state.key, state.budget.window), (now, 0))
            state.ready_at(now)
            missing = count - state.in_flight - len(state.released)
            for _ in range(max(0, missing)):
                bisect.insort(state.released, at)

    def usage(self) -> list[BudgetUsage]:
        """A snapshot of every budget this limiter has seen."""
        now = self.clock.monotonic()
        waiting: dict[BudgetKey, int] = {}
        for lane, heap in self._lanes.items():
            pending = sum(1 for _, waiter in heap if not waiter.future.done())
            for key in {key for key, _ in lane}:
                waiting[key] = waiting.get(key, 0) + pending
        result = []
        for state in self._all_states():
            state.ready_at(now)  # drops answers that left the window
            result.append(
                BudgetUsage(
                    key=state.key,
                    limit=state.limit,
                    window=state.budget.window,
                    in_window=state.in_flight + len(state.released),
                    in_flight=state.in_flight,
                    waiting=waiting.get(state.key, 0),
                    blocked_for=max(0.0, state.blocked_until - now),
                )
            )
        return result

    def close(self, error: Callable[[], BingXError]) -> None:
        """Refuse every waiter and every later ``acquire`` with ``error()``."""
        self._closed = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf
        lanes, self._lanes = self._lanes, {}
        for heap in lanes.values():
            for _, waiter in heap:
                if not waiter.future.done():
                    waiter.future.set_exception(error())

    def rest(self) -> None:
        """No client is left to wait: keep the windows and holds, but nothing of the event
        loop (the wake-up, and the tracebacks of the answers that caused holds)."""
        self._dispatch()
        copies: dict[int, RateLimitError] = {}

        def kept(reason: RateLimitError) -> RateLimitError:
            found = copies.get(id(reason))
            if found is None:
                found = copies[id(reason)] = detached(reason)
            return found

        for state in self._all_states():
            if state.block_reason is not None:
                state.block_reason = kept(state.block_reason)
        for host, (until, reason) in self._host_blocks.items():
            self._host_blocks[host] = (until, kept(reason))

    # --- internals ----------------------------------------------------------------------

    def _states_for(self, request: RequestBudgets) -> tuple[_BudgetState, ...]:
        return self._request_states(request)[1]

    def _request_states(
        self, request: RequestBudgets
    ) -> tuple[RequestBudgets, tuple[_BudgetState, ...], _Lane]:
        """Every state of every budget key of ``request`` (made on first use, merged with
        ``request``'s settings), and its lane."""
        known = self._known.get(id(request))
        if known is not None and known[0] is request:
            # Merging the same settings again changes nothing.
            return known
        created = False
        for key, budget in request.budgets:
            windows = self._states.setdefault(key, {})
            state = windows.get(budget.window)
            if state is None:
                created = True
                state = windows[budget.window] = _BudgetState(key, budget, request.margin)
                host_block = self._host_blocks.get(key[1]) if key[0] != "account" else None
                if host_block is not None:
                    state.blocked_until, state.block_reason = host_block
            elif state.budget != budget or state.margin != request.margin:
                state.merge(budget, request.margin)
        keys = dict.fromkeys(key for key, _ in request.budgets)
        states = tuple(state for key in keys for state in self._states[key].values())
        lane: _Lane = tuple((state.key, state.budget.window) for state in states)
        if created or len(self._known) >= _KNOWN_REQUESTS:
            self._known.clear()
        known = self._known[id(request)] = (request, states, lane)
        return known

    def _all_states(self) -> Iterator[_BudgetState]:
        for windows in self._states.values():
            yield from windows.values()

    def _block(
        self, keys: Sequence[BudgetKey], until: float, reason: RateLimitError, *, learn: bool
    ) -> None:
        now = self.clock.monotonic()
        for key in keys:
            for state in self._states.get(key, {}).values():
                if until <= state.blocked_until:
                    continue
                starts_now = state.blocked_until <= now
                state.blocked_until = until
                state.block_reason = reason
                if learn and starts_now and state.lower(now):
                    logger.warning(
                        "rate limit: BingX blocked %s although it held %d per %g s; "
                        "assuming %d from now on",
                        " ".join(state.key),
                        state.limit + 1,
                        state.budget.window,
                        state.limit,
                    )
        self._dispatch()

    def _admit(self, states: Sequence[_BudgetState]) -> Permit:
        for state in states:
            state.in_flight += 1
        return Permit(self, states)

    def _live_head(self, lane: _Lane) -> _Waiter | None:
        heap = self._lanes[lane]
        while heap and heap[0][1].future.done():
            heapq.heappop(heap)
        if not heap:
            del self._lanes[lane]
            return None
        return heap[0][1]

    def _dispatch(self) -> None:
        """Admit every lane head that fits now, oldest first; arm the wake-up for the rest."""
        if not self._lanes:
            self._arm(math.inf)
            return
        now = self.clock.monotonic()
        heads: list[tuple[int, _Lane]] = []
        for lane in list(self._lanes):
            head = self._live_head(lane)
            if head is not None:
                heads.append((head.seq, lane))
        heapq.heapify(heads)
        earliest = math.inf
        while heads:
            _, lane = heapq.heappop(heads)
            head = self._lanes[lane][0][1]
            refused = _refusal(head.states, now, min(head.max_block_wait, head.deadline - now))
            fits_at = max(state.ready_at(now) for state in head.states)
            if refused is None and fits_at > now:
                earliest = min(earliest, fits_at)
                continue
            heapq.heappop(self._lanes[lane])
            if refused is not None:
                head.future.set_exception(refused)
            else:
                head.future.set_result(self._admit(head.states))
            following = self._live_head(lane)
            if following is not None:
                heapq.heappush(heads, (following.seq, lane))
        self._arm(earliest)

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            if self._timer_at <= at < math.inf:
                return
            # Nobody waits for a moment any more (``inf``), or an earlier one is due.
            self._timer.cancel()
        self._timer = None
        self._timer_at = at
        if at < math.inf and self._closed is None:
            self._timer = self.clock.call_at(at, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self._dispatch()


def queue_timeout(request: RequestBudgets, waited: float) -> QueueTimeoutError:
    return QueueTimeoutError(
        f"not sent: {request.label or 'the request'} waited {waited:.3f} s for its rate-limit "
        "budgets and the call's total_timeout ran out",
        endpoint=request.label or None,
        refused_locally=True,
        may_have_executed=False,
    )
