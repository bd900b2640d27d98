"""Recovery when BingX enforces less than the client expects.

The simulator allows only ``--exchange-rate`` closes per second per account (the client
believes 5) and disables the endpoint for 3 s after any violation. Prints how many requests
reached BingX during a block, and how many of those were sent after it had begun (target: 0;
the others were already in flight).

    python benchmarks/recovery.py --positions 50 --exchange-rate 4
"""

from __future__ import annotations

import argparse
import asyncio

from bingx_async import DEFAULT_RATE_LIMITS, Budget, RetryPolicy
from bingx_async._budgets import CLOSE_POSITION
from bingx_async._cli._demo import run_demo


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=50)
    parser.add_argument("--exchange-rate", type=int, default=4)
    parser.add_argument("--jitter", type=float, default=0.03)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    exchange = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(args.exchange_rate, 1.0),), ip_group=2
    )
    for run in range(1, args.runs + 1):
        report = await run_demo(
            positions=args.positions,
            arrival_jitter=args.jitter,
            seed=run,
            exchange_rate_limits=exchange,
            retry=RetryPolicy(attempts=10, total_timeout=120.0),
        )
        print(
            f"run {run}: exchange allows {args.exchange_rate}/s, client assumes 5/s | "
            f"closed={report.closed}/{report.positions} sends={report.sends} "
            f"rate-limit answers={report.rejected} arrived during blocks={report.during_block} "
            f"of which sent after the block began={report.sent_into_block} "
            f"wall={report.wall_time:.2f}s"
        )


if __name__ == "__main__":
    asyncio.run(main())
