"""The command line's grammar: commands, options and their help."""

from __future__ import annotations

import argparse

from bingx_async import __version__
from bingx_async._config import DEMO_BASE_URL
from bingx_async._redis import ENV_SHARED_LIMITS

__all__ = ["parser"]


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="bingx-async",
        description="Close BingX perpetual-futures positions fast, without rate-limit bans.",
        epilog="Credentials come from BINGX_API_KEY and BINGX_SECRET_KEY. Exit codes: "
        "0 success, 1 failure, 2 bad input, 3 authentication, 4 rate limited, 5 partial, "
        "6 shared limits unusable, 130 SIGINT, 143 SIGTERM.",
    )
    top.add_argument("--version", action="version", version=f"bingx-async {__version__}")
    # -v, --json and --jsonl go before or after the command: the command's own copies
    # default to "not given", so that they never undo the ones given before it.
    anywhere = argparse.ArgumentParser(add_help=False)
    for options, default in ((top, False), (anywhere, argparse.SUPPRESS)):
        options.add_argument(
            "-v", "--verbose", action="store_true", default=default, help="log requests to stderr"
        )
        formats = options.add_mutually_exclusive_group()
        formats.add_argument(
            "--json", action="store_true", default=default, help="print JSON at the end"
        )
        formats.add_argument(
            "--jsonl",
            action="store_true",
            default=default,
            help="print one JSON object per line, each as soon as it is known",
        )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        parents=[anywhere],
        help="close many positions on a local BingX simulator (no account, no network)",
    )
    demo.add_argument("--positions", type=int, default=50, help="positions to close (50)")
    demo.add_argument("--accounts", type=int, default=1, help="accounts to spread them over (1)")
    demo.add_argument(
        "--jitter", type=float, default=0.03, help="max random network delay, seconds (0.03)"
    )
    demo.add_argument("--seed", type=int, default=None, help="seed for the simulator")
    demo.add_argument(
        "--processes",
        type=int,
        default=1,
        help="close from this many processes on one account, each limiting itself, then "
        "sharing limits if --shared-limits is given (1)",
    )
    demo.add_argument(
        "--shared-limits",
        metavar="URL",
        default=None,
        help=f"a Redis URL to share limits through (default: ${ENV_SHARED_LIMITS})",
    )

    simulate = commands.add_parser(
        "simulate",
        help="serve a BingX simulator on 127.0.0.1 to try the commands on, until stopped",
    )
    simulate.add_argument("--accounts", type=int, default=1, help="accounts (1)")
    simulate.add_argument("--positions", type=int, default=5, help="open positions each (5)")
    simulate.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    simulate.add_argument(
        "--latency", type=float, default=0.0, help="seconds each answer is delayed (0)"
    )
    simulate.add_argument("--seed", type=int, default=None, help="seed for keys and IDs")

    def real(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[anywhere], help=help_text)
        sub.add_argument(
            "--demo-trading", action="store_true", help=f"use the VST host ({DEMO_BASE_URL})"
        )
        sub.add_argument(
            "--base-url", default=None, help="the API host (default: $BINGX_BASE_URL or BingX)"
        )
        sub.add_argument("--retries", type=int, default=3, help="attempts per request, at most (3)")
        sub.add_argument(
            "--shared-limits",
            metavar="URL",
            default=None,
            help="share rate limits with other processes through this Redis "
            f"(default: ${ENV_SHARED_LIMITS})",
        )
        sub.add_argument(
            "--on-outage",
            choices=("fail", "local"),
            default="fail",
            help="when the shared limits' Redis cannot be used: stop with exit code 6 "
            "(fail, the default) or go on under in-process limits cut to a quarter (local)",
        )
        return sub

    close = real("close", "close positions by ID at market")
    close.add_argument("position_ids", nargs="+", metavar="ID", help="position IDs")
    close.add_argument(
        "--dry-run",
        action="store_true",
        help="only show which of the IDs are open (symbol, side, size); close nothing",
    )
    close_all = real("close-all", "close every open position at market (of one symbol)")
    close_all.add_argument("--symbol", default=None, help="only this symbol, e.g. BTC-USDT")
    close_all.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    positions = real("positions", "list open positions")
    positions.add_argument("--symbol", default=None, help="only this symbol, e.g. BTC-USDT")
    real("server-time", "print BingX's clock")
    return top
