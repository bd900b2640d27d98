"""FakeBingX: a strict, in-process stand-in for BingX's perpetual-futures REST API.

The core is transport-agnostic: :meth:`FakeBingX.handle` takes one request's method, path,
raw query string and headers and returns a :class:`SimResponse` (or a :class:`NoAnswer`).
:meth:`FakeBingX.transport` wraps it as an httpx transport (no sockets) and
:meth:`FakeBingX.serve` as a loopback HTTP/1.1 server.

Each request goes through the same steps BingX takes (see ``bingx/api-facts.md``):

1. optional arrival jitter (a random wait through the clock), then the arrival is recorded;
2. injected faults that strike before the exchange (:meth:`FakeBingX.inject`);
3. unknown endpoints: HTTP 404, code 100400;
4. rate limits, from the same :class:`~bingx_async._budgets.RateLimitPolicy` table the client
   uses: a request arriving when one of its budgets is full disables the endpoint for a while;
5. for signed endpoints: API key, HMAC signature over the received decoded params, timestamp;
6. the endpoint itself (positions are held per account);
7. the error-rate ban: the (threshold+1)-th identical error code from one endpoint within the
   ban window is answered with a 100410 ban instead.

Time is read, and waited on, only through the injected :class:`~bingx_async._clock.Clock`.
"""

from __future__ import annotations

import contextlib
import enum
import hmac
import json
import math
import random
import re
import string
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote

from bingx_async._budgets import (
    DEFAULT_RATE_LIMITS,
    Budget,
    BudgetKey,
    RateLimitPolicy,
    endpoint_name,
)
from bingx_async._clock import Clock, SystemClock
from bingx_async._exceptions import ConfigurationError
from bingx_async._signing import raw_query, sign

if TYPE_CHECKING:
    import httpx

__all__ = [
    "BadGatewayPage",
    "CustomAnswer",
    "DropConnection",
    "FakeBingX",
    "Fault",
    "GatewayTimeout",
    "NeverAnswer",
    "NoAnswer",
    "RecordedRequest",
    "RefuseConnection",
    "SimAccount",
    "SimPosition",
    "SimResponse",
]

SERVER_TIME_PATH = "/openApi/swap/v2/server/time"
CLOSE_POSITION_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_ALL_POSITIONS_PATH = "/openApi/swap/v2/trade/closeAllPositions"
POSITIONS_PATH = "/openApi/swap/v2/user/positions"

#: The host name rate-limit budgets are counted under: every request comes from one IP.
SIM_HOST = "sim"

PositionSide = Literal["LONG", "SHORT", "BOTH"]
BlockShape = Literal[1, 2, 3, 4]

_RATE_LIMIT_CODES = frozenset({100410, 100409, 109429})
_TIMESTAMP_MESSAGES = {100421: "Null timestamp or timestamp mismatch"}
_NOT_FOUND_MESSAGES = {
    101205: "No position to close",
    109420: "No position exists for the specified symbol",
}
_MAX_TIMESTAMP_AHEAD_MS = 1000
_INTEGER = re.compile(r"-?[0-9]+")
_KEY_ALPHABET = string.ascii_letters + string.digits

# --- what the core answers ----------------------------------------------------------------


class NoAnswer(enum.Enum):
    """How a request can end without any HTTP answer."""

    #: The server never answers (the client's read timeout fires).
    HANG = "hang"
    #: The connection is closed without an answer.
    DROP = "drop"
    #: The connection is refused; the request never reaches the exchange.
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class SimResponse:
    """One HTTP answer: status, body bytes and their content type."""

    status_code: int
    body: bytes
    content_type: str = "application/json"


# --- faults ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Base of the faults :meth:`FakeBingX.inject` accepts.

    Faults whose ``after_executing`` is true let the request go through everything BingX does
    (rate limits, verification, the endpoint itself) and then replace the answer; the others
    strike before the exchange sees the request.
    """

    @property
    def reaches_exchange(self) -> bool:
        """Whether the request is processed by the exchange before the fault strikes."""
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class BadGatewayPage(Fault):
    """A proxy's HTML "502 Bad Gateway" page (HTTP 502, ``text/html``)."""

    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayTimeout(Fault):
    """HTTP 504 with ``{"code": code, "msg": "unknown status"}``: the outcome is unknown."""

    after_executing: bool = False
    code: int = 100500

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomAnswer(Fault):
    """Any HTTP status with any JSON body, sent as given."""

    status_code: int
    body: Mapping[str, object]
    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class NeverAnswer(Fault):
    """No answer ever: the httpx transport raises ``httpx.ReadTimeout`` once the request's read
    timeout has passed on the clock; the server keeps the socket open until the client leaves."""

    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class DropConnection(Fault):
    """The connection closes without an answer (``httpx.RemoteProtocolError`` on the client)."""

    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class RefuseConnection(Fault):
    """The connection is refused; nothing is executed or recorded.

    Through the httpx transport the client gets ``httpx.ConnectError``. A real TCP listener
    cannot refuse one connection, so :meth:`FakeBingX.serve` closes the next new connection
    before reading from it (``path=None``) or closes the connection once it has read a request
    for ``path``; the client then sees the connection closed.
    """


@dataclass(slots=True)
class _PendingFault:
    fault: Fault
    path: str | None
    remaining: int


# --- accounts, positions, records -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimAccount:
    """An API key pair and the account (UID) it belongs to."""

    api_key: str
    secret_key: str = field(repr=False)
    uid: str


@dataclass(frozen=True, slots=True)
class SimPosition:
    """An open position held by the simulator. Decimals are strings, as BingX sends them."""

    position_id: str
    symbol: str
    position_side: PositionSide
    quantity: str
    avg_price: str = "60000.0"
    leverage: int = 10
    isolated: bool = True


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
        found = [value for key, value in self.params if key == name]
        return found[-1] if found else None

    @property
    def reached_exchange(self) -> bool:
        """False when an injected fault stopped the request before the exchange saw it."""
        return self.fault is None or self.fault.reaches_exchange


# --- internal request state -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Incoming:
    method: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    arrived_at: float
    now_ms: int

    def value(self, name: str) -> str | None:
        found = [value for key, value in self.params if key == name]
        return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class _Answer:
    status_code: int
    body: dict[str, object]
    during_block: bool = False

    @property
    def code(self) -> int:
        code = self.body["code"]
        assert isinstance(code, int)
        return code


@dataclass(frozen=True, slots=True)
class _Block:
    until: float  # clock.monotonic() when the endpoint is enabled again
    msg: str


class _ArrivalLog:
    """Arrival times per budget, counted in rolling or fixed windows."""

    def __init__(self, window: Literal["rolling", "fixed"]) -> None:
        self._window = window
        self._rolling: dict[tuple[BudgetKey, Budget], deque[float]] = defaultdict(deque)
        self._fixed: dict[tuple[BudgetKey, Budget], tuple[int, int]] = {}

    def count(self, key: BudgetKey, budget: Budget, now: float) -> int:
        """Arrivals already in the window that ``now`` falls in."""
        if self._window == "fixed":
            bucket, count = self._fixed.get((key, budget), (0, 0))
            return count if bucket == math.floor(now / budget.window) else 0
        times = self._rolling[(key, budget)]
        while times and times[0] <= now - budget.window:
            times.popleft()
        return len(times)

    def add(self, key: BudgetKey, budget: Budget, now: float) -> None:
        if self._window == "fixed":
            bucket = math.floor(now / budget.window)
            count = self.count(key, budget, now)
            self._fixed[(key, budget)] = (bucket, count + 1)
        else:
            self._rolling[(key, budget)].append(now)


def _decode_query(query: str) -> list[tuple[str, str]]:
    """Query pairs decoded the BingX way: ``%XX`` escapes only, ``+`` stays a plus."""
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _random_digits(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _html_502() -> bytes:
    return (
        b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
    )


def _encode(body: Mapping[str, object]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


# --- the simulator --------------------------------------------------------------------------

_Handler = Callable[[_Incoming, SimAccount], _Answer]


class FakeBingX:
    """A strict BingX perpetual-futures API for tests: verifies signatures and timestamps,
    enforces rate limits and error-rate bans, holds positions, and fails on demand.

    Endpoints: ``GET /openApi/swap/v2/server/time`` (public), and, signed,
    ``POST /openApi/swap/v1/trade/closePosition``, ``GET /openApi/swap/v2/user/positions``,
    ``POST /openApi/swap/v2/trade/closeAllPositions``.

    ``clock`` is the only source of time (default :class:`~bingx_async._clock.SystemClock`);
    the server's clock is ``clock.time() + clock_skew``. ``window`` chooses how budgets are
    counted: ``"rolling"`` (arrivals in ``(t - window, t]``) or ``"fixed"`` (same
    ``floor(t / window)`` bucket); rejected arrivals count too. ``arrival_jitter`` (seconds)
    delays each request by a random ``0..arrival_jitter`` before it arrives. Violating a budget
    disables the endpoint for ``disabled_period`` seconds (for the account if an account budget
    overflowed, for everyone if an IP budget did). More than ``error_ban_threshold`` answers
    with one error code from one endpoint within ``error_ban_window`` seconds ban it for the
    account (for everyone, if the requests carried no known API key) for ``error_ban_period``
    seconds. Rate-limit answers themselves do not count towards the error-rate ban.
    ``not_found_code``, ``timestamp_error_code``, ``rate_limit_code`` and
    ``rate_limit_status_code`` choose among the answers BingX is known to give.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rate_limits: RateLimitPolicy = DEFAULT_RATE_LIMITS,
        window: Literal["rolling", "fixed"] = "rolling",
        arrival_jitter: float = 0.0,
        seed: int | None = None,
        disabled_period: float = 3.0,
        error_ban_threshold: int = 20,
        error_ban_window: float = 480.0,
        error_ban_period: float = 60.0,
        clock_skew: float = 0.0,
        recv_window_default_ms: int = 5000,
        not_found_code: int = 101205,
        timestamp_error_code: int = 100421,
        rate_limit_code: int = 100410,
        rate_limit_status_code: int = 200,
    ) -> None:
        if window not in ("rolling", "fixed"):
            raise ConfigurationError(f"window must be 'rolling' or 'fixed', got {window!r}")
        for name, value in [
            ("arrival_jitter", arrival_jitter),
            ("disabled_period", disabled_period),
            ("error_ban_window", error_ban_window),
            ("error_ban_period", error_ban_period),
        ]:
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigurationError(f"{name} must be finite seconds >= 0, got {value!r}")
        if error_ban_threshold < 1:
            raise ConfigurationError(f"error_ban_threshold must be >= 1, got {error_ban_threshold}")
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.rate_limits = rate_limits
        self.window = window
        self.arrival_jitter = arrival_jitter
        self.disabled_period = disabled_period
        self.error_ban_threshold = error_ban_threshold
        self.error_ban_window = error_ban_window
        self.error_ban_period = error_ban_period
        self.clock_skew = clock_skew
        self.recv_window_default_ms = recv_window_default_ms
        self.not_found_code = not_found_code
        self.timestamp_error_code = timestamp_error_code
        self.rate_limit_code = rate_limit_code
        self.rate_limit_status_code = rate_limit_status_code
        #: Every request received, in arrival order.
        self.requests: list[RecordedRequest] = []
        self._rng = random.Random(seed)
        self._accounts: dict[str, SimAccount] = {}  # by API key
        self._positions: dict[str, dict[str, SimPosition]] = {}  # uid -> id -> position
        self._faults: list[_PendingFault] = []
        self._arrivals = _ArrivalLog(window)
        self._errors: dict[tuple[str | None, str, int], deque[float]] = defaultdict(deque)
        self._blocks: dict[tuple[str, str | None], _Block] = {}  # (endpoint, uid or None=IP)
        self._violations = 0
        self._next_order_id = self._rng.randrange(10**18, 5 * 10**18)
        self._signed: dict[str, _Handler] = {
            endpoint_name("POST", CLOSE_POSITION_PATH): self._close_position,
            endpoint_name("GET", POSITIONS_PATH): self._list_positions,
            endpoint_name("POST", CLOSE_ALL_POSITIONS_PATH): self._close_all_positions,
        }
        self._public: dict[str, Callable[[_Incoming], _Answer]] = {
            endpoint_name("GET", SERVER_TIME_PATH): self._server_time,
        }

    # --- setup and inspection ---------------------------------------------------------------

    def add_account(
        self, *, api_key: str | None = None, secret_key: str | None = None, uid: str | None = None
    ) -> SimAccount:
        """Register an API key pair; missing values are generated (from ``seed``)."""
        account = SimAccount(
            api_key=api_key or "".join(self._rng.choices(_KEY_ALPHABET, k=64)),
            secret_key=secret_key or "".join(self._rng.choices(_KEY_ALPHABET, k=64)),
            uid=uid or _random_digits(self._rng, 8),
        )
        if account.api_key in self._accounts:
            raise ConfigurationError("an account with this api_key already exists")
        self._accounts[account.api_key] = account
        self._positions.setdefault(account.uid, {})
        return account

    def add_position(
        self,
        account: SimAccount,
        *,
        symbol: str = "BTC-USDT",
        position_side: PositionSide = "LONG",
        quantity: str = "0.01",
        position_id: str | None = None,
        avg_price: str = "60000.0",
        leverage: int = 10,
    ) -> SimPosition:
        """Open a position for ``account`` (``position_id``: 19 random digits by default)."""
        held = self._held(account)
        position = SimPosition(
            position_id=position_id or _random_digits(self._rng, 19),
            symbol=symbol,
            position_side=position_side,
            quantity=quantity,
            avg_price=avg_price,
            leverage=leverage,
        )
        if position.position_id in held:
            raise ConfigurationError(f"position {position.position_id} already exists")
        held[position.position_id] = position
        return position

    def positions(self, account: SimAccount) -> list[SimPosition]:
        """The account's open positions, oldest first."""
        return list(self._held(account).values())

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests for ``path``, in arrival order."""
        return [request for request in self.requests if request.path == path]

    def arrivals(self, path: str, account: SimAccount | None = None) -> list[float]:
        """When requests for ``path`` (of ``account``, if given) reached the exchange
        (``clock.monotonic()`` times; faults that struck before the exchange excluded)."""
        return [
            request.arrived_at
            for request in self.requests_to(path)
            if request.reached_exchange and (account is None or request.account == account.uid)
        ]

    @property
    def violations(self) -> int:
        """How many requests overflowed a rate-limit budget (each disabled an endpoint)."""
        return self._violations

    def server_time_ms(self) -> int:
        """The server's clock: ``clock.time() + clock_skew`` in epoch milliseconds."""
        return math.floor((self.clock.time() + self.clock_skew) * 1000)

    # --- faults and forced blocks -----------------------------------------------------------

    def inject(self, fault: Fault, *, path: str | None = None, count: int = 1) -> None:
        """Apply ``fault`` to the next ``count`` requests for ``path`` (any path if ``None``).

        Faults are matched in the order injected; each request meets at most one.
        """
        if count < 1:
            raise ConfigurationError(f"count must be >= 1, got {count}")
        self._faults.append(_PendingFault(fault, path, count))

    def pending_faults(self) -> int:
        """How many fault applications are still waiting for a request."""
        return sum(pending.remaining for pending in self._faults)

    def block(
        self,
        endpoint: str,
        seconds: float,
        *,
        account: SimAccount | None = None,
        shape: BlockShape = 1,
        banned_code: int = 100202,
    ) -> None:
        """Disable ``endpoint`` (an endpoint name like ``"POST /openApi/..."`` or a path) for
        ``seconds``, for ``account`` or for everyone; requests get the rate-limit code with
        message shape ``shape`` (1: disabled period, 2: "rate limited", 3: error-rate ban
        naming ``banned_code``, 4: system busy)."""
        if shape not in (1, 2, 3, 4):
            raise ConfigurationError(f"shape must be 1, 2, 3 or 4, got {shape!r}")
        name = endpoint if " " in endpoint else self._endpoint_for_path(endpoint)
        unblock_ms = self.server_time_ms() + round(seconds * 1000)
        msg = self._limit_message(shape, unblock_ms, banned_code)
        uid = account.uid if account is not None else None
        self._blocks[(name, uid)] = _Block(self.clock.monotonic() + seconds, msg)

    # --- serving ----------------------------------------------------------------------------

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport answering from this simulator, without sockets."""
        from ._transport import SimTransport

        return SimTransport(self)

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve this simulator over HTTP/1.1 in the running loop; yields the base URL."""
        from ._server import SimServer

        server = SimServer(self)
        base_url = await server.start(host, port)
        try:
            yield base_url
        finally:
            await server.aclose()

    # --- the request pipeline ---------------------------------------------------------------

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> SimResponse | NoAnswer:
        """Answer one request (``query``: the raw, still percent-encoded query string)."""
        if self.arrival_jitter > 0:
            await self.clock.sleep(self._rng.uniform(0.0, self.arrival_jitter))
        incoming = _Incoming(
            method=method.upper(),
            path=path,
            params=_decode_query(query),
            headers={name.lower(): value for name, value in headers.items()},
            arrived_at=self.clock.monotonic(),
            now_ms=self.server_time_ms(),
        )
        account = self._accounts.get(incoming.headers.get("x-bx-apikey", ""))
        fault = self._take_fault(path)
        if isinstance(fault, RefuseConnection):
            return NoAnswer.REFUSE
        answer = None
        if fault is None or fault.reaches_exchange:
            answer = self._process(incoming, account)
        if fault is not None:
            return self._answer_with_fault(fault, incoming, account, answer)
        assert answer is not None
        self._record(incoming, account, answer.status_code, answer.body, answer.during_block)
        return SimResponse(answer.status_code, _encode(answer.body))

    def _take_fault(self, path: str) -> Fault | None:
        for pending in self._faults:
            if pending.path is None or pending.path == path:
                pending.remaining -= 1
                if pending.remaining == 0:
                    self._faults.remove(pending)
                return pending.fault
        return None

    def _take_connection_refusal(self) -> bool:
        """For the server: consume a pending path-less refusal if it is next in line."""
        pending = next((p for p in self._faults if p.path is None), None)
        if pending is None or not isinstance(pending.fault, RefuseConnection):
            return False
        pending.remaining -= 1
        if pending.remaining == 0:
            self._faults.remove(pending)
        return True

    def _answer_with_fault(
        self, fault: Fault, incoming: _Incoming, account: SimAccount | None, answer: _Answer | None
    ) -> SimResponse | NoAnswer:
        during_block = answer.during_block if answer is not None else False
        result: SimResponse | NoAnswer
        if isinstance(fault, BadGatewayPage):
            result = SimResponse(502, _html_502(), "text/html")
        elif isinstance(fault, GatewayTimeout):
            result = SimResponse(504, _encode({"code": fault.code, "msg": "unknown status"}))
        elif isinstance(fault, CustomAnswer):
            result = SimResponse(fault.status_code, _encode(fault.body))
        elif isinstance(fault, NeverAnswer):
            result = NoAnswer.HANG
        else:
            result = NoAnswer.DROP
        if isinstance(result, SimResponse):
            body = json.loads(result.body) if result.content_type == "application/json" else {}
            self._record(incoming, account, result.status_code, body, during_block, fault)
        else:
            self._record(incoming, account, None, {}, during_block, fault)
        return result

    def _record(
        self,
        incoming: _Incoming,
        account: SimAccount | None,
        status_code: int | None,
        body: Mapping[str, object],
        during_block: bool,
        fault: Fault | None = None,
    ) -> None:
        code = body.get("code")
        msg = body.get("msg")
        self.requests.append(
            RecordedRequest(
                method=incoming.method,
                path=incoming.path,
                params=incoming.params,
                headers=incoming.headers,
                arrived_at=incoming.arrived_at,
                status_code=status_code,
                code=code if isinstance(code, int) else None,
                msg=msg if isinstance(msg, str) else None,
                account=account.uid if account is not None else None,
                during_block=during_block,
                fault=fault,
            )
        )

    def _process(self, incoming: _Incoming, account: SimAccount | None) -> _Answer:
        endpoint = endpoint_name(incoming.method, incoming.path)
        public = self._public.get(endpoint)
        signed = self._signed.get(endpoint)
        if public is None and signed is None:
            return _Answer(404, self._error(100400, "this api is not exist", incoming))
        uid = account.uid if account is not None else None
        limited = self._rate_limit(endpoint, incoming, uid)
        if limited is not None:
            return limited
        if public is not None:
            answer = public(incoming)
        else:
            assert signed is not None
            verified = self._verify(incoming, account)
            answer = signed(incoming, verified) if isinstance(verified, SimAccount) else verified
        if answer.code != 0:
            return self._error_rate_ban(endpoint, uid, answer.code, incoming) or answer
        return answer

    # --- rate limits and bans ---------------------------------------------------------------

    def _rate_limit(self, endpoint: str, incoming: _Incoming, uid: str | None) -> _Answer | None:
        now = incoming.arrived_at
        budgets = self.rate_limits.budgets(endpoint, host=SIM_HOST, account=uid)
        overflowing = [
            key for key, budget in budgets if self._arrivals.count(key, budget, now) >= budget.limit
        ]
        for key, budget in budgets:
            self._arrivals.add(key, budget, now)
        block = self._active_block(endpoint, uid, now)
        if block is not None:
            return self._rate_limited(block.msg, incoming, during_block=True)
        if not overflowing:
            return None
        self._violations += 1
        unblock_ms = incoming.now_ms + round(self.disabled_period * 1000)
        block = _Block(now + self.disabled_period, self._limit_message(1, unblock_ms))
        for kind, _, _ in overflowing:
            self._blocks[(endpoint, uid if kind == "account" else None)] = block
        return self._rate_limited(block.msg, incoming)

    def _active_block(self, endpoint: str, uid: str | None, now: float) -> _Block | None:
        for scope in (None, uid) if uid is not None else (None,):
            block = self._blocks.get((endpoint, scope))
            if block is not None:
                if now < block.until:
                    return block
                del self._blocks[(endpoint, scope)]
        return None

    def _error_rate_ban(
        self, endpoint: str, uid: str | None, code: int, incoming: _Incoming
    ) -> _Answer | None:
        if code in _RATE_LIMIT_CODES or code == self.rate_limit_code:
            return None
        now = incoming.arrived_at
        errors = self._errors[(uid, endpoint, code)]
        while errors and errors[0] <= now - self.error_ban_window:
            errors.popleft()
        if len(errors) < self.error_ban_threshold:
            errors.append(now)
            return None
        unblock_ms = incoming.now_ms + round(self.error_ban_period * 1000)
        block = _Block(now + self.error_ban_period, self._limit_message(3, unblock_ms, code))
        self._blocks[(endpoint, uid)] = block
        return self._rate_limited(block.msg, incoming)

    def _limit_message(self, shape: BlockShape, unblock_ms: int, banned_code: int = 0) -> str:
        if shape == 1:
            return (
                "The endpoint trigger frequency limit rule is currently in the disabled period "
                f"and will be unblocked after {unblock_ms}"
            )
        if shape == 2:
            return "rate limited"
        if shape == 3:
            return (
                f"over {self.error_ban_threshold} error code:{banned_code} requests within "
                f"{round(self.error_ban_window * 1000)} ms for this api, please verify and fix "
                f"it ,can retry after time: {unblock_ms}"
            )
        return "The current system is busy, please try again later"

    def _rate_limited(
        self, msg: str, incoming: _Incoming, *, during_block: bool = False
    ) -> _Answer:
        body = self._error(self.rate_limit_code, msg, incoming)
        return _Answer(self.rate_limit_status_code, body, during_block)

    def _endpoint_for_path(self, path: str) -> str:
        for name in [*self._public, *self._signed]:
            if name.split(" ", 1)[1] == path:
                return name
        raise ConfigurationError(f"unknown endpoint path {path!r}; pass 'METHOD /path'")

    # --- verification -----------------------------------------------------------------------

    def _verify(self, incoming: _Incoming, account: SimAccount | None) -> SimAccount | _Answer:
        if account is None:
            return _Answer(200, self._error(100413, "Incorrect apiKey", incoming))
        params = incoming.params
        signature_at = [i for i, (key, _) in enumerate(params) if key == "signature"]
        if signature_at != [len(params) - 1] or not hmac.compare_digest(
            sign(account.secret_key, raw_query(params[:-1])), params[-1][1]
        ):
            return _Answer(200, self._error(100001, "Signature verification failed", incoming))
        if not self._timestamp_ok(incoming):
            msg = _TIMESTAMP_MESSAGES.get(self.timestamp_error_code, "timestamp is invalid")
            return _Answer(200, self._error(self.timestamp_error_code, msg, incoming))
        return account

    def _timestamp_ok(self, incoming: _Incoming) -> bool:
        timestamp = incoming.value("timestamp")
        recv_window = incoming.value("recvWindow")
        if timestamp is None or not _INTEGER.fullmatch(timestamp):
            return False
        if recv_window is not None and not _INTEGER.fullmatch(recv_window):
            return False
        window_ms = int(recv_window) if recv_window is not None else self.recv_window_default_ms
        age_ms = incoming.now_ms - int(timestamp)
        return -_MAX_TIMESTAMP_AHEAD_MS <= age_ms <= window_ms

    # --- endpoints --------------------------------------------------------------------------

    def _server_time(self, incoming: _Incoming) -> _Answer:
        return self._ok({"serverTime": incoming.now_ms}, incoming)

    def _close_position(self, incoming: _Incoming, account: SimAccount) -> _Answer:
        position_id = incoming.value("positionId")
        if not position_id:
            return _Answer(200, self._error(109400, "positionId is required", incoming))
        position = self._held(account).pop(position_id, None)
        if position is None:
            msg = _NOT_FOUND_MESSAGES.get(self.not_found_code, "position not exist")
            return _Answer(200, self._error(self.not_found_code, msg, incoming))
        return self._ok(self._closing_order(position), incoming)

    def _close_all_positions(self, incoming: _Incoming, account: SimAccount) -> _Answer:
        symbol = incoming.value("symbol")
        held = self._held(account)
        closing = [p for p in held.values() if symbol is None or p.symbol == symbol]
        for position in closing:
            del held[position.position_id]
        order_ids = [self._closing_order(position)["orderId"] for position in closing]
        return self._ok({"success": order_ids, "failed": None}, incoming)

    def _list_positions(self, incoming: _Incoming, account: SimAccount) -> _Answer:
        symbol = incoming.value("symbol")
        listed = [
            self._position_json(position, incoming.now_ms)
            for position in self._held(account).values()
            if symbol is None or position.symbol == symbol
        ]
        return self._ok(listed, incoming)

    def _closing_order(self, position: SimPosition) -> dict[str, object]:
        self._next_order_id += self._rng.randrange(1, 10**6)
        return {
            "orderId": self._next_order_id,
            "positionId": position.position_id,
            "symbol": position.symbol,
            "side": "Bid" if position.position_side == "SHORT" else "Ask",
            "type": "MARKET",
            "positionSide": {"LONG": "Long", "SHORT": "Short", "BOTH": "BOTH"}[
                position.position_side
            ],
            "origQty": position.quantity,
        }

    @staticmethod
    def _position_json(position: SimPosition, now_ms: int) -> dict[str, object]:
        price = Decimal(position.avg_price)
        margin = Decimal(position.quantity) * price / position.leverage
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
            "unrealizedProfit": "0.0000",
            "realisedProfit": "0.0000",
            "initialMargin": f"{margin:.4f}",
            "leverage": position.leverage,
            "liquidationPrice": float(liquidation),
            "markPrice": position.avg_price,
            "updateTime": now_ms,
        }

    def _held(self, account: SimAccount) -> dict[str, SimPosition]:
        if self._accounts.get(account.api_key) != account:
            raise ConfigurationError(f"unknown account uid={account.uid}; use add_account()")
        return self._positions[account.uid]

    # --- bodies -----------------------------------------------------------------------------

    @staticmethod
    def _ok(data: object, incoming: _Incoming) -> _Answer:
        return _Answer(200, {"code": 0, "msg": "", "timestamp": incoming.now_ms, "data": data})

    @staticmethod
    def _error(code: int, msg: str, incoming: _Incoming) -> dict[str, object]:
        return {"code": code, "msg": msg, "timestamp": incoming.now_ms}
