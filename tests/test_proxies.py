"""Proxies: ``proxy=``, the standard environment variables, and timeouts that hold through a
connection pool of the caller's. A forward proxy of the test's own runs on 127.0.0.1 and
counts what went through it; the simulator is served behind it over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from bingx_async import BingXClient, ConfigurationError, RetryPolicy
from bingx_async.testing import FakeBingX, NeverAnswer

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"


class ForwardProxy:
    """An HTTP/1.1 forward proxy for plain-http targets, one upstream connection a request."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ForwardProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ")
                headers = [line for line in lines[1:] if line]
                length = next(
                    (
                        int(h.split(":", 1)[1])
                        for h in headers
                        if h.lower().startswith("content-length:")
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                self.requests.append(f"{method} {target}")
                url = httpx.URL(target)
                up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
                kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:"))]
                path = url.raw_path.decode()
                request = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
                up_writer.write(request.encode("latin-1") + b"\r\n\r\n" + body)
                await up_writer.drain()
                answer = await up_reader.read()
                up_writer.close()
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeBingX, str]]:
    sim = FakeBingX(seed=21)
    async with sim.serve() as base_url:
        yield sim, base_url


async def test_closes_go_through_the_proxy_given(served: tuple[FakeBingX, str]) -> None:
    sim, base_url = served
    account = sim.add_account()
    position = sim.add_position(account)
    async with (
        ForwardProxy() as proxy,
        BingXClient(
            api_key=account.api_key,
            secret_key=account.secret_key,
            base_url=base_url,
            proxy=proxy.url,
        ) as client,
    ):
        result = await client.close_position(position.position_id)

    assert result.position_id == position.position_id
    assert any(CLOSE_PATH in request for request in proxy.requests), proxy.requests
    assert len(sim.requests_to(CLOSE_PATH)) == 1


async def test_the_proxy_environment_variables_apply(
    served: tuple[FakeBingX, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, base_url = served
    account = sim.add_account()
    position = sim.add_position(account)
    async with ForwardProxy() as proxy:
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with BingXClient(
            api_key=account.api_key, secret_key=account.secret_key, base_url=base_url
        ) as client:
            await client.close_position(position.position_id)

    assert any(CLOSE_PATH in request for request in proxy.requests), proxy.requests


async def test_timeout_holds_with_a_pool_of_the_callers(served: tuple[FakeBingX, str]) -> None:
    # The caller's pool waits 60 s by default; the client's timeout= (0.2 s) must apply.
    sim, base_url = served
    account = sim.add_account()
    position = sim.add_position(account)
    sim.inject(NeverAnswer(), path=CLOSE_PATH)
    async with (
        httpx.AsyncClient(timeout=60.0) as pool,
        BingXClient(
            api_key=account.api_key,
            secret_key=account.secret_key,
            base_url=base_url,
            http_client=pool,
            timeout=0.2,
            retry=RetryPolicy(attempts=1),
            confirm_closes=False,
        ) as client,
    ):
        started = asyncio.get_running_loop().time()
        with pytest.raises(Exception) as caught:  # noqa: PT011 - the timing is the point
            await client.close_position(position.position_id)
        took = asyncio.get_running_loop().time() - started

    assert type(caught.value).__name__ == "RequestTimeout"
    assert took < 2.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {
                "proxy": "http://proxy:3128",
                "transport": httpx.MockTransport(lambda r: httpx.Response(200)),
            },
            "proxy= configures",
        ),
        ({"proxy": 3128}, "proxy must be a URL string"),
        ({"proxy": "ftp://user:hunter2@proxy"}, "not a usable proxy URL"),
    ],
    ids=["with-transport", "not-a-url", "bad-scheme"],
)
def test_bad_proxy_settings_are_named_without_the_password(
    options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        BingXClient(**options)  # type: ignore[arg-type]
    assert "hunter2" not in str(caught.value)
