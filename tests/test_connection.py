"""A client's connection: httpx's failures become the library's, in one place, with facts."""

from __future__ import annotations

import httpx
import pytest

from bingx_async import ClientClosedError, RequestTimeout, TransportError
from bingx_async._config import Credentials
from bingx_async._connection import Connection
from bingx_async._endpoints import CLOSE

BASE = "https://open-api.bingx.com"


def connection(handler: httpx.MockTransport) -> Connection:
    return Connection(
        base_url=BASE,
        credentials=Credentials("key", "secret"),
        recv_window_ms=5000,
        timeout=httpx.Timeout(10.0),
        http=httpx.AsyncClient(transport=handler),
        owns_http=True,
    )


def raising(error: type[httpx.TransportError]) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize(
    ("error", "expected", "message", "may_have_executed"),
    [
        (httpx.ConnectTimeout, RequestTimeout, "timed out connecting (ConnectTimeout)", False),
        (httpx.PoolTimeout, RequestTimeout, "timed out connecting (PoolTimeout)", False),
        (httpx.ReadTimeout, RequestTimeout, "timed out waiting for BingX (ReadTimeout)", True),
        (httpx.WriteTimeout, RequestTimeout, "timed out waiting for BingX (WriteTimeout)", True),
        (httpx.ConnectError, TransportError, "could not connect to open-api.bingx.com", False),
        (
            httpx.RemoteProtocolError,
            TransportError,
            "failed after sending (RemoteProtocolError: boom); the request may have executed",
            True,
        ),
    ],
)
async def test_each_httpx_failure_becomes_one_library_error(
    error: type[httpx.TransportError],
    expected: type[TransportError],
    message: str,
    may_have_executed: bool,
) -> None:
    """The class, message, endpoint, outcome and cause of each transport failure."""
    link = connection(raising(error))
    request = link.build_request(CLOSE, {"positionId": "1"}, timestamp_ms=1)
    with pytest.raises(expected) as caught:
        await link.send(CLOSE, request)
    await link.aclose()
    assert type(caught.value) is expected
    assert message in str(caught.value)
    assert str(caught.value).startswith(CLOSE.name) or "could not connect" in str(caught.value)
    assert caught.value.endpoint == CLOSE.name
    assert caught.value.may_have_executed is may_have_executed
    assert isinstance(caught.value.__cause__, error)


async def test_a_closed_connection_sends_nothing() -> None:
    """After closing began, send refuses with ClientClosedError: nothing was sent."""
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    link = connection(httpx.MockTransport(record))
    request = link.build_request(CLOSE, {"positionId": "1"}, timestamp_ms=1)
    await link.aclose()
    with pytest.raises(ClientClosedError) as caught:
        await link.send(CLOSE, request)
    assert str(caught.value) == f"not sent: the client was closed ({CLOSE.name})"
    assert (caught.value.endpoint, caught.value.may_have_executed) == (CLOSE.name, False)
    assert sent == []


def test_a_signed_request_carries_the_key_and_ends_with_its_signature() -> None:
    """The API key header, the signed query in order, the signature last."""
    link = connection(raising(httpx.ConnectError))
    request = link.build_request(CLOSE, {"positionId": "1"}, timestamp_ms=1700000000000)
    assert request.headers["X-BX-APIKEY"] == "key"
    query = request.url.query.decode()
    assert query.startswith("positionId=1&recvWindow=5000&timestamp=1700000000000&signature=")
    assert len(query.rsplit("=", 1)[1]) == 64


def test_an_unsigned_request_carries_no_key() -> None:
    """Without a timestamp the request is not signed."""
    link = connection(raising(httpx.ConnectError))
    request = link.build_request(CLOSE, {"positionId": "1"}, timestamp_ms=None)
    assert "X-BX-APIKEY" not in request.headers
    assert request.url.query.decode() == "positionId=1"
