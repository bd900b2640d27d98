"""Test helpers for code that uses bingx_async: virtual clocks and a BingX simulator."""

from __future__ import annotations

from ._clocks import FakeClock, LoopClock

__all__ = ["FakeClock", "LoopClock"]
