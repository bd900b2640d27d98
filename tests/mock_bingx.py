"""A minimal scripted BingX for virtual-time tests: records when each request arrived."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from bingx_async import BingXClient, RetryPolicy
from bingx_async.testing import LoopClock

EPOCH = 1_700_000_000.0
POSITIONS_PATH = "/openApi/swap/v2/user/positions"


@dataclass
class Sent:
    at: float
    path: str
    params: dict[str, str]
    api_key: str | None


Answer = Callable[[httpx.Request], httpx.Response]


def closed(request: httpx.Request) -> httpx.Response:
    """BingX's success answer for closePosition."""
    position_id = request.url.params["positionId"]
    return httpx.Response(
        200,
        json={
            "code": 0,
            "msg": "",
            "timestamp": 1,
            "data": {"orderId": 1, "positionId": position_id},
        },
    )


def close_once() -> Answer:
    """BingX's answers for closing by ID: success the first time, "no position" after."""
    gone: set[str] = set()

    def answer(request: httpx.Request) -> httpx.Response:
        position_id = request.url.params["positionId"]
        if position_id in gone:
            return httpx.Response(200, json={"code": 101205, "msg": "No position to close"})
        gone.add(position_id)
        return closed(request)

    return answer


@dataclass
class MockBingX:
    """Answers server time itself and everything else with ``answer``, after ``latency``."""

    clock: LoopClock = field(default_factory=lambda: LoopClock(EPOCH))
    answer: Answer = closed
    latency: float = 0.0
    server_offset: float = 0.0
    sent: list[Sent] = field(default_factory=list)
    #: How often the positions list was asked for (it is answered here, not by ``answer``).
    positions_asked: int = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == POSITIONS_PATH:
            return self.open_positions()
        if request.url.path == "/openApi/swap/v2/server/time":
            server_ms = int((self.clock.time() + self.server_offset) * 1000)
            return httpx.Response(
                200, json={"code": 0, "msg": "", "data": {"serverTime": server_ms}}
            )
        self.sent.append(
            Sent(
                asyncio.get_running_loop().time(),
                request.url.path,
                dict(request.url.params),
                request.headers.get("X-BX-APIKEY"),
            )
        )
        if self.latency:
            await self.clock.sleep(self.latency)
        return self.answer(request)

    def client(self, api_key: str = "key-a", **options: object) -> BingXClient:
        options.setdefault("retry", RetryPolicy(attempts=1))
        return BingXClient(
            api_key=api_key,
            secret_key="secret",
            clock=self.clock,
            transport=httpx.MockTransport(self.handle),
            **options,  # type: ignore[arg-type]
        )

    def open_positions(self) -> httpx.Response:
        """The positions list: every position a close was sent for counts as still open
        (the mock does not model positions), so a close whose outcome was unknown is retried.
        """
        self.positions_asked += 1
        ids = dict.fromkeys(s.params["positionId"] for s in self.sent if "positionId" in s.params)
        data = [{"positionId": position_id, "symbol": "BTC-USDT"} for position_id in ids]
        return httpx.Response(200, json={"code": 0, "msg": "", "data": data})

    def times(self, api_key: str | None = None) -> list[float]:
        return [s.at for s in self.sent if api_key is None or s.api_key == api_key]


def max_in_window(times: list[float], window: float) -> int:
    """The most requests any rolling window of ``window`` seconds holds."""
    ordered = sorted(times)
    best = 0
    start = 0
    for end, at in enumerate(ordered):
        while ordered[start] <= at - window:
            start += 1
        best = max(best, end - start + 1)
    return best
