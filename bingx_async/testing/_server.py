"""A minimal HTTP/1.1 server on asyncio streams that answers from a ``FakeBingX``.

Used by ``FakeBingX.serve`` to test over real loopback sockets without any extra
dependency, and with full control of socket-level faults: a hanging answer keeps the
connection open until the client goes away, a dropped one closes it unanswered.

Supported: keep-alive connections, ``Content-Length`` request bodies (read and ignored: BingX
parameters travel in the query string). Not supported: chunked request bodies (answered 411).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import unquote

from ._wire import NoAnswer, SimResponse

if TYPE_CHECKING:
    from ._simulator import FakeBingX

__all__ = ["SimServer"]

_MAX_HEAD_BYTES = 64 * 1024
_BACKLOG = 1024


class _BadRequestError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(status_code)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class _HTTPRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    keep_alive: bool


class SimServer:
    """Serves one simulator on ``host:port`` until ``aclose``."""

    def __init__(self, sim: FakeBingX) -> None:
        self._sim = sim
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> str:
        """Start listening; returns the base URL, e.g. ``"http://127.0.0.1:54321"``."""
        self._server = await asyncio.start_server(
            self._on_connection, host, port, backlog=_BACKLOG, limit=_MAX_HEAD_BYTES
        )
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        return f"http://{bound_host}:{bound_port}"

    async def aclose(self) -> None:
        """Stop listening, end every open connection and wait until all are closed."""
        if self._server is None:
            return
        self._server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if not self._sim._take_connection_refusal():
                await self._serve_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            # Only aclose() cancels these tasks. Ending normally matters: asyncio's stream
            # protocol asks a finished connection task for its exception, and a cancelled
            # one would be logged as an error in a callback.
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                request = await _read_request(reader)
            except _BadRequestError as error:
                await _write_response(writer, _error_page(error.status_code), keep_alive=False)
                return
            if request is None:
                return
            result = await self._sim.handle(
                request.method, request.path, request.query, request.headers
            )
            if result is NoAnswer.HANG:
                while await reader.read(_MAX_HEAD_BYTES):
                    pass  # never answer; wait for the client to give up and close
                return
            if isinstance(result, NoAnswer):  # DROP, or a refusal matched by path
                return
            await _write_response(writer, result, keep_alive=request.keep_alive)
            if not request.keep_alive:
                return


async def _read_request(reader: asyncio.StreamReader) -> _HTTPRequest | None:
    """The next request on the connection, or ``None`` if the client closed it."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as error:
        if error.partial.strip():
            raise _BadRequestError(400) from error
        return None
    except asyncio.LimitOverrunError as error:
        raise _BadRequestError(431) from error
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = request_line.split(" ")
    except ValueError as error:
        raise _BadRequestError(400) from error
    headers: dict[str, str] = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise _BadRequestError(411)
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise _BadRequestError(400)
    await reader.readexactly(int(length))
    path, _, query = target.partition("?")
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return _HTTPRequest(method, unquote(path), query, headers, keep_alive)


def _error_page(status_code: int) -> SimResponse:
    phrase = HTTPStatus(status_code).phrase
    return SimResponse(status_code, phrase.encode(), "text/plain")


async def _write_response(
    writer: asyncio.StreamWriter, response: SimResponse, *, keep_alive: bool
) -> None:
    try:
        phrase = HTTPStatus(response.status_code).phrase
    except ValueError:
        phrase = "Unknown"
    head = (
        f"HTTP/1.1 {response.status_code} {phrase}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + response.body)
    await writer.drain()
