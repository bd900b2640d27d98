"""What the account stream delivers, and how one frame of it is read.

BingX sends each event as compact JSON in a gzip-compressed binary frame, and the text
``Ping`` to be answered with ``Pong``. :func:`parse_frame` turns one frame into a
:class:`Ping`, a :class:`ListenKeyExpired` (both for the connection, never delivered), or one
of the events a bot sees:

- :class:`OrderUpdate` (``ORDER_TRADE_UPDATE``),
- :class:`AccountUpdate` (``ACCOUNT_UPDATE``),
- :class:`OtherEvent` for any other type (``ACCOUNT_CONFIG_UPDATE`` ...).

The stream itself adds two markers of a gap, after which events may be missing:
:class:`StreamReconnected` and :class:`EventsDropped`.

Amounts are ``Decimal`` whether BingX sends them as strings or as JSON numbers (never through
``float``); IDs are strings with every digit of 64-bit numbers. A frame that cannot be read
raises :class:`MalformedFrameError`.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from bingx_async._decode import parse_body
from bingx_async._exceptions import BingXError
from bingx_async._models import _as_bool, _as_datetime_ms, _as_decimal, _as_id, _as_str
from bingx_async._redact import redact

__all__ = [
    "FINAL_STATUSES",
    "MAX_FRAME",
    "AccountUpdate",
    "BalanceChange",
    "EventsDropped",
    "ListenKeyExpired",
    "MalformedFrameError",
    "OrderUpdate",
    "OtherEvent",
    "Ping",
    "PositionChange",
    "StreamEvent",
    "StreamReconnected",
    "WireEvent",
    "parse_frame",
]

#: The most a frame may hold once inflated (BingX's events are a few hundred bytes).
MAX_FRAME = 1024 * 1024
#: Order statuses after which nothing more happens to the order.
FINAL_STATUSES = frozenset({"FILLED", "CANCELED", "CANCELLED", "EXPIRED", "REJECTED"})
#: How much of an unreadable frame its error quotes.
_EXCERPT = 200
_GZIP_MAGIC = b"\x1f\x8b"


class MalformedFrameError(BingXError):
    """A frame of the account stream could not be read: not gzip or text, not JSON, not an
    event, or an event without what it must carry. ``excerpt`` quotes its start (listen keys
    redacted). The stream logs such a frame and goes on without it."""

    def __init__(self, message: str, *, excerpt: str) -> None:
        super().__init__(message)
        self.excerpt = excerpt


@dataclass(frozen=True, slots=True)
class Ping:
    """The server's ``Ping``: answer ``Pong``."""


@dataclass(frozen=True, slots=True)
class ListenKeyExpired:
    """``listenKeyExpired``: the stream ends; a new key is needed."""

    event_time: datetime | None


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """``ORDER_TRADE_UPDATE``: an order was accepted, filled (partly or fully), cancelled or
    expired.

    ``status`` and ``execution_type`` are as BingX sends them (``FILLED``, ``TRADE`` ...);
    amounts are ``None`` when BingX left them out or sent something that is no number.
    ``time`` is when it happened, ``event_time`` when BingX sent it; ``raw`` is the event as
    decoded.
    """

    order_id: str
    symbol: str | None
    client_order_id: str | None
    side: str | None
    order_type: str | None
    status: str | None
    execution_type: str | None
    quantity: Decimal | None
    price: Decimal | None
    avg_price: Decimal | None
    filled_quantity: Decimal | None
    realized_profit: Decimal | None
    fee: Decimal | None
    fee_asset: str | None
    position_side: str | None
    reduce_only: bool | None
    time: datetime | None
    event_time: datetime | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def is_final(self) -> bool:
        """Whether the order has ended (filled, cancelled, expired or rejected); what was
        filled of it is ``filled_quantity``."""
        return self.status is not None and self.status.upper() in FINAL_STATUSES


@dataclass(frozen=True, slots=True)
class BalanceChange:
    """One asset's balance in an [`AccountUpdate`][bingx_async.AccountUpdate]."""

    asset: str | None
    wallet_balance: Decimal | None
    cross_wallet_balance: Decimal | None
    balance_change: Decimal | None


@dataclass(frozen=True, slots=True)
class PositionChange:
    """One position in an [`AccountUpdate`][bingx_async.AccountUpdate]. BingX sends no position ID
    here."""

    symbol: str | None
    position_side: str | None
    amount: Decimal | None
    entry_price: Decimal | None
    unrealized_profit: Decimal | None
    realized_profit: Decimal | None
    margin_mode: str | None
    isolated_wallet: Decimal | None


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """``ACCOUNT_UPDATE``: balances and positions changed, for ``reason`` (``ORDER``,
    ``FUNDING_FEE`` ...)."""

    reason: str | None
    balances: tuple[BalanceChange, ...]
    positions: tuple[PositionChange, ...]
    time: datetime | None
    event_time: datetime | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Any other event, by its type name (``ACCOUNT_CONFIG_UPDATE`` ...), as decoded."""

    type: str
    event_time: datetime | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class StreamReconnected:
    """The stream was cut (``reason``) at ``disconnected_at`` and listens again since
    ``reconnected_at``: events made in between may never arrive. Check what matters over
    REST (open positions, the order query).

    ``attempts`` is how many connections were tried; ``new_listen_key`` whether the stream
    listens with another listen key than before.
    """

    reason: str
    disconnected_at: datetime
    reconnected_at: datetime
    attempts: int
    new_listen_key: bool


@dataclass(frozen=True, slots=True)
class EventsDropped:
    """This subscriber fell behind: its ``count`` oldest events waiting to be read were
    dropped, the first at ``since``. The events after this marker are complete again."""

    count: int
    since: datetime


#: What the stream reads from BingX.
WireEvent = OrderUpdate | AccountUpdate | OtherEvent
StreamEvent = OrderUpdate | AccountUpdate | OtherEvent | StreamReconnected | EventsDropped
"""What a reader of [`account_stream()`][bingx_async.BingXClient.account_stream] receives: the
account's events, and the markers of a gap after which some may be missing."""


def parse_frame(frame: bytes | str) -> WireEvent | Ping | ListenKeyExpired:
    """Read one frame: gzip-compressed binary (what BingX sends), or text."""
    text = frame if isinstance(frame, str) else _inflate(frame)
    if text.strip() == "Ping":
        return Ping()
    body = parse_body(text.encode("utf-8", "surrogatepass"))
    if body is None:
        raise _malformed("the frame is not a JSON object", text)
    kind = _as_str(body.get("e"))
    if not kind:
        raise _malformed("the frame is no event (it has no 'e')", text)
    event_time = _as_datetime_ms(body.get("E"))
    if kind == "ORDER_TRADE_UPDATE":
        return _order_update(body, event_time, text)
    if kind == "ACCOUNT_UPDATE":
        return _account_update(body, event_time, text)
    if kind == "listenKeyExpired":
        return ListenKeyExpired(event_time)
    return OtherEvent(kind, event_time, body)


def _inflate(frame: bytes) -> str:
    if frame[:2] == _GZIP_MAGIC:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            data = inflater.decompress(frame, MAX_FRAME + 1)
        except zlib.error:
            raise _malformed("the frame is not valid gzip", _hex(frame)) from None
        if len(data) > MAX_FRAME:
            raise _malformed(f"the frame inflates to more than {MAX_FRAME} bytes", _hex(frame))
        if not inflater.eof:
            raise _malformed("the frame's gzip data is cut short", _hex(frame))
    else:
        data = frame  # uncompressed: read it as text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("the frame is neither gzip nor UTF-8 text", _hex(frame)) from None


def _order_update(body: Mapping[str, Any], event_time: datetime | None, text: str) -> OrderUpdate:
    order = body.get("o")
    if not isinstance(order, Mapping):
        raise _malformed("ORDER_TRADE_UPDATE without its order ('o')", text)
    order_id = _as_id(order.get("i"))
    if order_id is None:
        raise _malformed("ORDER_TRADE_UPDATE without an order ID ('i')", text)
    client_order_id = _as_str(order.get("C")) or _as_str(order.get("c"))
    return OrderUpdate(
        order_id=order_id,
        symbol=_as_str(order.get("s")),
        client_order_id=client_order_id or None,
        side=_as_str(order.get("S")),
        order_type=_as_str(order.get("o")),
        status=_as_str(order.get("X")),
        execution_type=_as_str(order.get("x")),
        quantity=_as_decimal(order.get("q")),
        price=_as_decimal(order.get("p")),
        avg_price=_as_decimal(order.get("ap")),
        filled_quantity=_as_decimal(order.get("z")),
        realized_profit=_as_decimal(order.get("rp")),
        fee=_as_decimal(order.get("n")),
        fee_asset=_as_str(order.get("N")),
        position_side=_as_str(order.get("ps")),
        reduce_only=_as_bool(order.get("ro")),
        time=_as_datetime_ms(order.get("T")) or _as_datetime_ms(body.get("T")),
        event_time=event_time,
        raw=body,
    )


def _account_update(
    body: Mapping[str, Any], event_time: datetime | None, text: str
) -> AccountUpdate:
    account = body.get("a")
    if not isinstance(account, Mapping):
        raise _malformed("ACCOUNT_UPDATE without its account data ('a')", text)
    balances = tuple(
        BalanceChange(
            asset=_as_str(item.get("a")),
            wallet_balance=_as_decimal(item.get("wb")),
            cross_wallet_balance=_as_decimal(item.get("cw")),
            balance_change=_as_decimal(item.get("bc")),
        )
        for item in _mappings(account.get("B"))
    )
    positions = tuple(
        PositionChange(
            symbol=_as_str(item.get("s")),
            position_side=_as_str(item.get("ps")),
            amount=_as_decimal(item.get("pa")),
            entry_price=_as_decimal(item.get("ep")),
            unrealized_profit=_as_decimal(item.get("up")),
            realized_profit=_as_decimal(item.get("cr")),
            margin_mode=_as_str(item.get("mt")),
            isolated_wallet=_as_decimal(item.get("iw")),
        )
        for item in _mappings(account.get("P"))
    )
    return AccountUpdate(
        reason=_as_str(account.get("m")),
        balances=balances,
        positions=positions,
        time=_as_datetime_ms(body.get("T")),
        event_time=event_time,
        raw=body,
    )


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _malformed(problem: str, text: str) -> MalformedFrameError:
    excerpt = redact(text[:_EXCERPT])
    return MalformedFrameError(f"account stream: {problem}", excerpt=excerpt)


def _hex(frame: bytes) -> str:
    return f"{len(frame)} bytes: {frame[:32].hex()}"
