"""Shared fixtures: a clean environment, a mocked BingX (respx) and virtual-time clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import respx

from bingx_async import BingXClient
from bingx_async.testing import FakeClock

API_KEY = "test-api-key"
SECRET_KEY = "test-secret-key"
BASE_URL = "https://open-api.bingx.com"
#: FakeClock's default epoch in ms; server time answers default to it.
SERVER_MS = 1_700_000_000_000


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
    for name in ("BINGX_API_KEY", "BINGX_SECRET_KEY", "BINGX_BASE_URL"):
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
