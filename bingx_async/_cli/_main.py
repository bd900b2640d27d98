"""The ``bingx-async`` command (also ``python -m bingx_async``).

Exit codes: 0 success; 1 other failure (network, server); 2 bad input; 3 authentication or
missing credentials; 4 rate limited or banned; 5 partial failure (some closes failed).
Nothing secret is ever printed: errors are one line, without tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from . import __version__
from ._client import BingXClient, CloseProgress
from ._config import DEMO_BASE_URL, ENV_API_KEY, ENV_SECRET_KEY, RetryPolicy
from ._exceptions import (
    AuthenticationError,
    BingXError,
    ConfigurationError,
    InvalidArgumentError,
    PermissionDeniedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    RateLimitError,
    TransportError,
)
from ._models import ClosePositionResult, Position
from ._params import validate_position_id
from ._redis import ENV_SHARED_LIMITS, check_redis_url

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_AUTH = 3
EXIT_RATE_LIMITED = 4
EXIT_PARTIAL = 5


def _exit_code(error: BaseException) -> int:
    if isinstance(error, InvalidArgumentError):
        return EXIT_BAD_INPUT
    if isinstance(error, ConfigurationError | AuthenticationError | PermissionDeniedError):
        return EXIT_AUTH
    if isinstance(error, RateLimitError):
        return EXIT_RATE_LIMITED
    return EXIT_FAILURE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bingx-async",
        description="Close BingX perpetual-futures positions fast, without rate-limit bans.",
        epilog="Credentials come from BINGX_API_KEY and BINGX_SECRET_KEY.",
    )
    parser.add_argument("--version", action="version", version=f"bingx-async {__version__}")
    # -v and --json go before or after the command: the command's own copies default to
    # "not given", so that they never undo the ones given before it.
    anywhere = argparse.ArgumentParser(add_help=False)
    for options, default in ((parser, False), (anywhere, argparse.SUPPRESS)):
        options.add_argument(
            "-v", "--verbose", action="store_true", default=default, help="log requests to stderr"
        )
        options.add_argument("--json", action="store_true", default=default, help="print JSON")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        help="a Redis URL to share limits through (default: $BINGX_SHARED_LIMITS)",
    )

    def real(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[anywhere], help=help_text)
        sub.add_argument(
            "--demo-trading", action="store_true", help=f"use the VST host ({DEMO_BASE_URL})"
        )
        sub.add_argument("--base-url", default=None, help="override the API host")
        sub.add_argument("--retries", type=int, default=3, help="attempts per request, at most (3)")
        sub.add_argument(
            "--shared-limits",
            metavar="URL",
            default=None,
            help="share rate limits with other processes through this Redis "
            "(default: $BINGX_SHARED_LIMITS)",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    with _logging(verbose=args.verbose):
        try:
            if args.command == "demo":
                return asyncio.run(_demo(args))
            return asyncio.run(_real(args))
        except BingXError as error:
            _fail(str(error))
            return _exit_code(error)
        except KeyboardInterrupt:
            _fail("interrupted")
            return 130


@contextlib.contextmanager
def _logging(*, verbose: bool) -> Iterator[None]:
    """With ``-v``, log the library and httpx to stderr; restore everything afterwards."""
    if not verbose:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    loggers = [logging.getLogger("bingx_async"), logging.getLogger("httpx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if logger.name == "bingx_async" else logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _fail(message: str) -> None:
    print(f"bingx-async: error: {message}", file=sys.stderr)


# --- demo -----------------------------------------------------------------------------------


class _ProgressBar:
    """Progress on ``stream``: a line redrawn in place on a terminal, else a plain line every
    ten outcomes and at the end."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.interactive = stream.isatty()
        self.failed = 0
        self.done = 0

    def __call__(self, update: CloseProgress) -> None:
        if not isinstance(update.outcome, ClosePositionResult):
            self.failed += 1
        self.done = update.done
        if self.interactive:
            self._draw()
            if update.done == self.total:
                self.stream.write("\n")
        elif update.done % 10 == 0 or update.done == self.total:
            self.stream.write(f"closed {update.done}/{self.total}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take the live line away (before something else is printed on the terminal)."""
        if self.interactive and 0 < self.done < self.total:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // self.total
        self.stream.write(
            f"\rclosing [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total}  failed {self.failed}"
        )


async def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.processes != 1:
        return await _demo_processes(args)
    if args.positions < 1 or args.accounts < 1 or args.accounts > args.positions:
        raise InvalidArgumentError("need --positions >= 1 and 1 <= --accounts <= --positions")
    if not 0 <= args.jitter <= 1:
        raise InvalidArgumentError("--jitter must be between 0 and 1 second")
    print(
        f"Simulated BingX on 127.0.0.1 (strict rolling windows, 0-{args.jitter * 1000:.0f} ms "
        f"network jitter): closing {args.positions} positions over {args.accounts} "
        f"account(s) at once, 5 closes/s per account.",
        file=sys.stderr,
    )
    report = await run_demo(
        positions=args.positions,
        accounts=args.accounts,
        arrival_jitter=args.jitter,
        seed=args.seed,
        on_progress=None if args.json else _ProgressBar(args.positions, sys.stderr),
    )
    if args.json:
        print(json.dumps({**asdict(report), "ratio": report.ratio}, indent=2))
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
    if not 0 <= args.jitter <= 1:
        raise InvalidArgumentError("--jitter must be between 0 and 1 second")
    url = args.shared_limits or os.environ.get(ENV_SHARED_LIMITS) or None
    _check_shared_limits(url)
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
    if args.json:
        print(json.dumps([{**asdict(r), "span_ratio": r.span_ratio} for r in reports], indent=2))
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


# --- the real API ---------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> BingXClient:
    if args.retries < 1:
        raise InvalidArgumentError("--retries must be at least 1")
    base_url = args.base_url or (DEMO_BASE_URL if args.demo_trading else None)
    signed = args.command != "server-time"
    missing = [name for name in (ENV_API_KEY, ENV_SECRET_KEY) if not os.environ.get(name)]
    if signed and missing:
        raise ConfigurationError(
            f"{args.command} needs an API key pair: set {' and '.join(missing)} in the environment"
        )
    shared = args.shared_limits
    _check_shared_limits(shared)
    return BingXClient(
        base_url=base_url, retry=RetryPolicy(attempts=args.retries), shared_limits=shared
    )


def _check_shared_limits(url: str | None) -> None:
    """A Redis URL given on the command line or in the environment is bad input if unusable."""
    if url is not None:
        try:
            check_redis_url(url, f"--shared-limits (or {ENV_SHARED_LIMITS})")
        except ConfigurationError as error:
            raise InvalidArgumentError(error.message) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal | datetime):
        return str(value) if isinstance(value, Decimal) else value.isoformat()
    return value


def _outcome_json(position_id: str, outcome: ClosePositionResult | BingXError) -> dict[str, Any]:
    if isinstance(outcome, ClosePositionResult):
        return {
            "position_id": outcome.position_id,
            "status": "closed",
            "order_id": outcome.order_id,
            "symbol": outcome.symbol,
            "quantity": _jsonable(outcome.orig_qty),
        }
    status = (
        "possibly_closed"
        if isinstance(outcome, PositionPossiblyClosedError)
        else "not_found"
        if isinstance(outcome, PositionNotFoundError)
        else "error"
    )
    return {
        "position_id": position_id,
        "status": status,
        "error": type(outcome).__name__,
        "code": outcome.code,
        "message": str(outcome),
    }


async def _real(args: argparse.Namespace) -> int:
    if args.command == "close":
        return await (_dry_run(args) if args.dry_run else _close(args))
    if args.command == "close-all":
        return await _close_all(args)
    async with _client(args) as client:
        if args.command == "positions":
            listed = await client.get_positions(args.symbol)
            _print_positions(listed, as_json=args.json)
        else:
            now = await client.server_time()
            millis = int(now.timestamp() * 1000)
            print(
                json.dumps({"server_time_ms": millis, "iso": now.isoformat()})
                if args.json
                else f"{now.isoformat()} ({millis})"
            )
    return EXIT_OK


async def _close(args: argparse.Namespace) -> int:
    ids = [validate_position_id(raw) for raw in args.position_ids]
    report = _CloseReport(ids, as_json=args.json)
    async with _client(args) as client:
        try:
            await client.close_positions(ids, on_progress=report.add)
        except asyncio.CancelledError:  # Ctrl+C: asyncio.run cancels us, then raises it
            report.interrupted()
            raise
    return report.finish()


async def _dry_run(args: argparse.Namespace) -> int:
    """What ``close`` would do: which IDs are open, with symbol, side and size."""
    ids = [validate_position_id(raw) for raw in args.position_ids]
    async with _client(args) as client:
        open_now = {p.position_id: p for p in await client.get_positions()}
    rows = [
        {
            "position_id": position_id,
            "open": position_id in open_now,
            **(
                {
                    "symbol": open_now[position_id].symbol,
                    "position_side": open_now[position_id].position_side,
                    "position_amt": _jsonable(open_now[position_id].position_amt),
                }
                if position_id in open_now
                else {}
            ),
        }
        for position_id in ids
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    for row in rows if not args.json else []:
        if row["open"]:
            print(
                f"{row['position_id']}  would close: {row['symbol']} {row['position_side']} "
                f"amount {row['position_amt']}"
            )
        else:
            print(f"{row['position_id']}  not open: nothing to close")
    return EXIT_OK


async def _close_all(args: argparse.Namespace) -> int:
    """Close every open position (of ``--symbol``), after asking unless ``--yes``."""
    which = f"every open {args.symbol} position" if args.symbol else "every open position"
    if not args.yes:
        if not sys.stdin.isatty():
            raise InvalidArgumentError(f"close-all closes {which}: confirm with --yes")
        answer = await asyncio.to_thread(input, f"Close {which} at market? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing closed", file=sys.stderr)
            return EXIT_OK
    async with _client(args) as client:
        result = await client.close_all_positions(args.symbol)
    if args.json:
        print(json.dumps({"order_ids": result.order_ids, "failed": result.failed}, indent=2))
    else:
        print(f"closing orders placed: {len(result.order_ids)}")
        for order_id in result.order_ids:
            print(f"  order {order_id}")
        for failed in result.failed:
            print(f"  failed: {failed}")
    return EXIT_PARTIAL if result.failed else EXIT_OK


class _CloseReport:
    """Prints each close's outcome as it finishes, so that an interrupted run has already
    said what was closed. A cause every ID shares (no credentials, host unreachable) is
    said once, as the command's error."""

    def __init__(self, ids: list[str], *, as_json: bool) -> None:
        self.ids = ids
        self.as_json = as_json
        #: Progress on stderr when there are several IDs: live on a terminal.
        self.progress = _ProgressBar(len(ids), sys.stderr) if len(ids) > 1 else None
        self.outcomes: dict[str, ClosePositionResult | BingXError] = {}
        #: Lines held back while every outcome so far might be one shared cause.
        self.held: list[dict[str, Any]] = []
        self.printed = False

    def add(self, update: CloseProgress) -> None:
        position_id = str(update.position_id)
        self.outcomes[position_id] = update.outcome
        if self.as_json:
            if self.progress is not None:
                self.progress(update)
            return
        row = _outcome_json(position_id, update.outcome)
        if not self.printed and self._same_cause(update.outcome):
            self.held.append(row)
        else:
            if self.progress is not None:
                self.progress.clear()
            self._flush()
            _print_close_row(row)
            self.printed = True
        if self.progress is not None:
            self.progress(update)

    def interrupted(self) -> None:
        if self.progress is not None:
            self.progress.clear()
        missing = [pid for pid in self.ids if pid not in self.outcomes]
        if self.as_json:
            rows = [self._row(pid) for pid in self.ids]
            print(json.dumps(rows, indent=2), flush=True)
        else:
            self._flush()
        if missing:
            _fail(
                f"interrupted: no outcome yet for {len(missing)} of {len(self.ids)} "
                f"position(s), which may or may not have been closed: {' '.join(missing)}"
            )

    def finish(self) -> int:
        outcomes = [self.outcomes[pid] for pid in self.ids]
        if self.held and not self.printed:
            first = outcomes[0]
            assert isinstance(first, BingXError)
            raise first  # one cause for every ID: say it once
        if self.as_json:
            print(json.dumps([self._row(pid) for pid in self.ids], indent=2))
        self._flush()
        # A position "possibly closed" by an earlier attempt is gone: not a failure to report.
        errors = [
            o
            for o in outcomes
            if isinstance(o, BingXError) and not isinstance(o, PositionPossiblyClosedError)
        ]
        if not errors:
            return EXIT_OK
        if len(errors) < len(outcomes):
            return EXIT_PARTIAL
        codes = {_exit_code(error) for error in errors}
        return codes.pop() if len(codes) == 1 else EXIT_FAILURE

    def _same_cause(self, outcome: ClosePositionResult | BingXError) -> bool:
        if not isinstance(outcome, ConfigurationError | TransportError):
            return False
        if not self.held:
            return True
        first = self.outcomes[self.held[0]["position_id"]]
        return type(outcome) is type(first) and str(outcome) == str(first)

    def _flush(self) -> None:
        held, self.held = self.held, []
        for row in held:
            _print_close_row(row)
            self.printed = True

    def _row(self, position_id: str) -> dict[str, Any]:
        outcome = self.outcomes.get(position_id)
        if outcome is None:
            return {
                "position_id": position_id,
                "status": "unknown",
                "message": "interrupted before its outcome was known",
            }
        return _outcome_json(position_id, outcome)


def _print_close_row(row: dict[str, Any]) -> None:
    detail = f"order {row['order_id']}" if row["status"] == "closed" else row["message"]
    print(f"{row['position_id']}  {row['status']:<16} {detail}", flush=True)


def _print_positions(positions: list[Position], *, as_json: bool) -> None:
    if as_json:
        rows = [
            {name: _jsonable(value) for name, value in asdict(p).items() if name != "data"}
            for p in positions
        ]
        print(json.dumps(rows, indent=2))
        return
    if not positions:
        print("no open positions")
    for p in positions:
        print(
            f"{p.position_id}  {p.symbol or '?':<14} {p.position_side or '?':<6} "
            f"amount {p.position_amt}  entry {p.avg_price}  pnl {p.unrealized_profit}"
        )
