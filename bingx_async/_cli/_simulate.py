"""``bingx-async simulate``: a BingX simulator served on 127.0.0.1 until stopped.

It prints what a shell needs to use it (``export`` lines for the base URL and each
account's keys, then the position IDs), and logs each request it answers on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
from collections.abc import Mapping

from bingx_async._config import ENV_API_KEY, ENV_BASE_URL, ENV_SECRET_KEY
from bingx_async._exceptions import InvalidArgumentError
from bingx_async.testing import FakeBingX, NoAnswer, SimResponse

from ._exits import EXIT_OK

__all__ = ["simulate"]

#: The symbols positions are opened in, in turn.
SYMBOLS = ("BTC-USDT", "ETH-USDT", "SOL-USDT")


class _LoggedBingX(FakeBingX):
    """The simulator, logging one line per request it answered (never its signature)."""

    def __init__(self, *, latency: float, seed: int | None) -> None:
        super().__init__(seed=seed)
        self.latency = latency

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> SimResponse | NoAnswer:
        if self.latency > 0:
            await self.clock.sleep(self.latency)
        answer = await super().handle(method, path, query, headers)
        request = self.requests[-1]
        position_id = request.param("positionId")
        print(
            f"{request.account or '-'} {request.method} {request.path}"
            + (f" positionId={position_id}" if position_id else "")
            + f" -> {request.status_code} code {request.code}",
            file=sys.stderr,
            flush=True,
        )
        return answer


async def simulate(args: argparse.Namespace) -> int:
    if not 1 <= args.accounts <= 100:
        raise InvalidArgumentError("--accounts must be between 1 and 100")
    if not 0 <= args.positions <= 1000:
        raise InvalidArgumentError("--positions must be between 0 and 1000")
    if not 0 <= args.latency <= 60:
        raise InvalidArgumentError("--latency must be between 0 and 60 seconds")
    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError("--port must be between 0 and 65535")
    sim = _LoggedBingX(latency=args.latency, seed=args.seed)
    symbols = itertools.cycle(SYMBOLS)
    accounts = [sim.add_account() for _ in range(args.accounts)]
    for account in accounts:
        for _ in range(args.positions):
            sim.add_position(account, symbol=next(symbols))
    try:
        async with sim.serve(port=args.port) as base_url:
            lines = [
                f"# BingX simulator on {base_url}: {args.accounts} account(s), "
                f"{args.positions} position(s) each. Stop it with Ctrl+C.",
                f"export {ENV_BASE_URL}={base_url}",
            ]
            for number, account in enumerate(accounts, 1):
                ids = [p.position_id for p in sim.positions(account)]
                lines += [
                    f"# account {number} (UID {account.uid}); positions: {' '.join(ids)}",
                    f"export {ENV_API_KEY}={account.api_key}",
                    f"export {ENV_SECRET_KEY}={account.secret_key}",
                ]
            print("\n".join(lines), flush=True)
            await asyncio.Event().wait()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        print("simulator stopped", file=sys.stderr, flush=True)
    return EXIT_OK
