"""The account stream's events as BingX pushes them (its swap WebSocket documentation), and the
frames they travel in: compact JSON, gzip-compressed.

Decimals are strings and IDs and times are numbers, as BingX sends them: ``i`` (the order ID)
is the same unquoted 64-bit number closePosition answers with.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from typing import Literal

from ._endpoints import WalletChange
from ._fills import filled_value
from ._records import SimOrder, SimPosition
from ._wire import encode

__all__ = ["account_update", "frame", "listen_key_expired", "order_trade_update"]

OrderStatus = Literal["NEW", "FILLED"]


def order_trade_update(order: SimOrder, status: OrderStatus, *, event_ms: int) -> dict[str, object]:
    """``ORDER_TRADE_UPDATE`` for a closing market order: accepted (``NEW``) or filled."""
    filled = status == "FILLED"
    return {
        "e": "ORDER_TRADE_UPDATE",
        "E": event_ms,
        "T": order.time_ms,
        "o": {
            "s": order.symbol,
            "c": "",
            "C": "",
            "i": int(order.order_id),
            "S": order.side,
            "o": "MARKET",
            "q": order.quantity,
            "p": "0",
            "sp": "0",
            "ap": order.avg_price if filled else "0",
            "x": "TRADE" if filled else "NEW",
            "X": status,
            "l": order.quantity if filled else "0",
            "L": order.avg_price if filled else "0",
            "z": order.quantity if filled else "0",
            "Z": filled_value(order) if filled else "0",
            "n": order.commission if filled else "0",
            "N": "USDT",
            "rp": order.realized_profit if filled else "0",
            "T": order.time_ms,
            "ps": order.position_side,
            "ro": True,
            "wt": "MARK_PRICE",
        },
    }


def account_update(
    position: SimPosition, order: SimOrder, wallet: WalletChange, *, event_ms: int
) -> dict[str, object]:
    """``ACCOUNT_UPDATE`` after ``order`` closed ``position``: the new USDT balance and the
    position, now empty (positions carry no position ID here)."""
    return {
        "e": "ACCOUNT_UPDATE",
        "E": event_ms,
        "T": order.time_ms,
        "a": {
            "m": "ORDER",
            "B": [
                {
                    "a": "USDT",
                    "wb": wallet.balance,
                    "cw": wallet.cross_balance,
                    "bc": wallet.change,
                }
            ],
            "P": [
                {
                    "s": position.symbol,
                    "pa": "0",
                    "ep": "0",
                    "up": "0",
                    "mt": "isolated" if position.isolated else "cross",
                    "iw": "0",
                    "ps": position.position_side,
                    "cr": order.realized_profit,
                }
            ],
        },
    }


def listen_key_expired(listen_key: str, *, event_ms: int) -> dict[str, object]:
    """``listenKeyExpired``: the stream ends; a new key is needed."""
    return {"e": "listenKeyExpired", "E": event_ms, "listenKey": listen_key}


def frame(event: Mapping[str, object] | str) -> bytes:
    """What goes on the wire: an event's compact JSON (or a text such as ``Ping``), gzipped."""
    text = event.encode() if isinstance(event, str) else encode(event)
    return gzip.compress(text, mtime=0)
