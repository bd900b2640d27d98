"""Results read leniently: whatever BingX's casing, number formats and gaps, every field is typed
or ``None``, and IDs keep every digit."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from bingx_async import CloseAllResult, ClosePositionResult, Position
from bingx_async._models import ClosedPosition


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1751667128353910784, "1751667128353910784"),
        ("  1751667128353910784 ", "1751667128353910784"),
        (Decimal("123.0"), "123"),
        (Decimal("1E+5"), "100000"),
        (Decimal("1.5"), None),
        (Decimal("1E+70"), None),
        (Decimal("9" * 63), "9" * 63),
        (True, None),
        (None, None),
        ("", None),
    ],
    ids=repr,
)
def test_ids_keep_every_digit_or_are_missing(raw: Any, expected: str | None) -> None:
    """IDs come as strings or JSON numbers; integral ones of sane size are kept exactly."""
    result = ClosePositionResult._from_data({"orderId": raw}, requested_id="7")
    assert result.order_id == expected


def test_the_answer_names_the_position_it_closed() -> None:
    """positionId from the answer wins; the requested ID fills in when it is missing."""
    named = ClosePositionResult._from_data({"positionId": "8"}, requested_id="7")
    unnamed = ClosePositionResult._from_data({"orderId": 1}, requested_id="7")
    assert (named.position_id, unnamed.position_id) == ("8", "7")


def test_a_close_answer_that_is_not_an_object_is_only_the_requested_id() -> None:
    """data as a list: every field None, the raw data an empty mapping."""
    result = ClosePositionResult._from_data([1, 2], requested_id="7")
    assert (result.position_id, result.order_id, result.orig_qty) == ("7", None, None)
    assert result.data == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(True, True), (False, False), ("true", True), ("FALSE", False), ("yes", None), (1, None)],
    ids=repr,
)
def test_booleans_come_as_json_or_as_text(raw: Any, expected: bool | None) -> None:
    """Position.isolated accepts true/false in either form."""
    position = Position._from_data({"positionId": "1", "isolated": raw})
    assert position is not None
    assert position.isolated is expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (0, None),
        (-5, None),
        (1, datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC)),
        ("1700000000000", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (10**20, None),
        ("soon", None),
    ],
    ids=repr,
)
def test_update_times_are_epoch_milliseconds(raw: Any, expected: datetime | None) -> None:
    """updateTime becomes an aware datetime; impossible values become None."""
    position = Position._from_data({"positionId": "1", "updateTime": raw})
    assert position is not None
    assert position.update_time == expected


def test_a_position_keeps_its_raw_data() -> None:
    """Position.data is the entry exactly as decoded."""
    entry = {"positionId": "1", "symbol": "BTC-USDT", "extra": [1, 2]}
    position = Position._from_data(entry)
    assert position is not None
    assert position.data is entry


def test_close_all_reports_orders_and_failures() -> None:
    """success and failed lists become order IDs (as text); odd items are dropped."""
    data = {"success": [1736008778921491200, "17"], "failed": [5, None, "x"]}
    result = CloseAllResult._from_data(data)
    assert result.order_ids == ("1736008778921491200", "17")
    assert result.failed == ("5", "x")
    assert result.data is data


def test_close_all_of_nothing() -> None:
    """data that is not an object: nothing closed, nothing failed."""
    result = CloseAllResult._from_data(None)
    assert (result.order_ids, result.failed, result.data) == ((), (), {})


HISTORY_ENTRY: dict[str, Any] = {
    "positionId": "42",
    "symbol": "ETH-USDT",
    "positionSide": "LONG",
    "closeAllPositions": True,
    "positionAmt": "0.5",
    "closePositionAmt": "0.5",
    "avgClosePrice": Decimal("2500.5"),
    "openTime": 1700000000000,
    "closeTime": 1700000060000,
}


def test_a_history_entry_becomes_a_confirmed_close() -> None:
    """A closed entry reads as the close's result, marked as confirmed from the history."""
    entry = ClosedPosition._from_data(HISTORY_ENTRY)
    assert entry is not None
    assert entry.closed
    result = entry.as_close_result()
    assert result.confirmed_from_history is True
    assert (result.position_id, result.symbol, result.position_side) == ("42", "ETH-USDT", "LONG")
    assert (result.orig_qty, result.avg_close_price) == (Decimal("0.5"), Decimal("2500.5"))
    assert result.close_time == datetime(2023, 11, 14, 22, 14, 20, tzinfo=UTC)
    assert result.order_id is None
    assert result.data is HISTORY_ENTRY


@pytest.mark.parametrize(
    ("fields", "closed"),
    [
        ({"closeAllPositions": False}, False),
        ({"closeAllPositions": None, "closePositionAmt": "0.5"}, True),
        ({"closeAllPositions": None, "closePositionAmt": "0.2"}, False),
        ({"closeAllPositions": None, "closePositionAmt": None}, False),
        ({"closeAllPositions": None, "positionAmt": "0", "closePositionAmt": "0"}, False),
    ],
    ids=repr,
)
def test_a_history_entry_says_whether_the_whole_position_closed(
    fields: dict[str, Any], closed: bool
) -> None:
    """closeAllPositions decides; without it, the closed amount against the position's."""
    entry = ClosedPosition._from_data({**HISTORY_ENTRY, **fields})
    assert entry is not None
    assert entry.closed is closed


def test_a_history_entry_without_an_id_is_nothing() -> None:
    """No positionId: no entry."""
    assert ClosedPosition._from_data({"symbol": "BTC-USDT"}) is None


@pytest.mark.parametrize(("adjusted", "kept"), [(63, True), (64, False)])
def test_numeric_ids_may_have_up_to_64_digits(adjusted: int, kept: bool) -> None:
    """An integral JSON number of 64 digits is an ID; 65 is not."""
    value = Decimal(f"1E+{adjusted}")
    result = ClosePositionResult._from_data({"orderId": value}, requested_id="7")
    assert (result.order_id is not None) is kept


def test_a_history_entry_keeps_both_times_and_falls_back_to_the_position_amount() -> None:
    """openTime is read; without closePositionAmt the result's quantity is the position's."""
    entry = ClosedPosition._from_data({**HISTORY_ENTRY, "closePositionAmt": None})
    assert entry is not None
    assert entry.open_time == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert entry.as_close_result().orig_qty == Decimal("0.5")
