"""An httpx transport that answers from a ``FakeBingX``, without sockets.

``httpx.AsyncClient(transport=sim.transport())`` sends every request straight to the
simulator's core. Faults without an HTTP answer become the errors httpx itself would raise:
a refused connection ``httpx.ConnectError``, a dropped one ``httpx.RemoteProtocolError``, and
a server that never answers ``httpx.ReadTimeout`` once the request's read timeout has passed
on the simulator's clock (with no read timeout, the request waits forever, as it would).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

from ._wire import NoAnswer

if TYPE_CHECKING:
    from ._simulator import FakeBingX

__all__ = ["SimTransport"]


class SimTransport(httpx.AsyncBaseTransport):
    """Hands each httpx request to ``sim.handle`` and turns its answer into a response."""

    def __init__(self, sim: FakeBingX) -> None:
        self._sim = sim

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        result = await self._sim.handle(
            request.method,
            request.url.path,
            request.url.query.decode("ascii"),
            dict(request.headers.items()),
        )
        if result is NoAnswer.REFUSE:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if result is NoAnswer.DROP:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        if result is NoAnswer.HANG:
            await self._wait_for_read_timeout(request)
            raise httpx.ReadTimeout("The read operation timed out", request=request)
        return httpx.Response(
            result.status_code,
            headers={"content-type": result.content_type},
            content=result.body,
            request=request,
        )

    async def _wait_for_read_timeout(self, request: httpx.Request) -> None:
        timeouts = request.extensions.get("timeout")
        read_timeout = timeouts.get("read") if isinstance(timeouts, dict) else None
        if not isinstance(read_timeout, int | float):
            await asyncio.get_running_loop().create_future()  # no timeout: wait forever
        else:
            await self._sim.clock.sleep(float(read_timeout))
