"""BingX's clock as seen from here: local time plus a measured offset.

BingX rejects a signed request whose timestamp is off by more than ``recvWindow``. Rather than
asking users to run NTP, the offset is measured with ``GET /openApi/swap/v2/server/time``
(corrected by half the round trip) before the first signed request, again every
``interval`` seconds, and at once after a timestamp rejection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ._clock import Clock
from ._exceptions import SharedLimitsUnavailableError, error_text

__all__ = ["Measure", "ServerClock"]

logger = logging.getLogger("bingx_async")

#: After a failed measurement, wait this long before trying again.
_RETRY_FAILED_SYNC_AFTER = 5.0

#: What ``ServerClock.sync`` calls: (server epoch ms, wall time sent, round trip s).
Measure = Callable[[], Awaitable[tuple[int, float, float]]]


class ServerClock:
    """Estimates BingX's clock for one host. Shared by every client of that host."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.offset: float = 0.0
        self.round_trip: float | None = None
        self._synced_at: float | None = None
        self._failed_at: float | None = None
        self._pending: asyncio.Future[None] | None = None

    def time(self) -> float:
        """BingX's current time, in epoch seconds."""
        return self._clock.time() + self.offset

    @property
    def synced(self) -> bool:
        """Whether the offset was ever measured."""
        return self._synced_at is not None

    def due(self, interval: float, now: float) -> bool:
        """Whether to measure again, ``now`` (monotonic)."""
        if self._failed_at is not None and now - self._failed_at < _RETRY_FAILED_SYNC_AFTER:
            return False
        return self._synced_at is None or now - self._synced_at >= interval

    def sync_in_background(
        self, measure: Measure, spawn: Callable[[Coroutine[Any, Any, None]], object]
    ) -> None:
        """Re-measure in a task made by ``spawn``, without holding up the caller (the known
        offset stays in use meanwhile)."""
        if self._pending is None:
            spawn(self.sync(measure))

    async def sync(self, measure: Measure) -> None:
        """Measure the offset; concurrent callers share one measurement.

        ``measure`` returns BingX's time (epoch ms), our wall-clock time when the request
        left, and the round trip in seconds (queueing for the rate limiter excluded).
        """
        if self._pending is not None:
            await asyncio.shield(self._pending)
            return
        loop = asyncio.get_running_loop()
        self._pending = pending = loop.create_future()
        try:
            server_ms, sent, round_trip = await measure()
            self.offset = server_ms / 1000 - (sent + round_trip / 2)
            self.round_trip = round_trip
            self._synced_at = self._clock.monotonic()
            self._failed_at = None
            logger.debug(
                "server clock: offset %+.3f s (round trip %.3f s)", self.offset, round_trip
            )
        except Exception as error:  # noqa: BLE001 - a failed sync must not fail the request
            self._failed_at = self._clock.monotonic()
            # Shared limits that cannot be used have said so once already.
            level = (
                logging.DEBUG
                if isinstance(error, SharedLimitsUnavailableError)
                else logging.WARNING
            )
            logger.log(
                level,
                "could not read BingX server time (%s); keeping offset",
                error_text(error),
            )
        finally:
            self._pending = None
            pending.set_result(None)
