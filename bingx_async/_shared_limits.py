"""What a session shares through :class:`RedisLimits`: admission, holds, error counts and
closes in flight, with the in-process machinery kept for what stays local.

A request first takes its slots in this process's own :class:`RateLimiter` (first come,
first served among the process's callers, the holds it heard of itself), then in Redis,
where every process's requests meet. Only the oldest waiter of a lane asks Redis; the
others queue behind it in the process. While Redis is unreachable, a second in-process
limiter with every budget cut to ``outage_share`` stands in for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

from . import _exceptions
from ._budgets import Budget
from ._clock import Clock
from ._config import RetryPolicy
from ._errorguard import ErrorGuardPolicy, ErrorRateGuard, counted_code, guard_error
from ._exceptions import (
    BingXError,
    IPBannedError,
    RateLimitError,
    SharedLimitsUnavailableError,
)
from ._flights import ORPHAN_MEMORY, Flight
from ._models import ClosePositionResult
from ._ratelimit import (
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
from ._redis import RedisLimits, SharedStateDown

__all__ = ["SharedCloses", "SharedErrorGuard", "SharedPermit", "SharedRateLimiter"]

logger = logging.getLogger("bingx_async")

#: Seconds a process that said it waits may be late before the next one takes its turn.
TURN_GRACE = 0.25


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Remote(NamedTuple):
    permit_id: str
    #: Per budget: answered-slots key, in-flight key, limit, window (ms), budget id.
    budgets: list[tuple[str, str, int, float, str]]


class SharedPermit:
    """Slots held in this process and in Redis (or, during an outage, in the stand-in)."""

    __slots__ = ("_limiter", "_local", "_other", "_remote", "released", "send_by")

    def __init__(
        self,
        limiter: SharedRateLimiter,
        local: Permit,
        remote: _Remote | None,
        other: Permit | None,
        send_by: float,
    ) -> None:
        self._limiter = limiter
        self._local = local
        self._remote = remote
        self._other = other
        self.released = False
        #: The request must have left by then (monotonic), or be cut off: its lease ends.
        self.send_by = send_by

    def release(self, how: Release) -> None:
        if self.released:
            return
        self.released = True
        self._local.release(how)
        if self._other is not None:
            self._other.release(how)
        if self._remote is not None:
            self._limiter.release_remote(self._remote, how)


class SharedRateLimiter:
    """A :class:`RateLimiter` for requests whose budgets are shared through Redis."""

    def __init__(self, clock: Clock, store: RedisLimits) -> None:
        self.clock = clock
        self.store = store
        self.local: RateLimiter = RateLimiter(clock)
        #: Stands in for Redis while it is unreachable, every budget cut to a share.
        self.stand_in: RateLimiter = RateLimiter(clock)
        self._lanes: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self._closed: Callable[[], BingXError] | None = None
        #: Per budget: when this process last heard from Redis how many requests its
        #: window held, and that number (what the stand-in assumes at an outage's start).
        self._seen: dict[tuple[Any, float], tuple[float, int]] = {}
        self._seeded: tuple[int, object] = (0, None)

    def next_ticket(self) -> int:
        return self.local.next_ticket()

    async def acquire(
        self,
        request: RequestBudgets,
        *,
        ticket: int | None = None,
        max_block_wait: float = math.inf,
        deadline: float = math.inf,
    ) -> SharedPermit:
        """Like :meth:`RateLimiter.acquire`, with the slots taken in Redis as well."""
        local = await self.local.acquire(
            request, ticket=ticket, max_block_wait=max_block_wait, deadline=deadline
        )
        store = self.store
        other: Permit | None = None
        try:
            while True:
                if store.available:
                    recent = _windows_longer_than(
                        request, self.clock.monotonic() - store.recovered_at
                    )
                    if recent is not None and other is None:
                        # Redis may have come back empty: what the processes sent during
                        # the outage is in none of its windows. Keep to the outage's share
                        # until each window has passed.
                        other = await self._stand_in_permit(recent, max_block_wait, deadline)
                    try:
                        remote, issued = await self._acquire_remote(
                            request, max_block_wait, deadline
                        )
                    except SharedStateDown:
                        pass
                    else:
                        send_by = issued + store.lease - ABANDONED_REQUEST_TRANSIT
                        return SharedPermit(self, local, remote, other, send_by)
                if store.on_outage == "fail":
                    raise SharedLimitsUnavailableError(
                        f"not sent: the Redis sharing the rate limits ({store.where}) is "
                        "unreachable, and on_outage='fail'",
                        endpoint=request.label or None,
                        may_have_executed=False,
                    )
                if self._seeded != (store.outages, request.budgets):
                    # Other processes' requests are invisible from now on: assume what
                    # Redis last said their windows held.
                    self._seeded = (store.outages, request.budgets)
                    self.stand_in.assume_answered(_cut(request, store.outage_share), self._seen)
                if other is not None:
                    other.release(Release.NOT_SENT)
                other = await self._stand_in_permit(request, max_block_wait, deadline)
                if not store.available:
                    return SharedPermit(self, local, None, other, math.inf)
                # Redis came back while this waited: take its slots too.
        except BaseException:
            local.release(Release.NOT_SENT)
            if other is not None:
                other.release(Release.NOT_SENT)
            raise

    async def _stand_in_permit(
        self, request: RequestBudgets, max_block_wait: float, deadline: float
    ) -> Permit:
        return await self.stand_in.acquire(
            _cut(request, self.store.outage_share),
            max_block_wait=max_block_wait,
            deadline=deadline,
        )

    def hold(
        self,
        answer: RateLimitError,
        request: RequestBudgets,
        *,
        policy: RetryPolicy,
        fallback: float | None,
    ) -> bool:
        """Hold here at once (see :meth:`RateLimiter.hold`), and for every process."""
        held = self.local.hold(answer, request, policy=policy, fallback=fallback)
        self.stand_in.hold(
            answer, _cut(request, self.store.outage_share), policy=policy, fallback=fallback
        )
        holds = self.local.held_by(answer)
        learned = self.local.learned_limits(request)
        if self.store.available and (holds or learned):
            self.store.later(self._hold_remote(answer, request, holds, learned))
        return held

    def usage(self) -> list[BudgetUsage]:
        return self.local.usage()

    def close(self, error: Callable[[], BingXError]) -> None:
        self._closed = error
        self.local.close(error)
        self.stand_in.close(error)
        self.store.wake_all()

    # --- Redis ----------------------------------------------------------------------------

    def _request_keys(self, request: RequestBudgets) -> tuple[list[str], list[object], _Remote]:
        store = self.store
        keys: list[str] = []
        args: list[object] = []
        budgets: list[tuple[str, str, int, float, str]] = []
        for key, budget in request.budgets:
            bid = store.budget_id(key, budget.window)
            window_ms = (budget.window + request.margin) * 1000
            hold = store.key("h", bid)
            host_ban = store.host_ban_key(request.host) if key[0] != "account" else hold
            slots, flying = store.key("s", bid), store.key("f", bid)
            keys += [slots, flying, hold, store.key("l", bid), host_ban]
            args += [budget.limit, window_ms]
            budgets.append((slots, flying, budget.limit, window_ms, bid))
        return keys, args, _Remote(uuid.uuid4().hex, budgets)

    async def _acquire_remote(
        self, request: RequestBudgets, max_block_wait: float, deadline: float
    ) -> tuple[_Remote, float]:
        store = self.store
        keys, per_budget, remote = self._request_keys(request)
        bids = [bid for *_, bid in remote.budgets]
        lane = store.lane_id(bids)
        keys += [store.key("w", lane), store.key("x", lane)]
        fixed: list[object] = [
            remote.permit_id,
            math.ceil(store.lease * 1000),
            store.process_id,
            TURN_GRACE * 1000,
            store.channel,
            lane,
        ]
        watched = [*bids, f"{lane}/{store.process_id}"]
        lock, users = self._lanes.setdefault(lane, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                while True:
                    event = store.watch(watched)
                    try:
                        if self._closed is not None:
                            raise self._closed()
                        issued = self.clock.monotonic()
                        answer = await store.run(
                            "acquire", keys, [store.now_arg(), *fixed, *per_budget]
                        )
                        if _text(answer[0]) == "ok":
                            seen_at = self.clock.monotonic()
                            for (key, budget), count in zip(
                                request.budgets, answer[2:], strict=False
                            ):
                                self._seen[(key, budget.window)] = (seen_at, int(count))
                            return remote, issued
                        until, why, now = float(answer[1]), _text(answer[2]), float(answer[3])
                        wait = (until - now) / 1000
                        local_now = self.clock.monotonic()
                        if why == "hold" and wait > min(max_block_wait, deadline - local_now):
                            raise held_refusal(
                                request.label or "a budget", wait, _decode_reason(answer[4])
                            )
                        logger.debug(
                            "shared limits: %s waits up to %.3f s (%s)",
                            request.label or lane,
                            wait,
                            why,
                        )
                        await _sleep_until(self.clock, min(local_now + wait, deadline), event)
                        if self.clock.monotonic() >= deadline:
                            raise queue_timeout(request, self.clock.monotonic() - issued)
                    finally:
                        store.unwatch(watched, event)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._lanes[lane]

    def release_remote(self, remote: _Remote, how: Release) -> None:
        released_at = self.clock.monotonic()
        self.store.later(self._release_remote(remote, how, released_at))

    async def _release_remote(self, remote: _Remote, how: Release, released_at: float) -> None:
        store = self.store
        keys: list[str] = []
        per_budget: list[object] = []
        for slots, flying, limit, window_ms, bid in remote.budgets:
            keys += [slots, flying]
            per_budget += [limit, window_ms, bid]
        age_ms = max(0.0, (self.clock.monotonic() - released_at) * 1000)
        args = [
            store.now_arg(),
            remote.permit_id,
            how.name.lower(),
            age_ms,
            ABANDONED_REQUEST_TRANSIT * 1000,
            store.channel,
            *per_budget,
        ]
        with contextlib.suppress(SharedStateDown):  # if so, the lease ends the slot
            await store.run("release", keys, args)

    async def _hold_remote(
        self,
        answer: RateLimitError,
        request: RequestBudgets,
        holds: list[tuple[Any, float, float]],
        learned: list[tuple[Any, float, int]],
    ) -> None:
        store = self.store
        keys = [store.key("h", store.budget_id(key, window)) for key, window, _ in holds]
        ids = [store.budget_id(key, window) for key, window, _ in holds]
        wait = max((left for *_, left in holds), default=0.0)
        if isinstance(answer, IPBannedError):
            keys.append(store.host_ban_key(request.host))
            ids.append(f"ban@{request.host}")
        learned_args: list[object] = []
        for key, window, limit in learned:
            keys.append(store.key("l", store.budget_id(key, window)))
            learned_args += [limit, RELEARN_AFTER * 1000]
        args = [store.now_arg(), wait * 1000, _encode_reason(answer), store.channel]
        with contextlib.suppress(SharedStateDown):
            await store.run("hold", keys, [*args, *ids, *learned_args])


class SharedErrorGuard:
    """The error-rate guard (:class:`ErrorRateGuard`) with its counts kept in Redis."""

    def __init__(self, clock: Clock, store: RedisLimits) -> None:
        self.store = store
        self.local: ErrorRateGuard = ErrorRateGuard(clock)

    async def admit(
        self, account: str, endpoint: str, policy: ErrorGuardPolicy
    ) -> tuple[str, float] | None:
        """Count one more request in flight, or raise; returns what :meth:`finish` needs."""
        store = self.store
        if store.available:
            token = uuid.uuid4().hex
            keys = store.guard_keys(account, endpoint)
            args = [
                store.now_arg(),
                token,
                math.ceil(store.lease * 1000),
                policy.window * 1000,
                policy.threshold,
            ]
            try:
                answer = await store.run("guard_admit", keys, args)
            except SharedStateDown:
                pass
            else:
                if _text(answer[0]) == "ok":
                    return token, policy.window
                code = int(_text(answer[1])) if answer[1] else None
                count, pending = int(answer[2]), int(answer[3])
                age = float(_text(answer[4])) / 1000
                retry_after = max(0.0, policy.window - age) if code is not None else 0.0
                raise guard_error(endpoint, code, count, pending, policy.window, retry_after)
        self.local.admit(account, endpoint, policy)
        return None

    def finish(
        self, ticket: tuple[str, float] | None, account: str, endpoint: str, code: int | None
    ) -> None:
        if ticket is None:
            self.local.finish(account, endpoint, code)
            return
        token, window = ticket
        counted = str(code) if code is not None and counted_code(code) else ""
        keys = self.store.guard_keys(account, endpoint)
        self.store.later(self._finish(keys, [token, counted, window * 1000]))

    async def _finish(self, keys: list[str], args: list[object]) -> None:
        with contextlib.suppress(SharedStateDown):
            await self.store.run("guard_finish", keys, [self.store.now_arg(), *args])


class SharedCloses:
    """A close of one position in flight anywhere is not sent again: later callers, in any
    process, get its outcome."""

    def __init__(self, clock: Clock, store: RedisLimits) -> None:
        self.clock = clock
        self.store = store

    def around(
        self,
        account: str | None,
        position_id: str,
        claim_for: float,
        work: Callable[[Flight[Any]], Awaitable[Any]],
    ) -> Callable[[Flight[Any]], Awaitable[Any]]:
        """``work`` (the close), run only if no other process is closing the position."""
        store = self.store
        name, keys = store.close_keys(account, position_id)

        async def shared(flight: Flight[Any]) -> Any:
            token: str | None = None
            if store.available:
                try:
                    found = await self._claim_or_join(name, keys, claim_for, flight)
                except SharedStateDown:
                    found = None  # Redis went away: this process alone decides
                if isinstance(found, dict):
                    return _replay(found)
                token = found

            def settle(outcome: dict[str, Any]) -> None:
                if token is not None:
                    outcome["claim"] = token
                    store.later(store.settle_close(keys, name, token, outcome, ORPHAN_MEMORY))

            try:
                result = await work(flight)
            except BingXError as error:
                settle(_encode_error(error))
                raise
            except asyncio.CancelledError:
                unknown = bool(flight.on_wire) or flight.unknown is not None
                settle({"kind": "unknown" if unknown else "unsent"})
                raise
            settle(_encode_result(result))
            return result

        return shared

    async def _claim_or_join(
        self, name: str, keys: list[str], claim_for: float, flight: Flight[Any]
    ) -> str | dict[str, Any]:
        """This process's claim (a token) once it may send; else another one's outcome."""
        store = self.store
        claim, outcome_key = keys
        while True:
            token = f"{store.process_id}:{uuid.uuid4().hex[:12]}"
            ttl = math.ceil(claim_for * 1000)
            if await store.command("SET", claim, token, "NX", "PX", ttl):
                earlier = _decode(await store.command("GET", outcome_key))
                if earlier is not None and earlier.get("kind") == "result":
                    # Closed by another process not long ago: nothing to send.
                    await store.command("DEL", claim)
                    return earlier
                if earlier is not None and earlier.get("kind") == "unknown":
                    flight.unknown = _unknown(name)
                return token
            event = store.watch([name])
            try:
                holder = await store.command("GET", claim)
                left = int(await store.command("PTTL", claim))
                if left > 0:
                    await _sleep_until(self.clock, self.clock.monotonic() + left / 1000, event)
                settled = _decode(await store.command("GET", outcome_key))
                still_claimed = await store.command("GET", claim)
            finally:
                store.unwatch([name], event)
            if holder is None or still_claimed == holder:
                continue  # not claimed after all, or woken early: look again
            if settled is not None and settled.get("claim") == _text(holder):
                if settled.get("kind") in ("result", "error"):
                    return settled
                if settled.get("kind") == "unsent":
                    continue
            # The claim ended without an outcome (its process died), or with an unknown
            # one: that close may have executed.
            flight.unknown = _unknown(name)


async def _sleep_until(clock: Clock, when: float, event: asyncio.Event) -> None:
    """Wait until ``when`` (monotonic) or until ``event`` is set, whichever comes first."""
    timer = clock.call_at(when, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()


# --- what goes through Redis, as JSON ---------------------------------------------------


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


_REASON_FIELDS = ("code", "msg", "status_code", "endpoint", "unblock_at", "retry_after")


def _encode_reason(answer: RateLimitError) -> str:
    fields: dict[str, Any] = {name: getattr(answer, name) for name in _REASON_FIELDS}
    fields["banned_code"] = answer.banned_code
    fields["type"] = type(answer).__name__
    fields["message"] = answer.message
    return json.dumps(fields, default=str)


def _decode_reason(raw: Any) -> RateLimitError:
    try:
        fields = json.loads(_text(raw))
        cls = IPBannedError if fields.get("type") == "IPBannedError" else RateLimitError
        return cls(
            fields.get("message") or "held by another process",
            code=fields.get("code"),
            msg=fields.get("msg"),
            status_code=fields.get("status_code"),
            endpoint=fields.get("endpoint"),
            retry_after=fields.get("retry_after"),
            banned_code=fields.get("banned_code"),
            may_have_executed=False,
        )
    except (ValueError, TypeError, AttributeError):
        return RateLimitError("a budget is held by another process", may_have_executed=False)


def _encode_result(result: Any) -> dict[str, Any]:
    if not isinstance(result, ClosePositionResult):
        return {"kind": "unknown"}
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    fields["data"] = dict(result.data)
    return {"kind": "result", "fields": json.loads(json.dumps(fields, default=str))}


def _encode_error(error: BingXError) -> dict[str, Any]:
    if error.may_have_executed:
        return {"kind": "unknown"}
    return {
        "kind": "error",
        "type": type(error).__name__,
        "message": error.message,
        "state": {
            name: value
            for name, value in vars(error).items()
            if isinstance(value, str | int | float | bool) or value is None
            if name != "earlier_error"
        },
    }


def _decode(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        found = json.loads(_text(raw))
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def _replay(outcome: dict[str, Any]) -> Any:
    """Another process's outcome, as this process's call returns or raises it."""
    if outcome.get("kind") == "result":
        fields = dict(outcome.get("fields") or {})
        return ClosePositionResult(
            position_id=str(fields.get("position_id")),
            order_id=fields.get("order_id"),
            symbol=fields.get("symbol"),
            side=fields.get("side"),
            type=fields.get("type"),
            position_side=fields.get("position_side"),
            orig_qty=_decimal(fields.get("orig_qty")),
            data=fields.get("data") or {},
            confirmed_from_history=bool(fields.get("confirmed_from_history")),
            close_time=_datetime(fields.get("close_time")),
            avg_close_price=_decimal(fields.get("avg_close_price")),
        )
    cls = getattr(_exceptions, str(outcome.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, BingXError)):
        cls = BingXError
    state = outcome.get("state") if isinstance(outcome.get("state"), dict) else {}
    raise _exceptions._rebuild(cls, str(outcome.get("message", "")), dict(state or {}))


def _unknown(name: str) -> BingXError:
    return BingXError(
        f"another process's close of this position ({name.split('|')[-1]}) ended without a "
        "known outcome; it may have executed",
        may_have_executed=True,
    )


def _decimal(value: Any) -> Decimal | None:
    try:
        return Decimal(value) if value is not None else None
    except (InvalidOperation, TypeError, ValueError):
        return None


def _datetime(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
