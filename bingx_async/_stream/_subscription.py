"""One subscriber's events: a bounded queue read as an async iterator.

The stream hands every event to every subscription without waiting. A subscriber that falls
``size`` events behind loses its oldest unread events, and reads an :class:`EventsDropped`
marker in their place: a slow subscriber costs bounded memory and never holds up the others.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

from bingx_async._clock import Clock

from ._events import EventsDropped, StreamEvent

__all__ = ["StreamSubscription"]


class StreamSubscription:
    """An account stream's events for one subscriber, in order, as an async iterator.

    ```python
    async with client.account_stream() as events:
        async for event in events:
            ...
    ```

    Iteration ends when the subscription or its stream is closed (after the events already
    queued), or raises what stopped the stream. Leaving the ``async with`` block (or calling
    ``close``) unsubscribes.
    """

    def __init__(
        self, size: int, clock: Clock, on_close: Callable[[StreamSubscription], None]
    ) -> None:
        self._size = size
        self._clock = clock
        self._on_close = on_close
        self._queue: deque[StreamEvent] = deque()
        self._dropped = 0
        self._since = 0.0
        self._arrived = asyncio.Event()
        self._ended = False
        self._error: BaseException | None = None
        #: Events dropped so far because this subscriber fell behind.
        self.dropped_total: int = 0

    @property
    def closed(self) -> bool:
        return self._ended

    def close(self) -> None:
        """Unsubscribe; iteration ends once the events already queued have been read."""
        self._end(None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            if self._dropped:
                # The dropped events were the oldest: the gap comes before what is queued.
                marker = EventsDropped(self._dropped, datetime.fromtimestamp(self._since, UTC))
                self._dropped = 0
                return marker
            if self._queue:
                return self._queue.popleft()
            if self._ended:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()

    # --- for the stream -----------------------------------------------------------------

    def _put(self, event: StreamEvent) -> None:
        """Queue ``event``, dropping the oldest unread one when the queue is full."""
        if self._ended:
            return
        if len(self._queue) >= self._size:
            self._queue.popleft()
            if not self._dropped:
                self._since = self._clock.time()
            self._dropped += 1
            self.dropped_total += 1
        self._queue.append(event)
        self._arrived.set()

    def _end(self, error: BaseException | None) -> None:
        """No more events: the subscription or the stream closed (``error``: it failed)."""
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._arrived.set()
        self._on_close(self)

    def __repr__(self) -> str:
        state = "closed" if self._ended else "open"
        return (
            f"<StreamSubscription {state}: {len(self._queue)} queued, {self.dropped_total} dropped>"
        )
