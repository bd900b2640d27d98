"""Typed results. Parsing is lenient: BingX's casing and field sets vary between responses."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

__all__ = ["CloseAllResult", "ClosePositionResult", "ClosedPosition", "Fill", "Position"]

#: Order statuses after which an order fills no more.
FINAL_STATUSES = frozenset({"FILLED", "CANCELED", "CANCELLED", "EXPIRED", "REJECTED"})


def _lookup(data: Mapping[str, Any], name: str) -> Any:
    """``data[name]``, tolerating a different case (``orderId`` / ``orderID`` / ``OrderId``)."""
    if name in data:
        return data[name]
    lowered = name.lower()
    for key, value in data.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return None


def _as_id(value: Any) -> str | None:
    """IDs arrive as strings or as JSON numbers above 2**53: keep every digit."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        # Integral and of a sane size (int() of 1E+5000 would exceed Python's digit limit).
        if value.is_finite() and value == value.to_integral_value() and value.adjusted() < 64:
            return str(int(value))
        return None
    text = str(value).strip()
    return text or None


def _as_str(value: Any) -> str | None:
    if type(value) is str:
        return value  # the usual case, without the (slow) check against Mapping
    if value is None or isinstance(value, Mapping | list):
        return None
    return str(value)


def _as_decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool):  # str(True) is no number either, but say it plainly
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    # "NaN"/"Infinity" are no amounts (and would crash int() or comparisons downstream).
    return number if number.is_finite() else None


def _as_int(value: Any) -> int | None:
    number = _as_decimal(value)
    if number is None or number != number.to_integral_value():
        return None
    return int(number)


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _as_datetime_ms(value: Any) -> datetime | None:
    millis = _as_int(value)
    if millis is None or millis <= 0:
        return None
    try:
        return datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Fill:
    """What a closing order filled, as BingX reported it once the order was done.

    ``status`` is the order's final status (``FILLED``; a ``CANCELED`` or ``EXPIRED`` order
    filled ``quantity``, possibly less than asked). ``avg_price`` and ``quantity`` are exact
    (BingX's decimals); ``realized_profit`` and ``fee`` are as BingX reports them (a fee paid
    is negative), ``None`` when it left them out, like ``fee_asset`` (the order query does
    not name it). ``time`` is when the order was last updated. ``source`` says where it
    came from: ``"stream"`` (the account stream's ``ORDER_TRADE_UPDATE``) or ``"rest"`` (the
    order query, when the stream did not show it in time).
    """

    order_id: str
    status: str
    avg_price: Decimal
    quantity: Decimal
    realized_profit: Decimal | None
    fee: Decimal | None
    fee_asset: str | None
    time: datetime | None
    source: Literal["stream", "rest"]

    @classmethod
    def _from_order(cls, data: Any, *, order_id: str) -> Fill | None:
        """The fill in an order query's answer (``data.order``, or ``data`` itself), or
        ``None`` unless the order is done and says what it filled."""
        fields: Any = data if isinstance(data, Mapping) else {}
        inner = _lookup(fields, "order")
        if isinstance(inner, Mapping):
            fields = inner
        status = (_as_str(_lookup(fields, "status")) or "").upper()
        avg_price = _as_decimal(_lookup(fields, "avgPrice"))
        quantity = _as_decimal(_lookup(fields, "executedQty"))
        found_id = _as_id(_lookup(fields, "orderId"))
        if (
            status not in FINAL_STATUSES
            or avg_price is None
            or quantity is None
            or (found_id is not None and found_id != order_id)
        ):
            return None
        return cls(
            order_id=order_id,
            status=status,
            avg_price=avg_price,
            quantity=quantity,
            realized_profit=_as_decimal(_lookup(fields, "profit")),
            fee=_as_decimal(_lookup(fields, "commission")),
            fee_asset=None,
            time=_as_datetime_ms(_lookup(fields, "updateTime")),
            source="rest",
        )


@dataclass(frozen=True, slots=True)
class ClosePositionResult:
    """What BingX answered to a successful close: the market order that closes the position.

    Every field but ``position_id`` is ``None`` when BingX left it out; ``data`` is the raw
    ``data`` object exactly as decoded (large integers intact).

    When the close's answer was lost (a 504, a connection dropped after sending) and BingX's
    position history then showed the position closed, ``confirmed_from_history`` is ``True``,
    ``close_time`` and ``avg_close_price`` come from the history, ``order_id`` is ``None``
    and ``data`` is the history entry.

    ``fill`` is filled in only by closes made with ``wait_fill=True``.
    """

    position_id: str
    order_id: str | None
    symbol: str | None
    side: str | None
    type: str | None
    position_side: str | None
    orig_qty: Decimal | None
    data: Mapping[str, Any] = field(repr=False, compare=False)
    confirmed_from_history: bool = False
    close_time: datetime | None = None
    avg_close_price: Decimal | None = None
    #: With ``wait_fill=True``: what the closing order filled, or ``None`` when that is not
    #: known (not seen on the stream in time, and not answered by the order query).
    fill: Fill | None = None

    @classmethod
    def _from_data(cls, data: Any, *, requested_id: str) -> ClosePositionResult:
        fields: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
        return cls(
            position_id=_as_id(_lookup(fields, "positionId")) or requested_id,
            order_id=_as_id(_lookup(fields, "orderId")),
            symbol=_as_str(_lookup(fields, "symbol")),
            side=_as_str(_lookup(fields, "side")),
            type=_as_str(_lookup(fields, "type")),
            position_side=_as_str(_lookup(fields, "positionSide")),
            orig_qty=_as_decimal(_lookup(fields, "origQty")),
            data=fields,
        )


@dataclass(frozen=True, slots=True)
class ClosedPosition:
    """One entry of BingX's position history (``GET /openApi/swap/v1/trade/positionHistory``).

    ``fully_closed`` is BingX's ``closeAllPositions``.
    """

    position_id: str
    symbol: str | None
    position_side: str | None
    fully_closed: bool | None
    position_amt: Decimal | None
    close_position_amt: Decimal | None
    avg_close_price: Decimal | None
    open_time: datetime | None
    close_time: datetime | None
    data: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from_data(cls, data: Mapping[str, Any]) -> ClosedPosition | None:
        """An entry, or ``None`` when it carries no position ID."""
        position_id = _as_id(_lookup(data, "positionId"))
        if position_id is None:
            return None
        return cls(
            position_id=position_id,
            symbol=_as_str(_lookup(data, "symbol")),
            position_side=_as_str(_lookup(data, "positionSide")),
            fully_closed=_as_bool(_lookup(data, "closeAllPositions")),
            position_amt=_as_decimal(_lookup(data, "positionAmt")),
            close_position_amt=_as_decimal(_lookup(data, "closePositionAmt")),
            avg_close_price=_as_decimal(_lookup(data, "avgClosePrice")),
            open_time=_as_datetime_ms(_lookup(data, "openTime")),
            close_time=_as_datetime_ms(_lookup(data, "closeTime")),
            data=data,
        )

    @property
    def closed(self) -> bool:
        """Whether the whole position was closed."""
        if self.fully_closed is not None:
            return self.fully_closed
        amount, closed = self.position_amt, self.close_position_amt
        return amount is not None and closed is not None and abs(closed) >= abs(amount) > 0

    def as_close_result(self) -> ClosePositionResult:
        """This entry as the result of the close it records."""
        return ClosePositionResult(
            position_id=self.position_id,
            order_id=None,
            symbol=self.symbol,
            side=None,
            type=None,
            position_side=self.position_side,
            orig_qty=self.close_position_amt or self.position_amt,
            data=self.data,
            confirmed_from_history=True,
            close_time=self.close_time,
            avg_close_price=self.avg_close_price,
        )


@dataclass(frozen=True, slots=True)
class Position:
    """An open position, as listed by ``GET /openApi/swap/v2/user/positions``."""

    position_id: str
    symbol: str | None
    position_side: str | None
    isolated: bool | None
    position_amt: Decimal | None
    available_amt: Decimal | None
    avg_price: Decimal | None
    mark_price: Decimal | None
    unrealized_profit: Decimal | None
    realised_profit: Decimal | None
    leverage: int | None
    liquidation_price: Decimal | None
    update_time: datetime | None
    data: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def _from_data(cls, data: Mapping[str, Any]) -> Position | None:
        """A position, or ``None`` when the entry carries no position ID."""
        position_id = _as_id(_lookup(data, "positionId"))
        if position_id is None:
            return None
        return cls(
            position_id=position_id,
            symbol=_as_str(_lookup(data, "symbol")),
            position_side=_as_str(_lookup(data, "positionSide")),
            isolated=_as_bool(_lookup(data, "isolated")),
            position_amt=_as_decimal(_lookup(data, "positionAmt")),
            available_amt=_as_decimal(_lookup(data, "availableAmt")),
            avg_price=_as_decimal(_lookup(data, "avgPrice")),
            mark_price=_as_decimal(_lookup(data, "markPrice")),
            unrealized_profit=_as_decimal(_lookup(data, "unrealizedProfit")),
            realised_profit=_as_decimal(_lookup(data, "realisedProfit")),
            leverage=_as_int(_lookup(data, "leverage")),
            liquidation_price=_as_decimal(_lookup(data, "liquidationPrice")),
            update_time=_as_datetime_ms(_lookup(data, "updateTime")),
            data=data,
        )


@dataclass(frozen=True, slots=True)
class CloseAllResult:
    """What BingX answered to "close all positions": the closing orders it placed.

    ``order_ids`` are the market orders placed (not position IDs); ``failed`` lists whatever
    BingX reported as failed, as strings (its shape is not documented).
    """

    order_ids: tuple[str, ...]
    failed: tuple[str, ...]
    data: Mapping[str, Any] = field(repr=False, compare=False)
    #: With ``wait_fill=True``: each order ID's fill, ``None`` where it is not known.
    fills: Mapping[str, Fill | None] = field(default_factory=dict)

    @classmethod
    def _from_data(cls, data: Any) -> CloseAllResult:
        fields: Mapping[str, Any] = data if isinstance(data, Mapping) else {}

        def ids(value: Any) -> tuple[str, ...]:
            items = value if isinstance(value, list) else []
            return tuple(text for text in (_as_id(item) for item in items) if text is not None)

        return cls(
            order_ids=ids(_lookup(fields, "success")),
            failed=ids(_lookup(fields, "failed")),
            data=fields,
        )
