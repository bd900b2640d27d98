"""Time windows for FakeBingX's limits: arrivals counted per budget in rolling or fixed
windows, and the blocks that disable an endpoint until a moment on the clock.

All times are ``clock.monotonic()`` seconds.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Literal

from bingx_async._budgets import Budget, BudgetKey

__all__ = ["ArrivalLog", "Block", "Blocks", "Window", "trim"]

Window = Literal["rolling", "fixed"]


def trim(times: deque[float], now: float, window: float) -> int:
    """Drop the oldest ``times`` until all are in the rolling window ``(now - window, now]``;
    return how many are left. Compared in whole milliseconds, as BingX timestamps are, so
    float rounding (64.1 - 1.0 == 63.099999999999994) never counts an arrival twice."""
    cutoff = round(now * 1000) - round(window * 1000)
    while times and round(times[0] * 1000) <= cutoff:
        times.popleft()
    return len(times)


class ArrivalLog:
    """Arrival times per budget, counted in rolling or fixed windows."""

    def __init__(self, window: Window) -> None:
        self._window = window
        self._rolling: dict[tuple[BudgetKey, Budget], deque[float]] = defaultdict(deque)
        self._fixed: dict[tuple[BudgetKey, Budget], tuple[int, int]] = {}

    def count(self, key: BudgetKey, budget: Budget, now: float) -> int:
        """Arrivals already in the window that ``now`` falls in."""
        if self._window == "fixed":
            bucket, count = self._fixed.get((key, budget), (0, 0))
            return count if bucket == math.floor(now / budget.window) else 0
        return trim(self._rolling[(key, budget)], now, budget.window)

    def add(self, key: BudgetKey, budget: Budget, now: float) -> None:
        """Count an arrival at ``now``."""
        if self._window == "fixed":
            bucket = math.floor(now / budget.window)
            count = self.count(key, budget, now)
            self._fixed[(key, budget)] = (bucket, count + 1)
        else:
            self._rolling[(key, budget)].append(now)


@dataclass(frozen=True, slots=True)
class Block:
    """An endpoint disabled until ``until``; requests meanwhile get the rate-limit code and
    ``msg``."""

    until: float
    msg: str


class Blocks:
    """Disabled endpoints, each for one account (UID) or, with ``uid=None``, for everyone."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, str | None], Block] = {}

    def disable(self, endpoint: str, uid: str | None, block: Block) -> None:
        """Disable ``endpoint`` for ``uid`` (everyone if ``None``), replacing any block."""
        self._blocks[(endpoint, uid)] = block

    def active(self, endpoint: str, uid: str | None, now: float) -> Block | None:
        """The block ``endpoint`` is under at ``now`` for ``uid``: everyone's first, then the
        account's. Expired blocks are forgotten."""
        for scope in (None, uid) if uid is not None else (None,):
            block = self._blocks.get((endpoint, scope))
            if block is not None:
                if now < block.until:
                    return block
                del self._blocks[(endpoint, scope)]
        return None
