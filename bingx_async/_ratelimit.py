"""The rate limiter: never more than N requests in any rolling window, at the server.

How a slot is dated: BingX counts a request when it *arrives*, which is somewhere between our
send and its answer. A slot is therefore held from admission until the answer comes back,
and only then dated — with the answer's time, an upper bound of the arrival. The next
request to reuse that slot waits until that date plus the window, so at the server any two
requests sharing a slot arrive at least one window apart, whatever the network jitter or the
delay between admission and the bytes leaving (connection set-up in a first burst).
Among any N+1 requests two share a slot, so no rolling window ever holds more than N.

Each budget keeps ``in_flight`` (admitted, not yet answered) and the ascending answer times
still inside the window; a request fits when ``in_flight + recent < limit``.

Waiters queue first come, first served. Requests that draw on the same set of budgets form a
lane; only lane heads are ever examined, and a single timer wakes the dispatcher at the next
moment a head could fit, so a send wakes exactly the task it admits, however many wait.
A request takes its slots in all of its budgets at once, or none.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from ._budgets import Budget, BudgetKey
from ._clock import Clock
from ._exceptions import RateLimitError

__all__ = ["BudgetUsage", "Permit", "RateLimiter"]

logger = logging.getLogger("bingx_async")

#: Tolerance for float deadlines: a timer firing a hair early must not re-arm for ~0 s.
_EPSILON = 1e-6

#: Seconds after which a limit lowered by :meth:`RateLimiter.block` climbs back by one.
RELEARN_AFTER = 600.0


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
        if self.in_flight + len(released) < self.limit:
            fits = now
        elif len(released) > self.in_flight + len(released) - self.limit:
            # The slot that frees up the room is the (excess + 1)-th oldest answer.
            fits = released[self.in_flight + len(released) - self.limit] + window
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
        :data:`RELEARN_AFTER` seconds, assume BingX allows one less per window.

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
    """Slots held in every budget of one request, from admission until :meth:`release`."""

    __slots__ = ("_limiter", "_states", "released")

    def __init__(self, limiter: RateLimiter, states: Sequence[_BudgetState]) -> None:
        self._limiter = limiter
        self._states = states
        self.released = False

    def release(self, *, sent: bool = True, still_arriving: float = 0.0) -> None:
        """Give the slots back, dated now (``sent=False``: the request never left).

        ``still_arriving``: seconds the request may still take to reach BingX (it was
        abandoned without an answer), added to the date.
        """
        if self.released:
            return
        self.released = True
        at = self._limiter.clock.monotonic() + still_arriving
        for state in self._states:
            state.in_flight -= 1
            if not sent:
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


class _Waiter:
    __slots__ = ("enqueued_at", "future", "lane", "max_block_wait", "seq", "states")

    def __init__(
        self,
        seq: int,
        lane: tuple[BudgetKey, ...],
        states: Sequence[_BudgetState],
        future: asyncio.Future[Permit],
        enqueued_at: float,
        max_block_wait: float,
    ) -> None:
        self.seq = seq
        self.lane = lane
        self.states = states
        self.future = future
        self.enqueued_at = enqueued_at
        self.max_block_wait = max_block_wait


def _blocked_error(
    states: Sequence[_BudgetState], now: float, max_wait: float
) -> RateLimitError | None:
    """The error for a request whose budgets stay blocked longer than it may wait."""
    state = max(states, key=lambda s: s.blocked_until)
    remaining = state.blocked_until - now
    reason = state.block_reason
    if remaining <= max_wait or reason is None:
        return None
    return type(reason)(
        refused_locally=True,
        message=f"not sent: {' '.join(state.key)} is blocked for another {remaining:.3f} s "
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

    One limiter is shared by every client of a process that uses the same clock
    (:func:`shared_limiter`), so accounts share their host's IP budgets and clients using
    the same key share its account budgets. It belongs to the event loop it is first used in.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._states: dict[tuple[BudgetKey, float], _BudgetState] = {}
        #: Host -> (until, reason): IP bans, applied to the host's budgets seen later too.
        self._host_blocks: dict[str, tuple[float, RateLimitError]] = {}
        self._lanes: dict[tuple[BudgetKey, ...], list[tuple[int, _Waiter]]] = {}
        self._seq = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = math.inf

    def _state(self, key: BudgetKey, budget: Budget, margin: float) -> _BudgetState:
        # One state per key and window: clients that disagree on a budget's limit or margin
        # still count together, under the stricter setting.
        state = self._states.get((key, budget.window))
        if state is None:
            state = self._states[(key, budget.window)] = _BudgetState(key, budget, margin)
            host_block = self._host_blocks.get(key[1]) if key[0] != "account" else None
            if host_block is not None:
                state.blocked_until, state.block_reason = host_block
        elif state.budget != budget or state.margin != margin:
            state.merge(budget, margin)
        return state

    def next_ticket(self) -> int:
        """A place in the queue; pass it back to :meth:`acquire` to keep it across retries."""
        return next(self._seq)

    async def acquire(
        self,
        budgets: Sequence[tuple[BudgetKey, Budget]],
        *,
        ticket: int | None = None,
        label: str = "",
        max_block_wait: float = math.inf,
        margin: float = 0.0,
    ) -> Permit:
        """Wait until every budget has room, then take one slot in each.

        ``margin`` (seconds) is added to every window. Raises :class:`RateLimitError` at
        once, without queueing, when a budget is blocked (see :meth:`block`) for longer than
        ``max_block_wait`` seconds.
        """
        states = [self._state(key, budget, margin) for key, budget in budgets]
        lane = tuple(state.key for state in states)
        now = self.clock.monotonic()
        if states:
            blocked = _blocked_error(states, now, max_block_wait)
            if blocked is not None:
                raise blocked
        if self._lanes:
            # Serve waiters whose moment has come before this newcomer (first come, first
            # served even when a newcomer arrives before the timer fires).
            self._dispatch()
        if lane not in self._lanes and all(s.ready_at(now) <= now for s in states):
            return self._admit(states)

        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            self.next_ticket() if ticket is None else ticket,
            lane,
            states,
            loop.create_future(),
            now,
            max_block_wait,
        )
        heapq.heappush(self._lanes.setdefault(lane, []), (waiter.seq, waiter))
        self._dispatch()
        try:
            permit = await waiter.future
        except asyncio.CancelledError:
            if (
                waiter.future.done()
                and not waiter.future.cancelled()
                and waiter.future.exception() is None
            ):
                waiter.future.result().release(sent=False)
            else:
                # A cancelled future is skipped when it reaches the head of its lane: O(1)
                # here, and its place goes to the next waiter at once.
                self._dispatch()
            raise
        waited = self.clock.monotonic() - waiter.enqueued_at
        if waited > 0:
            logger.debug("rate limit: %s waited %.3f s for its budgets", label or lane, waited)
        return permit

    def block(
        self,
        keys: Sequence[BudgetKey],
        until: float,
        reason: RateLimitError,
        *,
        learn: bool = False,
    ) -> None:
        """Hold every request drawing on any of ``keys`` until monotonic time ``until``.

        Waiters that may not wait that long fail with a :class:`RateLimitError` built from
        ``reason``. With ``learn``, a second block within :data:`RELEARN_AFTER` seconds that
        begins while a budget was full lowers that budget's limit by one (BingX enforces
        less than we were told); the limit climbs back by one every :data:`RELEARN_AFTER`
        seconds.
        """
        now = self.clock.monotonic()
        for state in self._states.values():
            if state.key not in keys or until <= state.blocked_until:
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

    def block_host(self, host: str, until: float, reason: RateLimitError) -> None:
        """Hold every request to ``host`` (all its IP budgets, also ones first used later)."""
        current = self._host_blocks.get(host)
        if current is None or until > current[0]:
            self._host_blocks[host] = (until, reason)
        keys = [
            state.key
            for state in self._states.values()
            if state.key[0] != "account" and state.key[1] == host
        ]
        self.block(keys, until, reason)

    def usage(self) -> list[BudgetUsage]:
        """A snapshot of every budget this limiter has seen."""
        now = self.clock.monotonic()
        waiting: dict[BudgetKey, int] = {}
        for lane, heap in self._lanes.items():
            pending = sum(1 for _, w in heap if not w.future.done())
            for key in lane:
                waiting[key] = waiting.get(key, 0) + pending
        result = []
        for state in self._states.values():
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

    # --- internals ----------------------------------------------------------------------

    def _admit(self, states: Sequence[_BudgetState]) -> Permit:
        for state in states:
            state.in_flight += 1
        return Permit(self, states)

    def _live_head(self, lane: tuple[BudgetKey, ...]) -> _Waiter | None:
        heap = self._lanes[lane]
        while heap and heap[0][1].future.done():
            heapq.heappop(heap)
        if not heap:
            del self._lanes[lane]
            return None
        return heap[0][1]

    def _dispatch(self) -> None:
        """Admit every lane head that fits now, oldest first; arm the timer for the rest."""
        now = self.clock.monotonic()
        heads: list[tuple[int, tuple[BudgetKey, ...]]] = []
        for lane in list(self._lanes):
            head = self._live_head(lane)
            if head is not None:
                heads.append((head.seq, lane))
        heapq.heapify(heads)
        earliest = math.inf
        while heads:
            _, lane = heapq.heappop(heads)
            head = self._lanes[lane][0][1]
            blocked = _blocked_error(head.states, now, head.max_block_wait)
            fits_at = max(state.ready_at(now) for state in head.states)
            if blocked is None and fits_at > now:
                earliest = min(earliest, fits_at)
                continue
            heapq.heappop(self._lanes[lane])
            if blocked is not None:
                head.future.set_exception(blocked)
            else:
                head.future.set_result(self._admit(head.states))
            following = self._live_head(lane)
            if following is not None:
                heapq.heappush(heads, (following.seq, lane))
        self._arm(earliest)

    def _arm(self, at: float) -> None:
        if at >= self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at < math.inf:
            self._timer = asyncio.get_running_loop().create_task(self._fire(at))

    async def _fire(self, at: float) -> None:
        await self.clock.sleep(at - self.clock.monotonic())
        self._timer = None
        self._timer_at = math.inf
        self._dispatch()
