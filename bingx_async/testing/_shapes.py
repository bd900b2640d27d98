"""The JSON shapes FakeBingX's REST endpoints answer with: open positions, closed positions,
and orders (as a close answers one, and as the order query shows it)."""

from __future__ import annotations

from decimal import Decimal

from ._fills import filled_value, initial_margin, money, unrealized_profit
from ._records import SimOrder, SimPosition

__all__ = ["closing_order_json", "history_json", "order_json", "position_json"]

_CLOSE_POSITION_SIDES = {"LONG": "Long", "SHORT": "Short", "BOTH": "BOTH"}


def closing_order_json(order: SimOrder) -> dict[str, object]:
    """``data`` of closePosition's answer: ``orderId`` an unquoted number, as BingX sends it."""
    return {
        "orderId": int(order.order_id),
        "positionId": order.position_id,
        "symbol": order.symbol,
        "side": "Bid" if order.side == "BUY" else "Ask",
        "type": "MARKET",
        "positionSide": _CLOSE_POSITION_SIDES[order.position_side],
        "origQty": order.quantity,
    }


def order_json(order: SimOrder) -> dict[str, object]:
    """One order as ``GET /openApi/swap/v2/trade/order`` shows it (inside ``data.order``)."""
    return {
        "symbol": order.symbol,
        "orderId": int(order.order_id),
        "side": order.side,
        "positionSide": order.position_side,
        "type": "MARKET",
        "origQty": order.quantity,
        "price": "0",
        "executedQty": order.quantity,
        "avgPrice": order.avg_price,
        "cumQuote": filled_value(order),
        "stopPrice": "",
        "profit": order.realized_profit,
        "commission": order.commission,
        "status": order.status,
        "time": order.time_ms,
        "updateTime": order.time_ms,
        "clientOrderId": "",
        "workingType": "MARK_PRICE",
    }


def history_json(position: SimPosition, order: SimOrder, opened_ms: int) -> dict[str, object]:
    """A closed position as the position history lists it, closed by ``order``."""
    profit = Decimal(order.realized_profit)
    return {
        "positionId": position.position_id,
        "symbol": position.symbol,
        "isolated": position.isolated,
        "positionSide": position.position_side,
        "openTime": opened_ms,
        "updateTime": order.time_ms,
        "avgPrice": position.avg_price,
        "avgClosePrice": float(Decimal(order.avg_price)),
        "realisedProfit": order.realized_profit,
        "netProfit": money(profit + Decimal(order.commission)),
        "positionAmt": position.quantity,
        "closePositionAmt": position.quantity,
        "leverage": position.leverage,
        "closeAllPositions": True,
        "positionCommission": order.commission,
        "totalFunding": "0.0000",
        "closeTime": order.time_ms,
    }


def position_json(position: SimPosition, now_ms: int) -> dict[str, object]:
    """An open position as ``GET /openApi/swap/v2/user/positions`` lists it."""
    price = Decimal(position.avg_price)
    direction = -1 if position.position_side == "SHORT" else 1
    liquidation = price * (1 - Decimal(direction) / position.leverage)
    return {
        "positionId": position.position_id,
        "symbol": position.symbol,
        "currency": "USDT",
        "positionSide": position.position_side,
        "isolated": position.isolated,
        "positionAmt": position.quantity,
        "availableAmt": position.quantity,
        "avgPrice": position.avg_price,
        "unrealizedProfit": money(unrealized_profit(position)),
        "realisedProfit": "0.0000",
        "initialMargin": f"{initial_margin(position):.4f}",
        "leverage": position.leverage,
        "liquidationPrice": float(liquidation),
        "markPrice": position.fill_price,
        "updateTime": now_ms,
    }
