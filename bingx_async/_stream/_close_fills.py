"""Fills of closes made with ``wait_fill=True``: seen on the account stream, or else asked of
BingX once over REST; never guessed.

A close is sent once the stream listens (or after ``ready_timeout``), so that its fill,
which can arrive before the close's own answer, is kept for it. The wait for the fill is
bounded by ``fill_timeout`` and by the call's ``total_timeout``, and ends early when the
stream loses its connection (the fill may have come meanwhile): the order query then says
what the order filled.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bingx_async._clock import Clock
from bingx_async._exceptions import BingXError, error_text
from bingx_async._models import FINAL_STATUSES, Fill

from ._events import OrderUpdate
from ._stream import AccountStream

__all__ = ["CloseFills", "OrderQuery", "fill_from_update"]

logger = logging.getLogger("bingx_async")

#: ``(symbol, order_id, deadline) -> Fill | None``: the order query, ending by ``deadline``
#: (``clock.monotonic()``; ``None``: the client's own ``total_timeout``).
OrderQuery = Callable[[str, str, float | None], Awaitable[Fill | None]]


def fill_from_update(update: OrderUpdate) -> Fill | None:
    """The fill in an order's final update, or ``None`` unless it says what was filled."""
    status = (update.status or "").upper()
    if status not in FINAL_STATUSES or update.avg_price is None:
        return None
    if update.filled_quantity is None:
        return None
    return Fill(
        order_id=update.order_id,
        status=status,
        avg_price=update.avg_price,
        quantity=update.filled_quantity,
        realized_profit=update.realized_profit,
        fee=update.fee,
        fee_asset=update.fee_asset,
        time=update.time or update.event_time,
        source="stream",
    )


class CloseFills:
    """Fills of one client's closes, from ``stream`` first and ``query`` after."""

    def __init__(self, stream: AccountStream, clock: Clock, query: OrderQuery) -> None:
        self._stream = stream
        self._clock = clock
        self._query = query

    async def listening(self, started: float, deadline: float | None) -> None:
        """Wait for the stream to listen (see ``AccountStream.listening``). Of a call that
        began at ``started`` and must end by ``deadline``, at most half the time is spent
        waiting: the close needs the rest."""
        until = started + (deadline - started) / 2 if deadline is not None else None
        await self._stream.listening(until)

    async def fill(
        self, order_id: str, symbol: str | None, sent_at: float, deadline: float | None
    ) -> Fill | None:
        """What order ``order_id``, whose request left at ``sent_at``, filled: from the
        stream (waiting up to ``fill_timeout``, not past ``deadline``; not at all if the
        stream did not listen all along since ``sent_at``), else from one order query if
        ``symbol`` is known and time remains; ``None`` when neither says."""
        clock = self._clock
        until = clock.monotonic() + self._stream.settings.fill_timeout
        if deadline is not None:
            until = min(until, deadline)
        try:
            update = await self._stream.wait_fill(order_id, until, sent_at=sent_at)
        except Exception as error:  # noqa: BLE001 - the close is done: never lose its result
            logger.warning(
                "wait_fill: order %s: the account stream failed (%s)", order_id, error_text(error)
            )
            update = None
        found = fill_from_update(update) if update is not None else None
        if found is not None:
            return found
        if symbol is None:
            logger.warning("wait_fill: order %s: fill not seen, and no symbol to ask", order_id)
            return None
        if deadline is not None and clock.monotonic() >= deadline:
            logger.warning("wait_fill: order %s: fill not seen before total_timeout", order_id)
            return None
        try:
            found = await self._query(symbol, order_id, deadline)
        except BingXError as error:
            logger.warning(
                "wait_fill: order %s: the order query failed (%s)", order_id, error_text(error)
            )
            return None
        if found is None:
            logger.warning("wait_fill: order %s: BingX does not say it is done", order_id)
        return found
