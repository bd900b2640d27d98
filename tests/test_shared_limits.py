"""Shared limits: what one session shares in-process, several sessions (processes) share
through Redis, tested with the same cases on both.

Each "process" is a :class:`BingXSession` of its own. With the ``local`` backend the
processes are played by one session (what in-process sharing means); with ``redis``, each
has its own session and :class:`RedisLimits` on a real ``redis-server``, sharing nothing
but Redis. The exchange is :class:`FakeBingX` with strict rolling windows, counting what it
saw itself.

These tests run in real time, on Redis's clock as in production: virtual time cannot
stand still while a real server answers. Budgets are scaled down (5 closes per 0.25 s) so
that no test waits more than a fraction of a second.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXSession,
    Budget,
    ConfigurationError,
    ErrorGuardPolicy,
    ErrorRateGuardError,
    PositionPossiblyClosedError,
    RateLimitError,
    RedisLimits,
    RetryPolicy,
    SharedLimitsUnavailableError,
    SystemClock,
)
from bingx_async.testing import FakeBingX, GatewayTimeout, NeverAnswer

from .redis_server import RedisServer

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_NAME = f"POST {CLOSE_PATH}"

Backend = Callable[[], BingXSession]


#: closePosition at 5 per 0.25 s: the documented limit, four times faster.
FAST = DEFAULT_RATE_LIMITS.with_endpoint(CLOSE_NAME, per_account=(Budget(5, 0.25),), ip_group=2)
WINDOW = 0.25


@pytest.fixture
def clock() -> SystemClock:
    return SystemClock()


@pytest.fixture(params=["local", "redis"])
async def processes(
    request: pytest.FixtureRequest, clock: SystemClock
) -> AsyncIterator[Callable[[int], list[BingXSession]]]:
    """``processes(n)``: n sessions that share limits as n processes would."""
    made: list[BingXSession] = []
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make(count: int) -> list[BingXSession]:
        if request.param == "local":
            sessions = [BingXSession(clock=clock)] * count
        else:
            url = request.getfixturevalue("redis_url")
            sessions = [
                BingXSession(
                    clock=clock,
                    shared_limits=RedisLimits(url, prefix=prefix),
                )
                for _ in range(count)
            ]
        made.extend(sessions)
        return sessions

    yield make
    for session in made:
        await session.aclose()


def client_for(sim: FakeBingX, session: BingXSession, account: Any, **options: Any) -> BingXClient:
    options.setdefault("rate_limits", FAST)
    return BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        session=session,
        transport=sim.transport(),
        **options,
    )


async def test_processes_on_one_account_stay_within_its_budget(
    processes: Callable[[int], list[BingXSession]], clock: SystemClock
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=3)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(24)]
    clients = [client_for(sim, session, account) for session in processes(3)]

    results = await asyncio.gather(
        *(clients[i % 3].close_position(p.position_id) for i, p in enumerate(positions))
    )

    assert [r.position_id for r in results] == [p.position_id for p in positions]
    assert sim.violations == 0
    assert len(sim.requests_to(CLOSE_PATH)) == 24  # no rejection, no second try
    arrivals = sorted(sim.arrivals(CLOSE_PATH))
    # 5 per rolling window: the 6th close reaches BingX a window after the 1st, and so on.
    assert all(b - a >= WINDOW for a, b in zip(arrivals, arrivals[5:], strict=False))
    assert arrivals[-1] - arrivals[0] < (24 - 1) // 5 * WINDOW + 0.5


async def test_a_hold_one_process_heard_of_holds_the_others(
    processes: Callable[[int], list[BingXSession]], clock: SystemClock
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=4)
    account = sim.add_account()
    first, second = (sim.add_position(account) for _ in range(2))
    a, b = (client_for(sim, s, account) for s in processes(2))
    sim.block(CLOSE_NAME, 0.5, account=account)

    with pytest.raises(RateLimitError):
        await a.close_position(first.position_id, retry=RetryPolicy(attempts=1))
    held_from = sim.requests_to(CLOSE_PATH)[0].arrived_at
    await asyncio.sleep(0.1)  # let the hold reach Redis

    result = await b.close_position(second.position_id)

    assert result.position_id == second.position_id
    close_times = [r.arrived_at for r in sim.requests_to(CLOSE_PATH)]
    assert len(close_times) == 2, "the second process sent into the hold"
    assert close_times[1] - held_from >= 0.5 - 0.01


async def test_error_counts_are_shared(
    processes: Callable[[int], list[BingXSession]], clock: SystemClock
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=5)
    account = sim.add_account()
    a, b = (
        client_for(sim, s, account, error_guard=ErrorGuardPolicy(threshold=3, window=60))
        for s in processes(2)
    )
    # Positions that do not exist: each close is an error answer (not found).
    for number in range(3):
        with pytest.raises(Exception):  # noqa: B017, PT011 - the not-found error itself is not the point
            await a.close_position(1000 + number)
    await asyncio.sleep(0.1)  # let the counts reach Redis
    sent = len(sim.requests_to(CLOSE_PATH))

    with pytest.raises(ErrorRateGuardError) as caught:
        await b.close_position(2000)

    assert caught.value.may_have_executed is False
    assert caught.value.count == 3
    assert len(sim.requests_to(CLOSE_PATH)) == sent, "refused, yet sent"


async def test_a_close_in_flight_elsewhere_is_not_sent_again(
    processes: Callable[[int], list[BingXSession]], clock: SystemClock
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=6)
    account = sim.add_account()
    position = sim.add_position(account)
    a, b = (client_for(sim, s, account) for s in processes(2))

    first, second = await asyncio.gather(
        a.close_position(position.position_id), b.close_position(position.position_id)
    )

    assert first.position_id == second.position_id == position.position_id
    assert first.order_id == second.order_id
    assert len(sim.requests_to(CLOSE_PATH)) == 1


# --- Redis only -------------------------------------------------------------------------


async def _keys(url: str) -> dict[str, int]:
    import redis.asyncio as aioredis

    redis = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return {str(key): await redis.pttl(key) for key in await redis.keys("*")}
    finally:
        await redis.aclose()


async def test_every_key_has_the_prefix_with_a_hash_tag_and_all_but_the_epoch_expire(
    redis_url: str, clock: SystemClock
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=7)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(7)]
    limits = RedisLimits(redis_url, prefix="mybot")
    async with BingXSession(clock=clock, shared_limits=limits) as session:
        client = client_for(sim, session, account)
        await client.close_positions([p.position_id for p in positions] + [99])
        await client.aclose()

    keys = await _keys(redis_url)
    assert keys, "nothing was shared"
    assert all(key.startswith("{mybot}:") for key in keys), keys
    # The epoch is how a lost state is noticed: it must outlive everything else.
    assert keys.pop("{mybot}:epoch") == -1
    assert all(ttl > 0 for ttl in keys.values()), keys


async def test_a_killed_process_frees_its_slots_within_its_lease(
    redis_url: str, clock: SystemClock
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=8)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(6)]
    prefix = uuid.uuid4().hex[:8]
    dead = RedisLimits(redis_url, prefix=prefix, lease=1.2)
    # The "killed" process: five requests admitted in Redis, then never a word more.
    sim.inject(NeverAnswer(), path=CLOSE_PATH, count=5)
    dead_session = BingXSession(clock=clock, shared_limits=dead)
    doomed = client_for(sim, dead_session, account)
    tasks = [asyncio.ensure_future(doomed.close_position(p.position_id)) for p in positions[:5]]
    for _ in range(500):
        if len(sim.requests_to(CLOSE_PATH)) == 5:
            break
        await asyncio.sleep(0.002)  # admissions go through Redis, in real time
    killed_at = sim.requests_to(CLOSE_PATH)[0].arrived_at
    for task in tasks:
        task.cancel()
    dead._store._closed = True  # its releases never reach Redis, as if the process had died
    dead._store._pending.clear()

    survivor = RedisLimits(redis_url, prefix=prefix, lease=1.2)
    async with BingXSession(clock=clock, shared_limits=survivor) as session:
        client = client_for(sim, session, account)
        result = await client.close_position(positions[5].position_id)
        await client.aclose()

    assert result.position_id == positions[5].position_id
    sent_at = sim.requests_to(CLOSE_PATH)[-1].arrived_at
    # Each dead slot counts until its lease ends, dated then: one window after that at most.
    assert sent_at - killed_at <= 1.2 + WINDOW + 0.3
    assert sent_at - killed_at >= WINDOW  # and not before the window of the dead requests
    await asyncio.gather(*tasks, return_exceptions=True)
    await dead_session.aclose()


async def test_an_outage_goes_on_under_local_limits_and_ends_when_redis_is_back(
    redis_server: RedisServer, clock: SystemClock, caplog: pytest.LogCaptureFixture
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=9)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(6)]
    limits = RedisLimits(redis_server.url, outage_share=0.5, outage_retry=0.05)
    async with BingXSession(clock=clock, shared_limits=limits) as session:
        client = client_for(sim, session, account)
        await client.close_position(positions[0].position_id)
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="bingx_async"):
            results = await client.close_positions([p.position_id for p in positions[1:5]])
        assert all(not isinstance(r, Exception) for r in results), results
        warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "redis://" not in warnings[0]
        # Half of 5 per window while Redis is away: 2 closes per rolling window.
        arrivals = sorted(sim.arrivals(CLOSE_PATH))[1:]
        assert all(b - a >= WINDOW for a, b in zip(arrivals, arrivals[2:], strict=False))

        redis_server.start()
        for _ in range(100):
            await asyncio.sleep(0.02)  # the probe reaches Redis in real time
            if limits.available:
                break
        assert limits.available
        await client.close_position(positions[5].position_id)
        await client.aclose()
    assert redis_server.command_count() > 0


async def test_an_outage_refuses_calls_when_told_to_fail_closed(
    redis_server: RedisServer, clock: SystemClock
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=10)
    account = sim.add_account()
    position = sim.add_position(account)
    limits = RedisLimits(redis_server.url, on_outage="fail")
    async with BingXSession(clock=clock, shared_limits=limits) as session:
        client = client_for(sim, session, account)
        redis_server.stop()
        with pytest.raises(SharedLimitsUnavailableError) as caught:
            await client.close_position(position.position_id)
        await client.aclose()

    assert caught.value.may_have_executed is False
    assert caught.value.endpoint == CLOSE_NAME
    assert "not sent" in str(caught.value)
    assert sim.requests_to(CLOSE_PATH) == []


async def test_waiting_processes_take_turns(redis_url: str, clock: SystemClock) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=11)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(40)]
    prefix = uuid.uuid4().hex[:8]
    sessions = [
        BingXSession(clock=clock, shared_limits=RedisLimits(redis_url, prefix=prefix))
        for _ in range(3)
    ]
    clients = [client_for(sim, s, account) for s in sessions]
    owner: dict[str, int] = {}
    for index, position in enumerate(positions):
        owner[position.position_id] = index % 3

    await asyncio.gather(
        *(clients[owner[p.position_id]].close_position(p.position_id) for p in positions)
    )
    for session in sessions:
        await session.aclose()

    order = [owner[str(r.param("positionId"))] for r in sim.requests_to(CLOSE_PATH)]
    # The first window's slots go to whoever asks first; from then on every slot is
    # waited for, and the processes take turns: each gets its third of the rate, +-20 %.
    steady = order[5:35]
    shares = [steady.count(n) / len(steady) for n in range(3)]
    assert all(abs(share - 1 / 3) <= 0.2 / 3 for share in shares), (shares, order)
    assert sim.violations == 0


async def test_hosts_clocks_do_not_matter(redis_url: str) -> None:
    # Two processes whose clocks disagree by a minute: slots are dated on Redis's clock.
    policy = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_NAME, per_account=(Budget(2, 0.2),), ip_group=2
    )
    sim = FakeBingX(seed=12, rate_limits=policy)
    account = sim.add_account()
    positions = [sim.add_position(account) for _ in range(6)]
    prefix = uuid.uuid4().hex[:8]
    sessions = [
        BingXSession(clock=OffsetClock(offset), shared_limits=RedisLimits(redis_url, prefix=prefix))
        for offset in (-30.0, 30.0)
    ]
    clients = [client_for(sim, s, account, rate_limits=policy) for s in sessions]

    await asyncio.gather(
        *(clients[i % 2].close_position(p.position_id) for i, p in enumerate(positions))
    )
    for session in sessions:
        await session.aclose()

    assert sim.violations == 0
    assert len(sim.requests_to(CLOSE_PATH)) == 6


class OffsetClock(SystemClock):
    """This machine's clock, off by ``offset`` seconds."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def time(self) -> float:
        return super().time() + self.offset


# --- configuration ----------------------------------------------------------------------


def test_a_url_that_is_not_redis_is_refused_when_the_client_is_made() -> None:
    with pytest.raises(ConfigurationError, match="redis://") as caught:
        BingXClient(shared_limits="http://user:hunter2@cache:6379")
    assert "hunter2" not in str(caught.value)


def test_shared_limits_come_from_the_session_when_one_is_given() -> None:
    with pytest.raises(ConfigurationError, match="BingXSession"):
        BingXClient(session=BingXSession(), shared_limits="redis://localhost")


async def test_the_environment_variable_selects_redis(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("BINGX_SHARED_LIMITS", redis_url)
    async with BingXClient() as client:
        session = client.session
        assert session.shared_limits is not None
        assert redis_url.split("//")[1].split("/")[0] in repr(session.shared_limits)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lease": 0.5}, "lease"),
        ({"outage_share": 0}, "outage_share"),
        ({"on_outage": "panic"}, "on_outage"),
        ({"prefix": ""}, "prefix"),
        ({"egress": " "}, "egress"),
    ],
    ids=["short-lease", "zero-share", "unknown-outage-mode", "empty-prefix", "blank-egress"],
)
def test_bad_options_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RedisLimits("redis://localhost", **options)


def test_the_library_imports_without_redis_py() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import bingx_async\n"
        "try:\n"
        "    bingx_async.BingXClient(shared_limits='redis://localhost')\n"
        "except bingx_async.ConfigurationError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter, our own code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert 'pip install "bingx-async[redis]"' in out


def test_keys_of_a_prefix_without_a_hash_tag_get_one(redis_url: str) -> None:
    assert RedisLimits("redis://localhost", prefix="bot").prefix == "{bot}:"
    assert RedisLimits("redis://localhost", prefix="{bot}:x").prefix == "{bot}:x:"


async def test_one_redis_limits_serves_each_default_session_in_turn(redis_url: str) -> None:
    # A default session with shared limits closes with its last client (Redis keeps what it
    # shares); a later client starts a new one, and the same RedisLimits serves it (sharing,
    # not silently falling back).
    sim = FakeBingX(rate_limits=FAST, seed=13)
    account = sim.add_account()
    first, second = (sim.add_position(account) for _ in range(2))
    limits = RedisLimits(redis_url, prefix=uuid.uuid4().hex[:8])
    sessions = []
    for position in (first, second):
        async with BingXClient(
            api_key=account.api_key,
            secret_key=account.secret_key,
            transport=sim.transport(),
            rate_limits=FAST,
            shared_limits=limits,
        ) as client:
            assert client.session.shared_limits is limits
            sessions.append(client.session)
            await client.close_position(position.position_id)
            assert limits.available
        assert sessions[-1].closed
    assert sessions[0] is not sessions[1]

    keys = await _keys(redis_url)
    assert any(key.startswith(limits.prefix + "o:") for key in keys), keys
    assert len([key for key in keys if key.startswith(limits.prefix + "o:")]) == 2


async def test_closing_a_closed_position_again_and_again_never_waits(redis_url: str) -> None:
    # The second close finds the first one's result in Redis; the third must not then wait
    # out a claim the second left behind.
    sim = FakeBingX(rate_limits=FAST, seed=14)
    account = sim.add_account()
    position = sim.add_position(account)
    limits = RedisLimits(redis_url, prefix=uuid.uuid4().hex[:8], lease=2.0)
    async with BingXSession(shared_limits=limits) as session:
        client = client_for(sim, session, account, retry=RetryPolicy(total_timeout=3.0))
        results, took = [], []
        for _ in range(4):
            started = session.clock.monotonic()
            results.append(await client.close_position(position.position_id))
            took.append(session.clock.monotonic() - started)
            await asyncio.sleep(0.02)  # the outcome reaches Redis
        await client.aclose()

    assert len({r.order_id for r in results}) == 1
    assert len(sim.requests_to(CLOSE_PATH)) == 1
    assert max(took) < 0.5, took


async def test_a_close_whose_claimer_died_is_possibly_closed_not_an_old_outcome(
    redis_url: str,
) -> None:
    # A's close is refused (not executed): Redis keeps that outcome. B's close executes,
    # its answer is lost, and B dies holding the claim. C must not replay A's old refusal:
    # B's close may have executed.
    sim = FakeBingX(rate_limits=FAST, seed=15)
    account = sim.add_account()
    position = sim.add_position(account)
    prefix = uuid.uuid4().hex[:8]
    policy = RetryPolicy(total_timeout=2.0, attempts=3, wait_initial=0.5, wait_jitter=0.0)

    def process() -> tuple[RedisLimits, BingXSession, BingXClient]:
        limits = RedisLimits(redis_url, prefix=prefix, lease=1.5)
        session = BingXSession(shared_limits=limits)
        return limits, session, client_for(sim, session, account, retry=policy)

    _, a_session, a = process()
    sim.block(CLOSE_NAME, 0.3, account=account)
    with pytest.raises(RateLimitError):
        await a.close_position(position.position_id, retry=RetryPolicy(attempts=1))
    await asyncio.sleep(0.35)  # the block ends

    b_limits, b_session, b = process()
    sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    b_call = asyncio.ensure_future(b.close_position(position.position_id))
    for _ in range(500):
        if sim.positions(account) == []:
            break
        await asyncio.sleep(0.002)
    assert sim.positions(account) == []
    await asyncio.sleep(0.05)  # B is in its back-off after the lost answer
    b_call.cancel()
    b_limits._store._closed = True  # B dies: nothing more of it reaches Redis
    b_limits._store._pending.clear()

    _, c_session, c = process()
    with pytest.raises(PositionPossiblyClosedError) as caught:
        await c.close_position(position.position_id)
    assert caught.value.may_have_executed is True

    await asyncio.gather(b_call, return_exceptions=True)
    for session in (a_session, b_session, c_session):
        await session.aclose()
