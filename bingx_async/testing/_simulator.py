"""FakeBingX: a strict, in-process stand-in for BingX's perpetual-futures REST API.

The core is transport-agnostic: ``FakeBingX.handle`` takes one request's method, path,
raw query string and headers and returns a ``SimResponse`` (or a ``NoAnswer``).
``FakeBingX.transport`` wraps it as an httpx transport (no sockets) and
``FakeBingX.serve`` as a loopback HTTP/1.1 server. ``FakeBingX.stream`` is the account stream:
its listen-key endpoints go through the same pipeline, and ``FakeBingX.serve_stream`` serves
its WebSocket side on loopback.

Each request goes through the same steps BingX takes, as its API documentation describes them:

1. optional arrival jitter (a random wait through the clock), then the arrival is recorded;
2. injected faults that strike before the exchange (``FakeBingX.inject``);
3. unknown endpoints: HTTP 404, code 100400;
4. rate limits, from the same ``RateLimitPolicy`` table the client
   uses: a request arriving when one of its budgets is full disables the endpoint for a while;
5. for signed endpoints: API key, HMAC signature over the received decoded params, timestamp
   (the listen-key endpoints need the API key only, unless ``stream.require_signature``);
6. the endpoint itself (positions are held per account);
7. the error-rate ban: the (threshold+1)-th identical error code from one endpoint within the
   ban window is answered with a 100410 ban instead.

This module owns that pipeline and the checks around the exchange (steps 1-5 and 7); the
pieces live beside it: the request and answer shapes in ``_wire``, faults in ``_faults``,
accounts, positions and recorded requests in ``_records``, window counting and blocks in
``_windows``, the endpoints with the state they serve (step 6) in ``_endpoints``, and the
account stream in ``_stream``.

Time is read, and waited on, only through the injected ``Clock``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import math
import random
import re
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Literal

from bingx_async._budgets import (
    DEFAULT_RATE_LIMITS,
    Budget,
    EndpointBudgets,
    RateLimitPolicy,
    endpoint_name,
)
from bingx_async._clock import Clock, SystemClock
from bingx_async._exceptions import ConfigurationError

from ._clocks import FakeClock
from ._endpoints import ORDER_PATH, SimExchange
from ._faults import Fault, FaultQueue, RefuseConnection, fault_result
from ._fills import DEFAULT_TAKER_FEE_RATE
from ._records import PositionSide, RecordedRequest, SimAccount, SimOrder, SimPosition
from ._stream import LISTEN_KEY_PATH, SimStream
from ._windows import ArrivalLog, Block, Blocks, Window, trim
from ._wire import Answer, Incoming, NoAnswer, SimResponse, decode_query, encode, error

if TYPE_CHECKING:
    import httpx

__all__ = ["FakeBingX"]

#: The host name rate-limit budgets are counted under: every request comes from one IP.
SIM_HOST = "sim"

BlockShape = Literal[1, 2, 3, 4]

_TIMESTAMP_MESSAGES = {100421: "Null timestamp or timestamp mismatch"}
#: BingX's rate-limit codes (100409 and 100410 became 109429 on 2025-10-16).
_RATE_LIMIT_CODES = frozenset({100410, 100409, 109429})
_MAX_TIMESTAMP_AHEAD_MS = 1000
_INTEGER = re.compile(r"-?[0-9]+")
#: The budgets BingX documents for the stream's endpoints, which the client's table (the
#: default ``rate_limits``) does not list: 2/s per UID for each listen-key endpoint, 5/s for
#: the order query (not confirmed), all in IP group 2.
_STREAM_BUDGETS = {
    endpoint_name("POST", LISTEN_KEY_PATH): (Budget(2, 1.0),),
    endpoint_name("PUT", LISTEN_KEY_PATH): (Budget(2, 1.0),),
    endpoint_name("DELETE", LISTEN_KEY_PATH): (Budget(2, 1.0),),
    endpoint_name("GET", ORDER_PATH): (Budget(5, 1.0),),
}


class FakeBingX:
    """A strict BingX perpetual-futures API for tests: verifies signatures and timestamps,
    enforces rate limits and error-rate bans, holds positions, and fails on demand.

    Endpoints: ``GET /openApi/swap/v2/server/time`` (public), and, signed,
    ``POST /openApi/swap/v1/trade/closePosition``, ``GET /openApi/swap/v2/user/positions``,
    ``POST /openApi/swap/v2/trade/closeAllPositions``,
    ``GET /openApi/swap/v1/trade/positionHistory`` (closed positions, newest first) and
    ``GET /openApi/swap/v2/trade/order`` (the orders that closed positions); with the API key
    only, ``POST``/``PUT``/``DELETE /openApi/user/auth/userDataStream`` (listen keys for the
    account stream, [`stream`][bingx_async.testing.SimStream]).

    ``clock`` is the only source of time (default [`SystemClock`][bingx_async.SystemClock]);
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
    ``rate_limits`` that do not list the stream's endpoints get BingX's documented budgets for
    them. A close fills at the position's ``fill_price`` and pays ``taker_fee_rate`` of the
    filled value.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        rate_limits: RateLimitPolicy = DEFAULT_RATE_LIMITS,
        window: Window = "rolling",
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
        taker_fee_rate: str = DEFAULT_TAKER_FEE_RATE,
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
        self.rate_limits: RateLimitPolicy = _with_stream_budgets(rate_limits)
        self.window = window
        self.arrival_jitter = arrival_jitter
        self.disabled_period = disabled_period
        self.error_ban_threshold = error_ban_threshold
        self.error_ban_window = error_ban_window
        self.error_ban_period = error_ban_period
        self.clock_skew = clock_skew
        self.recv_window_default_ms = recv_window_default_ms
        self.timestamp_error_code = timestamp_error_code
        self.rate_limit_code = rate_limit_code
        self.rate_limit_status_code = rate_limit_status_code
        #: Every request received, in arrival order.
        self.requests: list[RecordedRequest] = []
        self._rng = random.Random(seed)
        self._exchange = SimExchange(
            self._rng, not_found_code=not_found_code, taker_fee_rate=taker_fee_rate
        )
        #: The account stream: listen keys, open streams, their settings and faults.
        self.stream: SimStream = SimStream(self)
        self._exchange.keyed.update(self.stream._handlers())
        self._exchange.fill_listeners.append(self.stream._on_fill)
        self._faults = FaultQueue()
        self._arrivals = ArrivalLog(window)
        self._errors: dict[tuple[str | None, str, int], deque[float]] = defaultdict(deque)
        self._blocks = Blocks()
        self._violations = 0

    @property
    def not_found_code(self) -> int:
        """The code for closing a position that is not held (settable)."""
        return self._exchange.not_found_code

    @not_found_code.setter
    def not_found_code(self, code: int) -> None:
        self._exchange.not_found_code = code

    # --- setup and inspection ---------------------------------------------------------------

    def add_account(
        self,
        *,
        api_key: str | None = None,
        secret_key: str | None = None,
        uid: str | None = None,
        balance: str = "10000.0",
    ) -> SimAccount:
        """Register an API key pair; missing values are generated (from ``seed``). ``balance``
        is the account's USDT wallet balance (kept if the UID already has one)."""
        return self._exchange.add_account(
            api_key=api_key, secret_key=secret_key, uid=uid, balance=balance
        )

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
        mark_price: str | None = None,
    ) -> SimPosition:
        """Open a position for ``account`` (``position_id``: 19 random digits below 2**63
        by default, as BingX's IDs). A close fills at ``mark_price``, or at ``avg_price`` (the
        entry price) if none is given."""
        return self._exchange.add_position(
            account,
            symbol=symbol,
            position_side=position_side,
            quantity=quantity,
            position_id=position_id,
            avg_price=avg_price,
            leverage=leverage,
            mark_price=mark_price,
            opened_ms=self.server_time_ms(),
        )

    def positions(self, account: SimAccount) -> list[SimPosition]:
        """The account's open positions, oldest first."""
        return list(self._exchange.held(account).values())

    def orders(self, account: SimAccount) -> list[SimOrder]:
        """The orders that closed the account's positions, oldest first: what the close
        answered (``order_id``), and the fill the stream and the order query report."""
        return self._exchange.orders(account)

    def balance(self, account: SimAccount) -> str:
        """The account's USDT wallet balance, after every close's profit and fee."""
        return self._exchange.balance(account)

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
        self._faults.add(fault, path, count)

    def pending_faults(self) -> int:
        """How many fault applications are still waiting for a request."""
        return self._faults.remaining()

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
        name = endpoint if " " in endpoint else self._exchange.endpoint_for_path(endpoint)
        unblock_ms = self.server_time_ms() + round(seconds * 1000)
        msg = self._limit_message(shape, unblock_ms, banned_code)
        uid = account.uid if account is not None else None
        self._blocks.disable(name, uid, Block(self.clock.monotonic() + seconds, msg))

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

    @contextlib.asynccontextmanager
    async def serve_stream(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve the account stream over WebSocket in the running loop; yields its URL,
        ``ws://127.0.0.1:<port>/swap-market``, to connect to with ``?listenKey=<key>``.

        Needs the ``websockets`` package (``pip install 'bingx-async[stream]'``) and a clock
        whose waits take time: ``SystemClock`` or ``LoopClock`` (under ``looptime`` for
        virtual time), not ``FakeClock``, on which the stream's pings would never stop.
        """
        if isinstance(self.clock, FakeClock):
            raise ConfigurationError(
                "serve_stream() needs a clock whose waits take time: SystemClock or LoopClock"
            )
        try:
            from ._stream_server import StreamServer
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "serve_stream() needs the websockets package: pip install 'bingx-async[stream]'"
            ) from error

        server = StreamServer(self.stream)
        url = await server.start(host, port)
        try:
            yield url
        finally:
            await server.aclose()

    # --- the request pipeline ---------------------------------------------------------------

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> SimResponse | NoAnswer:
        """Answer one request (``query``: the raw, still percent-encoded query string)."""
        if self.arrival_jitter > 0:
            await self.clock.sleep(self._rng.uniform(0.0, self.arrival_jitter))
        incoming = Incoming(
            method=method.upper(),
            path=path,
            params=decode_query(query),
            headers={name.lower(): value for name, value in headers.items()},
            arrived_at=self.clock.monotonic(),
            now_ms=self.server_time_ms(),
        )
        account = self._exchange.account(incoming.headers.get("x-bx-apikey", ""))
        fault = self._faults.take(path)
        if isinstance(fault, RefuseConnection):
            return NoAnswer.REFUSE
        answer = None
        if fault is None or fault.reaches_exchange:
            answer = self._process(incoming, account)
        during_block = isinstance(answer, Answer) and answer.during_block
        if fault is not None:
            return self._send(fault_result(fault), incoming, account, during_block, fault)
        assert answer is not None
        if isinstance(answer, Answer):
            answer = SimResponse(answer.status_code, encode(answer.body))
        return self._send(answer, incoming, account, during_block)

    def _take_connection_refusal(self) -> bool:
        """For the server: consume a pending path-less refusal if it is next in line."""
        return self._faults.take_connection_refusal()

    def _send(
        self,
        result: SimResponse | NoAnswer,
        incoming: Incoming,
        account: SimAccount | None,
        during_block: bool,
        fault: Fault | None = None,
    ) -> SimResponse | NoAnswer:
        """Record ``result`` as the answer to ``incoming``, then return it."""
        status_code = result.status_code if isinstance(result, SimResponse) else None
        body: Mapping[str, object] = {}
        if (
            isinstance(result, SimResponse)
            and result.content_type == "application/json"
            and result.body
        ):
            body = json.loads(result.body)
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
        return result

    def _process(self, incoming: Incoming, account: SimAccount | None) -> Answer | SimResponse:
        endpoint = endpoint_name(incoming.method, incoming.path)
        public = self._exchange.public.get(endpoint)
        signed = self._exchange.signed.get(endpoint)
        keyed = self._exchange.keyed.get(endpoint)
        if public is None and signed is None and keyed is None:
            return error(100400, "this api is not exist", incoming, status_code=404)
        uid = account.uid if account is not None else None
        limited = self._rate_limit(endpoint, incoming, uid)
        if limited is not None:
            return limited
        if public is not None:
            answer = public(incoming)
        else:
            must_sign = signed is not None or self.stream.require_signature
            verified = self._verify(incoming, account, signature=must_sign)
            if not isinstance(verified, SimAccount):
                answer = verified
            elif keyed is not None:
                return keyed(incoming, verified)  # no JSON code: nothing for the error-rate ban
            else:
                assert signed is not None
                answer = signed(incoming, verified)
        if answer.code != 0:
            return self._error_rate_ban(endpoint, uid, answer.code, incoming) or answer
        return answer

    # --- rate limits and bans ---------------------------------------------------------------

    def _rate_limit(self, endpoint: str, incoming: Incoming, uid: str | None) -> Answer | None:
        now = incoming.arrived_at
        budgets = self.rate_limits._budgets(endpoint, host=SIM_HOST, account=uid)
        overflowing = [
            key for key, budget in budgets if self._arrivals.count(key, budget, now) >= budget.limit
        ]
        for key, budget in budgets:
            self._arrivals.add(key, budget, now)
        block = self._blocks.active(endpoint, uid, now)
        if block is not None:
            return self._rate_limited(block.msg, incoming, during_block=True)
        if not overflowing:
            return None
        self._violations += 1
        unblock_ms = incoming.now_ms + round(self.disabled_period * 1000)
        block = Block(now + self.disabled_period, self._limit_message(1, unblock_ms))
        for kind, _, _ in overflowing:
            self._blocks.disable(endpoint, uid if kind == "account" else None, block)
        return self._rate_limited(block.msg, incoming)

    def _error_rate_ban(
        self, endpoint: str, uid: str | None, code: int, incoming: Incoming
    ) -> Answer | None:
        if code in _RATE_LIMIT_CODES or code == self.rate_limit_code:
            return None
        now = incoming.arrived_at
        errors = self._errors[(uid, endpoint, code)]
        if trim(errors, now, self.error_ban_window) < self.error_ban_threshold:
            errors.append(now)
            return None
        unblock_ms = incoming.now_ms + round(self.error_ban_period * 1000)
        block = Block(now + self.error_ban_period, self._limit_message(3, unblock_ms, code))
        self._blocks.disable(endpoint, uid, block)
        return self._rate_limited(block.msg, incoming)

    def _limit_message(self, shape: BlockShape, unblock_ms: int, banned_code: int = 0) -> str:
        if shape == 1:
            return (
                f"code:{self.rate_limit_code}:The endpoint trigger frequency limit rule is "
                f"currently in the disabled period and will be unblocked after {unblock_ms}"
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

    def _rate_limited(self, msg: str, incoming: Incoming, *, during_block: bool = False) -> Answer:
        return error(
            self.rate_limit_code,
            msg,
            incoming,
            status_code=self.rate_limit_status_code,
            during_block=during_block,
        )

    # --- verification -----------------------------------------------------------------------

    def _verify(
        self, incoming: Incoming, account: SimAccount | None, *, signature: bool = True
    ) -> SimAccount | Answer:
        if account is None:
            return error(100413, "Incorrect apiKey", incoming)
        if not signature:
            return account
        params = incoming.params
        signature_at = [i for i, (key, _) in enumerate(params) if key == "signature"]
        if signature_at != [len(params) - 1] or not hmac.compare_digest(
            _signature(account.secret_key, params[:-1]), params[-1][1]
        ):
            return error(100001, "Signature verification failed", incoming)
        if not self._timestamp_ok(incoming):
            msg = _TIMESTAMP_MESSAGES.get(self.timestamp_error_code, "timestamp is invalid")
            return error(self.timestamp_error_code, msg, incoming)
        return account

    def _timestamp_ok(self, incoming: Incoming) -> bool:
        timestamp = incoming.value("timestamp")
        recv_window = incoming.value("recvWindow")
        if timestamp is None or not _INTEGER.fullmatch(timestamp):
            return False
        if recv_window is not None and not _INTEGER.fullmatch(recv_window):
            return False
        window_ms = int(recv_window) if recv_window is not None else self.recv_window_default_ms
        age_ms = incoming.now_ms - int(timestamp)
        return -_MAX_TIMESTAMP_AHEAD_MS <= age_ms <= window_ms


def _with_stream_budgets(policy: RateLimitPolicy) -> RateLimitPolicy:
    """``policy``, plus BingX's budgets for the stream's endpoints where it names none."""
    ip_group = 2 if 2 in policy.ip_groups else None
    endpoints = dict(policy.endpoints)
    for endpoint, per_account in _STREAM_BUDGETS.items():
        endpoints.setdefault(endpoint, EndpointBudgets(per_account, ip_group))
    return dataclasses.replace(policy, endpoints=endpoints)


def _signature(secret_key: str, params: list[tuple[str, str]]) -> str:
    """What BingX's docs say it checks: HMAC-SHA256, keyed by the secret, over the parameters
    as received (decoded, in the order sent) joined as ``k=v&k=v``, in lower-case hex. Written
    here from the docs rather than taken from the client, so that the two can disagree."""
    message = "&".join(f"{key}={value}" for key, value in params)
    return hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).hexdigest()
