"""Stateful property tests of shared limits (Hypothesis), in real time, on both backends.

One machine, :class:`SharedLimitsMachine`, runs "processes" closing positions of one or two
accounts at a strict :class:`FakeBingX` (``closePosition`` at 5 per 0.25 s, ``FAST``), while
callers are cancelled, processes killed, answers lost and the endpoint blocked:

* ``local``: every process is a client of one :class:`BingXSession` (what a session shares);
* ``redis``: every process has a session and a :class:`RedisLimits` of its own, on one
  real ``redis-server`` under a key prefix of the example's own: they share nothing else.

Everything runs in real time on an event loop of the example's own (virtual time cannot
stand still while a real Redis answers), so steps wait a fraction of a second at most. The
invariants are stated at the exchange, from the simulator's own records (which request
closed which position is read from them, and checked against the positions it still
holds): no rolling window ever overflowed, a position closed once, results only for closes
that executed, "nothing executed" (plain "not found" included) never after a close of the
position executed unseen, a block one process heard of holds every process of the account,
every call ends, in time, with exactly one outcome, and (Redis) a result already known is
replayed at once. Rules and their draws depend only on what the machine did, never on how
far real time got, so that Hypothesis can replay an example; a replay may still end
differently (Hypothesis then reports the failure as flaky, with its steps).

Profiles: ``HYPOTHESIS_PROFILE=ci`` (the default, a few seconds per backend) or ``thorough``.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import sys
import time
import uuid
from collections.abc import Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    INVARIANT_MARKER,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXError,
    BingXSession,
    Budget,
    ClosePositionResult,
    Position,
    PositionPossiblyClosedError,
    RedisLimits,
    RetryPolicy,
)
from bingx_async.testing import (
    DropConnection,
    FakeBingX,
    Fault,
    GatewayTimeout,
    RecordedRequest,
    SimAccount,
)

# --- settings -----------------------------------------------------------------------------

#: In real time, replaying an example takes as long as running it. CI runs no shrinking (a
#: failure is printed as found, a dozen steps at most) and no "explain" phase (it re-runs a
#: failure many times over), so that a failing run ends in seconds too, well within the
#: pytest timeout (which Hypothesis would otherwise take for a failure of the example it
#: interrupts). The thorough profile shrinks (one failure per run).
PROFILES = {
    "ci": settings(
        max_examples=12,
        stateful_step_count=12,
        deadline=None,
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        report_multiple_bugs=False,
    ),
    "thorough": settings(
        max_examples=100,
        stateful_step_count=30,
        deadline=None,
        phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
        report_multiple_bugs=False,
    ),
}
PROFILE_NAME = os.environ.get("HYPOTHESIS_PROFILE", "ci")
PROFILE = PROFILES[PROFILE_NAME]
#: pytest-timeout's 60 s is for the CI profile; a thorough run takes minutes.
TIMEOUT = 60 if PROFILE_NAME == "ci" else 0

# --- the exchange and the clients ---------------------------------------------------------

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_NAME = f"POST {CLOSE_PATH}"
#: closePosition at 5 per 0.25 s: the documented limit, four times faster.
FAST = DEFAULT_RATE_LIMITS.with_endpoint(CLOSE_NAME, per_account=(Budget(5, 0.25),), ip_group=2)
RATE_LIMIT_CODE = 100410
#: Open on every account at the start (the same IDs on both: closes are per account).
OPEN_IDS = tuple(str(1001 + n) for n in range(12))
#: Never open anywhere: every close of it is "not found".
GHOST_ID = "1999"
POSITION_IDS = (*OPEN_IDS, GHOST_ID)
#: Closes pick one of the first two positions half of the time: several processes closing
#: one position, again and again, is the point.
CLOSED_IDS = st.one_of(st.sampled_from(POSITION_IDS[:2]), st.sampled_from(POSITION_IDS))
#: Calls give up within 1.5 s; waits are short, as the budgets are.
POLICY = RetryPolicy(
    attempts=4,
    total_timeout=1.5,
    max_server_wait=1.0,
    wait_initial=0.05,
    wait_max=0.2,
    wait_jitter=0.05,
)
#: A slot's lease in Redis: a killed process's slots and close claims free within it.
LEASE = 1.2
#: Real time is not exact: slack for the event loop and Redis round trips on a busy machine.
SLACK = 1.0
#: Seconds after an answer within which its news (a hold) may not have reached every
#: process yet, on top of the requests' arrival jitter: a Redis round trip and a message.
NEWS_DELAY = 0.3
#: A close whose result is remembered in Redis is answered from there within this.
REPLAY_WITHIN = 1.0
#: Seconds the machine waits, at the end, for every caller to end.
FINISH_WITHIN = 5.0

#: The "process" whose task is running: set for each caller's task, inherited by every task
#: it makes (flights, background work), so that a killed process's tasks can all be ended.
PROCESS: contextvars.ContextVar[int] = contextvars.ContextVar("process")

FAULTS: dict[str, Fault] = {
    "504-unexecuted": GatewayTimeout(),
    "504-executed": GatewayTimeout(after_executing=True),
    "drop-unexecuted": DropConnection(),
    "drop-executed": DropConnection(after_executing=True),
}
CANCELLED = "cancelled"
UNBLOCKED_AFTER = re.compile(r"unblocked after (\d+)")


class ProcessTransport(httpx.AsyncBaseTransport):
    """The simulator's transport, as one process sees it: once the process is dead, what it
    would still send goes nowhere."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.dead = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.dead:
            await asyncio.get_running_loop().create_future()  # until cancelled
        return await self.inner.handle_async_request(request)


@dataclass(eq=False)
class Process:
    """A session and a client of one account; its requests carry ``X-Process``."""

    number: int
    account: SimAccount
    session: BingXSession
    client: BingXClient
    http: httpx.AsyncClient
    transport: ProcessTransport
    limits: RedisLimits | None
    killed_at: float | None = None

    def __repr__(self) -> str:
        return f"p{self.number}({self.account.uid})"


@dataclass(eq=False)
class Caller:
    """A task awaiting ``close_position``, ``close_positions`` or ``get_positions``."""

    number: int
    process: Process
    kind: str  # "close", "close_many" or "list"
    position_ids: tuple[str, ...]
    started_at: float
    task: asyncio.Task[None] | None = None
    outcomes: list[object] = field(default_factory=list)
    ended_at: float | None = None
    cancel_requested: bool = False
    killed: bool = False

    def __repr__(self) -> str:
        return f"caller{self.number}({self.kind} {','.join(self.position_ids)} by {self.process})"

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    @property
    def account(self) -> str:
        return self.process.account.uid

    @property
    def let_alone(self) -> bool:
        """Neither cancelled nor killed: it must end on its own, with an outcome."""
        return not (self.cancel_requested or self.killed)

    def per_position(self) -> list[tuple[str, object]]:
        """(position ID, outcome) for each ID of a close that ended with outcomes."""
        if self.kind == "list" or len(self.outcomes) != 1 or self.outcomes[0] == CANCELLED:
            return []
        (outcome,) = self.outcomes
        if self.kind == "close_many" and isinstance(outcome, list):
            return list(zip(self.position_ids, outcome, strict=True))
        return [(self.position_ids[0], outcome)]


@dataclass(frozen=True)
class Execution:
    """The request that closed a position at the exchange."""

    request: RecordedRequest
    #: Its answer never reached the client as sent (a fault replaced it).
    lost: bool


def position_of(request: RecordedRequest) -> tuple[str, str]:
    return (request.account or "", request.param("positionId") or "")


class SharedLimitsMachine(RuleBasedStateMachine):
    """Processes closing positions of one or two accounts, sharing limits through
    ``backend``."""

    backend: ClassVar[str]
    #: The Redis server the ``redis`` backend shares limits through.
    redis_url: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[str] = []
        self.loop.set_exception_handler(self._loop_error)
        self.loop.set_task_factory(self._make_task)
        #: Tasks by the process they were made for (see PROCESS).
        self.tasks_of: dict[int, list[asyncio.Task[Any]]] = {}
        self.prefix = f"stateful-{uuid.uuid4().hex[:12]}"
        self.exchange: FakeBingX | None = None
        self.accounts: list[SimAccount] = []
        self.processes: list[Process] = []
        self.callers: list[Caller] = []
        self.shared_session: BingXSession | None = None
        self.jitter = 0.0
        #: time.time() - monotonic time: converts BingX's unblock times to arrival times.
        self.epoch_offset = time.time() - time.monotonic()
        self.t0 = self.loop.time()

    @property
    def sim(self) -> FakeBingX:
        assert self.exchange is not None
        return self.exchange

    @property
    def now(self) -> float:
        return self.loop.time()

    def alive(self) -> list[Process]:
        return [p for p in self.processes if p.killed_at is None]

    def running(self) -> list[Caller]:
        return [c for c in self.callers if c.running]

    def run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(work)

    def let_time_pass(self, seconds: float) -> None:
        self.run(asyncio.sleep(seconds))

    def _make_task(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **options: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **options)
        context = options.get("context")
        owner = context.get(PROCESS) if context is not None else PROCESS.get(None)
        if owner is not None:
            self.tasks_of.setdefault(owner, []).append(task)
        return task

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.loop_errors.append(str(context.get("exception") or context.get("message")))

    # --- processes ------------------------------------------------------------------------

    def open_process(self, account: SimAccount) -> Process:
        number = len(self.processes)
        limits = None
        if self.backend == "local":
            if self.shared_session is None:
                self.shared_session = BingXSession()
            session = self.shared_session
        else:
            assert self.redis_url is not None
            limits = RedisLimits(self.redis_url, prefix=self.prefix, lease=LEASE)
            session = BingXSession(shared_limits=limits)
        transport = ProcessTransport(self.sim.transport())
        http = httpx.AsyncClient(
            transport=transport, headers={"X-Process": str(number)}, timeout=10.0
        )
        client = BingXClient(
            api_key=account.api_key,
            secret_key=account.secret_key,
            session=session,
            http_client=http,
            rate_limits=FAST,
            retry=POLICY,
        )
        process = Process(number, account, session, client, http, transport, limits)
        self.processes.append(process)
        return process

    def start(self, process: Process, kind: str, position_ids: tuple[str, ...]) -> Caller:
        caller = Caller(len(self.callers), process, kind, position_ids, self.now)
        self.callers.append(caller)
        context = contextvars.copy_context()
        context.run(PROCESS.set, process.number)
        caller.task = self.loop.create_task(self._call(caller), context=context)
        self.let_time_pass(0)
        return caller

    async def _call(self, caller: Caller) -> None:
        client = caller.process.client
        outcome: object
        try:
            if caller.kind == "close":
                outcome = await client.close_position(caller.position_ids[0])
            elif caller.kind == "close_many":
                outcome = await client.close_positions(caller.position_ids)
            else:
                outcome = await client.get_positions()
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

    # --- rules ----------------------------------------------------------------------------

    @initialize(
        accounts=st.integers(1, 2),
        jitter=st.sampled_from([0.0, 0.01, 0.03]),
        seed=st.integers(0, 2**16),
    )
    def open_exchange(self, accounts: int, jitter: float, seed: int) -> None:
        self.jitter = jitter
        self.exchange = FakeBingX(rate_limits=FAST, arrival_jitter=jitter, seed=seed)
        for _ in range(accounts):
            account = self.sim.add_account()
            for position_id in OPEN_IDS:
                self.sim.add_position(account, position_id=position_id)
            self.accounts.append(account)
        self.open_process(self.accounts[0])

    @precondition(lambda self: len(self.alive()) < 4 and len(self.processes) < 6)
    @rule(data=st.data())
    def open_another_process(self, data: st.DataObject) -> None:
        number = data.draw(st.integers(0, len(self.accounts) - 1), label="account")
        self.open_process(self.accounts[number])

    def draw_process(self, data: st.DataObject) -> Process:
        numbers = [p.number for p in self.alive()]
        return self.processes[data.draw(st.sampled_from(numbers), label="process")]

    @precondition(lambda self: self.alive())
    @rule(data=st.data(), position_id=CLOSED_IDS)
    def close(self, data: st.DataObject, position_id: str) -> None:
        self.start(self.draw_process(data), "close", (position_id,))

    @precondition(lambda self: self.alive())
    @rule(
        data=st.data(),
        position_ids=st.lists(CLOSED_IDS, min_size=1, max_size=4),
    )
    def close_many(self, data: st.DataObject, position_ids: list[str]) -> None:
        self.start(self.draw_process(data), "close_many", tuple(position_ids))

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def list_positions(self, data: st.DataObject) -> None:
        """The symbols listed let a close whose answer was lost ask the position history."""
        self.start(self.draw_process(data), "list", ())

    # Rules are enabled, and draw, from what the machine did, never from how far real time
    # got: a replayed example must meet the same choices (Hypothesis checks that it does).

    @precondition(lambda self: self.callers)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """Cancel a caller (if it is still running: a late cancel does nothing)."""
        number = data.draw(st.integers(0, len(self.callers) - 1), label="caller")
        caller = self.callers[number]
        if caller.running:
            caller.cancel_requested = True
            assert caller.task is not None
            caller.task.cancel()
        self.let_time_pass(0)

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        """End a process, with whatever calls it has under way, as if it died. With Redis,
        it owes Redis whatever it had not sent yet (releases, outcomes): its slots and
        claims stay until their leases end."""
        victim = self.draw_process(data)
        victim.killed_at = self.now
        for caller in self.callers:
            if caller.process is victim and caller.running:
                caller.killed = True
        if victim.limits is None:
            # One session plays every process: what a process owns is its callers.
            for caller in self.callers:
                if caller.process is victim and caller.task is not None:
                    caller.task.cancel()
            self.let_time_pass(0)
            return
        victim.transport.dead = True  # nothing more leaves it
        for task in self.tasks_of.get(victim.number, []):
            task.cancel()
        # Nothing more reaches Redis: what its tasks would still send as they end (releases,
        # outcomes) is dropped.
        victim.limits._store._closed = True
        victim.limits._store._pending.clear()
        self.run(self._bury(victim))

    async def _bury(self, victim: Process) -> None:
        """Cancel every task of ``victim`` until none is left (on Python 3.11, a Redis write
        under asyncio.wait_for can swallow a cancellation), then close what it had open, as
        the end of a process closes its connections."""
        for _ in range(100):
            tasks = [t for t in self.tasks_of.get(victim.number, []) if not t.done()]
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks, timeout=0.02)
        else:
            raise AssertionError(f"the tasks of killed {victim} would not end")
        async with asyncio.timeout(5):
            await victim.client.aclose()
            await victim.session.aclose()
            await victim.http.aclose()

    @rule(kind=st.sampled_from(sorted(FAULTS)))
    def lose_next_answer(self, kind: str) -> None:
        """The next close that reaches BingX gets no usable answer (executed or not)."""
        self.sim.inject(FAULTS[kind], path=CLOSE_PATH)

    @rule(data=st.data(), everyone=st.booleans(), seconds=st.sampled_from([0.1, 0.3]))
    def block(self, data: st.DataObject, everyone: bool, seconds: float) -> None:
        """BingX disables closePosition (100410) for an account, or for everyone."""
        account = None
        if not everyone:
            account = self.accounts[data.draw(st.integers(0, len(self.accounts) - 1), label="of")]
        self.sim.block(CLOSE_NAME, seconds, account=account)

    @rule(seconds=st.sampled_from([0.0, 0.02, 0.1, 0.3]))
    def wait(self, seconds: float) -> None:
        self.let_time_pass(seconds)

    # --- what the exchange saw ------------------------------------------------------------

    def closes(self) -> list[RecordedRequest]:
        return self.sim.requests_to(CLOSE_PATH)

    def executions(self) -> dict[tuple[str, str], Execution]:
        """Which request closed each position: the first close of an open position that
        reached the exchange outside a block (no window overflowed: checked first). Checked
        against the positions the exchange still holds."""
        assert self.sim.violations == 0
        seeded = {(a.uid, position_id) for a in self.accounts for position_id in OPEN_IDS}
        found: dict[tuple[str, str], Execution] = {}
        for request in self.closes():
            key = position_of(request)
            if key not in seeded or key in found:
                continue
            if not request.reached_exchange or request.during_block:
                continue
            if request.fault is None:
                assert request.code in (0, RATE_LIMIT_CODE), (
                    f"close of an open position answered {request.code}: {request}"
                )
                if request.code != 0:
                    continue
            found[key] = Execution(request, lost=request.fault is not None)
        still_open = {(a.uid, p.position_id) for a in self.accounts for p in self.sim.positions(a)}
        assert set(found) == seeded - still_open, "the executions were not read right"
        return found

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def no_rolling_window_overflowed(self) -> None:
        """Whatever the processes did (killed ones too: their slots count until their lease
        ends), BingX never saw more than its limit in any rolling window."""
        assert self.sim.violations == 0, [
            (r.arrived_at, r.param("positionId"), r.headers.get("x-process"), r.msg)
            for r in self.closes()
        ]

    @invariant()
    def a_position_is_closed_at_most_once(self) -> None:
        """At most one close answered "closed" per position (the exchange answers "not
        found" to the others), and exactly the positions it no longer holds were closed."""
        closed: dict[tuple[str, str], int] = {}
        for request in self.closes():
            if request.fault is None and request.code == 0:
                key = position_of(request)
                closed[key] = closed.get(key, 0) + 1
        assert all(count == 1 for count in closed.values()), closed
        self.executions()

    @invariant()
    def results_come_from_closes_that_executed(self) -> None:
        """A result names a position the exchange closed, no earlier than that close
        arrived; every result for one position names the same order."""
        executions = self.executions()
        orders: dict[tuple[str, str], set[str]] = {}
        for caller in self.callers:
            for position_id, outcome in caller.per_position():
                if not isinstance(outcome, ClosePositionResult):
                    continue
                key = (caller.account, position_id)
                execution = executions.get(key)
                assert execution is not None, f"{caller}: {position_id} closed, never executed"
                assert caller.ended_at is not None
                assert execution.request.arrived_at <= caller.ended_at + 1e-6, caller
                assert outcome.position_id == position_id, (caller, outcome)
                if outcome.order_id is not None:
                    orders.setdefault(key, set()).add(outcome.order_id)
        assert all(len(ids) == 1 for ids in orders.values()), orders

    @invariant()
    def nothing_executed_only_when_no_close_may_have_executed_unseen(self) -> None:
        """Once a close of a position executed with its answer lost, and no caller has
        learned its result since (from the position history), every call closing the
        position that began later ends with a result or an error saying it may have
        executed: plain "not found" (PositionNotFoundError, not PositionPossiblyClosedError)
        never comes, nor any error with ``may_have_executed=False``. Processes learn of it
        from each other (in Redis, a close that ended unknown, or whose process died, is
        unknown). And PositionPossiblyClosedError only after some close of the position got
        no usable answer, or (Redis) a process died closing it."""
        executions = self.executions()
        #: When a caller first received a result, per position.
        learned: dict[tuple[str, str], float] = {}
        for caller in self.callers:
            for position_id, outcome in caller.per_position():
                if isinstance(outcome, ClosePositionResult) and caller.ended_at is not None:
                    key = (caller.account, position_id)
                    learned[key] = min(learned.get(key, caller.ended_at), caller.ended_at)
        for caller in self.callers:
            for position_id, outcome in caller.per_position():
                if not isinstance(outcome, BingXError):
                    continue
                key = (caller.account, position_id)
                assert caller.ended_at is not None
                if isinstance(outcome, PositionPossiblyClosedError):
                    lost = [
                        r
                        for r in self.closes()
                        if position_of(r) == key
                        and r.fault is not None
                        and r.arrived_at < caller.ended_at
                    ]
                    # A process that died may have died before it wrote down an outcome.
                    died = [
                        c
                        for c in self.callers
                        if c.process.killed_at is not None
                        and self.backend == "redis"
                        and c.account == caller.account
                        and position_id in c.position_ids
                        and c.started_at < caller.ended_at
                    ]
                    assert lost or died, f"{caller}: {position_id} possibly closed, nothing lost"
                    continue
                execution = executions.get(key)
                if execution is None or not execution.lost or outcome.may_have_executed:
                    continue
                if learned.get(key, caller.started_at) < caller.started_at:
                    continue  # its result was known when the call began: "not found" is right
                assert execution.request.arrived_at >= caller.started_at, (
                    f"{caller} told {outcome!r} for {position_id} (may_have_executed=False), "
                    f"though its close executed with a lost answer "
                    f"({type(execution.request.fault).__name__}, sent by "
                    f"p{execution.request.headers.get('x-process')}) at "
                    f"{execution.request.arrived_at - self.t0:.3f} s, before the call began "
                    f"({caller.started_at - self.t0:.3f} s)"
                )

    @invariant()
    def a_block_heard_of_holds_every_process_of_the_account(self) -> None:
        """Once a client heard "disabled until T" (100410), no close of that account reaches
        BingX before T, from any process, but for those already under way then."""
        closes = self.closes()
        for heard in closes:
            if heard.fault is not None or heard.code != RATE_LIMIT_CODE:
                continue
            found = UNBLOCKED_AFTER.search(heard.msg or "")
            if found is None:
                continue
            sender = self.processes[int(heard.headers["x-process"])]
            if sender.killed_at is not None and sender.killed_at < heard.arrived_at + NEWS_DELAY:
                continue  # it died before its news could reach Redis
            until = int(found.group(1)) / 1000 - self.epoch_offset
            since = heard.arrived_at + self.jitter + NEWS_DELAY
            early = [
                (r.arrived_at, r.headers.get("x-process"), r.param("positionId"))
                for r in closes
                if r.account == heard.account and since < r.arrived_at < until - 0.01
            ]
            assert early == [], (
                f"held until {until:.3f} from {heard.arrived_at:.3f} (p{sender.number}), "
                f"yet sent: {early}"
            )

    @invariant()
    def a_killed_process_sends_nothing_more(self) -> None:
        """(Redis) A check of the machine itself: nothing of a dead process runs on."""
        if self.backend == "local":
            return  # its calls' flights belong to the one session, and fly on
        for request in self.sim.requests:
            process = self.processes[int(request.headers["x-process"])]
            if process.killed_at is not None:
                assert request.arrived_at <= process.killed_at, (process, request)

    @invariant()
    def every_call_ends_with_one_outcome(self) -> None:
        """A result, or a BingXError (one per ID for close_positions); cancelled only if
        cancelled or killed."""
        for caller in self.callers:
            if caller.running:
                assert caller.outcomes == [], caller
                continue
            assert len(caller.outcomes) == 1, (caller, caller.outcomes)
            (outcome,) = caller.outcomes
            if outcome == CANCELLED:
                assert not caller.let_alone, f"{caller} cancelled by nobody"
                continue
            if caller.kind == "close_many" and isinstance(outcome, list):
                assert len(outcome) == len(caller.position_ids), (caller, outcome)
                for item in outcome:
                    assert isinstance(item, ClosePositionResult | BingXError), (caller, item)
            elif caller.kind == "list" and isinstance(outcome, list):
                assert all(isinstance(item, Position) for item in outcome), (caller, outcome)
            else:
                assert isinstance(outcome, ClosePositionResult | BingXError), (caller, outcome)

    @invariant()
    def calls_end_in_time(self) -> None:
        """Within the retry policy's total_timeout (with Redis, plus one lease: a close that
        another process claimed, and died, is waited for until its claim ends)."""
        bound = POLICY.total_timeout or 0.0
        bound += (LEASE if self.backend == "redis" else 0.0) + SLACK
        for caller in self.callers:
            if not caller.let_alone:
                continue
            end = caller.ended_at if caller.ended_at is not None else self.now
            assert end - caller.started_at <= bound, (
                f"{caller} {'took' if caller.ended_at is not None else 'still running after'} "
                f"{end - caller.started_at:.3f} s (bound {bound:.2f} s)"
            )

    @invariant()
    def a_result_known_in_redis_comes_back_at_once(self) -> None:
        """With Redis, a close of a position whose result a caller already received (and
        that no one is closing, or died or was cancelled closing) gets that result from
        Redis at once, from any process."""
        if self.backend != "redis":
            return
        for caller in self.callers:
            if caller.kind != "close" or not caller.let_alone:
                continue
            key = (caller.account, caller.position_ids[0])
            touching = [
                c
                for c in self.callers
                if c is not caller
                and c.started_at < caller.started_at
                and c.account == key[0]
                and key[1] in c.position_ids
            ]
            if any(
                not c.let_alone
                or c.process.killed_at is not None
                or c.ended_at is None
                or c.ended_at > caller.started_at
                for c in touching
            ):
                continue  # a close of it may still be under way, or its claim left behind
            known = [
                c
                for c in touching
                if any(
                    p == key[1] and isinstance(o, ClosePositionResult) for p, o in c.per_position()
                )
            ]
            if not known:
                continue
            end = caller.ended_at if caller.ended_at is not None else self.now
            took = end - caller.started_at
            assert took <= REPLAY_WITHIN, (
                f"{caller} {'took' if caller.ended_at is not None else 'still waits after'} "
                f"{took:.3f} s, though {known[0]} had received the result of the close of "
                f"{key[1]} and nothing else was closing it"
            )
            if caller.ended_at is not None:
                (outcome,) = caller.outcomes
                assert isinstance(outcome, ClosePositionResult), (caller, outcome, known[0])

    @invariant()
    def the_loop_saw_no_unhandled_error(self) -> None:
        assert self.loop_errors == []

    # --- the end --------------------------------------------------------------------------

    def finish(self) -> None:
        """Let every caller end (each must, within FINISH_WITHIN), then check again."""
        deadline = self.now + FINISH_WITHIN
        while self.running() and self.now < deadline:
            self.let_time_pass(0.05)
        hung = [c for c in self.running() if c.let_alone]
        assert hung == [], f"hung: {hung}"
        names = [n for n in dir(type(self)) if hasattr(getattr(type(self), n), INVARIANT_MARKER)]
        assert len(names) >= 9, names
        for name in names:
            getattr(self, name)()

    async def _close_everything(self) -> None:
        """Close every process; each must close within seconds."""
        for caller in self.running():
            assert caller.task is not None
            caller.task.cancel()
        await asyncio.gather(*(c.task for c in self.callers if c.task), return_exceptions=True)
        for process in self.processes:
            async with asyncio.timeout(5):
                await process.client.aclose()
                await process.session.aclose()
                await process.http.aclose()

    def teardown(self) -> None:
        failing = sys.exc_info()[0] is not None
        try:
            if not failing:
                self.finish()
        finally:
            try:
                self.run(self._close_everything())
                self.run(self.loop.shutdown_asyncgens())
            except Exception:
                if not failing:
                    raise
            finally:
                self.loop.close()


class LocalMachine(SharedLimitsMachine):
    backend = "local"


class RedisMachine(SharedLimitsMachine):
    backend = "redis"


@pytest.mark.timeout(TIMEOUT)
def test_processes_sharing_one_session() -> None:
    run_state_machine_as_test(LocalMachine, settings=PROFILE)


@pytest.mark.timeout(TIMEOUT)
def test_processes_sharing_limits_through_redis(redis_url: str) -> None:
    class RedisMachineHere(RedisMachine):
        pass

    RedisMachineHere.redis_url = redis_url
    run_state_machine_as_test(RedisMachineHere, settings=PROFILE)
