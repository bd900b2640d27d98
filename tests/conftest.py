"""Shared fixtures: a clean environment, a mocked BingX (respx), virtual-time clients, real
Redis servers, and the check that the simulator's account stream can be served."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any, Protocol

import httpx
import pytest
import respx

from bingx_async import BingXClient
from bingx_async.testing import FakeClock

from .cli_process import hand_back_notes, start_noting, stop_noting
from .redis_server import RedisServer, find_redis_server

API_KEY = "test-api-key"
SECRET_KEY = "test-secret-key"
BASE_URL = "https://open-api.bingx.com"
#: FakeClock's default epoch in ms; server time answers default to it.
SERVER_MS = 1_700_000_000_000


def pytest_configure(config: pytest.Config) -> None:
    start_noting()


def pytest_unconfigure(config: pytest.Config) -> None:
    stop_noting()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """What the command's processes ran counts as this test's (under mutmut's first pass)."""
    try:
        return (yield)
    finally:
        hand_back_notes()


def case_id(value: object) -> str:
    """A parametrized case's id: its repr, in plain ASCII without backslashes (so that the id
    can be named on a command line, e.g. by the mutation-testing runner)."""
    text = repr(value)
    return "".join(
        c if c.isascii() and c.isprintable() and c != "\\" else f"U+{ord(c):04X}" for c in text
    )


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's real BingX settings."""
    for name in ("BINGX_API_KEY", "BINGX_SECRET_KEY", "BINGX_BASE_URL", "BINGX_SHARED_LIMITS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def router() -> Iterator[respx.Router]:
    """A respx router injected as the client's transport; unmatched requests fail the test."""
    with respx.mock(base_url=BASE_URL, assert_all_called=False, assert_all_mocked=True) as mock:
        mock.get("/openApi/swap/v2/server/time", name="server_time").respond(
            json={"code": 0, "msg": "", "data": {"serverTime": SERVER_MS}}
        )
        yield mock


@pytest.fixture
async def client(router: respx.Router, clock: FakeClock) -> AsyncIterator[BingXClient]:
    async with BingXClient(
        api_key=API_KEY,
        secret_key=SECRET_KEY,
        clock=clock,
        transport=httpx.MockTransport(router.async_handler),
    ) as bingx:
        yield bingx


def _require_redis_server() -> None:
    """Skip the test when ``redis-server`` is missing; in CI (``CI=true``), fail it instead."""
    reason = None
    if find_redis_server() is None:
        reason = "redis-server not installed; apt-get install redis-server"
    elif importlib.util.find_spec("redis") is None:
        reason = "redis-py not installed; pip install -e '.[redis]'"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the Redis tests must run in CI)", pytrace=False)
    pytest.skip(reason)


def _require_websockets() -> None:
    """Skip the test when ``websockets`` is missing; in CI (``CI=true``), fail it instead."""
    if importlib.util.find_spec("websockets") is not None:
        return
    reason = "websockets not installed; pip install -e '.[stream]'"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the account-stream tests must run in CI)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def websockets_installed() -> None:
    """For tests that serve the simulator's account stream (``FakeBingX.serve_stream``)."""
    _require_websockets()


#: The session's shared Redis server, once a test has asked for it.
_shared_redis: list[RedisServer] = []


@pytest.fixture(scope="session")
def _session_redis() -> Iterator[RedisServer]:
    _require_redis_server()
    with RedisServer() as server:
        _shared_redis.append(server)
        yield server
        _shared_redis.remove(server)


@pytest.fixture(scope="session")
def redis_url(_session_redis: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of one Redis server shared by the whole test session.

    Every test finds it empty: once it runs, every key is deleted (FLUSHALL) after each test,
    whether the test asked for it directly, through another fixture or with
    ``request.getfixturevalue`` (see ``_flush_redis``). Tests that stop or restart Redis take
    ``redis_server`` instead.
    """
    return _session_redis.url


@pytest.fixture(autouse=True)
def _flush_redis() -> Iterator[None]:
    """After each test (and its other fixtures), empty the shared Redis server if it runs."""
    yield
    for server in _shared_redis:
        if server.running:
            server.flushall()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of this test's own, empty, on a free port (``.url``). The test may
    ``stop()`` it to cut Redis off and ``start()`` it again on the same port (empty again:
    nothing persists); it is stopped and removed after the test."""
    _require_redis_server()
    with RedisServer() as server:
        yield server


class MakeRedisServer(Protocol):
    """``make_redis_server(**options)``: a started :class:`RedisServer` with those options."""

    def __call__(self, **options: Any) -> RedisServer: ...


@pytest.fixture
def make_redis_server() -> Iterator[MakeRedisServer]:
    """Start Redis servers of this test's own, with :class:`RedisServer`'s options
    (``config=``, ``replica_of=``, ``users=``); each is stopped and removed after the test,
    the last started first."""
    _require_redis_server()
    made: list[RedisServer] = []

    def make(**options: Any) -> RedisServer:
        server = RedisServer(**options)
        made.append(server)
        server.start()
        return server

    yield make
    for server in reversed(made):
        server.close()
