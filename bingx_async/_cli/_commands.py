"""The commands that talk to BingX: close, close-all, positions, server-time."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from dataclasses import asdict
from typing import Any

from bingx_async._exceptions import InvalidArgumentError
from bingx_async._models import Position
from bingx_async._params import validate_position_id

from ._connect import connect
from ._exits import EXIT_OK, EXIT_PARTIAL
from ._output import jsonable, print_json
from ._report import CloseReport, Mode

__all__ = [
    "MAX_POSITION_ID",
    "close",
    "close_all",
    "confirm_close_all",
    "list_positions",
    "mode",
    "parse_ids",
    "positions",
    "server_time",
]

#: BingX's IDs are positive 64-bit integers.
MAX_POSITION_ID = 2**63 - 1


def mode(args: argparse.Namespace) -> Mode:
    if args.jsonl:
        return "jsonl"
    return "json" if args.json else "text"


def _print(value: Any, args: argparse.Namespace) -> None:
    print_json(value, lines=bool(args.jsonl))


def parse_ids(raw: list[str]) -> list[str]:
    """The IDs in canonical form, each once, in the order given; refused (before anything
    is sent) unless each is a positive integer that fits BingX's 64 bits."""
    ids: dict[str, None] = {}
    for text in raw:
        position_id = validate_position_id(text)
        if int(position_id) > MAX_POSITION_ID:
            raise InvalidArgumentError(
                f"position ID {text!r} is beyond BingX's range (at most {MAX_POSITION_ID})"
            )
        ids[position_id] = None
    return list(ids)


async def close(args: argparse.Namespace) -> int:
    """List the open positions once, then close those of the IDs that are open."""
    ids = parse_ids(args.position_ids)
    async with connect(args) as connected:
        report = CloseReport(ids, mode=mode(args), sent=connected.sent)
        try:
            open_now = {p.position_id: p for p in await connected.client.get_positions()}
            if args.dry_run:
                _print_dry_run(ids, open_now, args)
                return EXIT_OK
            for position_id in ids:
                if position_id not in open_now:
                    report.not_open(position_id)
            to_close = [position_id for position_id in ids if position_id in open_now]
            report.expect(len(to_close))
            if to_close:
                await connected.client.close_positions(to_close, on_progress=report.add)
        except asyncio.CancelledError:
            report.interrupted()
            raise
    return report.finish()


def _print_dry_run(ids: list[str], open_now: dict[str, Position], args: argparse.Namespace) -> None:
    rows = []
    for position_id in ids:
        found = open_now.get(position_id)
        rows.append(
            {
                "position_id": position_id,
                "open": found is not None,
                "symbol": found.symbol if found else None,
                "position_side": found.position_side if found else None,
                "position_amt": jsonable(found.position_amt) if found else None,
            }
        )
    if args.json or args.jsonl:
        for row in rows if args.jsonl else []:
            _print(row, args)
        if args.json:
            _print(rows, args)
        return
    for row in rows:
        if row["open"]:
            print(
                f"{row['position_id']}  would close: {row['symbol']} {row['position_side']} "
                f"amount {row['position_amt']}"
            )
        else:
            print(f"{row['position_id']}  not open: nothing to close")


async def list_positions(args: argparse.Namespace) -> list[Position]:
    """The open positions (of ``--symbol``)."""
    async with connect(args) as connected:
        return await connected.client.get_positions(args.symbol)


def confirm_close_all(args: argparse.Namespace, listed: list[Position]) -> bool:
    """Ask on the terminal whether to close ``listed``. Ctrl+C raises KeyboardInterrupt,
    end of input (Ctrl+D) EOFError: both stop the command."""
    by_symbol = Counter(p.symbol or "?" for p in listed)
    what = ", ".join(f"{count} {symbol}" for symbol, count in sorted(by_symbol.items()))
    plural = "s" if len(listed) != 1 else ""
    sys.stderr.write(f"Close {len(listed)} open position{plural} at market ({what})? [y/N] ")
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        sys.stderr.write("\n")
        raise EOFError
    return answer.strip().lower() in ("y", "yes")


async def close_all(args: argparse.Namespace) -> int:
    """Close every open position (of ``--symbol``) with BingX's "close all", in one request."""
    async with connect(args) as connected:
        result = await connected.client.close_all_positions(args.symbol)
    if args.json or args.jsonl:
        _print({"order_ids": list(result.order_ids), "failed": list(result.failed)}, args)
    else:
        print(f"closing orders placed: {len(result.order_ids)}")
        for order_id in result.order_ids:
            print(f"  order {order_id}")
        for failed in result.failed:
            print(f"  failed: {failed}")
    return EXIT_PARTIAL if result.failed else EXIT_OK


async def positions(args: argparse.Namespace) -> int:
    listed = await list_positions(args)
    if args.json or args.jsonl:
        rows = [
            {name: jsonable(value) for name, value in asdict(p).items() if name != "data"}
            for p in listed
        ]
        if args.jsonl:
            for row in rows:
                _print(row, args)
        else:
            _print(rows, args)
        return EXIT_OK
    if not listed:
        print("no open positions")
    for p in listed:
        print(
            f"{p.position_id}  {p.symbol or '?':<14} {p.position_side or '?':<6} "
            f"amount {p.position_amt}  entry {p.avg_price}  pnl {p.unrealized_profit}"
        )
    return EXIT_OK


async def server_time(args: argparse.Namespace) -> int:
    async with connect(args) as connected:
        now = await connected.client.server_time()
    millis = int(now.timestamp() * 1000)
    if args.json or args.jsonl:
        _print({"server_time_ms": millis, "iso": now.isoformat()}, args)
    else:
        print(f"{now.isoformat()} ({millis})")
    return EXIT_OK
