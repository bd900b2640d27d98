"""Every error the library raises, and the one mapping from BingX answers to them.

::

    BingXError                        base: .code .msg .status_code .endpoint .may_have_executed
    ├── ConfigurationError            bad client options or missing credentials (also ValueError)
    ├── InvalidArgumentError          bad call arguments, raised before sending (also ValueError)
    ├── ClientClosedError             the client or its session was closed (also RuntimeError)
    ├── ErrorRateGuardError           refused locally: one more error would get the endpoint banned
    ├── SharedLimitsUnavailableError  not sent: the shared limits' Redis is down (on_outage="fail")
    ├── TransportError                no complete HTTP answer (wraps the httpx error as __cause__)
    │   └── RequestTimeout
    ├── ResponseValidationError       a 2xx answer that is not a BingX envelope (e.g. an HTML page)
    └── APIError                      BingX (or a proxy in front of it) answered with an error
        ├── AuthenticationError       100001 signature, 100412/100413 API key, HTTP 401
        ├── PermissionDeniedError     100004 missing permission, 100419 IP not whitelisted
        ├── TimestampError            80014/109400/100421 when the message is about the timestamp
        ├── BadRequestError           other 80014/109400/100421, 100400, HTTP 400
        ├── PositionNotFoundError     101205, 80017, 109422, 109420, 101400 "no position"
        │   └── PositionPossiblyClosedError   not found after an attempt whose outcome was unknown
        ├── OrderRejectedError        80020/109403 risk forbidden, 100202/101204 margin, ...
        │   └── CloseBlockedByOrdersError   80001/101212: open orders hold the position
        ├── RateLimitError            100410, 100409, 109429, HTTP 429: .unblock_at .retry_after
        │   ├── IPBannedError         HTTP 418 and 403: banned or firewalled, never retried
        │   └── QueueTimeoutError     not sent: total_timeout ran out waiting for a slot
        └── ServerError               HTTP 5xx, 100500, 100503, 109500, 101500, 80012 "busy"

Which body code and message raise which class is the table in :mod:`bingx_async._codes`;
the mapping itself is the decode stage, :mod:`bingx_async._decode`. Every error pickles with
its attributes (for ``ProcessPoolExecutor`` and the like).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar, cast

from ._redact import redact

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BingXError",
    "ClientClosedError",
    "CloseBlockedByOrdersError",
    "ConfigurationError",
    "ErrorRateGuardError",
    "IPBannedError",
    "InvalidArgumentError",
    "OrderRejectedError",
    "PermissionDeniedError",
    "PositionNotFoundError",
    "PositionPossiblyClosedError",
    "QueueTimeoutError",
    "RateLimitError",
    "RequestTimeout",
    "ResponseValidationError",
    "ServerError",
    "SharedLimitsUnavailableError",
    "TimestampError",
    "TransportError",
]

#: ``str(error)`` never exceeds this many characters (BingX's ``msg`` can be megabytes).
MAX_MESSAGE = 1000


class BingXError(Exception):
    """Base of every error raised by bingx_async.

    ``may_have_executed`` is ``False`` when the request is known not to have taken effect
    (rejected by BingX, refused locally, or never sent) and ``True`` when its outcome is
    unknown (timeouts after sending, 5xx, 504 "unknown status").
    """

    #: Default for instances: ``True`` only for failures that leave the outcome unknown.
    _outcome_unknown: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        msg: str | None = None,
        status_code: int | None = None,
        endpoint: str | None = None,
        may_have_executed: bool | None = None,
    ) -> None:
        message = redact(_clip(message, MAX_MESSAGE))
        super().__init__(message)
        self.message = message
        self.code = code
        self.msg: str | None = redact(_clip(msg, MAX_MESSAGE)) if msg is not None else None
        self.status_code = status_code
        self.endpoint = endpoint
        self.may_have_executed: bool = (
            self._outcome_unknown if may_have_executed is None else may_have_executed
        )
        #: Attempts the call made before raising this (set by the retry layer).
        self.attempts = 1
        #: How an earlier attempt of the same call failed when its outcome was unknown.
        self.earlier_error: BingXError | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors cannot be rebuilt from ``args``: restore the state as is.
        return (_rebuild, (type(self), self.message, self.__dict__))

    def __repr__(self) -> str:
        fields = [f"{self.message!r}"]
        for name in ("code", "status_code", "endpoint"):
            value = getattr(self, name)
            if value is not None:
                fields.append(f"{name}={value!r}")
        fields.append(f"may_have_executed={self.may_have_executed!r}")
        return f"{type(self).__name__}({', '.join(fields)})"


class ConfigurationError(BingXError, ValueError):
    """The client was configured wrongly or lacks credentials."""


class InvalidArgumentError(BingXError, ValueError):
    """A call's argument is invalid; nothing was sent."""


class ClientClosedError(BingXError, RuntimeError):
    """The client, or the session it uses, was closed.

    Raised by calls made after [`BingXClient.aclose`][bingx_async.BingXClient.aclose], and by
    calls still waiting to be sent when it was called: those were never sent
    (``may_have_executed`` is ``False`` unless an earlier attempt of the same call had an
    unknown outcome).
    """


class ErrorRateGuardError(BingXError):
    """Refused locally: BingX bans an endpoint after too many identical errors.

    ``count`` errors with code ``banned_code`` were answered within the last ``window``
    seconds, and with the requests still in flight one more could cross BingX's threshold;
    ``retry_after`` says when the oldest of them stops counting. ``banned_code`` is ``None``
    when the requests in flight alone reach the threshold.
    """

    def __init__(
        self,
        message: str,
        *,
        banned_code: int | None,
        count: int,
        window: float,
        retry_after: float,
        endpoint: str,
    ) -> None:
        super().__init__(message, endpoint=endpoint)
        self.banned_code = banned_code
        self.count = count
        self.window = window
        self.retry_after = retry_after


class SharedLimitsUnavailableError(BingXError):
    """Not sent: the Redis that shares the rate limits is unreachable, and the client was
    told to refuse calls rather than go on under in-process limits."""


class TransportError(BingXError):
    """No complete HTTP answer arrived. ``__cause__`` is the underlying httpx error."""


class RequestTimeout(TransportError):
    """The request timed out; unless it timed out connecting, it may have executed."""


class ResponseValidationError(BingXError):
    """A successful HTTP answer whose body is not what BingX sends. ``.body`` holds its text."""

    _outcome_unknown = True

    def __init__(self, message: str, *, body: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.body: str = redact(_clip(body, MAX_RAW_BODY))


class APIError(BingXError):
    """BingX answered with an error.

    ``.body`` is the decoded JSON body, if any (``None`` for a body larger than 64 KiB);
    ``.raw_body`` the answer's text, redacted and cut at 64 KiB.
    """

    def __init__(
        self,
        message: str,
        *,
        body: Mapping[str, Any] | None = None,
        raw_body: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.body = body
        self.raw_body: str | None = (
            redact(_clip(raw_body, MAX_RAW_BODY)) if raw_body is not None else None
        )


class AuthenticationError(APIError):
    """The signature or API key was rejected; check the key pair."""


class PermissionDeniedError(APIError):
    """The key may not do this (permission or IP whitelist)."""


class TimestampError(APIError):
    """BingX rejected the request's timestamp (clock skew or recvWindow too small)."""


class BadRequestError(APIError):
    """BingX rejected a parameter."""


class PositionNotFoundError(APIError):
    """No open position with this ID: never existed, or already closed."""


class PositionPossiblyClosedError(PositionNotFoundError):
    """The position is gone after an earlier attempt whose outcome was unknown.

    The earlier attempt most likely closed it; ``earlier_error`` is how that attempt failed,
    and ``checked`` lists what was looked up to find out more (open positions, the position
    history), with what each said.
    """

    def __init__(
        self,
        message: str,
        *,
        earlier_error: BingXError | None = None,
        checked: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.earlier_error = earlier_error
        self.checked = checked


class OrderRejectedError(APIError):
    """BingX refused to trade (risk control, insufficient margin); nothing executed."""


class CloseBlockedByOrdersError(OrderRejectedError):
    """Open orders on the position (or its pair) stop BingX from closing it: cancel those
    orders first, then close again. Nothing executed."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(
            f"{message}; cancel the open orders of this position first, then close again",
            **kwargs,
        )


class RateLimitError(APIError):
    """Rate limited or temporarily banned.

    ``unblock_at``: epoch seconds (BingX's clock) when BingX said it unblocks, if it did.
    ``retry_after``: seconds from when the error was raised until a retry may succeed, if known.
    ``banned_code``: for the error-rate ban ("over 20 error code:X requests"), that code X.
    ``attempts``: how many attempts the call made before giving up.
    ``refused_locally``: nothing was sent; an earlier answer had blocked this budget.
    """

    def __init__(
        self,
        message: str,
        *,
        unblock_at: float | None = None,
        retry_after: float | None = None,
        banned_code: int | None = None,
        refused_locally: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.unblock_at = unblock_at
        self.retry_after = retry_after
        self.banned_code = banned_code
        #: True when nothing was sent: the budget was already known to be blocked.
        self.refused_locally = refused_locally


class IPBannedError(RateLimitError):
    """HTTP 418 (banned for ignoring rate limits) or 403 (firewall). Never retried."""


class QueueTimeoutError(RateLimitError):
    """Not sent: the call's ``RetryPolicy.total_timeout`` ran out while it waited for its
    rate-limit budgets (the queue ahead of it was too long)."""


class ServerError(APIError):
    """BingX failed internally; the request may have executed."""

    _outcome_unknown = True


#: ``raw_body`` (and a validation error's ``body``) keep at most this many characters.
MAX_RAW_BODY = 64 * 1024


def restate(error: BingXError, message: str) -> None:
    """Replace ``error``'s message (as ``str(error)`` shows it too)."""
    message = redact(_clip(message, MAX_MESSAGE))
    error.message = message
    error.args = (message,)


def error_text(error: BaseException) -> str:
    """What ``error`` says, for a message or a log line: its text, or its class's name when
    it has none (``TimeoutError()`` says nothing; "()" in a message helps nobody)."""
    return str(error).strip() or type(error).__name__


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[: limit - 30]}... ({len(text)} characters)"


E = TypeVar("E", bound=BingXError)


def detached(error: E) -> E:
    """A copy of ``error`` without its traceback and the exceptions it was raised from
    (``__cause__``, ``__context__``), with its ``earlier_error`` detached in turn: what is
    kept of an error beyond its event loop's use (a traceback's frames hold on to the
    loop's objects)."""
    state = dict(error.__dict__)
    earlier = state.get("earlier_error")
    if isinstance(earlier, BingXError):
        state["earlier_error"] = detached(earlier)
    return cast(E, _rebuild(type(error), error.message, state))


def _rebuild(cls: type[BingXError], message: str, state: dict[str, Any]) -> BingXError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error
