"""Test helpers for code that uses bingx_async: virtual clocks and a BingX simulator."""

from __future__ import annotations

from ._clocks import FakeClock, LoopClock
from ._simulator import (
    BadGatewayPage,
    CustomAnswer,
    DropConnection,
    FakeBingX,
    Fault,
    GatewayTimeout,
    NeverAnswer,
    NoAnswer,
    RecordedRequest,
    RefuseConnection,
    SimAccount,
    SimPosition,
    SimResponse,
)

__all__ = [
    "BadGatewayPage",
    "CustomAnswer",
    "DropConnection",
    "FakeBingX",
    "FakeClock",
    "Fault",
    "GatewayTimeout",
    "LoopClock",
    "NeverAnswer",
    "NoAnswer",
    "RecordedRequest",
    "RefuseConnection",
    "SimAccount",
    "SimPosition",
    "SimResponse",
]
