"""How FakeBingX fills a close: the market order that closes a whole position at its fill price,
with the profit it realises and the taker fee it pays."""

from __future__ import annotations

from decimal import Decimal

from ._records import SimOrder, SimPosition

__all__ = [
    "DEFAULT_TAKER_FEE_RATE",
    "fill",
    "filled_value",
    "initial_margin",
    "money",
    "unrealized_profit",
]

#: BingX's standard taker fee for USDT-M perpetual futures: 0.05 % of the filled value.
DEFAULT_TAKER_FEE_RATE = "0.0005"


def money(value: Decimal) -> str:
    """An amount of USDT as BingX writes profits and fees: four decimals, never ``-0.0000``."""
    text = f"{value:.4f}"
    return text.removeprefix("-") if Decimal(text) == 0 else text


def unrealized_profit(position: SimPosition) -> Decimal:
    """What closing ``position`` at its fill price would realise."""
    mark = Decimal(position.fill_price)
    entry = Decimal(position.avg_price)
    quantity = Decimal(position.quantity)
    if position.position_side == "SHORT":
        return (entry - mark) * quantity
    return (mark - entry) * quantity


def initial_margin(position: SimPosition) -> Decimal:
    """The margin ``position`` holds: its entry value over its leverage."""
    return Decimal(position.quantity) * Decimal(position.avg_price) / position.leverage


def fill(position: SimPosition, *, order_id: str, time_ms: int, fee_rate: Decimal) -> SimOrder:
    """The order that closes all of ``position`` at its fill price, at ``time_ms``."""
    price = Decimal(position.fill_price)
    quantity = Decimal(position.quantity)
    short = position.position_side == "SHORT"
    return SimOrder(
        order_id=order_id,
        position_id=position.position_id,
        symbol=position.symbol,
        side="BUY" if short else "SELL",
        position_side=position.position_side,
        quantity=position.quantity,
        avg_price=position.fill_price,
        realized_profit=money(unrealized_profit(position)),
        commission=money(-(price * quantity * fee_rate)),
        time_ms=time_ms,
    )


def filled_value(order: SimOrder) -> str:
    """The USDT value ``order`` filled: price times quantity."""
    return money(Decimal(order.avg_price) * Decimal(order.quantity))
