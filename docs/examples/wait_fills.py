"""Closes that wait for their fills, and the account stream, on a local simulator.

    python wait_fills.py

FakeBingX serves BingX's REST API and its account stream on 127.0.0.1: no account, no
network. Needs the stream extra (``pip install "bingx-async[stream]"``). It takes about a
second, most of it spent in step 1 (a reconnection) and step 3 (a fill held back).
"""

from __future__ import annotations

import asyncio

from bingx_async import (
    AccountUpdate,
    BingXClient,
    ClosePositionResult,
    EventsDropped,
    Fill,
    OrderUpdate,
    StreamReconnected,
    StreamSettings,
)
from bingx_async.testing import FakeBingX


def describe(fill: Fill | None) -> str:
    if fill is None:
        return "fill not known: look the order up before relying on it"
    return (
        f"{fill.status} {fill.quantity} at {fill.avg_price}, profit {fill.realized_profit}, "
        f"fee {fill.fee} (source: {fill.source})"
    )


async def follow_the_stream(client: BingXClient, sim: FakeBingX, position_id: str) -> None:
    """Read the account's events around one close; the connection is cut once, as a network
    failure would cut it, and what may have been missed is asked of BingX."""
    async with client.account_stream() as events:
        await client.close_position(position_id)
        async for event in events:
            if isinstance(event, OrderUpdate):
                print(f"1. order {event.status}: {event.filled_quantity} at {event.avg_price}")
            elif isinstance(event, AccountUpdate):
                for change in event.positions:
                    print(f"1. position {change.symbol} {change.position_side}: {change.amount}")
                sim.stream.drop_connections()
            elif isinstance(event, StreamReconnected | EventsDropped):
                # Events may have been missed: ask BingX for what matters.
                positions = await client.get_positions()
                print(f"1. {type(event).__name__}: {len(positions)} position(s) open")
                return


async def run(sim: FakeBingX) -> None:
    account = sim.add_account()
    ids = [
        sim.add_position(account, quantity="0.01", mark_price=f"{61000 + 100 * n}.5").position_id
        for n in range(5)
    ]
    async with sim.serve() as base_url, sim.serve_stream() as stream_url:
        client = BingXClient(
            api_key=account.api_key,
            secret_key=account.secret_key,
            base_url=base_url,
            clock=sim.clock,
            # The simulator's stream needs its URL (BingX's hosts need none); a short
            # fill_timeout keeps step 3 short (the default is 5 s).
            stream=StreamSettings(url=stream_url, fill_timeout=0.5),
        )
        async with client:
            # 1. The stream itself: a close, a lost connection, and what to do after it.
            await follow_the_stream(client, sim, ids[0])

            # 2. Closes that wait for their fills: seen on the stream.
            for outcome in await client.close_positions(ids[1:3], wait_fill=True):
                if isinstance(outcome, ClosePositionResult):
                    print(f"2. closed: {describe(outcome.fill)}")
                else:
                    print(f"2. not closed: {outcome}")

            # 3. The stream holds the fill back: after fill_timeout, one order query says it.
            sim.stream.hold_events()
            result = await client.close_position(ids[3], wait_fill=True)
            print(f"3. closed: {describe(result.fill)}")
            sim.stream.release_events()

            # 4. Close all of one symbol: a fill per closing order.
            everything = await client.close_all_positions("BTC-USDT", wait_fill=True)
            for fill in everything.fills.values():
                print(f"4. closed: {describe(fill)}")


if __name__ == "__main__":
    asyncio.run(run(FakeBingX()))
