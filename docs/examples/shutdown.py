"""A bot's emergency exit: stop every task, then close whatever is still open.

    BINGX_API_KEY=... BINGX_SECRET_KEY=... python shutdown.py

The strategy below stands for your bot. On Ctrl+C (or SIGTERM) the handler cancels every
other task, lists the open positions and closes them all, printing each outcome as it comes.
Nothing of the library is lost when the bot's tasks are cancelled: the rate limiter's
wake-ups are not tasks, closes already sent still get their answers, and a close that was
only queued is simply not sent.
"""

from __future__ import annotations

import asyncio
import signal

from bingx_async import BingXClient, BingXSession, ClosePositionResult, CloseProgress


async def strategy(client: BingXClient) -> None:
    """Your bot: here it only watches its positions."""
    while True:
        positions = await client.get_positions()
        print(f"{len(positions)} open position(s)")
        await asyncio.sleep(5)


def report(update: CloseProgress) -> None:
    closed = isinstance(update.outcome, ClosePositionResult)
    print(f"{update.position_id}: {'closed' if closed else update.outcome}", flush=True)


async def close_everything(client: BingXClient) -> list[str]:
    """Close every open position; return the IDs that are not known to be closed."""
    open_ids = [position.position_id for position in await client.get_positions()]
    outcomes = await client.close_positions(open_ids, on_progress=report)
    return [
        position_id
        for position_id, outcome in zip(open_ids, outcomes, strict=True)
        if not isinstance(outcome, ClosePositionResult)
    ]


async def main() -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    async with BingXSession() as session, BingXClient(session=session) as client:
        bot = asyncio.create_task(strategy(client))
        await stop.wait()
        # A shutdown handler may cancel every other task, the library's included.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(bot, *others, return_exceptions=True)
        left = await close_everything(client)
    if left:
        print(f"not confirmed closed: {' '.join(left)}")
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
