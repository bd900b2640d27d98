"""Stateful property tests (Hypothesis), in virtual time.

Two machines, each stating the library's promises as a server would see them:

* :class:`LimiterMachine` drives a :class:`RateLimiter` directly: acquiring random sets of
  small budgets, cancelling waiters at any moment (also in the loop tick that admits them),
  releasing permits, holds from rate-limit answers, time passing, and ``close()``.
* :class:`SharedClosesMachine` drives :class:`BingXClient` objects sharing one
  :class:`BingXSession` against a strict in-memory exchange (a position closes once; answers
  may be late, lost, rate limited or refused), with callers cancelled at random moments and
  clients closed under them.

Every example runs on its own :class:`VirtualTimeLoop`: when nothing is ready, its clock jumps
to the next timer, so hours of waits take milliseconds. The library reads that clock through
:class:`LoopClock`, so the limiter's ``call_at`` wake-ups and the loop agree exactly.

Profiles: ``HYPOTHESIS_PROFILE=ci`` (the default, a few seconds) or ``thorough``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import math
import os
import random
import selectors
import sys
from collections.abc import Callable, Coroutine, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    INVARIANT_MARKER,
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bingx_async import (
    BingXClient,
    BingXError,
    BingXSession,
    Budget,
    ClientClosedError,
    ClosePositionResult,
    IPBannedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    QueueTimeoutError,
    RateLimitError,
    RetryPolicy,
)
from bingx_async._budgets import BudgetKey
from bingx_async._flights import ORPHAN_MEMORY
from bingx_async._memory_limits import MemoryLimits
from bingx_async._ratelimit import (
    ABANDONED_REQUEST_TRANSIT,
    LONGEST_SHARED_HOLD,
    Permit,
    RateLimiter,
    Release,
    RequestBudgets,
)
from bingx_async.testing import LoopClock

T = TypeVar("T")

#: No "explain" phase (re-running a failure many times over to find the lines only failures
#: reach: slow for machines this size; the printed steps say what happened), and one failure
#: shrunk per run rather than every distinct one, so that a failure is reported in seconds.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)
settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    phases=PHASES,
    report_multiple_bugs=False,
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    stateful_step_count=100,
    deadline=None,
    phases=PHASES,
    report_multiple_bugs=False,
)
PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)
#: pytest-timeout's 60 s is for the CI profile; a thorough run may take minutes.
TIMEOUT = 60 if PROFILE_NAME == "ci" else 0

#: Slack for float arithmetic on virtual times (the limiter itself allows 1e-6).
TOL = 1e-5
#: For rules that end much of the story (closing things): true one time in four.
RARELY = st.sampled_from([False, False, False, True])


# --- a virtual-time event loop ------------------------------------------------------------------


class _IdleSelector(selectors.SelectSelector):
    """Polls without waiting; tells the loop when it would have had to wait."""

    def __init__(self) -> None:
        super().__init__()
        self.on_idle: Callable[[], None] | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout != 0 and self.on_idle is not None:
            self.on_idle()
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps to the next timer whenever nothing is ready.

    :meth:`run_until` runs every callback due up to a moment, then stops there with nothing
    ready: the state between two calls is quiescent, as if the loop had idled.
    """

    _scheduled: list[asyncio.TimerHandle]

    def __init__(self) -> None:
        selector = _IdleSelector()
        super().__init__(selector)
        self._now = 0.0
        self._horizon = 0.0
        selector.on_idle = self._idle
        #: Every task made on this loop (asyncio.all_tasks scans every loop's live tasks).
        self.tasks: list[asyncio.Task[Any]] = []
        self.set_task_factory(self._make_task)

    def time(self) -> float:
        return self._now

    def run_until(self, horizon: float) -> None:
        self._horizon = max(horizon, self._now)
        self.run_forever()

    def live_timers(self) -> list[asyncio.TimerHandle]:
        return [handle for handle in self._scheduled if not handle.cancelled()]

    def pending_tasks(self) -> list[asyncio.Task[Any]]:
        return [task for task in self.tasks if not task.done()]

    def _make_task(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **options: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **options)
        self.tasks.append(task)
        return task

    def _idle(self) -> None:
        # _run_once dropped cancelled timers from the head before asking to wait.
        if self._scheduled and self._scheduled[0].when() <= self._horizon:
            self._now = max(self._now, self._scheduled[0].when())
            return
        self._now = self._horizon
        self.stop()


class VirtualTimeMachine(RuleBasedStateMachine):
    """A state machine whose rules drive a fresh :class:`VirtualTimeLoop`."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(self._loop_error)
        #: The machine's own timers (delayed cancellations, answers), not the library's.
        self.harness_timers: list[asyncio.TimerHandle] = []

    @property
    def now(self) -> float:
        return self.loop.time()

    def settle(self) -> None:
        """Run everything due now, leaving nothing ready."""
        self.loop.run_until(self.now)

    def advance(self, seconds: float) -> None:
        self.loop.run_until(self.now + seconds)

    def call(self, work: Callable[[], T]) -> T:
        """``work()`` inside the running loop (the library's clock needs it), then settle."""
        results: list[T] = []
        errors: list[BaseException] = []

        def step() -> None:
            try:
                results.append(work())
            except BaseException as error:  # noqa: BLE001 - re-raised in the rule below
                errors.append(error)

        self.loop.call_soon(step)
        self.settle()
        if errors:
            raise errors[0]
        return results[0]

    def later(self, when: float, callback: Callable[[], None]) -> None:
        self.harness_timers.append(self.loop.call_at(when, callback))

    def library_timers(self) -> list[asyncio.TimerHandle]:
        ours = {id(timer) for timer in self.harness_timers}
        return [t for t in self.loop.live_timers() if id(t) not in ours]

    def spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.loop.create_task(work)
        self.settle()
        return task

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(str(context.get("exception") or context.get("message")))

    @invariant()
    def the_loop_saw_no_unhandled_error(self) -> None:
        assert self.loop_errors == []

    def finish(self) -> None:
        """Final steps and checks at the end of a run that did not already fail."""

    def check_invariants_again(self) -> None:
        """Every invariant once more (Hypothesis checks none during teardown)."""
        names = [n for n in dir(type(self)) if hasattr(getattr(type(self), n), INVARIANT_MARKER)]
        assert len(names) > 5, names
        for name in names:
            getattr(self, name)()

    def teardown(self) -> None:
        try:
            if sys.exc_info()[0] is None:
                self.finish()
                self.check_invariants_again()
        finally:
            for task in self.loop.pending_tasks():
                task.cancel()
            self.settle()
            self.loop.create_task(self.loop.shutdown_asyncgens())
            self.settle()
            self.loop.close()


def most_in_window(times: Sequence[float], window: float) -> int:
    """The most of ``times`` in any half-open window ``[t, t + window)`` (float slack)."""
    ordered = sorted(times)
    best = start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window + TOL:
            start += 1
        best = max(best, end - start + 1)
    return best


# --- machine 1: the limiter -----------------------------------------------------------------------

WINDOWS = (0.5, 1.0, 2.0)
KEYS_BY_HOST: dict[str, tuple[BudgetKey, ...]] = {
    "h1": (
        ("account", "A@h1", "close"),
        ("account", "B@h1", "close"),
        ("ip", "h1", "close"),
        ("ip-pool", "h1", "group2"),
    ),
    "h2": (("account", "A@h2", "close"), ("ip", "h2", "close")),
}
ALL_KEYS = tuple(key for keys in KEYS_BY_HOST.values() for key in keys)
#: Each key's budgets: one to three, maybe two for one window (the lowest limit counts).
KEY_BUDGETS = st.lists(
    st.builds(Budget, limit=st.integers(1, 3), window=st.sampled_from(WINDOWS)),
    min_size=1,
    max_size=3,
).map(tuple)
UNBLOCK_MARGIN = 0.05
#: Longer than any window or hold the machine makes.
LONG_ENOUGH = 10.0


def host_of(key: BudgetKey) -> str:
    return key[1].rsplit("@", 1)[-1]


def keys_of(request: RequestBudgets) -> frozenset[BudgetKey]:
    return frozenset(key for key, _ in request.budgets)


@dataclass(eq=False)
class Acquisition:
    """One call of ``acquire`` and what became of it."""

    number: int
    request: RequestBudgets
    max_block_wait: float
    deadline: float
    #: Seconds from admission to the answer, and how the request ends (None: a rule says).
    answer_after: float | None = None
    ends: Release = Release.ANSWERED
    task: asyncio.Task[None] | None = None
    permit: Permit | None = None
    admitted_at: float | None = None
    released: Release | None = None
    released_at: float | None = None
    cancel_requested: bool = False
    outcomes: list[object] = field(default_factory=list)

    @property
    def keys(self) -> frozenset[BudgetKey]:
        return keys_of(self.request)

    @property
    def waiting(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def held(self) -> bool:
        return self.permit is not None and self.released is None

    @property
    def sent(self) -> bool:
        """Admitted and not given back unsent (in flight counts: it may be sent)."""
        return self.permit is not None and self.released is not Release.NOT_SENT

    def dated(self) -> float:
        """The latest moment this request can reach the server (``inf`` while in flight)."""
        if self.released is None or self.released_at is None:
            return math.inf
        if self.released is Release.ABANDONED:
            return self.released_at + ABANDONED_REQUEST_TRANSIT
        return self.released_at


#: A request to make: its budgets, max_block_wait, patience (seconds until its deadline),
#: seconds from admission to answer (None: a rule answers it), and how it ends.
Request = tuple[RequestBudgets, float, float | None, float | None, Release]


@dataclass(frozen=True)
class Hold:
    """Budgets a rate-limit answer holds, and until when (loop seconds)."""

    keys: frozenset[BudgetKey]
    until: float


class LimiterMachine(VirtualTimeMachine):
    """A :class:`RateLimiter` and a model of what the server sees."""

    shapes: Bundle[RequestBudgets] = Bundle("shapes")

    def __init__(self) -> None:
        super().__init__()
        self.limiter = RateLimiter(LoopClock())
        self.config: dict[BudgetKey, tuple[Budget, ...]] = {}
        #: Keys whose every budget the limiter knew from the start; requests may name fewer.
        self.primed: frozenset[BudgetKey] = frozenset()
        #: Keys the limiter has state for.
        self.known: set[BudgetKey] = set()
        self.acquisitions: list[Acquisition] = []
        self.holds: list[Hold] = []
        #: Admitted acquisitions per key, in the order of admission.
        self.admitted: dict[BudgetKey, list[Acquisition]] = {}
        #: What went wrong as it happened, by invariant: checked by the invariants below.
        self.violations: dict[str, list[str]] = {
            "outcome": [],
            "refusal": [],
            "hold": [],
            "window": [],
            "arrival": [],
            "order": [],
        }
        self.closed = False
        self.abrupt_end = False

    # --- model ----------------------------------------------------------------------------

    def limits(self) -> dict[tuple[BudgetKey, float], int]:
        """The lowest limit configured for each (key, window) the limiter knows."""
        found: dict[tuple[BudgetKey, float], int] = {}
        for key in self.known:
            for budget in self.config[key]:
                slot = (key, budget.window)
                found[slot] = min(found.get(slot, budget.limit), budget.limit)
        return found

    def waiting(self) -> list[Acquisition]:
        return [a for a in self.acquisitions if a.waiting]

    def held(self) -> list[Acquisition]:
        return [a for a in self.acquisitions if a.held]

    def sends(self, key: BudgetKey) -> list[Acquisition]:
        """Requests counted against ``key`` (sent or in flight), in the order admitted."""
        return [a for a in self.admitted.get(key, []) if a.sent]

    def blocked_until(self, keys: frozenset[BudgetKey]) -> float:
        return max((h.until for h in self.holds if h.keys & keys), default=-math.inf)

    def _outcome(self, acquisition: Acquisition, outcome: object) -> None:
        acquisition.outcomes.append(outcome)
        if len(acquisition.outcomes) > 1:
            self.violations["outcome"].append(f"#{acquisition.number} got two outcomes")

    def _admitted(self, acquisition: Acquisition, permit: Permit) -> None:
        now = self.now
        acquisition.permit = permit
        acquisition.admitted_at = now
        self._outcome(acquisition, permit)
        if acquisition.answer_after is not None:
            self.later(now + acquisition.answer_after, lambda: self._answer(acquisition))
        for hold in self.holds:
            if hold.keys & acquisition.keys and now < hold.until - TOL:
                self.violations["hold"].append(
                    f"#{acquisition.number} admitted at {now:.6f} during a hold of "
                    f"{sorted(hold.keys & acquisition.keys)} until {hold.until:.6f}"
                )
        # First come, first served: nobody who asked later, on budgets that include all of
        # this one's, went first. (Ties are one tick: the limiter admits in order, but a
        # waiter's task may resume after a newcomer's.)
        overtaken_by = [
            a.number
            for a in self.acquisitions[acquisition.number + 1 :]
            if a.admitted_at is not None
            and a.admitted_at < now - TOL
            and acquisition.keys <= a.keys
        ]
        if overtaken_by:
            self.violations["order"].append(
                f"#{acquisition.number} admitted at {now} after later {overtaken_by}"
            )
        limits = self.limits()
        for key in sorted(acquisition.keys):
            earlier = self.sends(key)
            for (budget_key, window), limit in limits.items():
                if budget_key != key:
                    continue
                # Counted at admission: the earliest a request can reach the server.
                recent = [a.number for a in earlier if (a.admitted_at or 0) > now - window + TOL]
                if len(recent) >= limit:
                    self.violations["window"].append(
                        f"{key} {limit}/{window}s: #{acquisition.number} admitted at {now:.6f}"
                        f" after {recent} within the window"
                    )
                # Where it reaches the server at the latest: its answer (see the invariant).
                overlapping = [a.number for a in earlier if a.dated() > now - window + TOL]
                if len(overlapping) >= limit:
                    self.violations["arrival"].append(
                        f"{key} {limit}/{window}s: #{acquisition.number} admitted at {now:.6f}"
                        f" while {overlapping} may still reach the server within the window"
                    )
            self.admitted.setdefault(key, []).append(acquisition)

    def _refused(self, acquisition: Acquisition, error: BaseException) -> None:
        now = self.now
        self._outcome(acquisition, error)
        if isinstance(error, ClientClosedError):
            fair = self.closed
        elif isinstance(error, QueueTimeoutError):
            fair = now >= acquisition.deadline - TOL
        elif isinstance(error, RateLimitError) and error.refused_locally:
            remaining = self.blocked_until(acquisition.keys) - now
            allowed = min(acquisition.max_block_wait, acquisition.deadline - now)
            fair = remaining > allowed - TOL
        else:
            fair = False
        if not fair:
            self.violations["refusal"].append(f"#{acquisition.number} refused at {now}: {error!r}")

    async def _acquire(self, acquisition: Acquisition) -> None:
        try:
            permit = await self.limiter.acquire(
                acquisition.request,
                max_block_wait=acquisition.max_block_wait,
                deadline=acquisition.deadline,
            )
        except asyncio.CancelledError:
            self._outcome(acquisition, "cancelled")
            if not acquisition.cancel_requested:
                self.violations["outcome"].append(f"#{acquisition.number} cancelled by nobody")
            raise
        except Exception as error:  # noqa: BLE001 - judged in _refused
            self._refused(acquisition, error)
        else:
            self._admitted(acquisition, permit)

    def _release(self, acquisition: Acquisition, how: Release) -> None:
        assert acquisition.permit is not None
        acquisition.released = how
        acquisition.released_at = self.now
        acquisition.permit.release(how)

    def _answer(self, acquisition: Acquisition) -> None:
        if acquisition.held:
            self._release(acquisition, acquisition.ends)

    def _answer_everything(self) -> None:
        for acquisition in self.held():
            self._release(acquisition, Release.ANSWERED)

    def _cancel(self, acquisition: Acquisition) -> None:
        if acquisition.task is not None and not acquisition.task.done():
            acquisition.cancel_requested = True
            acquisition.task.cancel()

    # --- rules ----------------------------------------------------------------------------

    @initialize(
        target=shapes,
        config=st.fixed_dictionaries({key: KEY_BUDGETS for key in ALL_KEYS}),
        primed=st.sets(st.sampled_from(ALL_KEYS)),
        shapes=st.integers(2, 6),
        abrupt_end=st.booleans(),
        data=st.data(),
    )
    def configure(
        self,
        config: dict[BudgetKey, tuple[Budget, ...]],
        primed: set[BudgetKey],
        shapes: int,
        abrupt_end: bool,
        data: st.DataObject,
    ) -> MultipleResults[RequestBudgets]:
        """Every key's budgets (primed keys are made known to the limiter at once), and the
        kinds of request made of them."""
        self.config = config
        self.primed = frozenset(primed)
        self.abrupt_end = abrupt_end

        async def prime(key: BudgetKey) -> None:
            request = RequestBudgets(
                tuple((key, budget) for budget in config[key]),
                host=host_of(key),
                signed=key[0] == "account",
            )
            permit = await self.limiter.acquire(request)
            permit.release(Release.NOT_SENT)

        for key in sorted(primed):
            self.known.add(key)
            self.spawn(prime(key))
        drawn = [self.draw_shape(data) for _ in range(shapes)]
        # Same budgets named in another order make another queue (lane) in the limiter.
        twins = [
            dataclasses.replace(shape, budgets=shape.budgets[::-1])
            for shape in drawn
            if len(keys_of(shape)) > 1 and data.draw(st.booleans(), label="twin")
        ]
        return multiple(*drawn, *twins)

    def draw_shape(self, data: st.DataObject) -> RequestBudgets:
        """A kind of request: some budgets of one host, in any order.

        A primed key may be named with only some of its windows (the limiter counts every
        window it knows for a key); other keys always bring all of theirs.
        """
        host = data.draw(st.sampled_from(sorted(KEYS_BY_HOST)))
        keys = data.draw(st.lists(st.sampled_from(KEYS_BY_HOST[host]), min_size=1, unique=True))
        budgets: list[tuple[BudgetKey, Budget]] = []
        for key in keys:
            options = tuple(dict.fromkeys(self.config[key]))
            if key in self.primed:
                chosen = data.draw(st.lists(st.sampled_from(options), min_size=1, unique=True))
            else:
                chosen = list(self.config[key])
            budgets += [(key, budget) for budget in chosen]
        signed = any(key[0] == "account" for key in keys) or data.draw(st.booleans())
        return RequestBudgets(
            tuple(budgets),
            host=host,
            signed=signed,
            label=f"{host}:{'+'.join(key[0] + ':' + key[1] for key in keys)}",
            adapt=data.draw(st.booleans()),
        )

    @rule(
        requests=st.lists(
            st.tuples(
                shapes,
                st.sampled_from([math.inf, 0.0, 0.4, 2.0]),
                st.one_of(st.none(), st.sampled_from([0.0, 0.3, 1.0, 2.5])),
                st.one_of(st.none(), st.sampled_from([0.0, 0.2, 0.7])),
                st.sampled_from(Release),
            ),
            min_size=1,
            max_size=4,
        ),
        at_next_wake_up=st.booleans(),
    )
    def acquire(self, requests: list[Request], at_next_wake_up: bool) -> None:
        """Requests made in one tick, in order: each with how long it may wait for a hold
        and in all, and answered some time after admission (or when a rule says). Maybe
        made as the limiter's next wake-up is due, just before it fires: a waiter whose
        moment has come must still go first."""
        timer = self.limiter._timer
        if at_next_wake_up and isinstance(timer, asyncio.TimerHandle):
            when = timer.when() - 1e-7  # within the limiter's tolerance of its moment
            self.later(when, lambda: self._acquire_now(requests))
            self.loop.run_until(when)
        else:
            self._acquire_now(requests)
            self.settle()

    def _acquire_now(self, requests: list[Request]) -> None:
        for request, max_block_wait, patience, answer_after, ends in requests:
            acquisition = Acquisition(
                number=len(self.acquisitions),
                request=request,
                max_block_wait=max_block_wait,
                deadline=self.now + patience if patience is not None else math.inf,
                answer_after=answer_after,
                ends=ends,
            )
            if not self.closed:
                self.known |= acquisition.keys
            self.acquisitions.append(acquisition)
            acquisition.task = self.loop.create_task(self._acquire(acquisition))

    @precondition(lambda self: self.held())
    @rule(data=st.data(), how=st.sampled_from(Release))
    def release(self, data: st.DataObject, how: Release) -> None:
        acquisition = data.draw(st.sampled_from(self.held()))
        self.call(lambda: self._release(acquisition, how))

    @precondition(lambda self: self.held() and self.waiting())
    @rule(data=st.data(), how=st.sampled_from(Release))
    def release_then_cancel(self, data: st.DataObject, how: Release) -> None:
        """Release a permit and, in the same tick, cancel a waiter it may just have admitted."""
        acquisition = data.draw(st.sampled_from(self.held()))

        def both() -> None:
            self._release(acquisition, how)
            waiting = self.waiting()
            sharing = [w for w in waiting if w.keys & acquisition.keys]
            self._cancel(data.draw(st.sampled_from(sharing or waiting)))

        self.call(both)

    @precondition(lambda self: self.waiting())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(self.waiting()))
        self.call(lambda: self._cancel(victim))

    @precondition(lambda self: self.waiting())
    @rule(data=st.data(), at=st.sampled_from(["next wake-up", 0.1, 0.5, 1.0]))
    def cancel_later(self, data: st.DataObject, at: str | float) -> None:
        """Cancel a waiter at a later moment; at the limiter's next wake-up, maybe in the
        very tick that admits it."""
        victim = data.draw(st.sampled_from(self.waiting()))
        when = self.limiter._timer_at if at == "next wake-up" else self.now + float(at)
        if not math.isfinite(when):
            when = self.now + 0.5
        self.later(when, lambda: self._cancel(victim))
        self.loop.run_until(when)

    @rule(
        request=shapes,
        ban=st.booleans(),
        coded=st.booleans(),
        retry_after=st.one_of(st.none(), st.sampled_from([0.0, 0.3, 1.0, 2.5])),
        fallback=st.one_of(st.none(), st.sampled_from([0.2, 1.0])),
        disabled_until=st.booleans(),
        error_rate_ban=st.booleans(),
        ip_ban_hold=st.sampled_from([0.5, 3.0]),
    )
    def hold(
        self,
        request: RequestBudgets,
        ban: bool,
        coded: bool,
        retry_after: float | None,
        fallback: float | None,
        disabled_until: bool,
        error_rate_ban: bool,
        ip_ban_hold: float,
    ) -> None:
        """A rate-limit answer to ``request``: the limiter holds what it blocks."""
        policy = RetryPolicy(ip_ban_hold=ip_ban_hold, unblock_margin=UNBLOCK_MARGIN)
        answer: RateLimitError
        if ban:
            answer = IPBannedError("banned", status_code=418, retry_after=retry_after)
        else:
            answer = RateLimitError(
                "rate limited",
                code=100410 if coded else None,
                retry_after=retry_after,
                unblock_at=1.0 if disabled_until else None,
                banned_code=100202 if error_rate_ban else None,
            )
        now = self.now
        longest = max(LONGEST_SHARED_HOLD, policy.ip_ban_hold)
        named = keys_of(request)
        self.known |= named  # hold() makes the request's budgets known, as acquire() does
        expected = False
        if ban:
            # Every IP budget of the host, also ones first used later.
            ban_wait = retry_after if retry_after is not None else policy.ip_ban_hold
            keys = frozenset(k for k in KEYS_BY_HOST[request.host] if k[0] != "account")
            self.holds.append(Hold(keys, now + min(ban_wait, longest)))
            expected = any(key[0] != "account" for key in named)
        else:
            wait = retry_after + UNBLOCK_MARGIN if retry_after is not None else fallback
            if wait is not None:
                ip_wide = answer.code is None or not request.signed
                keys = frozenset(k for k in named if (k[0] != "account") == ip_wide)
                known = frozenset(keys & self.known)
                self.holds.append(Hold(known, now + min(wait, longest)))
                expected = bool(keys)
        held = self.call(
            lambda: self.limiter.hold(answer, request, policy=policy, fallback=fallback)
        )
        assert held == expected, f"hold() said {held}, the docs say {expected}"

    @rule(seconds=st.one_of(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0]), st.floats(0.0, 3.0)))
    def wait(self, seconds: float) -> None:
        self.advance(seconds)

    @precondition(lambda self: not self.closed and len(self.acquisitions) > 10)
    @rule(really=RARELY)
    def close(self, really: bool = True) -> None:
        if not really:
            return
        waiting = self.waiting()
        self.closed = True
        self.call(
            lambda: self.limiter.close(
                lambda: ClientClosedError("not sent: closed", may_have_executed=False)
            )
        )
        for acquisition in waiting:
            (outcome,) = acquisition.outcomes
            assert isinstance(outcome, ClientClosedError), (acquisition.number, outcome)

    @rule(really=RARELY)
    def drain(self, really: bool = True) -> None:
        """Answer everything, let time pass: every waiter is admitted or refused."""
        if not really:
            return
        for _ in range(len(self.acquisitions) + 2):
            self.call(self._answer_everything)
            if not self.waiting():
                break
            self.advance(LONG_ENOUGH)
        stuck = [a.number for a in self.waiting()]
        assert stuck == [], f"waiting forever although every slot was answered: {stuck}"
        self.advance(LONG_ENOUGH)
        usage = self.call(self.limiter.usage)
        assert [u for u in usage if u.in_flight or u.waiting] == []
        assert self.limiter._timer is None, "a wake-up armed with nobody waiting"
        assert self.library_timers() == []

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def one_outcome_each_and_no_refusal_without_reason(self) -> None:
        """Admitted, refused or cancelled, once; cancelled only by us; refused only when
        closed, past its deadline, or held longer than it may wait."""
        assert self.violations["outcome"] == []
        assert self.violations["refusal"] == []

    @invariant()
    def no_admission_during_a_hold(self) -> None:
        assert self.violations["hold"] == []

    @invariant()
    def no_window_holds_more_admissions_than_its_limit(self) -> None:
        """Sends counted at admission, against every window of every key of the request, at
        the lowest limit configured: no window ``(t - w, t]`` holds more than the limit."""
        assert self.violations["window"] == []

    @invariant()
    def wherever_requests_arrive_no_window_holds_more_than_its_limit(self) -> None:
        """The module's promise, at the server: a request arrives somewhere between its
        admission and its answer (an abandoned one up to ABANDONED_REQUEST_TRANSIT after
        it was given up). Whatever the arrivals, no window holds more than the limit: no
        limit + 1 sends have ``latest admission - earliest answer < window``. Checked as
        each is admitted: fewer than ``limit`` earlier sends may still arrive after
        ``admission - window``."""
        assert self.violations["arrival"] == []

    def key_state(
        self, limits: dict[tuple[BudgetKey, float], int]
    ) -> dict[tuple[BudgetKey, float], tuple[int, int, list[float]]]:
        """Per budget: the limit in force, slots in flight, and the dates of answers still
        in its window (erring late: within TOL of leaving, they still count)."""
        now = self.now
        found = {}
        for (key, window), limit in limits.items():
            sends = self.sends(key)
            in_flight = sum(1 for a in sends if a.held)
            dates = sorted(d for a in sends if not a.held and (d := a.dated()) > now - window - TOL)
            found[(key, window)] = (limit, in_flight, dates)
        return found

    @invariant()
    def usage_matches_the_model(self) -> None:
        """Slots in flight are exactly the permits not yet released (a cancelled waiter
        holds none); waiters, holds and answers in the window are as the model says."""
        usage = self.call(self.limiter.usage)
        limits = self.limits()
        assert {(u.key, u.window) for u in usage} == set(limits)
        now = self.now
        state = self.key_state(limits)
        waiting = self.waiting()
        for u in usage:
            _, in_flight, dates = state[(u.key, u.window)]
            queued = sum(1 for a in waiting if u.key in a.keys)
            assert (u.in_flight, u.waiting) == (in_flight, queued), (u, in_flight, queued)
            assert 1 <= u.limit <= limits[(u.key, u.window)], u
            blocked = max(0.0, self.blocked_until(frozenset([u.key])) - now)
            assert abs(u.blocked_for - blocked) < TOL, (u, blocked)
            surely = sum(1 for d in dates if d > now - u.window + TOL)
            assert in_flight + surely <= u.in_window <= in_flight + len(dates), (u, dates)

    def fits_at(
        self,
        keys: frozenset[BudgetKey],
        state: dict[tuple[BudgetKey, float], tuple[int, int, list[float]]],
    ) -> float:
        """The earliest moment a request on ``keys`` could be admitted, by the module's rule
        (a budget has room when ``in_flight + answers in the window < limit``), erring
        late. ``-inf``: it fits now."""
        earliest = self.blocked_until(keys)
        for (key, window), (limit, in_flight, dates) in state.items():
            if key not in keys:
                continue
            excess = in_flight + len(dates) - limit
            if excess >= 0:
                room = dates[excess] + window if len(dates) > excess else math.inf
                earliest = max(earliest, room)
        return earliest

    @invariant()
    def no_waiter_is_forgotten(self) -> None:
        """No waiter could go now or is past its deadline; none at the head of its queue
        should have been refused; the wake-up is armed no later than the earliest moment
        one could go."""
        if self.closed:
            return
        now = self.now
        limits = {(u.key, u.window): u.limit for u in self.call(self.limiter.usage)}
        state = self.key_state(limits)
        earliest = math.inf
        heads: dict[frozenset[BudgetKey], Acquisition] = {}
        for waiter in self.waiting():
            assert waiter.deadline > now - TOL, f"#{waiter.number} waits past its deadline"
            heads.setdefault(waiter.keys, waiter)
        for keys, head in heads.items():
            fits = self.fits_at(keys, state)
            assert fits > now - TOL, f"#{head.number} could go at {fits}, waits at {now}"
            earliest = min(earliest, max(fits, now))
            remaining = self.blocked_until(keys) - now
            allowed = min(head.max_block_wait, head.deadline - now)
            assert remaining <= allowed + TOL, f"#{head.number} waits for a hold too long"
        if math.isfinite(earliest):
            timer = self.limiter._timer
            assert isinstance(timer, asyncio.TimerHandle), "waiters, and no wake-up armed"
            assert timer.when() <= earliest + TOL, (timer.when(), earliest)

    @invariant()
    def nobody_overtakes_a_waiter_on_its_own_budgets(self) -> None:
        """First come, first served: no request is admitted ahead of an older one whose
        budgets it all draws on too (it fitting means the older one fitted first)."""
        assert self.violations["order"] == []

    @invariant()
    def a_closed_limiter_is_quiet(self) -> None:
        if self.closed:
            assert self.waiting() == []
            assert self.limiter._lanes == {}
            assert self.limiter._timer is None
            assert self.library_timers() == []

    def finish(self) -> None:
        """Close the limiter, at once (with waiters) or once everything is answered."""
        if not self.abrupt_end:
            self.drain()
        if not self.closed:
            self.close()
        self.drain()
        self.a_closed_limiter_is_quiet()
        assert self.loop.pending_tasks() == []


@pytest.mark.timeout(TIMEOUT)
def test_limiter_machine() -> None:
    run_state_machine_as_test(LimiterMachine, settings=PROFILE)


# --- machine 2: shared closes through clients of one session -----------------------------------

EPOCH = 1_700_000_000.0
TIME_PATH = "/openApi/swap/v2/server/time"
POSITIONS_PATH = "/openApi/swap/v2/user/positions"
POSITION_IDS = tuple(str(n) for n in range(1, 6))
#: Open at the start on every account; the last ID never existed.
OPEN_IDS = POSITION_IDS[:-1]
#: What the exchange may do with a close: answer it, refuse the connection before it
#: arrives, rate-limit it ("unblocked after T"), or lose the answer (504 or a dropped
#: connection), before or after executing it.
FATES = ("answer", "refuse", "rate-limit", "504-unexecuted", "504-executed", "drop-executed")
LOST = frozenset({"504-unexecuted", "504-executed", "drop-executed"})
POLICIES = st.builds(
    RetryPolicy,
    attempts=st.sampled_from([1, 2, 4]),
    total_timeout=st.sampled_from([None, 2.0, 6.0]),
    max_server_wait=st.sampled_from([0.5, 10.0]),
    wait_initial=st.just(0.1),
    wait_max=st.just(0.5),
    wait_jitter=st.just(0.0),
)


@dataclass(eq=False)
class SentClose:
    """One closePosition request the exchange saw leave the client."""

    account: str
    position_id: str
    fate: str
    sent_at: float
    sent_as: int
    arrived_at: float | None = None
    executed: bool = False
    order_id: str | None = None
    #: When its answer (or failure) reached the client; ``None`` while on the wire.
    finished_as: int | None = None
    #: When the client cut it off without an answer (an event number, and loop seconds).
    cut_as: int | None = None
    cut_at: float | None = None
    #: For a rate-limited close: the unblock time it named (loop seconds).
    unblock_until: float | None = None

    @property
    def lost(self) -> bool:
        """The client cannot know whether this request executed."""
        return self.fate in LOST or self.cut_as is not None

    @property
    def seen_as(self) -> int | None:
        """When the client saw this request end, answered or not."""
        return self.finished_as if self.finished_as is not None else self.cut_as


@dataclass(frozen=True)
class Unblock:
    account: str
    told_at: float
    until: float


class Exchange:
    """A strict BingX: each position of each account closes once; later closes of it
    answer 101205. Requests arrive after a random uplink delay and are answered after a
    random downlink delay, so an arrival lies strictly between a send and its answer."""

    def __init__(
        self,
        rng: random.Random,
        events: Iterator[int],
        fault_rate: float,
        faults: Sequence[str],
        latencies: Sequence[float],
        unblock_ms: Sequence[int],
    ) -> None:
        self.rng = rng
        self.events = events
        self.fault_rate = fault_rate
        self.faults = list(faults)
        self.latencies = list(latencies)
        self.unblock_ms = list(unblock_ms)
        self.open: dict[str, set[str]] = {}
        self.sent: list[SentClose] = []
        self.by_position: dict[tuple[str, str], list[SentClose]] = {}
        self.executions: dict[tuple[str, str], SentClose] = {}
        self.unblocks: list[Unblock] = []
        #: Called once, as the next close arrives (then forgotten).
        self.on_arrival: Callable[[], None] | None = None
        self._orders = itertools.count(9_000_001)

    def latency(self) -> float:
        return self.rng.choice(self.latencies)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        if request.url.path == TIME_PATH:
            await asyncio.sleep(self.latency())
            server_ms = round((EPOCH + loop.time()) * 1000)
            await asyncio.sleep(self.latency())
            return httpx.Response(200, json={"code": 0, "data": {"serverTime": server_ms}})
        account = request.headers["X-BX-APIKEY"]
        if request.url.path == POSITIONS_PATH:
            # Asked after a close whose outcome was unknown (symbols are never known here,
            # so the position history is never asked): the positions still open.
            await asyncio.sleep(self.latency())
            still_open = sorted(self.open.setdefault(account, set(OPEN_IDS)))
            data = [{"positionId": position_id} for position_id in still_open]
            return httpx.Response(200, json={"code": 0, "msg": "", "data": data})
        position_id = request.url.params["positionId"]
        fate = "answer"
        if self.faults and self.rng.random() < self.fault_rate:
            fate = self.rng.choice(self.faults)
        sent = SentClose(account, position_id, fate, loop.time(), next(self.events))
        self.sent.append(sent)
        self.by_position.setdefault((account, position_id), []).append(sent)
        if fate == "refuse":
            sent.finished_as = next(self.events)
            raise httpx.ConnectError("connection refused", request=request)
        try:
            await asyncio.sleep(self.latency())
            response = self._arrive(sent, loop.time())
            await asyncio.sleep(self.latency())
        except asyncio.CancelledError:
            sent.cut_as = next(self.events)
            sent.cut_at = loop.time()
            raise
        sent.finished_as = next(self.events)
        if sent.unblock_until is not None:
            self.unblocks.append(Unblock(account, loop.time(), sent.unblock_until))
        if fate == "drop-executed":
            raise httpx.RemoteProtocolError("server disconnected", request=request)
        return response

    def _arrive(self, sent: SentClose, now: float) -> httpx.Response:
        sent.arrived_at = now
        call = self.on_arrival
        if call is not None:
            self.on_arrival = None
            call()
        server_ms = round((EPOCH + now) * 1000)
        if sent.fate == "rate-limit":
            until = server_ms + self.rng.choice(self.unblock_ms)
            sent.unblock_until = until / 1000 - EPOCH
            msg = (
                "The endpoint trigger frequency limit rule is currently in the disabled "
                f"period and will be unblocked after {until}"
            )
            return httpx.Response(200, json={"code": 100410, "msg": msg, "timestamp": server_ms})
        if sent.fate == "504-unexecuted":
            return httpx.Response(504, text="Gateway Time-out")
        still_open = self.open.setdefault(sent.account, set(OPEN_IDS))
        if sent.position_id not in still_open:
            answer = httpx.Response(200, json={"code": 101205, "msg": "No position to close"})
        else:
            still_open.remove(sent.position_id)
            key = (sent.account, sent.position_id)
            assert key not in self.executions, f"{key} closed twice"
            sent.executed = True
            sent.order_id = str(next(self._orders))
            self.executions[key] = sent
            data = {"orderId": int(sent.order_id), "positionId": sent.position_id}
            answer = httpx.Response(200, json={"code": 0, "msg": "", "data": data})
        if sent.fate == "504-executed":
            return httpx.Response(504, text="Gateway Time-out")
        return answer

    def closes(self, account: str, position_id: str) -> list[SentClose]:
        return self.by_position.get((account, position_id), [])


@dataclass(eq=False)
class ClientSlot:
    number: int
    client: BingXClient
    account: str
    policy: RetryPolicy
    #: When its ``aclose()`` began (an event number), if it did.
    closing_as: int | None = None


CANCELLED = "cancelled"


@dataclass(eq=False)
class Caller:
    """A task awaiting ``close_position`` (or ``close_positions``) of one client."""

    number: int
    slot: ClientSlot
    position_ids: tuple[str, ...]
    batch: bool
    started_at: float
    started_as: int
    task: asyncio.Task[None] | None = None
    cancel_requested: bool = False
    outcomes: list[object] = field(default_factory=list)
    ended_at: float | None = None
    ended_as: int | None = None

    @property
    def waiting(self) -> bool:
        return self.task is not None and not self.task.done()

    def per_position(self) -> list[tuple[str, object]]:
        """(position ID, outcome) for every ID once the call ended with outcomes per ID."""
        if len(self.outcomes) != 1 or self.outcomes[0] == CANCELLED:
            return []
        (outcome,) = self.outcomes
        if self.batch and isinstance(outcome, list):
            return list(zip(self.position_ids, outcome, strict=True))
        return [(position_id, outcome) for position_id in self.position_ids]


class SharedClosesMachine(VirtualTimeMachine):
    """Clients of one or two API keys sharing a session, closing positions of a strict
    exchange while callers are cancelled and clients closed."""

    clients: Bundle[ClientSlot] = Bundle("clients")

    def __init__(self) -> None:
        super().__init__()
        self.events = itertools.count()
        self.session = BingXSession(clock=LoopClock(EPOCH))
        self.exchange: Exchange | None = None
        self.slots: list[ClientSlot] = []
        self.callers: list[Caller] = []
        self.closing_tasks: list[asyncio.Task[None]] = []
        self.session_closed_as: int | None = None
        self.session_closing = False
        self.abrupt_end = False

    @property
    def bingx(self) -> Exchange:
        assert self.exchange is not None
        return self.exchange

    def waiting(self) -> list[Caller]:
        return [c for c in self.callers if c.waiting]

    # --- rules ----------------------------------------------------------------------------

    @initialize(
        target=clients,
        clients_of_a=st.integers(1, 3),
        with_b=st.booleans(),
        policies=st.lists(POLICIES, min_size=4, max_size=4),
        rng=st.randoms(use_true_random=False),
        fault_rate=st.sampled_from([0.0, 0.2, 0.5]),
        faults=st.lists(st.sampled_from(FATES[1:]), min_size=1, unique=True),
        latencies=st.lists(st.sampled_from([0.0, 0.05, 0.2, 0.45]), min_size=1, unique=True),
        unblock_ms=st.lists(st.sampled_from([300, 1200, 2500]), min_size=1, unique=True),
        abrupt_end=st.booleans(),
    )
    def open_clients(
        self,
        clients_of_a: int,
        with_b: bool,
        policies: list[RetryPolicy],
        rng: random.Random,
        fault_rate: float,
        faults: list[str],
        latencies: list[float],
        unblock_ms: list[int],
        abrupt_end: bool,
    ) -> MultipleResults[ClientSlot]:
        self.abrupt_end = abrupt_end
        self.exchange = Exchange(rng, self.events, fault_rate, faults, latencies, unblock_ms)
        keys = ["key-a"] * clients_of_a + (["key-b"] if with_b else [])
        return multiple(*(self.open(k, p) for k, p in zip(keys, policies, strict=False)))

    def open(self, key: str, policy: RetryPolicy) -> ClientSlot:
        number = len(self.slots)
        client = BingXClient(
            api_key=key,
            secret_key="secret",
            session=self.session,
            transport=httpx.MockTransport(self.bingx.handle),
            retry=policy,
            rng=random.Random(number),
        )
        self.slots.append(ClientSlot(number, client, key, policy))
        return self.slots[-1]

    async def _call(self, caller: Caller) -> None:
        client = caller.slot.client
        outcome: object
        try:
            if caller.batch:
                outcome = await client.close_positions(caller.position_ids)
            else:
                outcome = await client.close_position(caller.position_ids[0])
        except asyncio.CancelledError:
            self._ended(caller, CANCELLED)
            raise
        except Exception as error:  # noqa: BLE001 - recorded; the invariants judge it
            self._ended(caller, error)
        else:
            self._ended(caller, outcome)

    def _ended(self, caller: Caller, outcome: object) -> None:
        caller.outcomes.append(outcome)
        caller.ended_at = self.now
        caller.ended_as = next(self.events)

    def _start(self, slot: ClientSlot, position_ids: tuple[str, ...], batch: bool) -> None:
        caller = Caller(len(self.callers), slot, position_ids, batch, self.now, next(self.events))
        self.callers.append(caller)
        caller.task = self.spawn(self._call(caller))

    def _cancel(self, caller: Caller) -> None:
        if caller.task is not None and not caller.task.done():
            caller.cancel_requested = True
            caller.task.cancel()

    @rule(slot=clients, position_id=st.sampled_from(POSITION_IDS))
    def close_position(self, slot: ClientSlot, position_id: str) -> None:
        self._start(slot, (position_id,), batch=False)

    @rule(
        slot=clients, position_ids=st.lists(st.sampled_from(POSITION_IDS), min_size=1, max_size=4)
    )
    def close_positions(self, slot: ClientSlot, position_ids: list[str]) -> None:
        self._start(slot, tuple(position_ids), batch=True)

    @precondition(lambda self: self.waiting())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        victim = data.draw(st.sampled_from(self.waiting()))
        self.call(lambda: self._cancel(victim))

    @precondition(lambda self: self.waiting())
    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.05, 0.2, 0.45, 0.9, 1.0]))
    def cancel_later(self, data: st.DataObject, delay: float) -> None:
        victim = data.draw(st.sampled_from(self.waiting()))
        self.later(self.now + delay, lambda: self._cancel(victim))

    @rule(seconds=st.one_of(st.sampled_from([0.0, 0.05, 0.2, 0.5, 1.0, 2.5]), st.floats(0, 3)))
    def wait(self, seconds: float) -> None:
        self.advance(seconds)

    @rule(
        target=clients,
        slot=consumes(clients),
        really=st.booleans(),
        replace=st.sampled_from([True, True, True, False]),
        policy=POLICIES,
    )
    def close_client(
        self, slot: ClientSlot, really: bool, replace: bool, policy: RetryPolicy
    ) -> MultipleResults[ClientSlot]:
        """``aclose()`` a client while its calls run; usually a new one of its key takes its
        place. Its closed self is kept by its callers only."""
        if not really:
            return multiple(slot)
        slot.closing_as = next(self.events)
        self.closing_tasks.append(self.spawn(slot.client.aclose()))
        return multiple(self.open(slot.account, policy)) if replace else multiple()

    @precondition(
        lambda self: not self.session_closing and self.waiting() and len(self.callers) > 4
    )
    @rule(really=RARELY, when=st.sampled_from(["now", "as the next close arrives"]))
    def close_session(self, really: bool, when: str) -> None:
        """Close the session while calls are under way, maybe with a close on the wire
        (rarely: it ends the story; runs that do not close it here close it at their end)."""
        if not really:
            return
        if when == "now":
            self._close_session()
        else:
            self.bingx.on_arrival = self._close_session
        self.settle()

    def _close_session(self) -> None:
        if not self.session_closing:
            self.session_closing = True
            self.closing_tasks.append(self.loop.create_task(self._aclose_session()))

    async def _aclose_session(self) -> None:
        # Dated as aclose() begins: its first step ends every flight, before any await.
        self.session_closed_as = next(self.events)
        await self.session.aclose()

    @rule(really=RARELY)
    def everything_settles(self, really: bool = True) -> None:
        """Let time pass until every caller is done: then nothing is left in flight."""
        if not really:
            return
        for _ in range(2000):
            busy = self.waiting() or len(self.session._flights) or self.session._tasks
            if not busy and all(task.done() for task in self.closing_tasks):
                break
            self.advance(0.5)
        assert [c.number for c in self.waiting()] == [], "callers never got an outcome"
        assert all(task.done() for task in self.closing_tasks), "aclose() never returned"
        assert len(self.session._flights) == 0, "flights outlived every caller"
        assert self.session._tasks == set(), self.session._tasks
        usage = self.call(self.session.rate_limit_usage)
        assert [u for u in usage if u.in_flight or u.waiting] == [], "slots leaked"
        limits = self.session._limits
        assert isinstance(limits, MemoryLimits)
        assert limits.errors._in_flight == {}, "error-guard counts leaked"
        for task in self.closing_tasks:
            assert task.exception() is None

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def every_caller_gets_exactly_one_outcome(self) -> None:
        """A result or a BingXError (one per ID for close_positions), or CancelledError if
        and only if the caller's task was cancelled."""
        for caller in self.callers:
            if caller.waiting:
                assert caller.outcomes == []
                continue
            assert len(caller.outcomes) == 1, (caller.number, caller.outcomes)
            (outcome,) = caller.outcomes
            if caller.cancel_requested:
                assert outcome == CANCELLED, (caller.number, outcome)
                continue
            assert outcome != CANCELLED, f"caller {caller.number} cancelled by nobody"
            if caller.batch and isinstance(outcome, list):
                assert len(outcome) == len(caller.position_ids)
                for item in outcome:
                    assert isinstance(item, ClosePositionResult | BingXError), repr(item)
            else:
                assert isinstance(outcome, ClosePositionResult | BingXError), repr(outcome)

    @invariant()
    def results_come_from_closes_the_exchange_executed(self) -> None:
        for caller in self.callers:
            for position_id, outcome in caller.per_position():
                if not isinstance(outcome, ClosePositionResult):
                    continue
                execution = self.bingx.executions.get((caller.slot.account, position_id))
                assert execution is not None, f"{position_id} reported closed, never closed"
                assert outcome.position_id == position_id
                assert outcome.order_id == execution.order_id, "a result from another close"

    @invariant()
    def lost_answers_make_possibly_closed_not_not_found(self) -> None:
        """If a close of this position executed but its answer was lost (and that was seen
        before this caller's outcome), a later "No position to close" must come back as
        PositionPossiblyClosedError: while the session lives, for ORPHAN_MEMORY seconds.
        And PositionPossiblyClosedError only after some request had an unknown outcome."""
        for caller in self.callers:
            for position_id, outcome in caller.per_position():
                if not isinstance(outcome, PositionNotFoundError):
                    continue
                assert caller.ended_as is not None
                assert caller.ended_at is not None
                closes = self.bingx.closes(caller.slot.account, position_id)
                if isinstance(outcome, PositionPossiblyClosedError):
                    assert any(
                        s.lost and (s.seen_as or math.inf) < caller.ended_as for s in closes
                    ), f"caller {caller.number}: {position_id} possibly closed, nothing lost"
                    continue
                execution = self.bingx.executions.get((caller.slot.account, position_id))
                if execution is None or not execution.lost or execution.seen_as is None:
                    continue
                assert execution.arrived_at is not None
                remembered = caller.ended_at - execution.arrived_at < ORPHAN_MEMORY
                alive = self.session_closed_as is None or caller.ended_as < self.session_closed_as
                assert not (remembered and alive and execution.seen_as < caller.ended_as), (
                    f"caller {caller.number} told {position_id} not found ({outcome!r}) after "
                    f"its close executed with a lost answer ({execution.fate})"
                )

    def joined(self, caller: Caller) -> bool:
        """Whether ``caller`` got as far as a flight (not refused by a closed client or
        session first)."""
        closes = (self.session_closed_as, caller.slot.closing_as)
        return not any(c is not None and c < caller.started_as for c in closes)

    @invariant()
    def concurrent_closes_of_a_position_share_one_outcome(self) -> None:
        """close_position callers of one position of one account whose calls overlapped
        (and were not cancelled) got the very same outcome: one flight, one request."""
        by_position: dict[tuple[str, str], list[Caller]] = {}
        for caller in self.callers:
            if caller.batch or caller.cancel_requested or caller.ended_as is None:
                continue
            if self.joined(caller):
                key = (caller.slot.account, caller.position_ids[0])
                by_position.setdefault(key, []).append(caller)
        for callers in by_position.values():
            for a, b in itertools.combinations(callers, 2):
                assert a.ended_as is not None
                assert b.ended_as is not None
                if max(a.started_as, b.started_as) < min(a.ended_as, b.ended_as):
                    assert a.outcomes[0] is b.outcomes[0], (a.number, a.outcomes, b.number)

    @invariant()
    def a_close_on_the_wire_may_have_executed(self) -> None:
        """A caller whose call ended while a close of its position was on the wire is never
        told that nothing executed (one flight per position: that request was its own).

        For close_positions, whose per-ID moments are unknown, only IDs cut off by the
        session's close (ClientClosedError, own client still open): they ended then."""
        closed = self.session_closed_as
        for caller in self.callers:
            if len(caller.outcomes) != 1 or not self.joined(caller):
                continue
            for position_id, outcome in caller.per_position():
                if not isinstance(outcome, BingXError) or outcome.may_have_executed:
                    continue
                ended = caller.ended_as
                if caller.batch:
                    client_closed = caller.slot.closing_as
                    if not isinstance(outcome, ClientClosedError) or closed is None:
                        continue
                    if client_closed is not None and client_closed < closed:
                        continue
                    ended = closed
                assert ended is not None
                on_wire = [
                    s.sent_at
                    for s in self.bingx.closes(caller.slot.account, position_id)
                    if s.fate != "refuse"
                    and s.sent_as < ended
                    and (s.finished_as is None or s.finished_as > ended)
                ]
                assert on_wire == [], (
                    f"caller {caller.number} told {outcome!r} for {position_id} while its "
                    f"close (sent at {on_wire}) was on the wire"
                )

    @invariant()
    def closing_a_client_strands_no_other_clients_caller(self) -> None:
        """ClientClosedError only for callers whose own client (or the session) closed."""
        for caller in self.callers:
            assert caller.ended_as is not None or caller.waiting or not caller.outcomes
            for _, outcome in caller.per_position():
                if not isinstance(outcome, ClientClosedError):
                    continue
                assert caller.ended_as is not None
                closing = caller.slot.closing_as
                own = closing is not None and closing < caller.ended_as
                session = (
                    self.session_closed_as is not None and self.session_closed_as < caller.ended_as
                )
                assert own or session, f"caller {caller.number} stranded: {outcome!r}"

    @invariant()
    def the_exchange_never_sees_more_than_five_per_second_per_account(self) -> None:
        for account in {slot.account for slot in self.slots}:
            arrivals = [
                s.arrived_at
                for s in self.bingx.sent
                if s.account == account and s.arrived_at is not None
            ]
            assert most_in_window(arrivals, 1.0) <= 5, sorted(arrivals)

    @invariant()
    def nothing_is_sent_before_an_unblock_time_already_told(self) -> None:
        """After "disabled until T" reached the client, no close of that account leaves
        before T."""
        for unblock in self.bingx.unblocks:
            early = [
                s.sent_at
                for s in self.bingx.sent
                if s.account == unblock.account
                and s.sent_at > unblock.told_at + TOL
                and s.sent_at < unblock.until - 1e-3
            ]
            assert early == [], (unblock, early)

    @invariant()
    def only_the_session_or_a_deadline_cuts_requests_off(self) -> None:
        """Closing a client lets its requests on the wire get their answers (so their
        outcomes are known); only closing the session cuts them off, or the total_timeout
        of a call running then (at its deadline exactly)."""
        for sent in self.bingx.sent:
            if sent.cut_as is None:
                continue
            closed = self.session_closed_as
            if closed is not None and closed < sent.cut_as:
                continue
            deadlines = [
                caller.started_at + caller.slot.policy.total_timeout
                for caller in self.callers
                if caller.slot.policy.total_timeout is not None and caller.started_as < sent.sent_as
            ]
            assert any(abs(d - (sent.cut_at or 0.0)) < 1e-3 for d in deadlines), sent

    @invariant()
    def session_is_quiet_once_closed(self) -> None:
        if self.session_closed_as is None or not all(t.done() for t in self.closing_tasks):
            return
        assert self.session.closed
        assert self.loop.pending_tasks() == []
        limits = self.session._limits
        assert isinstance(limits, MemoryLimits)
        assert limits.limiter._timer is None
        assert self.library_timers() == []
        assert len(self.session._flights) == 0

    def finish(self) -> None:
        """Close the session as the next close arrives (abruptly, with calls under way), or
        once everything settled."""
        if self.abrupt_end:
            self.bingx.on_arrival = self._close_session
            for _ in range(10_000):
                if self.session_closed_as is not None or not self.waiting():
                    break
                self.advance(0.25)
            self.bingx.on_arrival = None
        else:
            self.everything_settles()
        if self.session_closed_as is None:
            self._close_session()
        self.everything_settles()
        for slot in self.slots:
            self.spawn(slot.client.aclose())
        self.session_is_quiet_once_closed()


@pytest.mark.timeout(TIMEOUT)
def test_shared_closes_machine() -> None:
    run_state_machine_as_test(SharedClosesMachine, settings=PROFILE)
