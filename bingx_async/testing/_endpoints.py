"""The simulated exchange behind FakeBingX's checks: accounts, their balances and open
positions, the orders that closed positions, and the endpoints that read and change them,
answering in BingX's JSON shapes.

Endpoints: ``GET /openApi/swap/v2/server/time`` (public), and, signed,
``POST /openApi/swap/v1/trade/closePosition``, ``GET /openApi/swap/v2/user/positions``,
``POST /openApi/swap/v2/trade/closeAllPositions``,
``GET /openApi/swap/v1/trade/positionHistory`` and ``GET /openApi/swap/v2/trade/order``. A
signed handler is only called once the request has passed rate limits and verification, with
the account its API key belongs to. Every close calls the fill listeners (the account stream
is one) with the order that filled it.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from bingx_async._budgets import endpoint_name
from bingx_async._exceptions import ConfigurationError

from ._fills import fill, initial_margin, money
from ._records import PositionSide, SimAccount, SimOrder, SimPosition
from ._shapes import closing_order_json, history_json, order_json, position_json
from ._wire import Answer, Incoming, SimResponse, error, ok

__all__ = [
    "ACCOUNT_UID_PATH",
    "CLOSE_ALL_POSITIONS_PATH",
    "CLOSE_POSITION_PATH",
    "ORDER_PATH",
    "POSITIONS_PATH",
    "POSITION_HISTORY_PATH",
    "SERVER_TIME_PATH",
    "FillListener",
    "KeyedHandler",
    "PublicHandler",
    "SignedHandler",
    "SimExchange",
    "WalletChange",
]

SERVER_TIME_PATH = "/openApi/swap/v2/server/time"
CLOSE_POSITION_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_ALL_POSITIONS_PATH = "/openApi/swap/v2/trade/closeAllPositions"
POSITIONS_PATH = "/openApi/swap/v2/user/positions"
POSITION_HISTORY_PATH = "/openApi/swap/v1/trade/positionHistory"
ACCOUNT_UID_PATH = "/openApi/account/v1/uid"
ORDER_PATH = "/openApi/swap/v2/trade/order"
#: The position history covers the last 90 days unless told otherwise, 100 entries a page.
_HISTORY_SPAN_MS = 90 * 24 * 3600 * 1000
_HISTORY_PAGE_MAX = 100

PublicHandler = Callable[[Incoming], Answer]
SignedHandler = Callable[[Incoming, SimAccount], Answer]
#: An endpoint that needs a known API key and, unless the simulator is told otherwise, no
#: signature (the listen-key endpoints); it answers outside BingX's JSON envelope.
KeyedHandler = Callable[[Incoming, SimAccount], SimResponse]


@dataclass(frozen=True, slots=True)
class WalletChange:
    """An account's USDT after a fill: wallet balance, the part not held as isolated margin,
    and what the fill changed (realised profit plus the negative fee)."""

    balance: str
    cross_balance: str
    change: str


#: Called with every fill: the account, the position it closed and the order that closed it.
FillListener = Callable[[SimAccount, SimPosition, SimOrder, WalletChange], None]

_NOT_FOUND_MESSAGES = {
    101205: "No position to close",
    109420: "No position exists for the specified symbol",
}
_KEY_ALPHABET = string.ascii_letters + string.digits


def _random_digits(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


class SimExchange:
    """Accounts (by API key) and their positions, and the endpoint handlers by endpoint name.

    ``rng`` makes generated keys, UIDs, position and order ids; ``not_found_code`` is the
    code for closing a position that is not held.
    """

    def __init__(self, rng: random.Random, *, not_found_code: int, taker_fee_rate: str) -> None:
        self.not_found_code = not_found_code
        self.taker_fee_rate = Decimal(taker_fee_rate)
        self.fill_listeners: list[FillListener] = []
        self._rng = rng
        self._accounts: dict[str, SimAccount] = {}  # by API key
        self._positions: dict[str, dict[str, SimPosition]] = {}  # uid -> id -> position
        self._balances: dict[str, Decimal] = {}  # uid -> USDT wallet balance
        #: uid -> closed positions, oldest close first: (position, closing order, opened ms).
        self._closed: dict[str, list[tuple[SimPosition, SimOrder, int]]] = {}
        self._orders: dict[str, dict[str, SimOrder]] = {}  # uid -> order id -> order
        self._opened_ms: dict[str, int] = {}  # position id -> when it was opened
        self._next_order_id = rng.randrange(10**18, 5 * 10**18)
        self.public: dict[str, PublicHandler] = {
            endpoint_name("GET", SERVER_TIME_PATH): self._server_time,
        }
        self.signed: dict[str, SignedHandler] = {
            endpoint_name("POST", CLOSE_POSITION_PATH): self._close_position,
            endpoint_name("GET", POSITIONS_PATH): self._list_positions,
            endpoint_name("POST", CLOSE_ALL_POSITIONS_PATH): self._close_all_positions,
            endpoint_name("GET", POSITION_HISTORY_PATH): self._position_history,
            endpoint_name("GET", ACCOUNT_UID_PATH): self._account_uid,
            endpoint_name("GET", ORDER_PATH): self._query_order,
        }
        self.keyed: dict[str, KeyedHandler] = {}

    # --- accounts and positions -------------------------------------------------------------

    def account(self, api_key: str) -> SimAccount | None:
        """The account ``api_key`` belongs to, if any."""
        return self._accounts.get(api_key)

    def add_account(
        self, *, api_key: str | None, secret_key: str | None, uid: str | None, balance: str
    ) -> SimAccount:
        """Register an API key pair; missing values are generated from ``rng``. An account
        (UID) already known keeps its balance."""
        account = SimAccount(
            api_key=api_key or "".join(self._rng.choices(_KEY_ALPHABET, k=64)),
            secret_key=secret_key or "".join(self._rng.choices(_KEY_ALPHABET, k=64)),
            uid=uid or _random_digits(self._rng, 8),
        )
        if account.api_key in self._accounts:
            raise ConfigurationError("an account with this api_key already exists")
        self._accounts[account.api_key] = account
        self._positions.setdefault(account.uid, {})
        self._balances.setdefault(account.uid, Decimal(balance))
        self._orders.setdefault(account.uid, {})
        return account

    def add_position(
        self,
        account: SimAccount,
        *,
        symbol: str,
        position_side: PositionSide,
        quantity: str,
        position_id: str | None,
        avg_price: str,
        leverage: int,
        mark_price: str | None = None,
        opened_ms: int = 0,
    ) -> SimPosition:
        """Open a position for ``account`` (``position_id``: by default 19 random digits that
        fit a signed 64-bit integer, as BingX's IDs do)."""
        held = self.held(account)
        position = SimPosition(
            position_id=position_id or str(self._rng.randrange(10**18, 2**63)),
            symbol=symbol,
            position_side=position_side,
            quantity=quantity,
            avg_price=avg_price,
            leverage=leverage,
            mark_price=mark_price,
        )
        if position.position_id in held:
            raise ConfigurationError(f"position {position.position_id} already exists")
        held[position.position_id] = position
        self._opened_ms[position.position_id] = opened_ms
        return position

    def held(self, account: SimAccount) -> dict[str, SimPosition]:
        """The account's open positions by id, oldest first (the live dict)."""
        if self._accounts.get(account.api_key) != account:
            raise ConfigurationError(f"unknown account uid={account.uid}; use add_account()")
        return self._positions[account.uid]

    def balance(self, account: SimAccount) -> str:
        """The account's USDT wallet balance."""
        self.held(account)  # checks the account is known
        return str(self._balances[account.uid])

    def orders(self, account: SimAccount) -> list[SimOrder]:
        """The orders that closed the account's positions, oldest first."""
        self.held(account)
        return list(self._orders[account.uid].values())

    def endpoint_for_path(self, path: str) -> str:
        """The endpoint name (``"METHOD /path"``) served at ``path``."""
        for name in [*self.public, *self.signed, *self.keyed]:
            if name.split(" ", 1)[1] == path:
                return name
        raise ConfigurationError(f"unknown endpoint path {path!r}; pass 'METHOD /path'")

    # --- endpoints --------------------------------------------------------------------------

    def _server_time(self, incoming: Incoming) -> Answer:
        return ok({"serverTime": incoming.now_ms}, incoming)

    def _close_position(self, incoming: Incoming, account: SimAccount) -> Answer:
        position_id = incoming.value("positionId")
        if not position_id:
            return error(109400, "positionId is required", incoming)
        position = self.held(account).pop(position_id, None)
        if position is None:
            msg = _NOT_FOUND_MESSAGES.get(self.not_found_code, "position not exist")
            return error(self.not_found_code, msg, incoming)
        order = self._fill(account, position, incoming.now_ms)
        return ok(closing_order_json(order), incoming)

    def _close_all_positions(self, incoming: Incoming, account: SimAccount) -> Answer:
        symbol = incoming.value("symbol")
        held = self.held(account)
        closing = [p for p in held.values() if symbol is None or p.symbol == symbol]
        order_ids = []
        for position in closing:
            del held[position.position_id]
            order_ids.append(int(self._fill(account, position, incoming.now_ms).order_id))
        return ok({"success": order_ids, "failed": None}, incoming)

    def _account_uid(self, incoming: Incoming, account: SimAccount) -> Answer:
        return ok({"uid": int(account.uid)}, incoming)

    def _list_positions(self, incoming: Incoming, account: SimAccount) -> Answer:
        symbol = incoming.value("symbol")
        listed = [
            position_json(position, incoming.now_ms)
            for position in self.held(account).values()
            if symbol is None or position.symbol == symbol
        ]
        return ok(listed, incoming)

    def _position_history(self, incoming: Incoming, account: SimAccount) -> Answer:
        symbol = incoming.value("symbol")
        if not symbol:
            return error(109400, "symbol is required", incoming)
        position_id = incoming.value("positionId")
        numbers = {}
        for name, default in [
            ("endTs", incoming.now_ms),
            ("pageIndex", 1),
            ("pageSize", _HISTORY_PAGE_MAX),
        ]:
            text = incoming.value(name)
            if text is not None and not text.isdigit():
                return error(109400, f"{name} must be an integer", incoming)
            numbers[name] = int(text) if text is not None else default
        start_text = incoming.value("startTs")
        if start_text is not None and not start_text.isdigit():
            return error(109400, "startTs must be an integer", incoming)
        end = numbers["endTs"]
        start = int(start_text) if start_text is not None else end - _HISTORY_SPAN_MS
        page, size = numbers["pageIndex"], numbers["pageSize"]
        if (
            page < 1
            or not 1 <= size <= _HISTORY_PAGE_MAX
            or not 0 <= end - start <= _HISTORY_SPAN_MS
        ):
            return error(109400, "invalid pageIndex, pageSize or time range", incoming)
        entries = [
            history_json(position, order, opened_ms)
            for position, order, opened_ms in reversed(self._closed.get(account.uid, []))
            if position.symbol == symbol
            and (position_id is None or position.position_id == position_id)
            and start <= order.time_ms <= end
        ]
        return ok({"positionHistory": entries[(page - 1) * size : page * size]}, incoming)

    def _query_order(self, incoming: Incoming, account: SimAccount) -> Answer:
        symbol = incoming.value("symbol")
        order_id = incoming.value("orderId")
        if not symbol:
            return error(109400, "symbol is required", incoming)
        if not order_id and not incoming.value("clientOrderId"):
            return error(109400, "orderId or clientOrderId is required", incoming)
        # Closing orders carry no client order ID, so one asked for by it is never found.
        order = self._orders[account.uid].get(order_id or "")
        if order is None or order.symbol != symbol:
            return error(80016, "order not exist", incoming)
        return ok({"order": order_json(order)}, incoming)

    def _fill(self, account: SimAccount, position: SimPosition, now_ms: int) -> SimOrder:
        """Close ``position`` (already removed from the held ones): fill its order, book the
        profit and fee, remember the close, and tell the fill listeners."""
        self._next_order_id += self._rng.randrange(1, 10**6)
        order = fill(
            position,
            order_id=str(self._next_order_id),
            time_ms=now_ms,
            fee_rate=self.taker_fee_rate,
        )
        self._orders[account.uid][order.order_id] = order
        opened_ms = self._opened_ms.pop(position.position_id, 0)
        self._closed.setdefault(account.uid, []).append((position, order, opened_ms))
        change = Decimal(order.realized_profit) + Decimal(order.commission)
        self._balances[account.uid] += change
        balance = self._balances[account.uid]
        isolated = sum(
            (initial_margin(p) for p in self.held(account).values() if p.isolated), Decimal(0)
        )
        wallet = WalletChange(money(balance), money(balance - isolated), money(change))
        for listener in self.fill_listeners:
            listener(account, position, order, wallet)
        return order
