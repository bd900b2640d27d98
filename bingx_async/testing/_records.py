"""What FakeBingX holds and shows to tests: accounts, open positions, the orders that closed
them, and recorded requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._faults import Fault
from ._wire import last_value

__all__ = ["OrderSide", "PositionSide", "RecordedRequest", "SimAccount", "SimOrder", "SimPosition"]

PositionSide = Literal["LONG", "SHORT", "BOTH"]
OrderSide = Literal["BUY", "SELL"]


@dataclass(frozen=True, slots=True)
class SimAccount:
    """An API key pair and the account (UID) it belongs to."""

    api_key: str
    secret_key: str = field(repr=False)
    uid: str


@dataclass(frozen=True, slots=True)
class SimPosition:
    """An open position held by the simulator. Decimals are strings, as BingX sends them.

    ``mark_price`` is the price the position is marked and closed at (``avg_price``, the entry
    price, when ``None``); see [`fill_price`][bingx_async.testing.SimPosition.fill_price].
    """

    position_id: str
    symbol: str
    position_side: PositionSide
    quantity: str
    avg_price: str = "60000.0"
    leverage: int = 10
    isolated: bool = True
    mark_price: str | None = None

    @property
    def fill_price(self) -> str:
        """The price a market close of this position fills at."""
        return self.mark_price if self.mark_price is not None else self.avg_price


@dataclass(frozen=True, slots=True)
class SimOrder:
    """The market order that closed a position, filled in full at the position's
    [`fill_price`][bingx_async.testing.SimPosition.fill_price].

    ``order_id`` is the ``orderId`` the close answered (as a string); ``side`` closes the
    position (``"SELL"`` for a long); ``realized_profit`` is ``(fill - entry) * quantity``
    (the other way round for a short); ``commission`` is the taker fee as BingX reports it, a
    negative amount; ``time_ms`` is the fill time on the server's clock.
    """

    order_id: str
    position_id: str
    symbol: str
    side: OrderSide
    position_side: PositionSide
    quantity: str
    avg_price: str
    realized_profit: str
    commission: str
    time_ms: int
    status: str = "FILLED"


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator saw it, and what it answered.

    ``params`` are the decoded query pairs in the order received (``signature`` included);
    ``headers`` have lower-cased names; ``arrived_at`` is ``clock.monotonic()`` at arrival
    (after any jitter); ``status_code`` and ``code`` are ``None`` when there was no HTTP
    answer or no JSON code; ``account`` is the UID the API key belongs to, if known.
    ``during_block`` is true when the request arrived while its endpoint was disabled.
    """

    method: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    arrived_at: float
    status_code: int | None
    code: int | None
    msg: str | None
    account: str | None
    during_block: bool = False
    fault: Fault | None = None

    def param(self, name: str) -> str | None:
        """The last value received for query parameter ``name``."""
        return last_value(self.params, name)

    @property
    def reached_exchange(self) -> bool:
        """False when an injected fault stopped the request before the exchange saw it."""
        return self.fault is None or self.fault.reaches_exchange
