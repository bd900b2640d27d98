"""The account stream's connection: one WebSocket at a time, replaced whenever it ends.

A connection goes to ``<url>?listenKey=<key>`` and reads frames (see ``_events``), answering
``Ping`` with ``Pong``. It ends when the server closes it, the network drops it, no frame
arrives for ``idle_timeout`` seconds, or the listen key expires; the next one opens after a
back-off with jitter (reset by a connection that brought frames), with a new listen key when
BingX said the old one expired or refused it. Each reconnection is reported as
:class:`StreamReconnected`. Every wait goes through the clock.

``websockets`` (the ``stream`` extra) is imported only here, and only when a connection opens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from bingx_async._clock import Clock
from bingx_async._exceptions import (
    AuthenticationError,
    BingXError,
    ConfigurationError,
    PermissionDeniedError,
    error_text,
)
from bingx_async._redact import install_websockets_log_filter, redact

from ._events import (
    MAX_FRAME,
    ListenKeyExpired,
    MalformedFrameError,
    Ping,
    StreamReconnected,
    WireEvent,
    parse_frame,
)
from ._listen_key import ListenKey, ListenKeys
from ._settings import StreamSettings

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection
    from websockets.exceptions import ConnectionClosed

__all__ = ["INSTALL_HINT", "StreamSocket", "require_websockets"]

logger = logging.getLogger("bingx_async")

INSTALL_HINT = 'the account stream needs the websockets package: pip install "bingx-async[stream]"'
#: Seconds a closing handshake may take before the connection is cut.
CLOSE_TIMEOUT = 2.0
#: Errors that no reconnection mends: the stream stops and reports them.
_FATAL = (AuthenticationError, PermissionDeniedError, ConfigurationError)
#: HTTP statuses of a handshake refused for its listen key.
_KEY_REFUSED = frozenset({401, 403, 404})
_POLICY_VIOLATION = 1008


def require_websockets() -> None:
    """Raise ``ImportError`` with the install hint unless ``websockets`` (13 or later) is
    installed."""
    try:
        import websockets.asyncio.client  # noqa: F401 - only checking that it imports
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error


class _Ended(NamedTuple):
    reason: str
    #: The connection brought at least one frame, or lasted long enough to count as healthy.
    healthy: bool


@dataclass(slots=True)
class _Gap:
    """Since when, and why, the stream has not been listening."""

    reason: str
    since: float
    key: ListenKey
    attempts: int = 0


class StreamSocket:
    """Keeps one connection to the account stream open, until cancelled.

    ``on_event`` receives every event read and every :class:`StreamReconnected`;
    ``on_change`` is called each time a connection opens or ends. ``run`` raises only what no
    reconnection mends (the API key refused when creating a listen key).
    """

    def __init__(
        self,
        *,
        settings: StreamSettings,
        keys: ListenKeys,
        clock: Clock,
        random: Callable[[], float],
        on_event: Callable[[WireEvent | StreamReconnected], None],
        on_change: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._random = random
        self._on_event = on_event
        self._on_change = on_change
        self._websocket: ClientConnection | None = None
        #: Why the open connection is being cut (by ``drop``).
        self._dropping: str | None = None
        #: Frames skipped because they could not be read.
        self.malformed_frames = 0
        #: Connections opened after the first.
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._websocket is not None

    def drop(self, reason: str) -> None:
        """Cut the open connection (if any) now; the next one opens as after any drop."""
        if self._websocket is not None:
            self._dropping = reason
            self._websocket.transport.abort()

    async def run(self) -> NoReturn:
        """Connect, listen, and connect again, until cancelled."""
        gap: _Gap | None = None
        failures = 0  # attempts in a row that did not give a healthy connection
        first = True
        while True:
            if not first:
                await self._clock.sleep(self._settings._backoff(failures, self._random()))
            first = False
            if gap is not None:
                gap.attempts += 1
            opened = await self._open()
            if opened is None:
                failures += 1
                continue
            websocket, key = opened
            if gap is not None:
                self.reconnects += 1
                self._on_event(
                    StreamReconnected(
                        reason=gap.reason,
                        disconnected_at=_utc(gap.since),
                        reconnected_at=_utc(self._clock.time()),
                        attempts=gap.attempts,
                        new_listen_key=key != gap.key,
                    )
                )
            ended = await self._listen(websocket, key)
            logger.info("account stream: %s; reconnecting", ended.reason)
            gap = _Gap(ended.reason, self._clock.time(), key)
            failures = 0 if ended.healthy else failures + 1

    # --- one connection -----------------------------------------------------------------

    async def _open(self) -> tuple[ClientConnection, ListenKey] | None:
        """A new connection, or ``None`` when this attempt failed (logged)."""
        try:
            key = await self._keys.get()
        except _FATAL:
            raise
        except BingXError as error:
            logger.warning("account stream: could not get a listen key (%s)", error_text(error))
            return None

        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        install_websockets_log_filter()
        url = self._settings.url
        separator = "&" if "?" in url else "?"
        try:
            async with self._clock.timeout_at(
                self._clock.monotonic() + self._settings.open_timeout
            ):
                websocket = await connect(
                    f"{url}{separator}listenKey={key.reveal()}",
                    # BingX compresses each frame itself and pings in text: no
                    # permessage-deflate, no protocol pings; time goes through the clock.
                    compression=None,
                    ping_interval=None,
                    open_timeout=None,
                    close_timeout=CLOSE_TIMEOUT,
                    max_size=MAX_FRAME,
                )
        except InvalidStatus as error:
            status = error.response.status_code
            if status in _KEY_REFUSED:
                self._keys.discard(key)
            logger.warning("account stream: connection refused with HTTP %d", status)
            return None
        except TimeoutError:
            logger.warning(
                "account stream: opening a connection took over %g s",
                self._settings.open_timeout,
            )
            return None
        except (OSError, WebSocketException) as error:
            logger.warning("account stream: could not connect (%s)", redact(error_text(error)))
            return None
        self._dropping = None
        self._websocket = websocket
        self._on_change()
        return websocket, key

    async def _listen(self, websocket: ClientConnection, key: ListenKey) -> _Ended:
        """Read frames until the connection ends; say why it ended."""
        from websockets.exceptions import ConnectionClosed

        opened_at = self._clock.monotonic()
        got_frame = False

        def ended(reason: str) -> _Ended:
            lasted = self._clock.monotonic() - opened_at
            return _Ended(reason, got_frame or lasted >= self._settings.backoff_max)

        try:
            while True:
                try:
                    frame = await self._receive(websocket)
                except TimeoutError:
                    return ended(f"no frame for {self._settings.idle_timeout:g} s")
                got_frame = True
                try:
                    item = parse_frame(frame)
                except MalformedFrameError as error:
                    self.malformed_frames += 1
                    logger.warning("%s; frame skipped", error_text(error))
                    continue
                if isinstance(item, Ping):
                    await websocket.send("Pong")
                elif isinstance(item, ListenKeyExpired):
                    self._keys.discard(key)
                    return ended("the listen key expired")
                else:
                    self._on_event(item)
        except ConnectionClosed as closed:
            if closed.rcvd is not None and closed.rcvd.code == _POLICY_VIOLATION:
                self._keys.discard(key)  # most likely refused for its key: get another
            return ended(self._dropping or _closed_reason(closed))
        finally:
            self._websocket = None
            self._on_change()
            await self._close(websocket)

    async def _receive(self, websocket: ClientConnection) -> str | bytes:
        idle = self._settings.idle_timeout
        if idle is None:
            return await websocket.recv()
        async with self._clock.timeout_at(self._clock.monotonic() + idle):
            return await websocket.recv()

    async def _close(self, websocket: ClientConnection) -> None:
        """Close with a closing handshake, or cut the connection if that takes too long."""
        try:
            async with self._clock.timeout_at(self._clock.monotonic() + CLOSE_TIMEOUT):
                await websocket.close()
        except TimeoutError:
            websocket.transport.abort()
        except BaseException:
            websocket.transport.abort()
            raise

    def __repr__(self) -> str:
        state = "connected" if self.connected else "not connected"
        return f"<StreamSocket {state}, {self.reconnects} reconnect(s)>"


def _closed_reason(closed: ConnectionClosed) -> str:
    received = closed.rcvd
    if received is None:
        return "the connection was lost"
    why = f": {redact(received.reason)}" if received.reason else ""
    return f"the server closed the connection (code {received.code}{why})"


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)
