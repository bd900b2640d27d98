"""``bingx-async demo``: the demos, with their input checked and their summary printed."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from bingx_async._exceptions import InvalidArgumentError

from ._connect import check_shared_limits_url, shared_limits_url
from ._exits import EXIT_OK, EXIT_PARTIAL
from ._output import ProgressBar

__all__ = ["demo"]


def _check_jitter(args: argparse.Namespace) -> None:
    if not 0 <= args.jitter <= 1:
        raise InvalidArgumentError("--jitter must be between 0 and 1 second")


async def demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.processes != 1:
        return await _demo_processes(args)
    if args.positions < 1 or args.accounts < 1 or args.accounts > args.positions:
        raise InvalidArgumentError("need --positions >= 1 and 1 <= --accounts <= --positions")
    _check_jitter(args)
    print(
        f"Simulated BingX on 127.0.0.1 (strict rolling windows, 0-{args.jitter * 1000:.0f} ms "
        f"network jitter): closing {args.positions} positions over {args.accounts} "
        f"account(s) at once, 5 closes/s per account.",
        file=sys.stderr,
    )
    as_json = args.json or args.jsonl
    report = await run_demo(
        positions=args.positions,
        accounts=args.accounts,
        arrival_jitter=args.jitter,
        seed=args.seed,
        on_progress=None if as_json else ProgressBar(args.positions, sys.stderr),
    )
    if as_json:
        summary = {**asdict(report), "ratio": report.ratio}
        print(json.dumps(summary) if args.jsonl else json.dumps(summary, indent=2))
    else:
        print(
            f"closed:                    {report.closed}/{report.positions}\n"
            f"rejected by the exchange:  {report.rejected}\n"
            f"retries:                   {report.retries}\n"
            f"requests sent:             {report.sends}\n"
            f"wall time:                 {report.wall_time:.2f} s\n"
            f"theoretical minimum:       {report.theoretical_minimum:.2f} s "
            f"(ratio {report.ratio:.3f})"
        )
    return EXIT_OK if report.closed == report.positions and report.rejected == 0 else EXIT_PARTIAL


async def _demo_processes(args: argparse.Namespace) -> int:
    from ._demo_processes import run_processes_demo

    if not 2 <= args.processes <= 32:
        raise InvalidArgumentError("--processes must be between 1 and 32")
    if args.positions < args.processes:
        raise InvalidArgumentError("need at least one position per process (--positions)")
    if args.accounts != 1:
        raise InvalidArgumentError("--processes runs on one account: leave --accounts out")
    _check_jitter(args)
    url = shared_limits_url(args)
    if url is not None:
        check_shared_limits_url(url)
    print(
        f"Simulated BingX on 127.0.0.1 (strict rolling windows, 0-{args.jitter * 1000:.0f} ms "
        f"network jitter): {args.processes} processes closing {args.positions} positions of "
        "one account at once, 5 closes/s per account.",
        file=sys.stderr,
    )
    reports = []
    for shared in [None, url] if url is not None else [None]:
        reports.append(
            await run_processes_demo(
                processes=args.processes,
                positions=args.positions,
                shared_limits=shared,
                arrival_jitter=args.jitter,
                seed=args.seed,
            )
        )
    if args.json or args.jsonl:
        rows = [{**asdict(r), "span_ratio": r.span_ratio} for r in reports]
        if args.jsonl:
            for row in rows:
                print(json.dumps(row))
        else:
            print(json.dumps(rows, indent=2))
    else:
        print(f"{'limits':<22}{'closed':>9}{'rejected':>10}{'span':>9}{'minimum':>9}{'ratio':>7}")
        for report in reports:
            name = "shared through Redis" if report.shared else "each process its own"
            print(
                f"{name:<22}{report.closed:>5}/{report.positions:<3}{report.rejected:>10}"
                f"{report.server_span:>8.2f}s{report.theoretical_minimum:>8.2f}s"
                f"{report.span_ratio:>7.2f}"
            )
        if url is None:
            print("(give --shared-limits redis://HOST:6379/0 to see them share one budget)")
    last = reports[-1]
    fine = last.closed == last.positions and (last.rejected == 0 or not last.shared)
    return EXIT_OK if fine else EXIT_PARTIAL
