"""Confirming a close whose answer was lost, step by step, against scripted lookups."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bingx_async import (
    BingXClient,
    BingXError,
    ClientClosedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
)
from bingx_async._confirm import SymbolBook, confirm_close
from bingx_async._endpoints import HISTORY, LIST_POSITIONS, Endpoint
from bingx_async.testing import DropConnection, FakeBingX, GatewayTimeout, LoopClock

from .mock_bingx import EPOCH

SINCE = datetime(2026, 1, 1, tzinfo=UTC)
CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
POSITIONS_PATH = "/openApi/swap/v2/user/positions"
UNKNOWN = ServerError("504", status_code=504, endpoint="POST /x", may_have_executed=True)


def entry(position_id: str = "42", *, closed_at: datetime = SINCE, closed: bool = True) -> Any:
    return {
        "positionId": position_id,
        "symbol": "ETH-USDT",
        "closeAllPositions": closed,
        "positionAmt": "1",
        "closePositionAmt": "1",
        "avgClosePrice": "10",
        "closeTime": int(closed_at.timestamp() * 1000),
    }


class Lookups:
    """Answers each endpoint with what it is given (an exception is raised), and records asks."""

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, endpoint: Endpoint, params: Any) -> Any:
        name = "history" if endpoint is HISTORY else "positions"
        assert endpoint in (HISTORY, LIST_POSITIONS)
        self.asked.append((name, dict(params)))
        answer = self.answers[name]
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def confirm(lookups: Lookups, symbol: str | None = "ETH-USDT") -> Any:
    return await confirm_close(
        lookups, position_id="42", symbol=symbol, since=SINCE, unknown=UNKNOWN
    )


async def test_a_closed_history_entry_is_the_result() -> None:
    """History shows it closed after the call began: that is the outcome, nothing else asked."""
    lookups = Lookups(history={"positionHistory": [entry("41"), entry(closed=True)]})
    result = await confirm(lookups)
    assert result.confirmed_from_history is True
    assert result.position_id == "42"
    assert lookups.asked == [("history", {"symbol": "ETH-USDT", "positionId": "42"})]


async def test_a_history_given_as_a_bare_list_is_read_too() -> None:
    """The entries may come as a list; items that are not objects are skipped."""
    result = await confirm(Lookups(history=[7, "x", entry()]))
    assert result.confirmed_from_history is True


async def test_a_close_within_the_slack_before_the_call_counts() -> None:
    """Closed 59 s before the call began (clocks differ): still this close."""
    result = await confirm(Lookups(history=[entry(closed_at=SINCE - timedelta(seconds=59))]))
    assert result.confirmed_from_history is True


async def test_a_position_closed_well_before_the_call_was_already_gone() -> None:
    """Closed 2 minutes before: plain not found, nothing executed by this call."""
    closed_at = SINCE - timedelta(minutes=2)
    with pytest.raises(PositionNotFoundError) as caught:
        await confirm(Lookups(history=[entry(closed_at=closed_at)]))
    assert type(caught.value) is PositionNotFoundError
    assert str(caught.value) == (
        f"position 42 was already closed at {closed_at.isoformat()}, before this close "
        "(position history)"
    )
    assert caught.value.endpoint == HISTORY.name
    assert caught.value.may_have_executed is False


async def test_a_position_still_listed_is_closed_again() -> None:
    """Not (fully) in the history and still open: None, so the close is retried."""
    lookups = Lookups(
        history=[entry(closed=False), entry("41")],
        positions=[{"positionId": 42, "symbol": "ETH-USDT"}],
    )
    assert await confirm(lookups) is None
    assert lookups.asked[1] == ("positions", {})  # every symbol's, never filtered


async def test_lookups_that_fail_leave_the_close_to_be_retried() -> None:
    """History and positions both fail: nothing learned, the close is retried."""
    failure = ResponseValidationError("odd", body="")
    assert await confirm(Lookups(history=failure, positions=failure)) is None


async def test_a_position_in_neither_list_is_possibly_closed_with_what_was_checked() -> None:
    """Gone from the open positions, not in the history: PositionPossiblyClosedError."""
    lookups = Lookups(history=ResponseValidationError("odd", body=""), positions=[7, {"x": 1}])
    with pytest.raises(PositionPossiblyClosedError) as caught:
        await confirm(lookups)
    checked = (
        "position history of ETH-USDT: ResponseValidationError",
        "all open positions: 42 is not among them",
    )
    assert caught.value.checked == checked
    assert str(caught.value) == (
        "position 42 is no longer open after a close whose outcome was unknown (ServerError); "
        "that close most likely closed it. Checked: " + "; ".join(checked)
    )
    assert caught.value.earlier_error is UNKNOWN
    assert caught.value.endpoint == "POST /x"
    assert caught.value.may_have_executed is True


async def test_a_wrong_symbol_cannot_make_an_open_position_look_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The caller says BTC-USDT; BingX lists the position under ETH-USDT among all open
    positions: still open (None, so the close is retried), and the mismatch is logged."""
    lookups = Lookups(history=[], positions=[{"positionId": "42", "symbol": "ETH-USDT"}])
    with caplog.at_level("WARNING", logger="bingx_async"):
        assert await confirm(lookups, symbol="BTC-USDT") is None
    assert lookups.asked == [
        ("history", {"symbol": "BTC-USDT", "positionId": "42"}),
        ("positions", {}),
    ]
    assert caplog.messages == [
        "closePosition: symbol BTC-USDT was given, but BingX lists position 42 under "
        "ETH-USDT; ETH-USDT is used"
    ]


async def test_the_symbol_bingx_listed_is_asked_rather_than_the_callers() -> None:
    """A symbol seen in BingX's own list wins over the caller's for the history; the
    mismatch is part of what was checked."""
    lookups = Lookups(history=[], positions=[])
    with pytest.raises(PositionPossiblyClosedError) as caught:
        await confirm_close(
            lookups,
            position_id="42",
            symbol="BTC-USDT",
            seen_symbol="ETH-USDT",
            since=SINCE,
            unknown=UNKNOWN,
        )
    assert lookups.asked[0] == ("history", {"symbol": "ETH-USDT", "positionId": "42"})
    assert caught.value.checked[0] == (
        "symbol BTC-USDT was given, but BingX lists position 42 under ETH-USDT; ETH-USDT is used"
    )


async def test_without_a_symbol_only_the_open_positions_are_asked() -> None:
    """BingX's history needs the symbol: without it, all open positions are listed."""
    lookups = Lookups(positions=[])
    with pytest.raises(PositionPossiblyClosedError) as caught:
        await confirm(lookups, symbol=None)
    assert lookups.asked == [("positions", {})]
    assert caught.value.checked[-1] == (
        "position history: not asked, the position's symbol is not known"
    )


def test_the_symbol_book_forgets_the_oldest_first() -> None:
    """Bounded: with room for two, the third position pushes out the first."""
    book = SymbolBook(limit=2)
    book.note("a", "1", "BTC-USDT")
    book.note("a", "2", "ETH-USDT")
    book.note("a", "1", "BTC-USDT")  # seen again: now the newest
    book.note("a", "3", "SOL-USDT")
    assert [book.get("a", p) for p in ("1", "2", "3")] == ["BTC-USDT", None, "SOL-USDT"]
    assert book.get("b", "1") is None


# --- through the client ---------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_close_given_the_wrong_symbol_is_sent_again_and_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An ETH-USDT position closed with symbol="BTC-USDT", whose first close got a 504 that
    did not execute: the close is sent again and closes it, instead of ending "possibly
    closed" with the position still open."""
    sim = FakeBingX(clock=LoopClock(EPOCH), seed=4)
    account = sim.add_account()
    position = sim.add_position(account, symbol="ETH-USDT")
    sim.inject(GatewayTimeout(after_executing=False), path=CLOSE_PATH)
    async with BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        clock=sim.clock,
        transport=sim.transport(),
        retry=RetryPolicy(wait_jitter=0),
    ) as client:
        with caplog.at_level("WARNING", logger="bingx_async"):
            result = await client.close_position(position.position_id, symbol="BTC-USDT")
    assert result.position_id == position.position_id
    assert sim.positions(account) == []
    assert len(sim.requests_to(CLOSE_PATH)) == 2
    (listed,) = sim.requests_to(POSITIONS_PATH)
    assert "symbol" not in dict(listed.params)
    assert f"BingX lists position {position.position_id} under ETH-USDT" in caplog.text


@pytest.mark.looptime
async def test_closing_the_client_during_a_retry_after_an_unknown_outcome_says_so() -> None:
    """A close waiting to retry after a lost answer, when its client closes: ClientClosedError
    that keeps the unknown outcome (it may have executed)."""
    sim = FakeBingX(clock=LoopClock(EPOCH), seed=4)
    account = sim.add_account()
    position = sim.add_position(account)
    sim.inject(DropConnection(after_executing=False), path="/openApi/swap/v1/trade/closePosition")
    client = BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        clock=sim.clock,
        transport=sim.transport(),
        retry=RetryPolicy(wait_initial=5.0, wait_jitter=0),
    )
    call = asyncio.create_task(client.close_position(position.position_id))
    await asyncio.sleep(1.0)
    await client.aclose()
    (outcome,) = await asyncio.gather(call, return_exceptions=True)
    assert isinstance(outcome, ClientClosedError)
    assert outcome.may_have_executed is True
    assert isinstance(outcome.earlier_error, BingXError)
    assert str(outcome) == (
        "the client was closed before the call ended; an earlier attempt's outcome is "
        "unknown (TransportError)"
    )


async def test_a_close_exactly_at_the_edge_of_the_slack_counts() -> None:
    """Closed exactly 60 s before the call began: still counted as this close."""
    result = await confirm(Lookups(history=[entry(closed_at=SINCE - timedelta(seconds=60))]))
    assert result.confirmed_from_history is True
