"""BingXClient: what a bot calls. Each call runs the one pipeline (see ``_pipeline``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import inspect
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import TracebackType
from typing import Any, Self

import httpx

from ._body import ACCEPT_ENCODING
from ._budgets import DEFAULT_RATE_LIMITS, RateLimitPolicy
from ._clock import Clock, SystemClock
from ._config import (
    DEFAULT_RECV_WINDOW,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    ENV_API_KEY,
    ENV_SECRET_KEY,
    UID_AUTO,
    RetryPolicy,
    resolve_settings,
)
from ._confirm import CloseConfirmation
from ._connection import Connection
from ._decode import server_time_from
from ._endpoints import (
    CLOSE,
    CLOSE_ALL,
    LIST_POSITIONS,
    ORDER_QUERY,
    TIME,
    UID,
    Endpoint,
    listen_key_endpoint,
)
from ._errorguard import DEFAULT_ERROR_GUARD, ErrorGuardPolicy
from ._exceptions import (
    BingXError,
    ClientClosedError,
    ConfigurationError,
    InvalidArgumentError,
    ResponseValidationError,
    error_text,
)
from ._flights import Flight
from ._limits import Claim
from ._models import CloseAllResult, ClosePositionResult, Fill, Position
from ._params import validate_params, validate_position_id, validate_symbol
from ._pipeline import Pipeline
from ._ratelimit import BudgetUsage
from ._redact import install_httpx_log_filter
from ._redis import ENV_SHARED_LIMITS, check_redis_url
from ._session import BingXSession, default_session
from ._signing import Params
from ._stream import AccountStream, StreamSettings, StreamSubscription
from ._stream._close_fills import CloseFills
from ._stream._settings import stream_settings_for

__all__ = ["BingXClient", "CloseProgress"]

logger = logging.getLogger("bingx_async")

#: Re-measure BingX's clock this often (seconds).
DEFAULT_CLOCK_SYNC_INTERVAL = 300.0

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE"})


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class CloseProgress:
    """Passed to ``close_positions``' ``on_progress`` as each close finishes."""

    position_id: str | int
    outcome: ClosePositionResult | BingXError
    done: int
    total: int


class BingXClient:
    """An asyncio client for BingX USDT-M perpetual futures.

    One client is meant to be shared by every task of a bot: it holds one connection pool. Its
    rate limiter, clock offset, error counts and closes in flight live in its
    [`BingXSession`][bingx_async.BingXSession], shared with every other client of that session:
    by default, all clients of the event loop (with the same clock).

    ``timeout`` applies to every request, also through a given ``http_client``. ``proxy``
    (a URL such as ``"http://user:pass@proxy:3128"``, or an ``httpx.Proxy``) sends through a
    proxy; without it, the standard ``HTTPS_PROXY``, ``ALL_PROXY`` and ``NO_PROXY``
    environment variables apply, as in httpx.
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
        confirm_closes: bool = True,
        allow_insecure_http: bool = False,
        session: BingXSession | None = None,
        shared_limits: Any = None,
        clock: Clock | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        proxy: str | httpx.Proxy | None = None,
        rng: random.Random | None = None,
        stream: StreamSettings | None = None,
    ) -> None:
        settings = resolve_settings(
            api_key=api_key,
            secret_key=secret_key,
            base_url=base_url,
            recv_window=recv_window,
            timeout=timeout,
            retry=retry,
            rate_limits=rate_limits,
            error_guard=error_guard,
            clock_sync_interval=clock_sync_interval,
            uid=uid,
            allow_insecure_http=allow_insecure_http,
        )
        # The objects a client is wired to (not settings):
        if http_client is not None and transport is not None:
            raise ConfigurationError("pass either http_client or transport, not both")
        if proxy is not None and (http_client is not None or transport is not None):
            raise ConfigurationError(
                "proxy= configures the connection pool the client creates: with http_client= "
                "or transport=, configure the proxy there"
            )
        if proxy is not None and not isinstance(proxy, str | httpx.Proxy):
            raise ConfigurationError("proxy must be a URL string or an httpx.Proxy")
        if stream is not None and not isinstance(stream, StreamSettings):
            raise ConfigurationError("stream must be a StreamSettings")
        if session is not None and not isinstance(session, BingXSession):
            raise ConfigurationError("session must be a BingXSession")
        if shared_limits is None and session is None:
            shared_limits = os.environ.get(ENV_SHARED_LIMITS) or None
        elif shared_limits is not None and session is not None:
            raise ConfigurationError(
                "a client shares what its session shares: pass shared_limits= to BingXSession"
            )
        if session is not None and clock is not None and clock is not session.clock:
            raise ConfigurationError(
                "a client uses its session's clock: pass clock= to BingXSession, not both"
            )

        self._credentials = settings.credentials
        self._retry = retry
        self._confirm_closes = bool(confirm_closes)
        self._clock: Clock = (
            session.clock if session is not None else clock if clock is not None else SystemClock()
        )
        self._given_session = session
        if isinstance(shared_limits, str):
            check_redis_url(shared_limits)
        self._shared_limits = None if session is not None else shared_limits
        self._session: BingXSession | None = None
        self._connection = Connection(
            base_url=settings.base_url,
            credentials=settings.credentials,
            recv_window_ms=round(settings.recv_window * 1000),
            timeout=settings.timeout,
            http=http_client
            or httpx.AsyncClient(
                transport=transport,
                proxy=_proxy(proxy),
                timeout=settings.timeout,
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
                headers={"User-Agent": "bingx-async", "Accept-Encoding": ACCEPT_ENCODING},
                follow_redirects=False,
            ),
            owns_http=http_client is None,
        )
        host = self._connection.host
        # Budgets and error counts are per account and host (production and the demo
        # host are separate exchanges).
        #: ``uid="auto"``: the UID is asked of BingX before the first signed call.
        self._uid_auto = uid == UID_AUTO
        account = (
            uid
            if uid is not None and not self._uid_auto
            else (self._credentials.fingerprint if self._credentials else None)
        )
        self._pipeline = Pipeline(
            host=host,
            account=f"{account}@{host}" if account is not None else None,
            rate_limits=rate_limits,
            error_guard=error_guard,
            clock_sync_interval=clock_sync_interval,
            jitter=(rng if rng is not None else random.Random()).random,
        )
        #: The account stream's settings (``None``: its address for this host is not known).
        self._stream_settings = stream if stream is not None else stream_settings_for(host)
        self._state = _State.UNOPENED
        install_httpx_log_filter()

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state is _State.CLOSED:
            raise ClientClosedError("a BingXClient cannot be reopened once closed")
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
        """Close the client.

        Calls still waiting to be sent end at once with
        [`ClientClosedError`][bingx_async.ClientClosedError] (nothing was sent), unless another
        open client of the session is waiting for the same close; requests already on the wire
        get their answers first, so their outcomes are known. Then the connection pool is closed
        (only if this client created it).
        """
        if self._state is _State.CLOSED:
            return
        if self._session is not None:
            # Account streams only this client used end first, their listen keys deleted
            # through it while it can still send.
            await self._session._streams.release(self)
        self._state = _State.CLOSED
        session, self._session = self._session, None
        self._connection.open = False
        if session is not None:
            session._flights.connection_closing(self._connection)
        try:
            await self._connection.aclose()
        finally:
            if session is not None:
                await session._detach(self._connection)

    def __repr__(self) -> str:
        account = f"<{self._credentials.fingerprint}>" if self._credentials else None
        return f"BingXClient(base_url={self.base_url!r}, api_key={account})"

    @property
    def base_url(self) -> str:
        return self._connection.base_url

    @property
    def session(self) -> BingXSession:
        """The session this client shares budgets and closes in flight with (call from the
        running event loop: the default session is the loop's)."""
        return self._use_session()

    # --- endpoints ----------------------------------------------------------------------

    async def close_position(
        self,
        position_id: str | int,
        *,
        symbol: str | None = None,
        retry: RetryPolicy | None = None,
        wait_fill: bool = False,
    ) -> ClosePositionResult:
        """Close a whole position at market by its ID.

        Raises [`PositionNotFoundError`][bingx_async.PositionNotFoundError] when BingX has no
        such open position, and
        [`PositionPossiblyClosedError`][bingx_async.PositionPossiblyClosedError] when it has
        none after an earlier attempt whose outcome was unknown (that attempt most likely closed
        it).

        When an attempt's outcome is unknown (a 504, a connection lost after sending), BingX's
        records are asked before anything is sent again (unless ``confirm_closes=False``):
        the position history, if the position's ``symbol`` is known (pass it, or list the
        positions with [`get_positions`][bingx_async.BingXClient.get_positions] first), then
        all open positions. A close found in the history returns a result with
        ``confirmed_from_history=True``. The position is concluded gone only when no open
        position of any symbol has its ID: a wrong ``symbol`` cannot make an open position
        look closed (a symbol BingX lists the position under instead is logged as a
        warning, and used).

        Concurrent closes of the same position (by any client of the session using the same
        account) share one request and its outcome; the first caller's ``retry`` applies.
        Cancelling the call withdraws the close if it was not sent yet; once sent, the
        request still gets its answer, and a new close of the position receives it.

        ``wait_fill=True`` also waits for what the closing order filled (``fill``: average
        price, quantity, realized profit, fee), seen on the account's stream, or else asked of
        BingX once; ``fill`` is ``None`` when neither said in time (see [fills][fills]). It
        needs the ``stream`` extra.
        """
        requested = validate_position_id(position_id)
        if symbol is not None:
            symbol = validate_symbol(symbol)
        if self._uid_auto:
            await self._learn_uid()
        account = self._pipeline.account
        policy = retry if retry is not None else self._retry
        fills = self._close_fills(policy) if wait_fill else None
        # total_timeout counts from here: waiting for the stream and the fill included.
        started = self._clock.monotonic()
        deadline = started + policy.total_timeout if policy.total_timeout is not None else None
        if fills is not None:
            await fills.listening(started, deadline)
        #: When the close's request left (known to the caller whose flight sent it).
        sent = _Sent(started)

        def result(data: Any) -> ClosePositionResult:
            if isinstance(data, ClosePositionResult):
                return data  # confirmed from the position history
            try:
                return ClosePositionResult._from_data(data, requested_id=requested)
            except Exception:  # noqa: BLE001 - code 0 means closed, however odd the data
                logger.warning("closePosition %s: unreadable data; keeping it raw", requested)
                raw = data if isinstance(data, Mapping) else {}
                return ClosePositionResult(requested, None, None, None, None, None, None, raw)

        params: Params = {"positionId": requested}
        closed: ClosePositionResult = await self._call(
            CLOSE,
            params,
            retry=retry,
            key=("close", account, requested),
            parse=result,
            confirm=CloseConfirmation(requested, symbol, account) if self._confirm_closes else None,
            claim=f"close|{account or ''}|{requested}",
            started=started,
            sent=sent,
        )
        if fills is not None and closed.order_id is not None:
            fill = await fills.fill(closed.order_id, closed.symbol or symbol, sent.at, deadline)
            closed = dataclasses.replace(closed, fill=fill)
        return closed

    async def close_positions(
        self,
        position_ids: Iterable[str | int],
        *,
        retry: RetryPolicy | None = None,
        on_progress: Callable[[CloseProgress], object] | None = None,
        wait_fill: bool = False,
    ) -> list[ClosePositionResult | BingXError]:
        """Close many positions concurrently; exactly one outcome per ID, in input order.

        Each outcome is the result or the [`BingXError`][bingx_async.BingXError] that close
        raised; one failure never stops the others. An ID listed twice is closed once and both
        places get the same outcome. ``on_progress`` (a function or a coroutine function) is
        called as each close finishes. ``wait_fill`` is as for
        [`close_position`][bingx_async.BingXClient.close_position].
        """
        self._ensure_open()
        ids = list(position_ids)
        if wait_fill:
            if self._uid_auto:
                await self._learn_uid()
            self._account_stream()  # an unusable stream is refused before anything is sent
        outcomes: list[ClosePositionResult | BingXError | None] = [None] * len(ids)
        done = 0

        async def close_one(index: int, position_id: str | int) -> None:
            nonlocal done
            try:
                outcome: ClosePositionResult | BingXError = await self.close_position(
                    position_id, retry=retry, wait_fill=wait_fill
                )
            except BingXError as error:
                outcome = error
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                outcome = _no_outcome(position_id, "it was cancelled inside the library")
            except Exception as error:  # noqa: BLE001 - one ID's surprise must not sink the rest
                outcome = BingXError(
                    f"unexpected {_named(error)} while closing {position_id}",
                    may_have_executed=True,
                )
                outcome.__cause__ = error
            outcomes[index] = outcome
            done += 1
            if on_progress is not None:
                await _report(on_progress, CloseProgress(position_id, outcome, done, len(ids)))

        async with asyncio.TaskGroup() as group:
            for index, position_id in enumerate(ids):
                group.create_task(close_one(index, position_id))
        return [
            outcome if outcome is not None else _no_outcome(ids[index], "no outcome was recorded")
            for index, outcome in enumerate(outcomes)
        ]

    async def close_all_positions(
        self,
        symbol: str | None = None,
        *,
        retry: RetryPolicy | None = None,
        wait_fill: bool = False,
    ) -> CloseAllResult:
        """Close every open position (of one symbol, if given) at market.

        Not repeated after an attempt whose outcome is unknown: a second "close all" could
        close a position opened in the meantime.

        ``wait_fill=True``: ``fills`` maps each closing order to what it filled, as for
        [`close_position`][bingx_async.BingXClient.close_position]; a fill not seen on the
        stream is asked of BingX only when ``symbol`` is given (the order query needs it).
        """
        params = {"symbol": validate_symbol(symbol)} if symbol is not None else {}
        if self._uid_auto and wait_fill:
            await self._learn_uid()
        policy = retry if retry is not None else self._retry
        fills = self._close_fills(policy) if wait_fill else None
        started = self._clock.monotonic()
        deadline = started + policy.total_timeout if policy.total_timeout is not None else None
        if fills is not None:
            await fills.listening(started, deadline)
        sent = _Sent(started)
        result = CloseAllResult._from_data(
            await self._call(CLOSE_ALL, params, retry=retry, started=started, sent=sent)
        )
        if fills is None:
            return result
        found = await asyncio.gather(
            *(fills.fill(order, symbol, sent.at, deadline) for order in result.order_ids)
        )
        return dataclasses.replace(result, fills=dict(zip(result.order_ids, found, strict=True)))

    @contextlib.asynccontextmanager
    async def account_stream(
        self, *, queue_size: int | None = None
    ) -> AsyncIterator[StreamSubscription]:
        """The account's events as they happen (BingX's user data stream), for as long as
        the ``async with`` block lasts:

        ```python
        async with client.account_stream() as events:
            async for event in events:
                if isinstance(event, OrderUpdate): ...
        ```

        Events are [`OrderUpdate`][bingx_async.OrderUpdate],
        [`AccountUpdate`][bingx_async.AccountUpdate] and
        [`OtherEvent`][bingx_async.OtherEvent], and two markers: a
        [`StreamReconnected`][bingx_async.StreamReconnected] after the connection was lost
        (events may have been missed meanwhile) and
        [`EventsDropped`][bingx_async.EventsDropped] when more than ``queue_size`` events were
        left unread. One stream per account is shared by every client of the session (and
        by ``wait_fill``). The block starts once the stream listens (or after the stream
        settings' ``ready_timeout``, with a warning). Needs the ``stream`` extra.
        """
        if self._uid_auto:
            await self._learn_uid()
        stream = self._account_stream()
        async with stream.subscribe(queue_size=queue_size) as events:
            # Events come from the moment the stream listens: wait for it, a while.
            await stream.listening(None)
            yield events

    async def get_positions(
        self, symbol: str | None = None, *, retry: RetryPolicy | None = None
    ) -> list[Position]:
        """Open positions, optionally for one symbol (e.g. ``"BTC-USDT"``)."""
        params = {"symbol": validate_symbol(symbol)} if symbol is not None else {}
        data = await self._call(LIST_POSITIONS, params, retry=retry)
        if data is None:
            return []
        self._note_symbols(data)
        if not isinstance(data, list):
            raise ResponseValidationError(
                f"expected a list of positions, got {type(data).__name__} ({LIST_POSITIONS.name})",
                body=str(data),
                endpoint=LIST_POSITIONS.name,
                may_have_executed=False,
            )
        positions = [
            Position._from_data(item) if isinstance(item, Mapping) else None for item in data
        ]
        if None in positions:
            # A position without an ID cannot be closed or tracked: never drop it silently.
            raise ResponseValidationError(
                f"a listed position has no usable positionId ({LIST_POSITIONS.name})",
                body=str(data),
                endpoint=LIST_POSITIONS.name,
                may_have_executed=False,
            )
        return [position for position in positions if position is not None]

    async def server_time(self) -> datetime:
        """BingX's current time (one unsigned request)."""
        millis = server_time_from(await self._call(TIME, {}), TIME.name)
        return datetime.fromtimestamp(millis / 1000, tz=UTC)

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
        endpoint = Endpoint(
            method, path, signed, method == "GET" if repeat_safe is None else repeat_safe
        )
        return await self._call(endpoint, validate_params(params or {}), retry=retry)

    def rate_limit_usage(self) -> list[BudgetUsage]:
        """What every budget of this client's session holds now (call from the running
        event loop)."""
        return self._use_session().rate_limit_usage()

    # --- internals ----------------------------------------------------------------------

    def _account_stream(self) -> AccountStream:
        """The account's stream in this client's session, made if need be."""
        settings = self._stream_settings
        if settings is None:
            raise ConfigurationError(
                f"the account stream's address for {self.base_url} is not known: pass "
                "stream=StreamSettings(url='wss://...')"
            )
        self._require_credentials()
        session = self._use_session()
        account = self._pipeline.account or ""

        def make(rest: Any) -> AccountStream:
            return AccountStream(rest, settings=settings, clock=session.clock)

        try:
            return session._streams.use(account, self, self._listen_key_request, make)
        except ImportError as error:  # websockets is missing: refused before anything is sent
            raise ConfigurationError(error_text(error)) from error

    def _close_fills(self, policy: RetryPolicy) -> CloseFills:
        """Fills of closes made under ``policy``, which their order queries follow too."""

        async def query(symbol: str, order_id: str, deadline: float | None) -> Fill | None:
            return await self._query_fill(symbol, order_id, deadline, policy)

        return CloseFills(self._account_stream(), self._clock, query)

    async def _listen_key_request(self, method: str, path: str, params: Mapping[str, str]) -> Any:
        settings = self._stream_settings
        signed = settings is not None and settings.sign_listen_key
        return await self._call(listen_key_endpoint(method, path, signed=signed), dict(params))

    async def _query_fill(
        self, symbol: str, order_id: str, deadline: float | None, retry: RetryPolicy
    ) -> Fill | None:
        if deadline is not None:
            left = deadline - self._clock.monotonic()
            if left <= 0:
                return None
            retry = dataclasses.replace(retry, total_timeout=left)
        data = await self._call(ORDER_QUERY, {"symbol": symbol, "orderId": order_id}, retry=retry)
        return Fill._from_order(data, order_id=order_id)

    def _note_symbols(self, positions: object) -> None:
        """Remember each listed position's symbol, for confirming closes later."""
        if not isinstance(positions, list):
            return
        symbols = self._use_session()._symbols
        for item in positions:
            if isinstance(item, Mapping):
                position = Position._from_data(item)
                if position is not None and position.symbol:
                    symbols.note(self._pipeline.account, position.position_id, position.symbol)

    def _ensure_open(self) -> None:
        if self._state is _State.CLOSED:
            raise ClientClosedError("this BingXClient is closed", may_have_executed=False)

    def _use_session(self) -> BingXSession:
        """The session for this call: the given one, or the running loop's default."""
        self._ensure_open()
        session = self._session
        if session is not None and session._usable():
            # The given session, or still the loop's default for this client's clock and
            # shared limits (a default is replaced only once it is closed).
            return session
        session = self._given_session or default_session(self._clock, self._shared_limits)
        if session is not self._session:
            session._attach(self._connection)
            self._session = session
        else:
            session._check_usable()
        return session

    async def _learn_uid(self) -> None:
        """With ``uid="auto"``: ask BingX for the key's UID, once per key and session, so
        that every key of one account shares its budgets. If BingX does not say, the key
        stands for the account meanwhile, and BingX is asked again a minute later."""
        if not self._uid_auto or self._credentials is None:
            return
        session = self._use_session()
        cache_key = (self._connection.host, self._credentials.fingerprint)
        known = session._uids.get(cache_key)
        if isinstance(known, str):
            self._use_uid(known)
            return
        if isinstance(known, float) and session.clock.monotonic() < known:
            return  # asked lately, without an answer
        lookup = known if isinstance(known, asyncio.Future) else None
        if lookup is None:
            lookup = asyncio.get_running_loop().create_future()
            session._uids[cache_key] = lookup
            try:
                data = await self._call(UID, {}, retry=dataclasses.replace(self._retry, attempts=2))
                uid = _as_uid(data)
            except BingXError as error:
                logger.warning(
                    "uid=auto: BingX did not say this key's UID (%s); its budgets are kept "
                    "per key for now",
                    type(error).__name__,
                )
                session._uids[cache_key] = session.clock.monotonic() + _UID_RETRY
                lookup.set_result(None)
                return
            except BaseException:
                # Cancelled: the next call asks again; callers waiting on this one go on.
                session._uids.pop(cache_key, None)
                lookup.set_result(None)
                raise
            session._uids[cache_key] = uid
            lookup.set_result(uid)
        found = await asyncio.shield(lookup)
        if isinstance(found, str):
            self._use_uid(found)

    def _use_uid(self, uid: str) -> None:
        account = f"{uid}@{self._connection.host}"
        if self._pipeline.account != account:
            self._pipeline = dataclasses.replace(self._pipeline, account=account)

    def _require_credentials(self) -> None:
        if self._credentials is None:
            raise ConfigurationError(
                f"this call is signed and needs an API key pair: pass api_key= and secret_key=, "
                f"or set the {ENV_API_KEY} and {ENV_SECRET_KEY} environment variables"
            )

    async def _call(
        self,
        endpoint: Endpoint,
        params: Params,
        *,
        retry: RetryPolicy | None = None,
        key: Hashable | None = None,
        parse: Callable[[Any], Any] | None = None,
        confirm: CloseConfirmation | None = None,
        claim: str | None = None,
        started: float | None = None,
        sent: _Sent | None = None,
    ) -> Any:
        """Run one call in a flight of the session; concurrent calls with one ``key`` share.

        ``confirm`` says how to confirm a close whose outcome is unknown before retrying.
        ``claim`` names a call that only one caller anywhere may make at a time (with shared
        limits, other processes wait for its outcome rather than send it too). ``started``:
        when the call began (``clock.monotonic()``; default now), for its ``total_timeout``.
        ``sent`` learns when the call's last request left, if this caller's flight sent it.
        """
        self._ensure_open()
        if endpoint.for_account:
            self._require_credentials()
            if self._uid_auto and endpoint is not UID:
                await self._learn_uid()
        self._connection.check_size(endpoint, params)
        policy = retry if retry is not None else self._retry
        session = self._use_session()
        if started is None:
            started = session.clock.monotonic()
        pipeline = self._pipeline
        # Only limits shared with other processes hold claims: in this one, the session's
        # flights already make concurrent callers share the call.
        claimed = claim if session.shared_limits is not None else None

        async def run(flight: Flight[Any]) -> Any:
            data = await pipeline.call(
                session,
                flight,
                endpoint,
                params,
                policy=policy,
                started=started,
                confirm=confirm,
                claim=Claim(claimed, _close_to_text, _close_from_text) if claimed else None,
            )
            if sent is not None and flight.sent_at is not None:
                sent.at = flight.sent_at
            return parse(data) if parse is not None else data

        return await session._flights.run(key, self._connection, run)


class _Sent:
    """When a call's last request left (``clock.monotonic()``). Until its flight says, when
    the call began: a caller who joined another's flight does not learn it."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at


def _close_to_text(result: Any) -> str:
    """A close's result as other processes get it: BingX's data, or a result confirmed from
    the position history."""
    if isinstance(result, ClosePositionResult):
        fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        fields["data"] = dict(result.data)
        return json.dumps({"confirmed": fields}, default=str, separators=(",", ":"))
    return json.dumps({"data": result}, default=str, separators=(",", ":"))


def _close_from_text(text: str) -> Any:
    """Another process's close result (see :func:`_close_to_text`), as the call returns it."""
    try:
        found = json.loads(text)
    except ValueError:
        found = None
    if not isinstance(found, dict):
        return {}
    fields = found.get("confirmed")
    if not isinstance(fields, dict):
        data = found.get("data")
        return data if data is not None else {}
    return ClosePositionResult(
        position_id=str(fields.get("position_id")),
        order_id=fields.get("order_id"),
        symbol=fields.get("symbol"),
        side=fields.get("side"),
        type=fields.get("type"),
        position_side=fields.get("position_side"),
        orig_qty=_decimal_or_none(fields.get("orig_qty")),
        data=data if isinstance(data := fields.get("data"), dict) else {},
        confirmed_from_history=bool(fields.get("confirmed_from_history")),
        close_time=_datetime_or_none(fields.get("close_time")),
        avg_close_price=_decimal_or_none(fields.get("avg_close_price")),
    )


def _decimal_or_none(value: Any) -> Decimal | None:
    try:
        return Decimal(value) if value is not None else None
    except (InvalidOperation, TypeError, ValueError):
        return None


def _datetime_or_none(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _proxy(proxy: str | httpx.Proxy | None) -> httpx.Proxy | None:
    if proxy is None or isinstance(proxy, httpx.Proxy):
        return proxy
    try:
        return httpx.Proxy(proxy)
    except ValueError as error:
        # httpx's message quotes the URL, password included: name the problem only.
        raise ConfigurationError(
            f"proxy is not a usable proxy URL ({type(error).__name__}); expected "
            "http://, https:// or socks5:// with a host"
        ) from None


#: Seconds before asking BingX again for a UID it did not give.
_UID_RETRY = 60.0


def _as_uid(data: Any) -> str:
    found = data.get("uid") if isinstance(data, Mapping) else None
    uid = str(found) if isinstance(found, int | str) and not isinstance(found, bool) else ""
    if not uid.isdigit():
        raise ResponseValidationError(
            f"expected the account's UID, got {type(found).__name__} ({UID.name})",
            body=str(data)[:200],
            endpoint=UID.name,
            may_have_executed=False,
        )
    return uid


def _named(error: BaseException) -> str:
    """``KeyError: 'x'``, or only ``KeyError`` when it says nothing more."""
    name = type(error).__name__
    text = error_text(error)
    return name if text == name else f"{name}: {text}"


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _no_outcome(position_id: str | int, why: str) -> BingXError:
    return BingXError(
        f"the close of {position_id} ended without an outcome: {why}; check the position",
        may_have_executed=True,
    )


async def _report(on_progress: Callable[[CloseProgress], object], progress: CloseProgress) -> None:
    try:
        returned = on_progress(progress)
        if inspect.isawaitable(returned):
            await returned
    except Exception:
        logger.exception("close_positions: on_progress raised; continuing")
