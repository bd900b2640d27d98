"""The account stream over real WebSocket connections on loopback, for
[`FakeBingX.serve_stream`][bingx_async.testing.FakeBingX.serve_stream].

The one module that needs the ``websockets`` package (the ``stream`` extra); it is imported
only when a stream server starts.

Each connection runs three things: a sender that writes its queue of frames in order, a
watcher that sends ``Ping`` every ``ping_interval`` and ends the stream when ``Pong``\\ s stay
away or the listen key expires, and the receiving loop that takes the ``Pong``\\ s. Every wait
goes through the simulator's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ._events import frame
from ._stream import STREAM_PATH, TIMER_SLACK

if TYPE_CHECKING:
    from collections.abc import Mapping

    from websockets.http11 import Request, Response

    from ._stream import SimStream

__all__ = ["StreamServer"]

_POLICY_VIOLATION = 1008


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class _Connection:
    """One open stream: what the exchange side pushes to it, queued for its sender."""

    def __init__(self, websocket: ServerConnection, listen_key: str, uid: str) -> None:
        self.listen_key = listen_key
        self.uid = uid
        self.closing = False
        self.awaiting_pong = False
        self.missed_pongs = 0
        self._websocket = websocket
        self._outbox: asyncio.Queue[bytes | _Close] = asyncio.Queue()

    def push(self, event: Mapping[str, object] | str) -> None:
        if not self.closing:
            self._outbox.put_nowait(frame(event))

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self._outbox.put_nowait(_Close(code, reason))

    def abort(self) -> None:
        self.closing = True
        self._websocket.transport.abort()

    async def send_queued(self) -> None:
        """Send what is queued, in order, until a close (or the connection is gone)."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                item = await self._outbox.get()
                if isinstance(item, _Close):
                    await self._websocket.close(item.code, item.reason)
                    return
                await self._websocket.send(item)


class StreamServer:
    """Serves the account stream of one simulator on ``host:port`` until ``aclose``."""

    def __init__(self, stream: SimStream) -> None:
        self._stream = stream
        self._server: Server | None = None
        #: Handshakes accepted by process_response, waiting for their handler.
        self._accepted: dict[ServerConnection, _Connection] = {}
        self._connections: set[_Connection] = set()

    async def start(self, host: str, port: int) -> str:
        """Start listening; returns the stream's URL, e.g. ``"ws://127.0.0.1:54321/swap-market"``."""
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._check_handshake,
            process_response=self._register,
            # BingX compresses each frame itself (gzip) and pings in text: no permessage-deflate,
            # no protocol-level pings.
            compression=None,
            ping_interval=None,
        )
        self._stream._server_started()
        bound_host, bound_port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"ws://{bound_host}:{bound_port}{STREAM_PATH}"

    async def aclose(self) -> None:
        """Stop listening, close every stream (code 1001) and wait until all are gone."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        for connection in [*self._connections, *self._accepted.values()]:
            self._stream._detach(connection)
        self._accepted.clear()
        self._server = None
        self._stream._server_stopped()

    # --- the handshake ----------------------------------------------------------------------

    def _check_handshake(self, websocket: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path != STREAM_PATH:
            return websocket.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        refusal = self._stream._refusal()
        if refusal is not None:
            return websocket.respond(refusal, "Service Unavailable\n")
        key = parse_qs(url.query).get("listenKey", [""])[-1]
        if self._stream._key_owner(key) is None and self._stream.reject_invalid_keys:
            return websocket.respond(HTTPStatus.UNAUTHORIZED, "invalid listenKey\n")
        return None

    def _register(
        self, websocket: ServerConnection, request: Request, response: Response
    ) -> Response | None:
        # Registered before the 101 goes out, so that every event made after the client sees
        # the stream open reaches it.
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            key = parse_qs(urlsplit(request.path).query).get("listenKey", [""])[-1]
            uid = self._stream._key_owner(key)
            if uid is not None:
                connection = _Connection(websocket, key, uid)
                self._accepted[websocket] = connection
                self._stream._attach(connection)
        return None

    # --- an open stream ---------------------------------------------------------------------

    async def _handle(self, websocket: ServerConnection) -> None:
        connection = self._accepted.pop(websocket, None)
        if connection is None:  # an invalid key, let through to be closed
            await websocket.close(_POLICY_VIOLATION, "invalid listenKey")
            return
        self._connections.add(connection)
        sender = asyncio.create_task(connection.send_queued())
        watcher = asyncio.create_task(self._watch(connection))
        try:
            async for message in websocket:
                if _is_pong(message):
                    connection.awaiting_pong = False
                    connection.missed_pongs = 0
        except ConnectionClosed:
            pass
        finally:
            connection.closing = True
            self._stream._detach(connection)
            self._connections.discard(connection)
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)

    async def _watch(self, connection: _Connection) -> None:
        """Ping on time, and end the stream when Pongs stay away or its key expires."""
        stream = self._stream
        clock = stream.clock
        interval = stream.ping_interval
        next_ping = clock.monotonic() + interval if interval is not None else None
        while not connection.closing:
            now = clock.monotonic()
            expires_at = stream._key_expiry(connection.listen_key)
            if expires_at is None:  # deleted: the stream was closed then
                return
            if now + TIMER_SLACK >= expires_at:
                stream._key_expired(connection.listen_key)
                return
            if next_ping is not None and now + TIMER_SLACK >= next_ping:
                if connection.awaiting_pong:
                    connection.missed_pongs += 1
                if connection.missed_pongs >= stream.max_missed_pongs:
                    connection.close(_POLICY_VIOLATION, "Pong missing")
                    return
                connection.push("Ping")
                connection.awaiting_pong = True
                interval = stream.ping_interval
                next_ping = now + interval if interval is not None else None
                continue
            wake = expires_at if next_ping is None else min(expires_at, next_ping)
            await clock.sleep(wake - now)


def _is_pong(message: str | bytes) -> bool:
    """BingX's clients answer ``Pong`` as text; a gzipped one is taken too."""
    if isinstance(message, str):
        return message == "Pong"
    with contextlib.suppress(OSError, EOFError):
        return gzip.decompress(message) == b"Pong"
    return False
