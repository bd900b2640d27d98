"""N gathered closes over real HTTP against the strict, jittered simulator on 127.0.0.1.

Prints sends, rate-limit rejections, the span of arrivals at the server, wall time, and each
over the theoretical minimum. Targets: N = 50 on one account, 0 rejections and a server-side
span within 1.05 x the minimum; 10 accounts x 40, within 1.10 x.

    python benchmarks/close_burst.py --positions 50 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio

from bingx_async._cli._demo import DemoReport, run_demo


def _print(report: DemoReport, run: int) -> None:
    print(
        f"run {run}: positions={report.positions} accounts={report.accounts} "
        f"window={report.window} jitter=0-{report.arrival_jitter * 1000:.0f}ms | "
        f"sends={report.sends} rejections={report.rejected} closed={report.closed} "
        f"server span={report.server_span:.3f}s wall={report.wall_time:.3f}s "
        f"minimum={report.theoretical_minimum:.3f}s span ratio={report.span_ratio:.4f} "
        f"wall ratio={report.ratio:.4f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=50)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--jitter", type=float, default=0.03)
    parser.add_argument("--window", choices=["rolling", "fixed"], default="rolling")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    for run in range(1, args.runs + 1):
        report = await run_demo(
            positions=args.positions,
            accounts=args.accounts,
            arrival_jitter=args.jitter,
            window=args.window,
            seed=run,
        )
        _print(report, run)


if __name__ == "__main__":
    asyncio.run(main())
