"""AccountStream: one account's stream, shared by its subscribers and fill waiters."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import Self

from bingx_async._clock import Clock, SystemClock
from bingx_async._exceptions import (
    ClientClosedError,
    ConfigurationError,
    InvalidArgumentError,
    error_text,
)

from ._events import OrderUpdate, StreamReconnected, WireEvent
from ._fills import FillBook
from ._listen_key import ListenKey, ListenKeys, RestCall
from ._settings import DEFAULT_STREAM_SETTINGS, StreamSettings
from ._subscription import StreamSubscription
from ._websocket import StreamSocket, require_websockets

__all__ = ["AccountStream"]

logger = logging.getLogger("bingx_async")


class _State(enum.Enum):
    UNSTARTED = 1
    RUNNING = 2
    FAILED = 3
    CLOSED = 4


class AccountStream:
    """One account's stream of events (BingX's user data stream), started on first need and
    shared by everyone who reads it.

    - ``subscribe``: every event from now on, as an async iterator with a bounded queue of
      its own;
    - ``wait_fill``: the update that ends one order, even if it arrived before the wait
      began;
    - ``ready``: wait until the stream listens (so that a close sent afterwards is seen on
      it).

    ``rest`` sends the listen-key requests (see :data:`RestCall`). The stream reconnects by
    itself and reports each reconnection to subscribers as ``StreamReconnected``; it stops
    only when closed (``aclose``) or when BingX refuses the API key, which ``ready``,
    subscribers and fill waiters then raise. An ``AccountStream`` belongs to the event loop
    it is started in.

    Needs the ``websockets`` package: ``pip install "bingx-async[stream]"``.
    """

    def __init__(
        self,
        rest: RestCall,
        *,
        settings: StreamSettings = DEFAULT_STREAM_SETTINGS,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        require_websockets()
        if not isinstance(settings, StreamSettings):
            raise ConfigurationError("settings must be a StreamSettings")
        self._settings = settings
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._keys = ListenKeys(
            rest,
            self._clock,
            extend_every=settings.extend_every,
            delete_timeout=settings.delete_timeout,
        )
        self._fills = FillBook(
            self._clock, keep_for=settings.keep_fills_for, max_kept=settings.max_kept_fills
        )
        self._socket = StreamSocket(
            settings=settings,
            keys=self._keys,
            clock=self._clock,
            random=(rng if rng is not None else random.Random()).random,
            on_event=self._dispatch,
            on_change=self._wake,
        )
        self._subscriptions: dict[StreamSubscription, None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        self._state = _State.UNSTARTED
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Since when (``clock.monotonic()``) the open connection has listened, if one is open.
        self._listening_since: float | None = None
        #: Whether a connection was ever open.
        self._has_listened = False
        #: Someone waited ``ready_timeout`` for the first connection in vain: others do not.
        self._waited_in_vain = False

    # --- public -------------------------------------------------------------------------

    @property
    def settings(self) -> StreamSettings:
        return self._settings

    @property
    def connected(self) -> bool:
        """Whether a connection is open now."""
        return self._socket.connected

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def failure(self) -> BaseException | None:
        """What stopped the stream, if anything did (the API key refused ...)."""
        return self._failure

    @property
    def listening_since(self) -> float | None:
        """Since when (``clock.monotonic()``) the stream has listened without a break, or
        ``None`` while it does not: no event sent since then was missed."""
        return self._listening_since

    @property
    def reconnects(self) -> int:
        """How many times the stream connected again after a connection ended."""
        return self._socket.reconnects

    @property
    def malformed_frames(self) -> int:
        """Frames skipped because they could not be read."""
        return self._socket.malformed_frames

    def start(self) -> None:
        """Start connecting, in the running event loop (idempotent; the other methods call
        it)."""
        loop = asyncio.get_running_loop()
        if self._state is _State.CLOSED:
            raise _closed()
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError(
                "an AccountStream belongs to the event loop it was started in; "
                "make one per event loop"
            )
        if self._state is not _State.UNSTARTED:
            return
        self._loop = loop
        self._state = _State.RUNNING
        self._tasks = [
            loop.create_task(self._run(), name="bingx_async account stream"),
            loop.create_task(self._keys.keep_alive(self._key_gone), name="bingx_async listen key"),
        ]

    async def ready(self) -> None:
        """Wait until a connection is open (started if need be).

        Raises [`ClientClosedError`][bingx_async.ClientClosedError] if the stream is closed,
        or what stopped it. Bound the wait with the clock's ``timeout_at`` if need be: while
        BingX is unreachable, the stream keeps trying.
        """
        self.start()
        while True:
            self._raise_if_stopped()
            if self._socket.connected:
                return
            self._changed.clear()
            await self._changed.wait()

    async def listening(self, deadline: float | None) -> None:
        """Wait until the stream listens, but not past ``ready_timeout`` (nor past
        ``deadline``, a ``clock.monotonic()`` time).

        Only the stream's first connection is waited for, and only until one wait for it has
        run out: a stream reconnecting, or one that cannot connect, makes no one wait. Raises
        [`ClientClosedError`][bingx_async.ClientClosedError] if the stream is closed, never
        what stopped it (that is logged where it happened).
        """
        if (
            self._socket.connected
            or self._has_listened
            or self._waited_in_vain
            or self._failure is not None
        ):
            return
        clock = self._clock
        began = clock.monotonic()
        until = began + self._settings.ready_timeout
        if deadline is not None:
            until = min(until, deadline)
        try:
            async with clock.timeout_at(until):
                await self.ready()
        except TimeoutError:
            if not self._has_listened:
                self._waited_in_vain = True
                logger.warning(
                    "account stream: not connected after %.3g s; going on without waiting "
                    "for it (it keeps trying)",
                    clock.monotonic() - began,
                )
        except ClientClosedError:
            raise
        except Exception:  # noqa: BLE001, S110 - logged (ERROR) where it stopped the stream
            pass

    def subscribe(self, *, queue_size: int | None = None) -> StreamSubscription:
        """Every event from now on, for one subscriber (started if need be).

        ``queue_size`` (default: the settings') is how many unread events the subscriber may
        fall behind; then its oldest are dropped and an ``EventsDropped`` marker takes their
        place.
        """
        if queue_size is not None and (
            isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1
        ):
            raise InvalidArgumentError(f"queue_size must be an integer >= 1, got {queue_size!r}")
        self.start()
        self._raise_if_stopped()
        subscription = StreamSubscription(
            queue_size or self._settings.queue_size, self._clock, self._unsubscribe
        )
        self._subscriptions[subscription] = None
        return subscription

    async def wait_fill(
        self, order_id: str | int, deadline: float, *, sent_at: float | None = None
    ) -> OrderUpdate | None:
        """The update that ends order ``order_id`` (``FILLED``, or ``CANCELED``/``EXPIRED``
        with what was filled), or ``None`` if none arrives by ``deadline``, a
        ``clock.monotonic()`` time, or if it may have been missed.

        An update that arrived before the call is found too, for ``keep_fills_for`` seconds.
        An update that came while the stream was disconnected never comes, so the wait ends
        with ``None`` as soon as the connection is lost, and at once if the stream has not
        listened without a break since ``sent_at`` (``clock.monotonic()`` when the order's
        request left): then ask BingX (the order query). Raises
        [`ClientClosedError`][bingx_async.ClientClosedError] when the stream is (or gets)
        closed, or what stopped it.
        """
        wanted = _order_id(order_id)
        self.start()
        since = self._listening_since
        if sent_at is not None and (since is None or since > sent_at):
            return self._fills.kept(wanted)
        return await self._fills.wait(wanted, deadline)

    async def aclose(self) -> None:
        """Stop: end subscriptions (after what they have queued), wake waiters with
        [`ClientClosedError`][bingx_async.ClientClosedError], close the connection and
        delete the listen key (in at most ``delete_timeout`` seconds). Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._end(None, _closed)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._keys.delete()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = self._state.name.lower()
        link = "connected" if self.connected else "not connected"
        return (
            f"<AccountStream {state}, {link}: {len(self._subscriptions)} subscriber(s), "
            f"{self.reconnects} reconnect(s)>"
        )

    # --- internals ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._socket.run()
        except Exception as error:  # noqa: BLE001 - reported to every reader, not lost
            logger.error("account stream: stopped: %s", error_text(error))
            failure = error
            self._state = _State.FAILED
            self._failure = failure
            self._end(failure, lambda: failure)
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    def _dispatch(self, event: WireEvent | StreamReconnected) -> None:
        if isinstance(event, OrderUpdate):
            self._fills.record(event)
        for subscription in list(self._subscriptions):
            subscription._put(event)

    def _key_gone(self, key: ListenKey) -> None:
        """BingX no longer knows the key the open connection uses: connect with a new one."""
        self._socket.drop("BingX no longer knows the listen key")

    def _wake(self) -> None:
        connected = self._socket.connected
        was_connected = self._listening_since is not None
        if connected and not was_connected:
            self._has_listened = True
            self._listening_since = self._clock.monotonic()
        elif was_connected and not connected:
            self._listening_since = None
            self._fills.interrupt()
        self._changed.set()

    def _unsubscribe(self, subscription: StreamSubscription) -> None:
        self._subscriptions.pop(subscription, None)

    def _end(self, error: BaseException | None, raised: Callable[[], BaseException]) -> None:
        """End subscriptions (raising ``error`` at their end, if any), fill waiters (raising
        ``raised()``) and ``ready`` waiters."""
        for subscription in list(self._subscriptions):
            subscription._end(error)
        self._fills.end(raised)
        self._wake()

    def _raise_if_stopped(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._state is _State.CLOSED:
            raise _closed()


def _closed() -> ClientClosedError:
    return ClientClosedError("the account stream was closed", may_have_executed=False)


def _order_id(order_id: object) -> str:
    if isinstance(order_id, bool) or not isinstance(order_id, str | int):
        raise InvalidArgumentError(
            f"order_id must be a str or int of digits, got {type(order_id).__name__}"
        )
    text = str(order_id).strip()
    if not text:
        raise InvalidArgumentError("order_id is empty")
    return text
