"""Close many positions at once and report each outcome.

    BINGX_API_KEY=... BINGX_SECRET_KEY=... python close_many.py ID [ID ...]

Exits with 0 when every position is closed (or was most likely closed by an earlier attempt
whose outcome was unknown), and 1 otherwise.
"""

from __future__ import annotations

import asyncio
import sys

from bingx_async import (
    BingXClient,
    BingXError,
    ClosePositionResult,
    CloseProgress,
    PositionNotFoundError,
    PositionPossiblyClosedError,
)


def show_progress(update: CloseProgress) -> None:
    """Called by close_positions as each close finishes, in completion order."""
    status = "ok" if isinstance(update.outcome, ClosePositionResult) else "failed"
    print(f"[{update.done}/{update.total}] {update.position_id}: {status}", file=sys.stderr)


def describe(outcome: ClosePositionResult | BingXError) -> tuple[bool, str]:
    """Whether the position is gone, and a one-line description."""
    if isinstance(outcome, ClosePositionResult):
        return True, f"closed by order {outcome.order_id} ({outcome.symbol} {outcome.orig_qty})"
    if isinstance(outcome, PositionPossiblyClosedError):
        # An earlier attempt timed out or got a 5xx; the retry found no position.
        return True, "most likely closed by an earlier attempt; check the order history"
    if isinstance(outcome, PositionNotFoundError):
        return False, "no such open position"
    if outcome.may_have_executed:
        return False, f"outcome unknown, check before acting again: {outcome}"
    return False, f"not closed: {outcome}"


async def main(position_ids: list[str]) -> int:
    async with BingXClient() as client:
        outcomes = await client.close_positions(position_ids, on_progress=show_progress)
    all_gone = True
    # Outcomes come back in the order of the IDs passed in.
    for position_id, outcome in zip(position_ids, outcomes, strict=True):
        gone, text = describe(outcome)
        all_gone = all_gone and gone
        print(f"{position_id}  {text}")
    return 0 if all_gone else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
