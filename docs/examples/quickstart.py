import asyncio
import sys

from bingx_async import BingXClient


async def main(position_id: str) -> None:
    async with BingXClient() as client:  # keys from BINGX_API_KEY and BINGX_SECRET_KEY
        result = await client.close_position(position_id)
    print(f"closed position {result.position_id} with market order {result.order_id}")


asyncio.run(main(sys.argv[1]))
