"""The demo: many positions closed concurrently against the simulator over real HTTP.

Used by ``bingx-async demo`` and by the benchmarks, so both measure the same thing.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from bingx_async._budgets import CLOSE_POSITION, DEFAULT_RATE_LIMITS, Budget, RateLimitPolicy
from bingx_async._client import BingXClient, CloseProgress
from bingx_async._clock import Clock, SystemClock
from bingx_async._codes import RATE_LIMIT_CODES
from bingx_async._config import RetryPolicy
from bingx_async._models import ClosePositionResult
from bingx_async.testing import FakeBingX

__all__ = ["DemoReport", "run_demo", "theoretical_minimum"]

_CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"


@dataclass(frozen=True, slots=True)
class DemoReport:
    positions: int
    accounts: int
    closed: int
    failed: int
    sends: int
    rejected: int
    retries: int
    wall_time: float
    #: Seconds from the first close's arrival at the simulator to the last one's.
    server_span: float
    theoretical_minimum: float
    arrival_jitter: float
    window: str
    #: Requests that reached the simulator while the endpoint was disabled ...
    during_block: int
    #: ... and of those, how many we sent after the block had begun (the rest were in flight).
    sent_into_block: int

    @property
    def ratio(self) -> float:
        if self.theoretical_minimum <= 0:
            return math.nan
        return self.wall_time / self.theoretical_minimum

    @property
    def span_ratio(self) -> float:
        if self.theoretical_minimum <= 0:
            return math.nan
        return self.server_span / self.theoretical_minimum


def theoretical_minimum(
    per_account: list[int], policy: RateLimitPolicy = DEFAULT_RATE_LIMITS
) -> float:
    """Seconds from the first close's arrival to the last one's, at the budgets' full rate.

    Each close goes at the earliest moment every budget it draws on allows, answers being
    instant: the account budgets and the shared IP budgets together (10 accounts of 40
    closes need 11 s, not the 10 s the IP budget alone would allow).
    """
    spec = policy._for_endpoint(CLOSE_POSITION)
    shared: list[tuple[Budget, deque[float]]] = []
    if spec.ip_group is not None:
        group = policy.ip_groups[spec.ip_group]
        shared = [(budget, deque()) for budget in (*group.per_endpoint, *group.total)]
    accounts = [
        (count, [(budget, deque[float]()) for budget in spec.per_account]) for count in per_account
    ]
    remaining = list(per_account)

    def earliest(budgets: list[tuple[Budget, deque[float]]]) -> float:
        return max(
            (
                sent[-budget.limit] + budget.window
                for budget, sent in budgets
                if len(sent) >= budget.limit
            ),
            default=0.0,
        )

    last = 0.0
    while any(remaining):
        at, index = min(
            (max(earliest(own), earliest(shared)), index)
            for index, (_, own) in enumerate(accounts)
            if remaining[index]
        )
        for _, sent in (*accounts[index][1], *shared):
            sent.append(at)
        remaining[index] -= 1
        last = at
    return last


async def run_demo(
    *,
    positions: int = 50,
    accounts: int = 1,
    arrival_jitter: float = 0.03,
    window: str = "rolling",
    seed: int | None = None,
    disabled_period: float = 3.0,
    clock: Clock | None = None,
    retry: RetryPolicy | None = None,
    exchange_rate_limits: RateLimitPolicy = DEFAULT_RATE_LIMITS,
    on_progress: Callable[[CloseProgress], object] | None = None,
) -> DemoReport:
    """Seed ``positions`` over ``accounts`` in a simulator served on 127.0.0.1, then close
    them all at once through real clients over HTTP.

    ``exchange_rate_limits`` are the budgets the simulator enforces; set them below the
    client's to see how the client recovers when BingX lowers a limit.
    """
    if window not in ("rolling", "fixed"):
        raise ValueError("window must be 'rolling' or 'fixed'")
    clock = clock if clock is not None else SystemClock()
    sim = FakeBingX(
        clock=clock,
        arrival_jitter=arrival_jitter,
        seed=seed,
        window="fixed" if window == "fixed" else "rolling",
        disabled_period=disabled_period,
        rate_limits=exchange_rate_limits,
    )
    sim_accounts = [sim.add_account() for _ in range(accounts)]
    plan: list[list[str]] = [[] for _ in sim_accounts]
    for n in range(positions):
        index = n % accounts
        plan[index].append(sim.add_position(sim_accounts[index]).position_id)

    done = 0

    def progress(update: CloseProgress) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(CloseProgress(update.position_id, update.outcome, done, positions))

    sent_at: list[float] = []

    async def record_send(request: httpx.Request) -> None:
        if request.url.path == _CLOSE_PATH:
            sent_at.append(clock.monotonic())

    async with sim.serve() as base_url:
        pools = [httpx.AsyncClient(event_hooks={"request": [record_send]}) for _ in sim_accounts]
        clients = [
            BingXClient(
                api_key=account.api_key,
                secret_key=account.secret_key,
                base_url=base_url,
                clock=clock,
                retry=retry if retry is not None else RetryPolicy(),
                http_client=pool,
            )
            for account, pool in zip(sim_accounts, pools, strict=True)
        ]
        try:
            # Warm the clock offset first, so the timing below measures closing only.
            await asyncio.gather(*(client.server_time() for client in clients))
            started = clock.monotonic()
            outcomes = await asyncio.gather(
                *(
                    client.close_positions(ids, on_progress=progress)
                    for client, ids in zip(clients, plan, strict=True)
                )
            )
            wall_time = clock.monotonic() - started
        finally:
            for client in clients:
                await client.aclose()
            for pool in pools:
                await pool.aclose()

    flat = [outcome for per_client in outcomes for outcome in per_client]
    closes = sim.requests_to(_CLOSE_PATH)
    closed = sum(isinstance(outcome, ClosePositionResult) for outcome in flat)
    blocks = [
        (request.arrived_at, request.arrived_at + disabled_period)
        for request in closes
        if request.code in RATE_LIMIT_CODES and not request.during_block
    ]
    return DemoReport(
        positions=positions,
        accounts=accounts,
        closed=closed,
        failed=len(flat) - closed,
        sends=len(closes),
        rejected=sum(request.code in RATE_LIMIT_CODES for request in closes),
        retries=len(closes) - positions,
        wall_time=wall_time,
        server_span=(
            max(r.arrived_at for r in closes) - min(r.arrived_at for r in closes) if closes else 0.0
        ),
        theoretical_minimum=theoretical_minimum([len(ids) for ids in plan]),
        arrival_jitter=arrival_jitter,
        window=window,
        during_block=sum(request.during_block for request in closes),
        sent_into_block=sum(any(start <= at < end for start, end in blocks) for at in sent_at),
    )
