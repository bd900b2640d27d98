"""Shared limits on a Redis as operators run it: one that evicts keys, a read-only replica,
a user whose ACL refuses a command the limits need, a Redis flushed or restarted empty in the
middle of a burst, and a Redis that hangs.

What is promised:

* A Redis that cannot keep the shared state is refused at the first call, loudly and once,
  naming what is wrong and what to change. With ``on_outage="fail"`` every call raises
  :class:`SharedLimitsUnavailableError`, nothing sent; by default one warning is logged and
  calls go on under in-process limits at ``outage_share`` of each budget, for good (no
  "Redis is back" a moment later).
* Lost state (FLUSHALL, a restart without persistence) is handled like the start of an
  outage: BingX never sees a budget overflow.
* A hung Redis never hangs a call: each ends within its ``total_timeout`` (and a little),
  and the run goes on under in-process limits.

Each "process" is a :class:`BingXSession` with a :class:`RedisLimits` of its own, sharing
nothing but Redis; the exchange is :class:`FakeBingX` served over HTTP on 127.0.0.1, counting
what it sees itself. Everything runs in real time, on Redis's clock as in production, so
budgets are scaled down as in ``test_shared_limits.py``: closePosition at 5 per rolling
0.25 s per account, for the limits and the simulator alike.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXError,
    BingXSession,
    Budget,
    ClosePositionResult,
    RedisLimits,
    RetryPolicy,
    SharedLimitsUnavailableError,
)
from bingx_async.testing import FakeBingX, NoAnswer, SimAccount, SimResponse

from .conftest import MakeRedisServer, _require_redis_server
from .redis_server import AclUser, RedisServer, send_command

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
#: closePosition at 5 per rolling 0.25 s per account: BingX's budget, four times faster.
LIMIT, WINDOW = 5, 0.25
FAST = DEFAULT_RATE_LIMITS.with_endpoint(
    f"POST {CLOSE_PATH}", per_account=(Budget(LIMIT, WINDOW),), ip_group=2
)
#: Answers that say a rate limit was hit (BingX's codes, 109429 since 2025-10-16).
RATE_LIMIT_CODES = frozenset({100410, 100409, 109429})
#: Short leases and quick retries keep the tests short: a Redis refused and then "back" a
#: moment later shows within a few windows.
LEASE, OUTAGE_RETRY = 1.5, 0.05
#: With a quarter of each budget, 5 closes per window become 1.
OUTAGE_SHARE = 0.25


# --- the Redis an operator gave ---------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """A Redis as some operator runs it, and what a message about it must say."""

    name: str
    #: Patterns (case-insensitive) that a message about this Redis must all match.
    says: tuple[str, ...] = ()
    config: Mapping[str, str] = field(default_factory=dict)
    replica: bool = False
    #: The ACL rules of the user the limits connect as (``None``: the default user).
    rules: tuple[str, ...] | None = None


REFUSED = [
    Setup(
        "evicting-allkeys-lru",
        says=("maxmemory-policy", "noeviction"),
        config={"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru"},
    ),
    # Every shared key expires: volatile policies evict them too.
    Setup(
        "evicting-volatile-ttl",
        says=("maxmemory-policy", "noeviction"),
        config={"maxmemory": "2mb", "maxmemory-policy": "volatile-ttl"},
    ),
    Setup("replica", says=("replica",), replica=True),
    Setup(
        "acl-without-scripts",
        says=(r"\beval(sha)?\b", r"\bACL\b"),
        rules=("+@all", "-evalsha", "-eval"),
    ),
    Setup("acl-without-publish", says=(r"\bpublish\b", r"\bACL\b"), rules=("+@all", "-publish")),
    Setup(
        "acl-without-subscribe", says=(r"\bsubscribe\b", r"\bACL\b"), rules=("+@all", "-subscribe")
    ),
]

#: In local mode a refused Redis is refused alike, whatever is wrong with it: one setup for
#: each way the problem is found (configuration, role, a script's command, the subscription).
REFUSED_ONE_OF_EACH = [
    setup
    for setup in REFUSED
    if setup.name
    in {"evicting-allkeys-lru", "replica", "acl-without-scripts", "acl-without-subscribe"}
]

ACCEPTED = [
    Setup("no-maxmemory-allkeys-lru", config={"maxmemory": "0", "maxmemory-policy": "allkeys-lru"}),
    Setup("maxmemory-noeviction", config={"maxmemory": "64mb", "maxmemory-policy": "noeviction"}),
    # The limits may not read the configuration: what they need, they may do.
    Setup("acl-without-config-and-info", rules=("+@all", "-config", "-info")),
]


@dataclass(frozen=True)
class OperatorRedis:
    setup: Setup
    server: RedisServer
    url: str = field(repr=False)
    #: The ACL user's password (``None``: the default user, without one).
    password: str | None = field(repr=False, default=None)


def _start(make_redis_server: MakeRedisServer, setup: Setup) -> OperatorRedis:
    if setup.replica:
        primary = make_redis_server()
        server = make_redis_server(replica_of=primary)
        return OperatorRedis(setup, server, server.url)
    if setup.rules is not None:
        user = AclUser("bot", f"pw-{uuid.uuid4().hex}", setup.rules)
        server = make_redis_server(config=setup.config, users=[user])
        return OperatorRedis(setup, server, server.url_for(user), user.password)
    server = make_redis_server(config=setup.config)
    return OperatorRedis(setup, server, server.url)


def with_refused_redis(setups: Sequence[Setup]) -> pytest.MarkDecorator:
    """Run the test once for each of ``setups``, as ``refused_redis``."""
    return pytest.mark.parametrize(
        "refused_redis", setups, ids=[setup.name for setup in setups], indirect=True
    )


@pytest.fixture(scope="module")
def refused_redis(request: pytest.FixtureRequest) -> Iterator[OperatorRedis]:
    """A Redis started for one setup, for every test of the module that takes it: why it is
    refused does not change with what it was given before."""
    _require_redis_server()
    setup: Setup = request.param
    with ExitStack() as servers:

        def make(**options: Any) -> RedisServer:
            return servers.enter_context(RedisServer(**options))

        yield _start(make, setup)


@pytest.fixture(params=ACCEPTED, ids=[setup.name for setup in ACCEPTED])
def accepted_redis(
    request: pytest.FixtureRequest, make_redis_server: MakeRedisServer
) -> OperatorRedis:
    setup: Setup = request.param
    return _start(make_redis_server, setup)


# --- helpers ------------------------------------------------------------------------------


def client_for(
    base_url: str, session: BingXSession, account: SimAccount, total_timeout: float
) -> BingXClient:
    return BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        base_url=base_url,
        session=session,
        rate_limits=FAST,
        retry=RetryPolicy(total_timeout=total_timeout),
    )


def assert_names_the_problem(text: str, setup: Setup) -> None:
    missing = [pattern for pattern in setup.says if not re.search(pattern, text, re.IGNORECASE)]
    assert not missing, f"{text!r} does not say {missing}"


def assert_keeps_the_password(password: str | None, texts: Sequence[str]) -> None:
    if password is not None:
        leaked = [text for text in texts if password in text]
        assert not leaked, "the password was shown"


def library_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "bingx_async" or record.name.startswith("bingx_async.")
    ]


def says_redis_is_back(message: str) -> bool:
    """Whether a log line announces Redis back in use ("falling back" to local limits is not)."""
    without = re.sub(r"\b(fall|falls|falling|fell) back\b", "", message, flags=re.IGNORECASE)
    return re.search(r"\bback\b", without, re.IGNORECASE) is not None


def rate_limit_answers(sim: FakeBingX) -> int:
    return sum(request.code in RATE_LIMIT_CODES for request in sim.requests)


def crowded_windows(arrivals: Sequence[float], limit: int) -> list[list[float]]:
    """Every run of ``limit + 1`` arrivals within one rolling window (BingX would refuse)."""
    ordered = sorted(arrivals)
    return [
        ordered[i : i + limit + 1]
        for i in range(len(ordered) - limit)
        if ordered[i + limit] - ordered[i] < WINDOW
    ]


class Striking(FakeBingX):
    """The simulator, calling ``strike`` right after it has executed ``after`` closes."""

    def __init__(self, *, after: int, strike: Callable[[], None], seed: int) -> None:
        super().__init__(rate_limits=FAST, seed=seed)
        self.executed = 0
        self.struck_at: float | None = None
        self._after = after
        self._strike = strike

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> SimResponse | NoAnswer:
        answer = await super().handle(method, path, query, headers)
        request = self.requests[-1]  # recorded last, with no await since
        if request.path == CLOSE_PATH and request.code == 0:
            self.executed += 1
            if self.executed == self._after:
                self.struck_at = self.clock.monotonic()
                self._strike()
        return answer


@dataclass
class Processes:
    """``count`` sessions, each a process of its own as far as the limits know, one client
    each, of one account, at one simulator served over HTTP."""

    clients: list[BingXClient]
    limits: list[RedisLimits]


async def start_processes(
    stack: AsyncExitStack,
    sim: FakeBingX,
    account: SimAccount,
    url: str,
    count: int,
    *,
    total_timeout: float,
    on_outage: Literal["local", "fail"] = "local",
    outage_share: float = OUTAGE_SHARE,
) -> Processes:
    """Serve ``sim`` and start ``count`` processes, each with ``RedisLimits(url, ...)``."""
    base_url = await stack.enter_async_context(sim.serve())
    made = Processes([], [])
    for _ in range(count):
        shared = RedisLimits(
            url,
            lease=LEASE,
            outage_retry=OUTAGE_RETRY,
            on_outage=on_outage,
            outage_share=outage_share,
        )
        session = await stack.enter_async_context(BingXSession(shared_limits=shared))
        client = await stack.enter_async_context(
            client_for(base_url, session, account, total_timeout)
        )
        made.clients.append(client)
        made.limits.append(shared)
    return made


# --- 1. refused at start --------------------------------------------------------------------


@with_refused_redis(REFUSED)
async def test_a_redis_that_cannot_keep_the_state_refuses_every_call_when_told_to_fail(
    refused_redis: OperatorRedis, caplog: pytest.LogCaptureFixture
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=21)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(3)]
    errors: list[SharedLimitsUnavailableError] = []

    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        async with AsyncExitStack() as stack:
            (client,) = (
                await start_processes(
                    stack, sim, account, refused_redis.url, 1, total_timeout=2.0, on_outage="fail"
                )
            ).clients
            for index, position in enumerate(positions):
                if index:
                    await asyncio.sleep(OUTAGE_RETRY * 1.5)  # still refused after a retry interval
                with pytest.raises(SharedLimitsUnavailableError) as caught:
                    await client.close_position(position.position_id)
                errors.append(caught.value)

    assert sim.requests == [], "sent, though the shared limits were refused"
    for error in errors:
        assert error.may_have_executed is False
        assert_names_the_problem(str(error), refused_redis.setup)
    warnings = [r.getMessage() for r in library_records(caplog) if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, warnings  # said once, if logged at all
    for warning in warnings:
        assert_names_the_problem(warning, refused_redis.setup)
    assert_keeps_the_password(
        refused_redis.password,
        [text for error in errors for text in (str(error), repr(error))]
        + [record.getMessage() for record in caplog.records]
        + [caplog.text],
    )


@with_refused_redis(REFUSED_ONE_OF_EACH)
async def test_a_redis_that_cannot_keep_the_state_is_warned_of_once_and_calls_go_on_alone(
    refused_redis: OperatorRedis, caplog: pytest.LogCaptureFixture
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=22)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(3)]

    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        async with AsyncExitStack() as stack:
            (client,) = (
                await start_processes(stack, sim, account, refused_redis.url, 1, total_timeout=2.0)
            ).clients
            # Two windows of calls, ten retry intervals: time enough for a Redis refused and
            # then "back" to show.
            results = await client.close_positions([p.position_id for p in positions])

    assert all(isinstance(result, ClosePositionResult) for result in results), results
    arrivals = sorted(sim.arrivals(CLOSE_PATH))
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # A quarter of 5 per window: 1 close per rolling window.
    assert len(arrivals) == len(positions)
    assert min(gaps) >= WINDOW, f"closes {gaps} s apart: not at the outage share"
    assert sim.violations == 0
    records = library_records(caplog)
    warnings = [record.getMessage() for record in records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert_names_the_problem(warnings[0], refused_redis.setup)
    assert not [m for m in (r.getMessage() for r in records) if says_redis_is_back(m)]
    assert_keeps_the_password(
        refused_redis.password, [record.getMessage() for record in caplog.records] + [caplog.text]
    )


async def test_a_redis_that_can_keep_the_state_is_used(
    accepted_redis: OperatorRedis, caplog: pytest.LogCaptureFixture
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=23)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(3)]
    before = accepted_redis.server.command_count()

    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        async with AsyncExitStack() as stack:
            processes = await start_processes(
                stack, sim, account, accepted_redis.url, 1, total_timeout=3.0, on_outage="fail"
            )
            results = await processes.clients[0].close_positions([p.position_id for p in positions])
            assert processes.limits[0].available

    assert all(isinstance(result, ClosePositionResult) for result in results), results
    assert accepted_redis.server.command_count() > before, "Redis was not used"
    warnings = [r.getMessage() for r in library_records(caplog) if r.levelno >= logging.WARNING]
    assert warnings == []
    assert_keeps_the_password(accepted_redis.password, [caplog.text])


# --- 2. lost state --------------------------------------------------------------------------

#: (how the state is lost, after how many of the 12 closes executed). Without a fix, state
#: lost early in the second window (after the 6th or 7th close) lets that window overflow.
LOSSES = [("flushall", n) for n in (6, 7)] + [("restart", 7)]


@pytest.mark.parametrize(("loss", "after"), LOSSES, ids=[f"{how}-after-{n}" for how, n in LOSSES])
async def test_state_lost_mid_burst_never_overflows_a_budget(
    redis_server: RedisServer, loss: str, after: int
) -> None:
    total_timeout = 3.5
    restarting: list[asyncio.Future[None]] = []

    def strike() -> None:
        if loss == "flushall":
            send_command(redis_server.port, "FLUSHALL")  # at once, before the answer leaves
        else:
            restarting.append(asyncio.ensure_future(asyncio.to_thread(redis_server.restart)))

    sim = Striking(after=after, strike=strike, seed=30 + after)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(12)]

    async with AsyncExitStack() as stack:
        clients = (
            await start_processes(
                stack, sim, account, redis_server.url, 2, total_timeout=total_timeout
            )
        ).clients
        calls = [
            clients[index].close_positions([p.position_id for p in positions[index::2]])
            for index in range(2)
        ]
        async with asyncio.timeout(total_timeout + 2.0):
            outcomes = [o for per_client in await asyncio.gather(*calls) for o in per_client]
        await asyncio.gather(*restarting)

    assert sim.struck_at is not None, "the state was never lost"
    assert len(outcomes) == len(positions)
    assert all(isinstance(o, ClosePositionResult | BingXError) for o in outcomes), outcomes
    assert crowded_windows(sim.arrivals(CLOSE_PATH, account), LIMIT) == []
    assert sim.violations == 0
    assert rate_limit_answers(sim) == 0
    executed = {str(r.param("positionId")) for r in sim.requests_to(CLOSE_PATH) if r.code == 0}
    closed = {o.position_id for o in outcomes if isinstance(o, ClosePositionResult)}
    assert closed <= executed


# --- 3. a hung Redis ------------------------------------------------------------------------


async def test_a_hung_redis_hangs_no_call_and_the_run_goes_on_alone(
    redis_server: RedisServer,
) -> None:
    total_timeout, slack = 3.5, 2.0
    sim = Striking(after=3, strike=redis_server.pause, seed=40)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(8)]
    owner = {p.position_id: index % 2 for index, p in enumerate(positions)}
    loop = asyncio.get_running_loop()
    took: dict[str, float] = {}

    async def close(client: BingXClient, position_id: str) -> object:
        started = loop.time()
        try:
            return await client.close_position(position_id)
        except BingXError as error:
            return error
        finally:
            took[position_id] = loop.time() - started

    try:
        async with AsyncExitStack() as stack:
            clients = (
                await start_processes(
                    stack, sim, account, redis_server.url, 2, total_timeout=total_timeout
                )
            ).clients
            tasks = {
                p.position_id: asyncio.ensure_future(
                    close(clients[owner[p.position_id]], p.position_id)
                )
                for p in positions
            }
            _, hung = await asyncio.wait(tasks.values(), timeout=total_timeout + slack + 0.5)
            for task in hung:
                task.cancel()
            redis_server.resume()  # so that the sessions can close
    finally:
        if redis_server.paused:
            redis_server.resume()

    assert not hung, f"{len(hung)} calls still running {total_timeout + slack:g} s on"
    outcomes = [task.result() for task in tasks.values()]
    assert all(isinstance(o, ClosePositionResult | BingXError) for o in outcomes), outcomes
    assert max(took.values()) <= total_timeout + slack, took
    assert sim.struck_at is not None
    assert sim.violations == 0
    assert rate_limit_answers(sim) == 0
    # Closes Redis admitted before it hung have arrived by then; later ones were admitted
    # in-process, each process at the outage share: 1 close per rolling window.
    alone = [
        r
        for r in sim.requests_to(CLOSE_PATH)
        if r.reached_exchange and r.arrived_at >= sim.struck_at + 0.5
    ]
    assert alone, "nothing was sent once Redis hung"
    for process in (0, 1):
        arrivals = [r.arrived_at for r in alone if owner[str(r.param("positionId"))] == process]
        assert crowded_windows(arrivals, 1) == [], (process, arrivals)
