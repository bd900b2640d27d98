"""BingXClient: one request pipeline, retry around [limit -> sign -> send -> decode]."""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import httpx

from ._budgets import (
    CLOSE_ALL_POSITIONS,
    CLOSE_POSITION,
    DEFAULT_RATE_LIMITS,
    POSITIONS,
    SERVER_TIME,
    Budget,
    BudgetKey,
    RateLimitPolicy,
    endpoint_name,
)
from ._clock import Clock, SystemClock
from ._config import (
    DEFAULT_RECV_WINDOW,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    ENV_API_KEY,
    ENV_SECRET_KEY,
    Credentials,
    RetryPolicy,
    resolve_settings,
)
from ._errorguard import DEFAULT_ERROR_GUARD, ErrorGuardPolicy
from ._exceptions import (
    BingXError,
    ConfigurationError,
    InvalidArgumentError,
    IPBannedError,
    RateLimitError,
    RequestTimeout,
    ResponseValidationError,
    TransportError,
    body_code,
    error_from_response,
)
from ._models import CloseAllResult, ClosePositionResult, Position
from ._params import validate_params, validate_position_id, validate_symbol
from ._ratelimit import BudgetUsage, Permit
from ._redact import install_httpx_log_filter
from ._retry import RetryHooks, call_with_retries
from ._shared import ProcessState, process_state
from ._signing import Params, canonical_pairs, encode_query, raw_query, sign
from ._timesync import ServerClock

__all__ = ["BingXClient", "CloseProgress"]

logger = logging.getLogger("bingx_async")

#: Re-measure BingX's clock this often (seconds).
DEFAULT_CLOCK_SYNC_INTERVAL = 300.0

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE"})

#: Seconds a clock measurement may take; a slow one is abandoned, not waited for.
_SYNC_TIMEOUT = 2.0

#: The longest any block is shared with other calls, whatever BingX or a proxy said
#: (a ``Retry-After: 86400`` must not freeze every account of the process for a day).
_LONGEST_SHARED_HOLD = 900.0

#: Seconds a cancelled request may still need to reach BingX; its slot is dated that late.
_ABANDONED_REQUEST_TRANSIT = 1.0


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class _Endpoint:
    method: str
    path: str
    signed: bool
    #: Safe to send again when an earlier attempt's outcome is unknown.
    repeat_safe: bool

    @classmethod
    def named(cls, name: str, *, signed: bool, repeat_safe: bool) -> _Endpoint:
        method, path = name.split(" ", 1)
        return cls(method, path, signed, repeat_safe)

    @property
    def name(self) -> str:
        return endpoint_name(self.method, self.path)


# Closing by ID is safe to repeat: a second close cannot close anything twice.
_CLOSE_POSITION = _Endpoint.named(CLOSE_POSITION, signed=True, repeat_safe=True)
_CLOSE_ALL = _Endpoint.named(CLOSE_ALL_POSITIONS, signed=True, repeat_safe=False)
_POSITIONS = _Endpoint.named(POSITIONS, signed=True, repeat_safe=True)
_SERVER_TIME = _Endpoint.named(SERVER_TIME, signed=False, repeat_safe=True)


@dataclass(frozen=True, slots=True)
class CloseProgress:
    """Passed to ``close_positions``' ``on_progress`` as each close finishes."""

    position_id: str | int
    outcome: ClosePositionResult | BingXError
    done: int
    total: int


class BingXClient:
    """An asyncio client for BingX USDT-M perpetual futures.

    One client is meant to be shared by every task of a bot: it holds one connection pool,
    and its rate limiter, clock offset and error counts are shared with every other client
    of the process on the same host (and the same API key).

    ``timeout`` configures the connection pool the client creates; with ``http_client=``
    the given client's own timeout applies.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        secret_key: str | None = None,
        base_url: str | None = None,
        recv_window: float = DEFAULT_RECV_WINDOW,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        rate_limits: RateLimitPolicy = DEFAULT_RATE_LIMITS,
        error_guard: ErrorGuardPolicy | None = DEFAULT_ERROR_GUARD,
        clock_sync_interval: float | None = DEFAULT_CLOCK_SYNC_INTERVAL,
        uid: str | None = None,
        clock: Clock | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        settings = resolve_settings(
            api_key=api_key, secret_key=secret_key, base_url=base_url, recv_window=recv_window
        )
        if not isinstance(retry, RetryPolicy):
            raise ConfigurationError("retry must be a RetryPolicy")
        if not isinstance(rate_limits, RateLimitPolicy):
            raise ConfigurationError("rate_limits must be a RateLimitPolicy")
        if clock_sync_interval is not None and not clock_sync_interval > 0:
            raise ConfigurationError("clock_sync_interval must be > 0 seconds, or None")
        if not isinstance(timeout, httpx.Timeout) and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise ConfigurationError(
                f"timeout must be seconds > 0 or an httpx.Timeout, got {timeout!r}"
            )
        if http_client is not None and transport is not None:
            raise ConfigurationError("pass either http_client or transport, not both")
        if uid is not None and (not isinstance(uid, str) or not uid.strip()):
            raise ConfigurationError("uid must be a non-empty string")

        self._credentials = settings.credentials
        self._base_url = settings.base_url
        self._host = urlsplit(self._base_url).netloc
        self._recv_window_ms = round(settings.recv_window * 1000)
        self._retry = retry
        self._rate_limits = rate_limits
        self._error_guard = error_guard
        self._clock_sync_interval = clock_sync_interval
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng if rng is not None else random.Random()
        # Budgets and error counts are per account and host (production and the demo
        # host are separate exchanges).
        account = (
            uid
            if uid is not None
            else (self._credentials.fingerprint if self._credentials else None)
        )
        self._account = f"{account}@{self._host}" if account is not None else None
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            transport=transport,
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
            headers={"User-Agent": "bingx-async"},
            follow_redirects=False,
        )
        self._state = _State.UNOPENED
        install_httpx_log_filter()

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise RuntimeError("a BingXClient cannot be reopened once closed")
        self._state = _State.OPENED
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (only if this client created it)."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._owns_http:
            await self._http.aclose()

    def __repr__(self) -> str:
        account = f"<{self._credentials.fingerprint}>" if self._credentials else None
        return f"BingXClient(base_url={self._base_url!r}, api_key={account})"

    @property
    def base_url(self) -> str:
        return self._base_url

    # --- endpoints ----------------------------------------------------------------------

    async def close_position(
        self, position_id: str | int, *, retry: RetryPolicy | None = None
    ) -> ClosePositionResult:
        """Close a whole position at market by its ID.

        Raises :class:`PositionNotFoundError` when BingX has no such open position, and
        :class:`PositionPossiblyClosedError` when it has none after an earlier attempt whose
        outcome was unknown (that attempt most likely closed it).

        Concurrent closes of the same position (by any client of this process using the same
        account) share one request and its outcome; the first caller's ``retry`` applies.
        """
        requested = validate_position_id(position_id)
        self._ensure_open()

        async def close() -> ClosePositionResult:
            data = await self._call(_CLOSE_POSITION, {"positionId": requested}, retry=retry)
            try:
                return ClosePositionResult.from_data(data, requested_id=requested)
            except Exception:  # noqa: BLE001 - code 0 means closed, however odd the data
                logger.warning("closePosition %s: unreadable data; keeping it raw", requested)
                raw = data if isinstance(data, Mapping) else {}
                return ClosePositionResult(requested, None, None, None, None, None, None, raw)

        return await self._shared().closes.run((self._account, requested), close)

    async def close_positions(
        self,
        position_ids: Iterable[str | int],
        *,
        retry: RetryPolicy | None = None,
        on_progress: Callable[[CloseProgress], object] | None = None,
    ) -> list[ClosePositionResult | BingXError]:
        """Close many positions concurrently; one outcome per ID, in input order.

        Each outcome is the result or the :class:`BingXError` that close raised; one failure
        never stops the others. An ID listed twice is closed once and both places get the
        same outcome. ``on_progress`` is called as each close finishes.
        """
        self._ensure_open()
        ids = list(position_ids)
        outcomes: list[ClosePositionResult | BingXError | None] = [None] * len(ids)
        done = 0

        async def close_one(index: int, position_id: str | int) -> None:
            nonlocal done
            try:
                outcome: ClosePositionResult | BingXError = await self.close_position(
                    position_id, retry=retry
                )
            except BingXError as error:
                outcome = error
            except Exception as error:  # noqa: BLE001 - one ID's surprise must not sink the rest
                outcome = BingXError(
                    f"unexpected {type(error).__name__} while closing {position_id}: {error}",
                    may_have_executed=True,
                )
                outcome.__cause__ = error
            outcomes[index] = outcome
            done += 1
            if on_progress is not None:
                try:
                    on_progress(CloseProgress(position_id, outcome, done, len(ids)))
                except Exception:
                    logger.exception("close_positions: on_progress raised; continuing")

        async with asyncio.TaskGroup() as group:
            for index, position_id in enumerate(ids):
                group.create_task(close_one(index, position_id))
        return [outcome for outcome in outcomes if outcome is not None]

    async def close_all_positions(
        self, symbol: str | None = None, *, retry: RetryPolicy | None = None
    ) -> CloseAllResult:
        """Close every open position (of one symbol, if given) at market.

        Not repeated after an attempt whose outcome is unknown: a second "close all" could
        close a position opened in the meantime.
        """
        params = {"symbol": validate_symbol(symbol)} if symbol is not None else {}
        return CloseAllResult.from_data(await self._call(_CLOSE_ALL, params, retry=retry))

    async def get_positions(
        self, symbol: str | None = None, *, retry: RetryPolicy | None = None
    ) -> list[Position]:
        """Open positions, optionally for one symbol (e.g. ``"BTC-USDT"``)."""
        params = {"symbol": validate_symbol(symbol)} if symbol is not None else {}
        data = await self._call(_POSITIONS, params, retry=retry)
        if data is None:
            return []
        if not isinstance(data, list):
            raise ResponseValidationError(
                f"expected a list of positions, got {type(data).__name__} ({_POSITIONS.name})",
                body=str(data),
                endpoint=_POSITIONS.name,
                may_have_executed=False,
            )
        positions = [
            Position.from_data(item) if isinstance(item, Mapping) else None for item in data
        ]
        if None in positions:
            # A position without an ID cannot be closed or tracked: never drop it silently.
            raise ResponseValidationError(
                f"a listed position has no usable positionId ({_POSITIONS.name})",
                body=str(data),
                endpoint=_POSITIONS.name,
                may_have_executed=False,
            )
        return [position for position in positions if position is not None]

    async def server_time(self) -> datetime:
        """BingX's current time (one unsigned request)."""
        return datetime.fromtimestamp(await self._server_time_ms() / 1000, tz=UTC)

    async def request(
        self,
        method: str,
        path: str,
        params: Params | None = None,
        *,
        signed: bool = True,
        repeat_safe: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Call any BingX endpoint through the same pipeline; returns the body's ``data``.

        ``repeat_safe`` says whether the request may be sent again when an earlier attempt's
        outcome is unknown (default: only for GET).
        """
        if not isinstance(method, str) or method.upper() not in _METHODS:
            raise InvalidArgumentError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
        if (
            not isinstance(path, str)
            or not path.startswith("/")
            or not (path.isascii() and path.isprintable())
            or any(c in path for c in "?# ")
        ):
            raise InvalidArgumentError(
                f"path must start with '/' and carry no query (pass params), got {path!r}"
            )
        method = method.upper()
        endpoint = _Endpoint(
            method, path, signed, method == "GET" if repeat_safe is None else repeat_safe
        )
        return await self._call(endpoint, validate_params(params or {}), retry=retry)

    def rate_limit_usage(self) -> list[BudgetUsage]:
        """What every budget of this process holds now (call from the running event loop)."""
        return self._shared().limiter.usage()

    # --- the pipeline -------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("this BingXClient is closed")

    def _shared(self) -> ProcessState:
        return process_state(self._clock)

    def _budgets(self, endpoint: _Endpoint) -> list[tuple[BudgetKey, Budget]]:
        account = self._account if endpoint.signed else None
        return self._rate_limits.budgets(endpoint.name, host=self._host, account=account)

    async def _call(
        self, endpoint: _Endpoint, params: Params, *, retry: RetryPolicy | None = None
    ) -> Any:
        self._ensure_open()
        credentials = self._require_credentials() if endpoint.signed else None
        policy = retry if retry is not None else self._retry
        shared = self._shared()
        budgets = self._budgets(endpoint)
        ticket = shared.limiter.next_ticket()

        async def attempt() -> Any:
            return await self._attempt(endpoint, params, credentials, budgets, ticket, policy)

        def share_block(error: RateLimitError, wait: float) -> bool:
            # Hold siblings for at most this long; the call itself still fails at once.
            wait = min(wait, max(_LONGEST_SHARED_HOLD, policy.ip_ban_hold))
            until = self._clock.monotonic() + wait
            if isinstance(error, IPBannedError):
                shared.limiter.block_host(self._host, until, error)
                return True
            ip_wide = isinstance(error, IPBannedError) or error.code is None or not endpoint.signed
            keys = [key for key, _ in budgets if (key[0] != "account") == ip_wide]
            # Only "disabled until T" says a frequency rule was broken; other shapes (busy,
            # error-rate ban, IP ban) say nothing about the budget's size.
            frequency_rule = (
                error.unblock_at is not None
                and error.banned_code is None
                and not isinstance(error, IPBannedError)
            )
            if keys:
                shared.limiter.block(
                    keys,
                    until,
                    error,
                    learn=frequency_rule and self._rate_limits.adapt,
                )
            return bool(keys)

        return await call_with_retries(
            attempt,
            policy=policy,
            clock=self._clock,
            jitter=self._rng.random,
            repeat_safe=endpoint.repeat_safe,
            hooks=RetryHooks(share_block=share_block, resync_clock=self._resync_clock),
            endpoint=endpoint.name,
        )

    async def _attempt(
        self,
        endpoint: _Endpoint,
        params: Params,
        credentials: Credentials | None,
        budgets: list[tuple[BudgetKey, Budget]],
        ticket: int,
        policy: RetryPolicy,
    ) -> Any:
        shared = self._shared()
        if credentials is not None:
            await self._sync_clock_if_due()
        permit = await shared.limiter.acquire(
            budgets,
            ticket=ticket,
            label=endpoint.name,
            max_block_wait=policy.max_server_wait + policy.unblock_margin,
            margin=self._rate_limits.margin,
        )
        guard = self._error_guard if credentials is not None else None
        account = self._account or ""
        if guard is not None:
            try:
                shared.errors.admit(account, endpoint.name, guard)
            except BingXError:
                permit.release(sent=False)
                raise
        code: int | None = None
        try:
            response = await self._send(endpoint, params, credentials, permit)
            data, code = self._decode(endpoint, response)
        except BingXError as error:
            code = error.code
            raise
        except asyncio.CancelledError:
            # Abandoned mid-flight: the bytes may still be on their way to BingX.
            permit.release(still_arriving=_ABANDONED_REQUEST_TRANSIT)
            raise
        finally:
            permit.release()
            if guard is not None:
                shared.errors.finish(account, endpoint.name, code)
        return data

    def _build_request(
        self, endpoint: _Endpoint, params: Params, credentials: Credentials | None
    ) -> httpx.Request:
        headers: dict[str, str] = {}
        if credentials is None:
            query = encode_query(canonical_pairs(params))
        else:
            signed_params = dict(params)
            signed_params["timestamp"] = int(self._server_clock().time() * 1000)
            signed_params["recvWindow"] = self._recv_window_ms
            pairs = canonical_pairs(signed_params)
            signature = sign(credentials.secret_key, raw_query(pairs))
            query = f"{encode_query(pairs)}&signature={signature}"
            headers["X-BX-APIKEY"] = credentials.api_key
        url = f"{self._base_url}{endpoint.path}" + (f"?{query}" if query else "")
        return self._http.build_request(endpoint.method, url, headers=headers)

    async def _send(
        self,
        endpoint: _Endpoint,
        params: Params,
        credentials: Credentials | None,
        permit: Permit,
        *,
        http_timeout: float | None = None,
    ) -> httpx.Response:
        request = self._build_request(endpoint, params, credentials)
        if http_timeout is not None:
            request.extensions["timeout"] = httpx.Timeout(http_timeout).as_dict()
        logger.debug("sending %s", endpoint.name)
        try:
            return await self._http.send(request)
        except httpx.TimeoutException as exc:
            before_sending = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
            if before_sending:
                permit.release(sent=False)
            stage = "connecting" if before_sending else "waiting for BingX"
            raise RequestTimeout(
                f"{endpoint.name} timed out {stage} ({type(exc).__name__})",
                endpoint=endpoint.name,
                may_have_executed=not before_sending,
            ) from exc
        except httpx.ConnectError as exc:
            permit.release(sent=False)
            raise TransportError(
                f"could not connect to {self._host} for {endpoint.name}: {exc}",
                endpoint=endpoint.name,
                may_have_executed=False,
            ) from exc
        except httpx.HTTPError as exc:
            raise TransportError(
                f"{endpoint.name} failed after sending ({type(exc).__name__}: {exc}); "
                "the request may have executed",
                endpoint=endpoint.name,
                may_have_executed=True,
            ) from exc

    def _decode(self, endpoint: _Endpoint, response: httpx.Response) -> tuple[Any, int | None]:
        """The body's ``data`` and code 0, or raise the mapped error."""
        try:
            text = response.text
            body = json.loads(text, parse_float=Decimal)
        except (ValueError, RecursionError, LookupError):
            # Not JSON, too deeply nested, or in an unknown charset.
            text = response.content[:2000].decode("utf-8", "replace")
            body = None
        if isinstance(body, dict) and body_code(body) == 0:
            return body.get("data"), 0
        raise error_from_response(
            status_code=response.status_code,
            body=body if isinstance(body, dict) else None,
            text=text,
            endpoint=endpoint.name,
            headers=response.headers,
            server_now=self._server_clock().time(),
        )

    # --- credentials and BingX's clock --------------------------------------------------

    def _require_credentials(self) -> Credentials:
        if self._credentials is None:
            raise ConfigurationError(
                f"this call is signed and needs an API key pair: pass api_key= and secret_key=, "
                f"or set the {ENV_API_KEY} and {ENV_SECRET_KEY} environment variables"
            )
        return self._credentials

    def _server_clock(self) -> ServerClock:
        return self._shared().server_clock(self._host)

    async def _server_time_ms(self) -> int:
        return _server_time_from(await self._call(_SERVER_TIME, {}))

    async def _measure_server_clock(self) -> tuple[int, float, float]:
        """One quick, unretried server-time request, timed from when it leaves."""
        permit = await self._shared().limiter.acquire(
            self._budgets(_SERVER_TIME), label=_SERVER_TIME.name, margin=self._rate_limits.margin
        )
        try:
            sent = self._clock.time()
            started = self._clock.monotonic()
            response = await self._send(_SERVER_TIME, {}, None, permit, http_timeout=_SYNC_TIMEOUT)
            round_trip = self._clock.monotonic() - started
            data, _ = self._decode(_SERVER_TIME, response)
        finally:
            permit.release()
        return _server_time_from(data), sent, round_trip

    async def _sync_clock_if_due(self) -> None:
        """Measure BingX's clock before the first signed request; later, in the background."""
        interval = self._clock_sync_interval
        server_clock = self._server_clock()
        if interval is None or not server_clock.due(interval):
            return
        if server_clock.synced:
            server_clock.sync_in_background(self._measure_server_clock)
        else:
            await server_clock.sync(self._measure_server_clock)

    async def _resync_clock(self) -> None:
        await self._server_clock().sync(self._measure_server_clock)


def _server_time_from(data: Any) -> int:
    server_time = data.get("serverTime") if isinstance(data, Mapping) else None
    if isinstance(server_time, bool) or not isinstance(server_time, int):
        raise ResponseValidationError(
            f"server time answer has no integer serverTime ({_SERVER_TIME.name})",
            body=str(data),
            endpoint=_SERVER_TIME.name,
            may_have_executed=False,
        )
    return server_time
