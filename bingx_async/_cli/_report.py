"""``close``'s report: one row per ID as its outcome is known, and a summary at the end.

Every row has the same keys (``ROW_KEYS``, the library's field names). The summary
sorts the IDs into what an operator does next: nothing (closed, not open), run again
(nothing was done), or check by hand (sent, outcome unknown). An interrupted run reports
everything known so far, and which IDs were never sent.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

from bingx_async._client import CloseProgress
from bingx_async._exceptions import BingXError, PositionNotFoundError, PositionPossiblyClosedError
from bingx_async._models import ClosePositionResult

from ._exits import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL, exit_code
from ._output import ProgressBar, jsonable, print_json

__all__ = ["ROW_KEYS", "CloseReport", "Mode", "outcome_row"]

Mode = Literal["text", "json", "jsonl"]

#: The keys of every row of ``close --json`` and ``--jsonl``, in order.
ROW_KEYS = (
    "position_id",
    "status",
    "order_id",
    "symbol",
    "side",
    "type",
    "position_side",
    "orig_qty",
    "avg_close_price",
    "close_time",
    "confirmed_from_history",
    "error",
    "code",
    "message",
    "may_have_executed",
)

#: Statuses after which the position is not open: nothing left to do.
_DONE = {"closed", "possibly_closed", "not_open", "not_found"}

#: The summary's groups, in the order printed, with what each one means for the operator.
_GROUPS = (
    ("closed", "closed"),
    ("not_open", "not open, nothing sent"),
    ("not_sent", "not sent, safe to run again"),
    ("refused", "failed, nothing done, safe to run again"),
    ("unknown", "sent, outcome unknown, check these"),
)


def _row(position_id: str, status: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(position_id=position_id, status=status, **fields)
    return row


def outcome_row(position_id: str, outcome: ClosePositionResult | BingXError) -> dict[str, Any]:
    """The row of a close that finished."""
    if isinstance(outcome, ClosePositionResult):
        return _row(
            position_id,
            "closed",
            order_id=outcome.order_id,
            symbol=outcome.symbol,
            side=outcome.side,
            type=outcome.type,
            position_side=outcome.position_side,
            orig_qty=jsonable(outcome.orig_qty),
            avg_close_price=jsonable(outcome.avg_close_price),
            close_time=jsonable(outcome.close_time),
            confirmed_from_history=outcome.confirmed_from_history,
            may_have_executed=True,
        )
    status = (
        "possibly_closed"
        if isinstance(outcome, PositionPossiblyClosedError)
        else "not_found"
        if isinstance(outcome, PositionNotFoundError)
        else "error"
    )
    return _row(
        position_id,
        status,
        error=type(outcome).__name__,
        code=outcome.code,
        message=str(outcome),
        may_have_executed=outcome.may_have_executed,
    )


def _not_open_row(position_id: str) -> dict[str, Any]:
    return _row(
        position_id,
        "not_open",
        message="not among the open positions: nothing sent",
        may_have_executed=False,
    )


def _interrupted_row(position_id: str, *, sent: bool) -> dict[str, Any]:
    if sent:
        return _row(
            position_id,
            "unknown",
            message="interrupted while its close was on the wire: check the position",
            may_have_executed=True,
        )
    return _row(
        position_id,
        "not_sent",
        message="interrupted before its close was sent",
        may_have_executed=False,
    )


class CloseReport:
    """Prints each close's row as it is known (text and ``--jsonl``), or all rows at the end
    (``--json``), then the summary on stderr."""

    def __init__(self, ids: list[str], *, mode: Mode, sent: set[str]) -> None:
        self.ids = ids
        self.mode: Mode = mode
        #: IDs whose close request has left this process (filled in by the connection).
        self.sent = sent
        self.rows: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, BingXError] = {}
        self.progress: ProgressBar | None = None

    def expect(self, count: int) -> None:
        """``count`` closes are about to be sent: show their progress if there are several."""
        if count > 1:
            self.progress = ProgressBar(count, sys.stderr)

    def not_open(self, position_id: str) -> None:
        self._add(_not_open_row(position_id))

    def add(self, update: CloseProgress) -> None:
        """``close_positions``' ``on_progress``."""
        position_id = str(update.position_id)
        if isinstance(update.outcome, BingXError):
            self.errors[position_id] = update.outcome
        if self.progress is not None:
            self.progress.clear()
        self._add(outcome_row(position_id, update.outcome))
        if self.progress is not None:
            self.progress(update)

    def interrupted(self) -> None:
        """The run was stopped: every ID without an outcome is reported, then the summary."""
        if self.progress is not None:
            self.progress.clear()
            sys.stderr.write("\n" if self.progress.interactive else "")
        for position_id in self.ids:
            if position_id not in self.rows:
                self._add(_interrupted_row(position_id, sent=position_id in self.sent))
        self._end()

    def finish(self) -> int:
        """Every ID has its outcome: print what is left to print; the exit code."""
        self._end()
        failed = [self.errors[pid] for pid in self.ids if self.rows[pid]["status"] not in _DONE]
        if not failed:
            return EXIT_OK
        if len(failed) < len(self.ids):
            return EXIT_PARTIAL
        codes = {exit_code(error) for error in failed}
        return codes.pop() if len(codes) == 1 else EXIT_FAILURE

    def _add(self, row: dict[str, Any]) -> None:
        self.rows[row["position_id"]] = row
        if self.mode == "jsonl":
            print_json(row, lines=True)
        elif self.mode == "text":
            print(f"{row['position_id']}  {row['status']:<16} {_detail(row)}", flush=True)

    def _end(self) -> None:
        if self.mode == "json":
            print_json([self.rows[pid] for pid in self.ids])
        groups: dict[str, list[str]] = {name: [] for name, _ in _GROUPS}
        for position_id in self.ids:
            groups[_group(self.rows[position_id], position_id in self.sent)].append(position_id)
        for name, label in _GROUPS:
            if groups[name]:
                ids = " ".join(groups[name])
                print(f"{label} ({len(groups[name])}): {ids}", file=sys.stderr, flush=True)


def _group(row: dict[str, Any], sent: bool) -> str:
    status = row["status"]
    if status in ("closed", "possibly_closed"):
        return "closed"
    if status in ("not_open", "not_found"):
        return "not_open"
    if row["may_have_executed"]:
        return "unknown"
    return "refused" if sent else "not_sent"


def _detail(row: dict[str, Any]) -> str:
    if row["status"] != "closed":
        return str(row["message"])
    if row["order_id"] is not None:
        return f"order {row['order_id']}"
    return "closed (confirmed from the position history)"
