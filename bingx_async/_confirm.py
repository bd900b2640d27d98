"""Finding out whether a close whose answer was lost closed the position.

A close can end without a known outcome: a 504 "unknown status", a connection dropped after
sending. Closing again by ID is safe, but a second request is not needed to find out, and a
"no position" answer to it would count towards BingX's error-rate ban. So before retrying,
BingX's own records are asked, within the same rate-limit budgets:

1. the position history (``GET /openApi/swap/v1/trade/positionHistory``), when the
   position's symbol is known (BingX requires it): a closed entry for the position's ID
   confirms the close, with its close time and price;
2. all open positions (never only those of one symbol): a position still listed is still
   open, and the close is retried;
3. a position in neither is gone, but nothing says how: ``PositionPossiblyClosedError``,
   with what was checked.

A symbol the caller gave is only a hint for the history, which needs one: a wrong symbol
finds no history entry, and the unfiltered list still finds the position open. When BingX
lists the position under another symbol, that is logged as a warning and noted in what was
checked; the symbol BingX gave is the one used.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ._endpoints import HISTORY, LIST_POSITIONS, Endpoint
from ._exceptions import BingXError, PositionNotFoundError, PositionPossiblyClosedError
from ._models import ClosedPosition, ClosePositionResult
from ._signing import Params

__all__ = ["CloseConfirmation", "SymbolBook", "confirm_close"]

logger = logging.getLogger("bingx_async")

#: A closed history entry counts as this close's if it closed no earlier than this before the
#: call began (clocks and BingX's bookkeeping differ by a little).
_SLACK = timedelta(seconds=60)

#: A read through the close's own pipeline, budgets and deadline.
Lookup = Callable[[Endpoint, Params], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class CloseConfirmation:
    """How one close is confirmed: made by the client, asked by the pipeline once the wait
    after an attempt whose outcome is unknown is over.

    ``symbol`` is the one the caller gave (if any); ``account`` is whose positions the
    session's :class:`SymbolBook` is asked about.
    """

    position_id: str
    symbol: str | None
    account: str | None

    async def confirm(
        self, unknown: BingXError, lookup: Lookup, *, symbols: SymbolBook, began: float
    ) -> ClosePositionResult | None:
        """The close's result if BingX's records show it, ``None`` to retry the close;
        raises what the close ends with when the position is gone (see :func:`confirm_close`).

        ``began`` is BingX's time (epoch seconds) when the close began.
        """
        return await confirm_close(
            lookup,
            position_id=self.position_id,
            symbol=self.symbol,
            seen_symbol=symbols.get(self.account, self.position_id),
            since=datetime.fromtimestamp(began, UTC),
            unknown=unknown,
        )


async def confirm_close(
    lookup: Lookup,
    *,
    position_id: str,
    symbol: str | None,
    since: datetime,
    unknown: BingXError,
    seen_symbol: str | None = None,
) -> ClosePositionResult | None:
    """The confirmed result, or ``None`` when the position is still open (or nothing could
    be learned): retry the close. Raises when the position is gone without a trace.

    ``symbol`` is the one the caller gave, ``seen_symbol`` the one BingX listed the position
    under earlier (if any): that one is asked for the history, as the more reliable.
    """
    checked: list[str] = []
    if symbol is not None and seen_symbol is not None and symbol != seen_symbol:
        checked.append(_mismatch(position_id, symbol, seen_symbol))
    symbol = seen_symbol or symbol
    if symbol is not None:
        confirmed = await _in_history(lookup, position_id, symbol, since, checked)
        if confirmed is not None:
            return confirmed
    if await _maybe_open(lookup, position_id, symbol, checked):
        return None
    if symbol is None:
        checked.append("position history: not asked, the position's symbol is not known")
    raise PositionPossiblyClosedError(
        f"position {position_id} is no longer open after a close whose outcome was unknown "
        f"({type(unknown).__name__}); that close most likely closed it. Checked: "
        + "; ".join(checked),
        earlier_error=unknown,
        checked=tuple(checked),
        endpoint=unknown.endpoint,
        may_have_executed=True,
    )


async def _in_history(
    lookup: Lookup, position_id: str, symbol: str, since: datetime, checked: list[str]
) -> ClosePositionResult | None:
    """Step 1: the close's result if the position history has a closed entry for it since
    the close began. An entry closed before then means the position was gone already."""
    try:
        data = await lookup(HISTORY, {"symbol": symbol, "positionId": position_id})
    except BingXError as error:
        checked.append(f"position history of {symbol}: {type(error).__name__}")
        return None
    entry = _closed_entry(data, position_id)
    if entry is None:
        checked.append(f"position history of {symbol}: no closed entry for {position_id}")
        return None
    if entry.close_time is None or entry.close_time >= since - _SLACK:
        return entry.as_close_result()
    raise PositionNotFoundError(
        f"position {position_id} was already closed at "
        f"{entry.close_time.isoformat()}, before this close (position history)",
        endpoint=HISTORY.name,
        may_have_executed=False,
    )


async def _maybe_open(
    lookup: Lookup, position_id: str, symbol: str | None, checked: list[str]
) -> bool:
    """Step 2: whether the position may still be open: listed among every open position
    (of any symbol: the caller's may be wrong), or the list could not be had."""
    try:
        listed = await lookup(LIST_POSITIONS, {})
    except BingXError as error:
        checked.append(f"open positions: {type(error).__name__}")
        return True
    for item in _items(listed):
        if _field(item, "positionId") == position_id:
            listed_symbol = _field(item, "symbol")
            if symbol is not None and listed_symbol and listed_symbol != symbol:
                _mismatch(position_id, symbol, listed_symbol)
            return True
    checked.append(f"all open positions: {position_id} is not among them")
    return False


def _mismatch(position_id: str, given: str, listed: str) -> str:
    """Warn that the caller's symbol is not the position's; what to note as checked."""
    note = (
        f"symbol {given} was given, but BingX lists position {position_id} under {listed}; "
        f"{listed} is used"
    )
    logger.warning("closePosition: %s", note)
    return note


def _items(data: Any) -> list[Any]:
    """The entries of a list answer: a list, or ``{"positionHistory": [...]}``."""
    if isinstance(data, Mapping):
        data = data.get("positionHistory")
    return data if isinstance(data, list) else []


def _field(item: Any, name: str) -> str | None:
    value = item.get(name) if isinstance(item, Mapping) else None
    return None if value is None else str(value).strip()


def _closed_entry(data: Any, position_id: str) -> ClosedPosition | None:
    for item in _items(data):
        entry = ClosedPosition._from_data(item) if isinstance(item, Mapping) else None
        if entry is not None and entry.position_id == position_id and entry.closed:
            return entry
    return None


class SymbolBook:
    """Which symbol each position of each account is in, as far as this session has seen
    (open-position lists, close answers, and symbols callers named). Bounded: the oldest
    entries are forgotten first."""

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._symbols: OrderedDict[Hashable, str] = OrderedDict()

    def note(self, account: str | None, position_id: str, symbol: str) -> None:
        key = (account, position_id)
        self._symbols[key] = symbol
        self._symbols.move_to_end(key)
        while len(self._symbols) > self._limit:
            self._symbols.popitem(last=False)

    def get(self, account: str | None, position_id: str) -> str | None:
        return self._symbols.get((account, position_id))
