"""The demo with several processes on one account: why limits must be shared.

The simulator is served on 127.0.0.1 by this process; each worker is a process of its own
(started with ``spawn``) with one client. They warm BingX's clock offset, wait for a common
start, then close their positions at once. Every figure is counted at the simulator.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import uuid
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

from bingx_async._client import BingXClient
from bingx_async._codes import RATE_LIMIT_CODES
from bingx_async._config import RetryPolicy
from bingx_async._redis import RedisLimits
from bingx_async._session import BingXSession
from bingx_async.testing import FakeBingX

from ._demo import theoretical_minimum

__all__ = ["ProcessesReport", "run_processes_demo"]

_CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"

#: Seconds the workers may take to start and warm up before the demo gives up on them.
_START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ProcessesReport:
    processes: int
    positions: int
    shared: bool
    closed: int
    #: Answers with a rate-limit code the simulator gave (each one held the account).
    rejected: int
    #: Seconds from the first close the simulator executed to the last.
    server_span: float
    theoretical_minimum: float

    @property
    def span_ratio(self) -> float:
        if self.theoretical_minimum <= 0:
            return math.nan
        return self.server_span / self.theoretical_minimum


async def run_processes_demo(
    *,
    processes: int = 4,
    positions: int = 50,
    shared_limits: str | None = None,
    arrival_jitter: float = 0.03,
    seed: int | None = None,
) -> ProcessesReport:
    """Close ``positions`` of one account from ``processes`` processes at once, each limiting
    itself (``shared_limits=None``) or sharing limits through the Redis at that URL."""
    sim = FakeBingX(arrival_jitter=arrival_jitter, seed=seed)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(positions)]
    plans = [ids[n::processes] for n in range(processes)]
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1, timeout=_START_TIMEOUT)
    prefix = f"bingx_async_demo_{uuid.uuid4().hex[:8]}"
    loop = asyncio.get_running_loop()
    async with sim.serve() as base_url:
        workers = [
            context.Process(
                target=_worker,
                args=(
                    _Job(
                        base_url, account.api_key, account.secret_key, plan, shared_limits, prefix
                    ),
                    ready,
                ),
                daemon=True,
            )
            for plan in plans
        ]
        for worker in workers:
            worker.start()
        try:
            await loop.run_in_executor(None, ready.wait)
            for worker in workers:
                await loop.run_in_executor(None, worker.join)
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.kill()
    closes = sim.requests_to(_CLOSE_PATH)
    executed = [r.arrived_at for r in closes if r.code == 0]
    return ProcessesReport(
        processes=processes,
        positions=positions,
        shared=shared_limits is not None,
        closed=len({r.param("positionId") for r in closes if r.code == 0}),
        rejected=sum(r.code in RATE_LIMIT_CODES for r in closes),
        server_span=max(executed) - min(executed) if executed else 0.0,
        theoretical_minimum=theoretical_minimum([positions]),
    )


@dataclass(frozen=True, slots=True)
class _Job:
    """What one worker process closes, and how it reaches the simulator and Redis."""

    base_url: str
    api_key: str
    secret_key: str
    ids: list[str]
    shared_limits: str | None
    prefix: str


def _worker(job: _Job, ready: Barrier) -> None:
    asyncio.run(_close_all(job, ready))


async def _close_all(job: _Job, ready: Barrier) -> None:
    limits = (
        RedisLimits(job.shared_limits, prefix=job.prefix) if job.shared_limits is not None else None
    )
    # An explicit session: the environment's BINGX_SHARED_LIMITS must not apply here.
    async with (
        BingXSession(shared_limits=limits) as session,
        BingXClient(
            api_key=job.api_key,
            secret_key=job.secret_key,
            base_url=job.base_url,
            session=session,
            retry=RetryPolicy(total_timeout=120.0),
        ) as client,
    ):
        await client.server_time()
        await asyncio.get_running_loop().run_in_executor(None, ready.wait)
        await client.close_positions(job.ids)
