"""Orders' final updates, for callers waiting for a fill.

A fill can come over the stream before the HTTP answer that names its order, so final
updates are kept for a while (``keep_for`` seconds, at most ``max_kept`` of them, the oldest
forgotten first) for waits that start later.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from bingx_async._clock import Clock

from ._events import OrderUpdate

__all__ = ["FillBook"]


class FillBook:
    """Final order updates by order ID, and the callers waiting for them."""

    def __init__(self, clock: Clock, *, keep_for: float, max_kept: int) -> None:
        self._clock = clock
        self._keep_for = keep_for
        self._max_kept = max_kept
        #: Order ID -> (its final update, until when it is kept); oldest first.
        self._kept: OrderedDict[str, tuple[OrderUpdate, float]] = OrderedDict()
        self._waiters: dict[str, set[asyncio.Future[OrderUpdate | None]]] = {}
        #: Once ended: what waiting raises.
        self._ended: Callable[[], BaseException] | None = None

    def __len__(self) -> int:
        """How many final updates are kept now."""
        self._forget_old()
        return len(self._kept)

    def record(self, update: OrderUpdate) -> None:
        """Hand a final ``update`` to its waiters and keep it; others are ignored."""
        if not update.is_final or self._ended is not None:
            return
        for waiter in self._waiters.pop(update.order_id, ()):
            if not waiter.done():
                waiter.set_result(update)
        self._kept.pop(update.order_id, None)
        self._kept[update.order_id] = (update, self._clock.monotonic() + self._keep_for)
        self._forget_old()
        while len(self._kept) > self._max_kept:
            self._kept.popitem(last=False)

    def kept(self, order_id: str) -> OrderUpdate | None:
        """The final update of ``order_id`` if one is kept, without waiting. Raises what
        ended the book."""
        self._forget_old()
        found = self._kept.get(order_id)
        if found is not None:
            return found[0]
        self._raise_if_ended()
        return None

    async def wait(self, order_id: str, deadline: float) -> OrderUpdate | None:
        """The final update of ``order_id``; ``None`` if none came by ``deadline`` (a
        ``clock.monotonic()`` time). Raises what ended the book."""
        found = self.kept(order_id)
        if found is not None:
            return found
        waiter: asyncio.Future[OrderUpdate | None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(order_id, set())
        waiters.add(waiter)
        try:
            async with self._clock.timeout_at(deadline):
                update = await waiter
        except TimeoutError:
            return None
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(order_id) is waiters:
                del self._waiters[order_id]
        if update is None:
            self._raise_if_ended()
        return update

    def interrupt(self) -> None:
        """The stream lost its connection: what arrives meanwhile is lost. Every waiter gets
        ``None`` now (its update may be among the lost ones); kept updates stay."""
        waiters, self._waiters = self._waiters, {}
        for group in waiters.values():
            for waiter in group:
                if not waiter.done():
                    waiter.set_result(None)

    def end(self, error: Callable[[], BaseException]) -> None:
        """Wake every waiter, raising ``error()`` to each, and keep nothing more."""
        if self._ended is not None:
            return
        self._ended = error
        self._kept.clear()
        waiters, self._waiters = self._waiters, {}
        for group in waiters.values():
            for waiter in group:
                if not waiter.done():
                    waiter.set_result(None)

    def _raise_if_ended(self) -> None:
        if self._ended is not None:
            raise self._ended()

    def _forget_old(self) -> None:
        now = self._clock.monotonic()
        while self._kept:
            _, (_, until) = next(iter(self._kept.items()))
            if until > now:
                break
            self._kept.popitem(last=False)
