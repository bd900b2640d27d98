"""RedisSharedLimits: a session's ``Limits`` shared with other processes through Redis.

An attempt first takes its slots in this process's own ``RateLimiter`` (first come,
first served among the process's callers, and the holds it heard of itself), then is
admitted in Redis by one script (``ADMIT``): its budgets, its error guard and its
claim, all at once. Only the oldest waiter of a lane asks Redis; the others queue behind it
in the process. When the attempt ends, one more script (``FINISH``) dates its slots,
counts its error and tells its claim how the call stands.

While Redis cannot be used, and for one window after it comes back or is found to have lost
its state, a second in-process limiter with every budget cut to ``outage_share`` stands in
for the other processes' requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from bingx_async._budgets import Budget
from bingx_async._clock import Clock
from bingx_async._config import RetryPolicy
from bingx_async._errorguard import ErrorRateGuard, counted_code, guard_error
from bingx_async._exceptions import (
    BingXError,
    IPBannedError,
    QueueTimeoutError,
    RateLimitError,
    SharedLimitsUnavailableError,
)
from bingx_async._flights import ORPHAN_MEMORY
from bingx_async._limits import Attempt, Claim, ClaimState, GuardAsk, Limits, Pass
from bingx_async._ratelimit import (
    ABANDONED_REQUEST_TRANSIT,
    RELEARN_AFTER,
    BudgetUsage,
    Permit,
    RateLimiter,
    Release,
    RequestBudgets,
    held_refusal,
    queue_timeout,
)

from ._store import MillisecondsSince, RedisStore, SharedStateDown

__all__ = ["RedisSharedLimits"]

logger = logging.getLogger("bingx_async")

#: Seconds a process that said it waits may be late before the next one takes its turn.
TURN_GRACE = 0.25


class _Plan(NamedTuple):
    """What an attempt of one request sends to Redis that does not change between attempts."""

    budget_keys: list[str]
    budget_args: list[object]
    #: Per budget: answered-slots key, in-flight key, limit, window (ms), budget id.
    finish: list[tuple[str, str, int, int, str]]
    lane: str
    watched: list[str]


class _Remote(NamedTuple):
    permit_id: str
    plan: _Plan
    guard: GuardAsk | None


class _Joined(Pass):
    __slots__ = ("joined",)

    def __init__(self, result: Any) -> None:
        self.joined = result

    def finish(
        self,
        how: Release,
        *,
        code: int | None = None,
        claim: ClaimState | None = None,
        result: Any = None,
        final: bool = False,
    ) -> None:
        pass


class _RedisPass(Pass):
    """Slots held in this process and in Redis (or, while Redis is not used, in the stand-in)."""

    __slots__ = (
        "_claim",
        "_engine",
        "_local",
        "_local_guard",
        "_other",
        "_remote",
        "finished",
        "inherited_unknown",
        "send_by",
    )

    def __init__(
        self,
        engine: RedisSharedLimits,
        local: Permit,
        other: Permit | None,
        remote: _Remote | None,
        claim: Claim | None,
        local_guard: GuardAsk | None,
        send_by: float,
        inherited_unknown: bool,
    ) -> None:
        self._engine = engine
        self._local = local
        self._other = other
        self._remote = remote
        self._claim = claim
        self._local_guard = local_guard
        self.send_by = send_by
        self.inherited_unknown = inherited_unknown
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
        self._local.release(how)
        if self._other is not None:
            self._other.release(how)
        engine = self._engine
        if self._local_guard is not None:
            guard = self._local_guard
            engine.local_errors.finish(guard.account, guard.endpoint, code)
        if self._remote is not None:
            settles = self._claim if claim is not None else None
            if settles is not None and (final or claim is ClaimState.RESULT):
                settles.settled = True
            engine.finish_remote(self._remote, how, code, settles, claim, result, final)


class _Ask:
    """One caller's admission, queued in its lane."""

    __slots__ = ("arguments", "claim", "future", "keys", "remote")

    def __init__(
        self,
        keys: list[str],
        arguments: Callable[[], list[object]],
        remote: _Remote,
        claim: Claim | None,
    ) -> None:
        self.keys = keys
        self.arguments = arguments
        self.remote = remote
        self.claim = claim
        #: Set to ``None`` when this caller is at the head of its lane, or to its answer
        #: when the head asked for it.
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()


class _Lane:
    """This process's callers of one lane: the first asks Redis, the others queue behind
    it, first come, first served (only one sleeps on Redis's answer at a time).

    ``room`` only decides how many queued callers are asked for in the head's write: a
    caller asked for too early is answered "wait" and asks again itself, one asked for too
    late asks itself. No admission depends on it, so mutation testing leaves its lines out
    (``pragma: no mutate``), as it does the cache of what a request sends.
    """

    __slots__ = ("queue", "room")

    def __init__(self) -> None:
        self.queue: deque[_Ask] = deque()
        #: Requests the last answer said the lane's budgets still had room for.
        self.room: float = 0  # pragma: no mutate

    def leave(self, ask: _Ask) -> None:
        was_head = bool(self.queue) and self.queue[0] is ask
        with contextlib.suppress(ValueError):
            self.queue.remove(ask)
        if not ask.future.done():
            ask.future.cancel()
        if was_head and self.queue and not self.queue[0].future.done():
            self.queue[0].future.set_result(None)


class _Claimed(Exception):
    """Another caller holds the claim: wait up to ``left`` seconds for news of it."""

    def __init__(self, left: float, name: str) -> None:
        self.left = left
        self.name = name


class RedisSharedLimits(Limits):
    """Limits shared by every process using the same Redis (see module docs)."""

    def __init__(self, clock: Clock, store: RedisStore) -> None:
        self.clock = clock
        self.store = store
        self.local: RateLimiter = RateLimiter(clock)
        #: Stands in for Redis while it is not used, every budget cut to a share.
        self.stand_in: RateLimiter = RateLimiter(clock)
        #: Error counts while Redis is not used.
        self.local_errors: ErrorRateGuard = ErrorRateGuard(clock)
        self._lanes: dict[str, _Lane] = {}
        self._closed: Callable[[], BingXError] | None = None
        #: Per budget: when this process last heard from Redis how many requests its
        #: window held, and that number (what the stand-in assumes when Redis goes away).
        self._seen: dict[tuple[Any, float], tuple[float, int]] = {}
        #: Per budget: until when Redis last said a request of it had to wait for room.
        self._full_until: dict[tuple[Any, float], float] = {}
        self._seeded: tuple[int, object] = (0, None)
        #: Per request (by identity: a pipeline keeps one per endpoint), what it sends.
        self._plans: dict[int, tuple[RequestBudgets, _Plan]] = {}

    def next_ticket(self) -> int:
        return self.local.next_ticket()

    def start(self) -> None:
        self.store.start(self.clock)

    async def admit(
        self,
        attempt: Attempt,
        *,
        ticket: int | None = None,
        max_block_wait: float = math.inf,
        deadline: float = math.inf,
        since: float | None = None,
    ) -> Pass:
        began = self.clock.monotonic() if since is None else since
        if ticket is None:
            ticket = self.local.next_ticket()
        while True:
            try:
                return await self._admit_once(attempt, ticket, max_block_wait, deadline, began)
            except _Claimed as claimed:
                await self._wait_for_claim(attempt, claimed, deadline, began)

    async def _admit_once(
        self,
        attempt: Attempt,
        ticket: int,
        max_block_wait: float,
        deadline: float,
        began: float,
    ) -> Pass:
        request = attempt.budgets
        local = await self.local.acquire(
            request, ticket=ticket, max_block_wait=max_block_wait, deadline=deadline, since=began
        )
        store = self.store
        other: Permit | None = None
        try:
            await store.ready()
            while True:
                if store.available:
                    recent = _windows_longer_than(
                        request, self.clock.monotonic() - store.recovered_at
                    )
                    if recent is not None and other is None:
                        # Redis may hold none of what the processes sent before it came back
                        # (or lost it): keep to the outage's share until each window passed.
                        self._seed(recent)
                        other = await self._stand_in_permit(recent, max_block_wait, deadline, began)
                    try:
                        found = await self._admit_remote(
                            attempt, max_block_wait, deadline, began, store.outages
                        )
                    except SharedStateDown:
                        continue
                    if isinstance(found, _Joined):
                        local.release(Release.NOT_SENT)
                        if other is not None:
                            other.release(Release.NOT_SENT)
                        return found
                    remote, issued, inherited = found
                    send_by = issued + store.lease - ABANDONED_REQUEST_TRANSIT
                    return _RedisPass(
                        self, local, other, remote, attempt.claim, None, send_by, inherited
                    )
                if store.on_outage == "fail":
                    raise SharedLimitsUnavailableError(
                        f"not sent: {store.problem}; shared limits are required (on_outage='fail')",
                        endpoint=request.label or None,
                        may_have_executed=False,
                    )
                self._seed(request)
                if other is not None:
                    other.release(Release.NOT_SENT)
                other = await self._stand_in_permit(request, max_block_wait, deadline, began)
                if not store.available:
                    guard = attempt.guard
                    if guard is not None:
                        self.local_errors.admit(guard.account, guard.endpoint, guard.policy)
                    return _RedisPass(self, local, other, None, None, guard, math.inf, False)
                # Redis came back while this waited: take its slots too.
        except BaseException:
            local.release(Release.NOT_SENT)
            if other is not None:
                other.release(Release.NOT_SENT)
            raise

    def _seed(self, request: RequestBudgets) -> None:
        """Other processes' requests are invisible from now on: assume what Redis last said
        their windows held (once per outage or loss)."""
        store = self.store
        if self._seeded != (store.outages, request.budgets):
            self._seeded = (store.outages, request.budgets)
            # Requests Redis counted may have reached BingX up to now: date them now, as
            # long as the window they were seen in has not passed.
            now = self.clock.monotonic()
            recent = {
                (key, window): (now, count)
                for (key, window), (seen_at, count) in self._seen.items()
                if seen_at + window + request.margin > now
            }
            # A process told only to wait knows when its budgets had room again: until
            # then, they were full.
            for key, budget in request.budgets:
                full_until = self._full_until.get((key, budget.window), -math.inf)
                if (key, budget.window) not in recent and full_until > now:
                    window = budget.window + request.margin
                    recent[(key, budget.window)] = (full_until - window, budget.limit)
            self.stand_in.assume_answered(_cut(request, store.outage_share), recent)

    async def _stand_in_permit(
        self, request: RequestBudgets, max_block_wait: float, deadline: float, began: float
    ) -> Permit:
        return await self.stand_in.acquire(
            _cut(request, self.store.outage_share),
            max_block_wait=max_block_wait,
            deadline=deadline,
            since=began,
        )

    async def _wait_for_claim(
        self, attempt: Attempt, claimed: _Claimed, deadline: float, began: float
    ) -> None:
        """Sleep until the claim's holder says it ended, its claim lapses, or ``deadline``."""
        now = self.clock.monotonic()
        if now >= deadline:
            label = attempt.budgets.label or "the call"
            raise QueueTimeoutError(
                f"{label}: another process holds this call (it may be sending it) and its "
                f"outcome did not come within the call's total_timeout (waited "
                f"{now - began:.3f} s); it may have executed",
                endpoint=attempt.budgets.label or None,
                refused_locally=True,
                may_have_executed=True,
            )
        event = self.store.watch([claimed.name])
        try:
            await _sleep_until(self.clock, min(now + claimed.left, deadline), event)
        finally:
            self.store.unwatch([claimed.name], event)

    def hold(
        self,
        answer: RateLimitError,
        request: RequestBudgets,
        *,
        policy: RetryPolicy,
        fallback: float | None,
    ) -> bool:
        """Hold here at once (see ``RateLimiter.hold``), and for every process."""
        held = self.local.hold(answer, request, policy=policy, fallback=fallback)
        self.stand_in.hold(
            answer, _cut(request, self.store.outage_share), policy=policy, fallback=fallback
        )
        holds = self.local.held_by(answer)
        learned = self.local.learned_limits(request)
        if holds or learned:
            self._hold_remote(answer, request, holds, learned)
        return held

    def settle(self, claim: Claim, state: ClaimState, result: Any = None) -> None:
        if claim.settled:
            return
        claim.settled = True
        self.finish_remote(None, Release.NOT_SENT, None, claim, state, result, True)

    def usage(self) -> list[BudgetUsage]:
        return self.local.usage()

    def rest(self) -> None:
        self.local.rest()
        self.stand_in.rest()

    def close(self, error: Callable[[], BingXError]) -> None:
        self._closed = error
        self.local.close(error)
        self.stand_in.close(error)
        self.store.wake_all()

    async def aclose(self) -> None:
        await self.store.aclose()

    # --- Redis ----------------------------------------------------------------------------

    def _plan(self, request: RequestBudgets) -> _Plan:
        found = self._plans.get(id(request))  # pragma: no mutate
        if found is not None and found[0] is request:  # pragma: no mutate
            return found[1]
        store = self.store
        keys: list[str] = []
        args: list[object] = []
        finish: list[tuple[str, str, int, int, str]] = []
        host_ban = store.unused_key
        for key, budget in request.budgets:
            bid = store.budget_id(key, budget.window)
            window_ms = _ms(budget.window + request.margin)
            if key[0] != "account":
                host_ban = store.host_ban_key(request.host)
            slots, flying = store.key("s", bid), store.key("f", bid)
            keys += [slots, flying, store.key("h", bid), store.key("l", bid)]
            args += [budget.limit, window_ms]
            finish.append((slots, flying, budget.limit, window_ms, bid))
        bids = [bid for *_, bid in finish]
        lane = store.lane_id(bids)
        plan = _Plan([host_ban, *keys], args, finish, lane, [*bids, f"{lane}/{store.process_id}"])
        if len(self._plans) > 1000:  # pragma: no mutate
            self._plans.clear()  # pragma: no mutate
        self._plans[id(request)] = (request, plan)  # pragma: no mutate
        return plan

    async def _admit_remote(
        self,
        attempt: Attempt,
        max_block_wait: float,
        deadline: float,
        began: float,
        outages: int,
    ) -> tuple[_Remote, float, bool] | _Joined:
        """Admission in Redis; ``SharedStateDown`` when Redis cannot be used, or has
        lost its state since ``outages`` was read (the stand-in must be asked first)."""
        store = self.store
        request, guard, claim = attempt.budgets, attempt.guard, attempt.claim
        plan = self._plan(request)
        permit_id = store.permit_id()
        unused = store.unused_key
        if claim is not None:
            claim_name, (claim_key, outcome_key, waiters_key) = store.claim_keys(claim.name)
        else:
            claim_name, claim_key, outcome_key, waiters_key = "", unused, unused, unused
        if guard is not None:
            error_key, flying_key = store.guard_keys(guard.account, guard.endpoint)
            guard_args: list[object] = [_ms(guard.policy.window), guard.policy.threshold]
        else:
            error_key = flying_key = unused
            guard_args = ["", 0]
        keys = [
            store.epoch_key,
            store.key("w", plan.lane),
            store.key("x", plan.lane),
            claim_key,
            outcome_key,
            waiters_key,
            error_key,
            flying_key,
            *plan.budget_keys,
        ]
        remote = _Remote(permit_id, plan, guard)
        lane = self._lanes.get(plan.lane)
        if lane is None:
            lane = self._lanes[plan.lane] = _Lane()

        def arguments() -> list[object]:
            return [
                store.now_arg(),
                store.epoch,
                store.new_epoch,
                permit_id,
                _ms(store.lease),
                store.process_id,
                _ms(TURN_GRACE),
                store.channel,
                plan.lane,
                claim.token if claim is not None else "",
                _ms(ORPHAN_MEMORY),
                *guard_args,
                *plan.budget_args,
            ]

        def admitted(answer: Any) -> tuple[_Remote, float, bool]:
            seen_at = self.clock.monotonic()
            room = math.inf if answer[3] == "" else int(answer[3])  # pragma: no mutate
            for (key, budget), count in zip(request.budgets, answer[4:], strict=False):
                self._seen[(key, budget.window)] = (seen_at, int(count))
                room = min(room, budget.limit - int(count))  # pragma: no mutate
            lane.room = room  # pragma: no mutate
            return remote, seen_at, answer[2] == 1

        ask = _Ask(keys, arguments, remote, claim)
        lane.queue.append(ask)
        try:
            if lane.queue[0] is not ask:
                # Another caller of this process asks Redis for this lane; it may ask for
                # this one too, in the same write, when the last answer left room.
                early = await ask.future
                if early is not None:
                    return admitted(early)
            while True:
                event = store.watch(plan.watched)
                try:
                    if self._closed is not None:
                        raise self._closed()
                    if store.outages != outages:
                        raise SharedStateDown
                    issued = self.clock.monotonic()
                    answer = await self._ask_with_followers(lane, ask)
                    kind = answer[0]
                    if kind == "ok":
                        return admitted(answer)[0], issued, answer[2] == 1
                    lane.room = 0  # pragma: no mutate
                    if kind == "epoch":
                        store.lost_state(str(answer[1]))
                        raise SharedStateDown
                    if kind == "settled":
                        assert claim is not None
                        claim.settled = True
                        # "result <token> <payload>": only results are settled.
                        return _Joined(claim.decode(str(answer[1]).split(" ", 2)[2]))
                    if kind == "claimed":
                        left = _seconds(answer[1])
                        if left <= 0:
                            left = store.lease  # no expiry: never wait for ever
                        raise _Claimed(left, claim_name)
                    if kind == "refuse":
                        assert guard is not None
                        code = int(answer[1]) if answer[1] else None
                        count, pending = int(answer[2]), int(answer[3])
                        age = _seconds(answer[4])
                        window = guard.policy.window
                        retry_after = max(0.0, window - age) if code is not None else 0.0
                        raise guard_error(guard.endpoint, code, count, pending, window, retry_after)
                    until, why, now = float(answer[1]), str(answer[2]), float(answer[3])
                    wait = _seconds(until - now)
                    local_now = self.clock.monotonic()
                    if why == "full":
                        for key, budget in request.budgets:
                            self._full_until[(key, budget.window)] = local_now + wait
                    if why == "hold" and wait > min(max_block_wait, deadline - local_now):
                        raise held_refusal(
                            request.label or "a budget", wait, _decode_reason(answer[4])
                        )
                    logger.debug(
                        "shared limits: %s waits up to %.3f s (%s)",
                        request.label or plan.lane,
                        wait,
                        why,
                    )
                    await _sleep_until(self.clock, min(local_now + wait, deadline), event)
                    if self.clock.monotonic() >= deadline:
                        raise queue_timeout(request, self.clock.monotonic() - began)
                finally:
                    store.unwatch(plan.watched, event)
        finally:
            lane.leave(ask)
            if not lane.queue and self._lanes.get(plan.lane) is lane:
                del self._lanes[plan.lane]

    async def _ask_with_followers(self, lane: _Lane, head: _Ask) -> Any:
        """The head's admission; with it, in the same write, the admissions of the callers
        queued behind it for which the last answer left room (each gets its own answer)."""
        followers = [ask for ask in itertools.islice(lane.queue, 1, None) if not ask.future.done()]
        room = lane.room - 1  # pragma: no mutate
        if room < len(followers):  # pragma: no mutate
            followers = followers[: int(room)]  # pragma: no mutate
        calls = [(head.keys, head.arguments())]
        calls += [(ask.keys, ask.arguments()) for ask in followers]
        answers = await self.store.run_many("admit", calls)
        for ask, answer in zip(followers, answers[1:], strict=True):
            if isinstance(answer, list | tuple) and answer and answer[0] == "ok":
                if ask.future.done():
                    # Its caller left meanwhile: nothing was sent, give the slots back.
                    self.finish_remote(
                        ask.remote,
                        Release.NOT_SENT,
                        None,
                        ask.claim,
                        ClaimState.NOTHING_EXECUTED if ask.claim is not None else None,
                        None,
                        True,
                    )
                else:
                    lane.queue.remove(ask)
                    ask.future.set_result(answer)
        return answers[0]

    def finish_remote(
        self,
        remote: _Remote | None,
        how: Release,
        code: int | None,
        claim: Claim | None,
        state: ClaimState | None,
        result: Any,
        final: bool,
    ) -> None:
        """One FINISH script, soon: the attempt's slots, its error count, its claim's state."""
        store = self.store
        unused = store.unused_key
        if claim is not None and state is not None:
            claim_name, (claim_key, outcome_key, waiters_key) = store.claim_keys(claim.name)
            payload = claim.encode(result) if state is ClaimState.RESULT else ""
            claim_args: list[object] = [claim.token, state.value, "1" if final else "0", payload]
        else:
            claim_name, claim_key, outcome_key, waiters_key = "", unused, unused, unused
            claim_args = ["", "", "0", ""]
        guard = remote.guard if remote is not None else None
        if guard is not None:
            error_key, flying_key = store.guard_keys(guard.account, guard.endpoint)
            counted = str(code) if code is not None and counted_code(code) else ""
            guard_args: list[object] = [counted, _ms(guard.policy.window)]
        else:
            error_key = flying_key = unused
            guard_args = ["", ""]
        keys = [store.epoch_key, claim_key, outcome_key, waiters_key, error_key, flying_key]
        per_budget: list[object] = []
        if remote is not None:
            for slots, flying, limit, window_ms, bid in remote.plan.finish:
                keys += [slots, flying]
                per_budget += [limit, window_ms, bid]
        args = [
            store.now_arg(),
            store.epoch,
            remote.permit_id if remote is not None else "",
            how.name.lower(),
            MillisecondsSince(self.clock.monotonic()),
            _ms(ABANDONED_REQUEST_TRANSIT),
            store.channel,
            *guard_args,
            *claim_args,
            _ms(store.lease),
            _ms(ORPHAN_MEMORY),
            claim_name,
            *per_budget,
        ]
        store.send_later("finish", keys, args, functools.partial(self._after_finish, store.epoch))

    def _after_finish(self, epoch: str, answer: Any) -> None:
        if answer[0] != 1:
            # Redis lost what it held since this attempt was admitted.
            self.store.suspect_lost_state(epoch)

    def _hold_remote(
        self,
        answer: RateLimitError,
        request: RequestBudgets,
        holds: list[tuple[Any, float, float]],
        learned: list[tuple[Any, float, int]],
    ) -> None:
        store = self.store
        keys = [store.epoch_key]
        keys += [store.key("h", store.budget_id(key, window)) for key, window, _ in holds]
        ids = [store.budget_id(key, window) for key, window, _ in holds]
        wait = max((left for *_, left in holds), default=0.0)
        if isinstance(answer, IPBannedError):
            keys.append(store.host_ban_key(request.host))
            ids.append(f"ban@{request.host}")
        learned_args: list[object] = []
        for key, window, limit in learned:
            keys.append(store.key("l", store.budget_id(key, window)))
            learned_args += [limit, _ms(RELEARN_AFTER)]
        args = [store.now_arg(), store.epoch, _ms(wait), _encode_reason(answer), store.channel]
        store.send_later(
            "hold",
            keys,
            [*args, *ids, *learned_args],
            functools.partial(self._after_finish, store.epoch),
        )


def _ms(seconds: float) -> int:
    """Seconds as the scripts take them: whole milliseconds, rounded up (never shorter)."""
    return math.ceil(seconds * 1000)


def _seconds(milliseconds: Any) -> float:
    """Milliseconds from a script's answer, in seconds."""
    return float(milliseconds) / 1000


async def _sleep_until(clock: Clock, when: float, event: asyncio.Event) -> None:
    """Wait until ``when`` (monotonic) or until ``event`` is set, whichever comes first."""
    timer = clock.call_at(when, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


def _windows_longer_than(request: RequestBudgets, seconds: float) -> RequestBudgets | None:
    """``request`` with only its budgets whose window is longer than ``seconds``, if any."""
    budgets = tuple(
        (key, budget) for key, budget in request.budgets if budget.window + request.margin > seconds
    )
    return dataclasses.replace(request, budgets=budgets) if budgets else None


def _cut(request: RequestBudgets, share: float) -> RequestBudgets:
    budgets = tuple(
        (key, Budget(max(1, math.floor(budget.limit * share)), budget.window))
        for key, budget in request.budgets
    )
    return dataclasses.replace(request, budgets=budgets)


#: What a refusal because of another process's hold repeats of BingX's answer (see
#: ``held_refusal``: its wait is the hold's, not the answer's).
_REASON_FIELDS = ("code", "msg", "status_code", "endpoint", "banned_code")


def _encode_reason(answer: RateLimitError) -> str:
    fields: dict[str, Any] = {name: getattr(answer, name) for name in _REASON_FIELDS}
    fields["ip_ban"] = isinstance(answer, IPBannedError)
    fields["message"] = answer.message
    return json.dumps(fields, default=str)


def _decode_reason(raw: Any) -> RateLimitError:
    """The answer another process heard, as the error of a call refused because of it."""
    try:
        fields = json.loads(str(raw))
        cls = IPBannedError if fields.get("ip_ban") else RateLimitError
        return cls(
            fields.get("message") or "held by another process",
            code=fields.get("code"),
            msg=fields.get("msg"),
            status_code=fields.get("status_code"),
            endpoint=fields.get("endpoint"),
            banned_code=fields.get("banned_code"),
        )
    except (ValueError, TypeError, AttributeError):
        return RateLimitError("a budget is held by another process")
