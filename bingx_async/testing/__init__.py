"""Test helpers for code that uses bingx_async: virtual clocks and a BingX simulator, with its
account stream."""

from __future__ import annotations

from ._clocks import FakeClock, LoopClock
from ._faults import (
    BadGatewayPage,
    CustomAnswer,
    DropConnection,
    Fault,
    GatewayTimeout,
    NeverAnswer,
    RefuseConnection,
)
from ._records import RecordedRequest, SimAccount, SimOrder, SimPosition
from ._simulator import FakeBingX
from ._stream import SimStream
from ._wire import NoAnswer, SimResponse

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
    "SimOrder",
    "SimPosition",
    "SimResponse",
    "SimStream",
]
