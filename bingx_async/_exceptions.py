"""Every error the library raises, and the one mapping from BingX answers to them.

::

    BingXError                        base: .code .msg .status_code .endpoint .may_have_executed
    ├── ConfigurationError            bad client options or missing credentials (also ValueError)
    ├── InvalidArgumentError          bad call arguments, raised before sending (also ValueError)
    ├── ClientClosedError             the client or its session was closed (also RuntimeError)
    ├── ErrorRateGuardError           refused locally: one more error would get the endpoint banned
    ├── TransportError                no complete HTTP answer (wraps the httpx error as __cause__)
    │   └── RequestTimeout
    ├── ResponseValidationError       a 2xx answer that is not a BingX envelope (e.g. an HTML page)
    └── APIError                      BingX (or a proxy in front of it) answered with an error
        ├── AuthenticationError       100001 signature, 100412/100413 API key, HTTP 401
        ├── PermissionDeniedError     100004 missing permission, 100419 IP not whitelisted
        ├── TimestampError            80014/109400/100421 when the message is about the timestamp
        ├── BadRequestError           other 80014/109400/100421, 100400, HTTP 400
        ├── PositionNotFoundError     101205, 80017, 109422, 109420
        │   └── PositionPossiblyClosedError   not found after an attempt whose outcome was unknown
        ├── OrderRejectedError        80020/109403 risk forbidden, 100202/101204 margin
        ├── RateLimitError            100410, 100409, 109429, HTTP 429: .unblock_at .retry_after
        │   ├── IPBannedError         HTTP 418 and 403: banned or firewalled, never retried
        │   └── QueueTimeoutError     not sent: total_timeout ran out waiting for a slot
        └── ServerError               HTTP 5xx, 100500, 100503, 80012, 109500, 101500
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

from ._redact import redact

__all__ = [
    "RATE_LIMIT_CODES",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "BingXError",
    "ClientClosedError",
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
    "TimestampError",
    "TransportError",
    "body_code",
    "error_from_response",
    "parse_unblock_time",
]


class BingXError(Exception):
    """Base of every error raised by bingx_async.

    ``may_have_executed`` is ``False`` when the request is known not to have taken effect
    (rejected by BingX, refused locally, or never sent) and ``True`` when its outcome is
    unknown (timeouts after sending, 5xx, 504 "unknown status").
    """

    #: Default for instances: ``True`` only for failures that leave the outcome unknown.
    outcome_unknown: ClassVar[bool] = False

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
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.code = code
        self.msg = redact(msg) if msg is not None else None
        self.status_code = status_code
        self.endpoint = endpoint
        self.may_have_executed = (
            self.outcome_unknown if may_have_executed is None else may_have_executed
        )
        #: Attempts the call made before raising this (set by the retry layer).
        self.attempts = 1
        #: How an earlier attempt of the same call failed when its outcome was unknown.
        self.earlier_error: BingXError | None = None

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

    Raised by calls made after :meth:`BingXClient.aclose`, and by calls still waiting to be
    sent when it was called: those were never sent (``may_have_executed`` is ``False``
    unless an earlier attempt of the same call had an unknown outcome).
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
        super().__init__(message, endpoint=endpoint, may_have_executed=False)
        self.banned_code = banned_code
        self.count = count
        self.window = window
        self.retry_after = retry_after


class TransportError(BingXError):
    """No complete HTTP answer arrived. ``__cause__`` is the underlying httpx error."""


class RequestTimeout(TransportError):
    """The request timed out; unless it timed out connecting, it may have executed."""


class ResponseValidationError(BingXError):
    """A successful HTTP answer whose body is not what BingX sends. ``.body`` holds its text."""

    outcome_unknown = True

    def __init__(self, message: str, *, body: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.body = redact(body)[:2000]


class APIError(BingXError):
    """BingX answered with an error. ``.body`` is the decoded JSON body, if any."""

    def __init__(
        self, message: str, *, body: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.body = body


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

    The earlier attempt most likely closed it; ``earlier_error`` is how that attempt failed.
    """

    def __init__(
        self, message: str, *, earlier_error: BingXError | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.earlier_error = earlier_error


class OrderRejectedError(APIError):
    """BingX refused to trade (risk control, insufficient margin)."""


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

    outcome_unknown = True


# --- mapping -------------------------------------------------------------------------------

_BY_CODE: dict[int, type[APIError]] = {
    100001: AuthenticationError,
    100412: AuthenticationError,
    100413: AuthenticationError,
    100004: PermissionDeniedError,
    100419: PermissionDeniedError,
    100400: BadRequestError,
    80014: BadRequestError,
    109400: BadRequestError,
    100421: BadRequestError,
    101205: PositionNotFoundError,
    80017: PositionNotFoundError,
    109422: PositionNotFoundError,
    109420: PositionNotFoundError,
    80020: OrderRejectedError,
    109403: OrderRejectedError,
    100202: OrderRejectedError,
    101204: OrderRejectedError,
    100410: RateLimitError,
    100409: RateLimitError,
    109429: RateLimitError,
    100500: ServerError,
    100503: ServerError,
    80012: ServerError,
    109500: ServerError,
    101500: ServerError,
}

#: BingX's rate-limit codes (100409 and 100410 became 109429 on 2025-10-16).
RATE_LIMIT_CODES = frozenset({100410, 100409, 109429})

#: Codes that mean a timestamp problem only when the message talks about the timestamp
#: (100421 is also used for "pair restricted from API trading", 109400 for any bad parameter).
_TIMESTAMP_CODES = frozenset({80014, 109400, 100421})

_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: IPBannedError,
    418: IPBannedError,
    429: RateLimitError,
}

_UNBLOCK_TIME = re.compile(r"after(?:\s+time)?\s*:?\s*(\d{10}(?:\d{3})?)(?!\d)", re.IGNORECASE)
_ERROR_RATE_BAN = re.compile(r"over\s+\d+\s+error\s+code\s*:?\s*(\d+)", re.IGNORECASE)


def parse_unblock_time(msg: str) -> float | None:
    """The unblock moment named in a 100410 message, as epoch seconds (server clock).

    Accepts 13-digit epoch milliseconds (what BingX sends) and 10-digit epoch seconds.
    """
    match = _UNBLOCK_TIME.search(msg)
    if match is None:
        return None
    digits = match.group(1)
    return int(digits) / 1000 if len(digits) == 13 else float(int(digits))


def _retry_after_header(headers: Mapping[str, str], now: float | None) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    if now is None:
        return None
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _describe(status_code: int, code: int | None, msg: str, endpoint: str) -> str:
    where = f"HTTP {status_code}, {endpoint}"
    if code is None:
        return f"{msg} ({where})"
    return f"BingX error {code}: {msg} ({where})"


def body_code(body: Mapping[str, Any]) -> int | None:
    code = body.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, Decimal) and code.is_finite() and code == code.to_integral_value():
        return int(code)
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code)
    return None


def error_from_response(
    *,
    status_code: int,
    body: Mapping[str, Any] | None,
    text: str,
    endpoint: str,
    headers: Mapping[str, str],
    server_now: float | None,
) -> BingXError:
    """Map one BingX answer to an exception. The JSON body's code wins over the HTTP status.

    ``server_now`` is our best estimate of BingX's clock (epoch seconds), used when the body
    carries no ``timestamp`` of its own.
    """
    code = body_code(body) if body is not None else None
    if body is not None and code is not None:
        msg = str(body.get("msg") or "")
        stamp = body.get("timestamp")
        if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
            server_now = stamp / 1000
        cls = _BY_CODE.get(code) or _BY_STATUS.get(status_code) or _fallback_class(status_code)
        if code in _TIMESTAMP_CODES and "timestamp" in msg.lower():
            cls = TimestampError
        # A rate-limit code on a 418/403 is still a ban: never retried.
        if issubclass(cls, RateLimitError) and _BY_STATUS.get(status_code) is IPBannedError:
            cls = IPBannedError
    else:
        cls = _BY_STATUS.get(status_code) or _fallback_class(status_code)
        if 200 <= status_code < 300:
            return ResponseValidationError(
                f"BingX answered HTTP {status_code} with a body that is not its JSON envelope "
                f"({endpoint})",
                body=text,
                status_code=status_code,
                endpoint=endpoint,
            )
        msg = _summarise_text(text) or f"HTTP {status_code}"

    message = _describe(status_code, code, msg, endpoint)
    common: dict[str, Any] = {
        "code": code,
        "msg": msg,
        "status_code": status_code,
        "endpoint": endpoint,
        "body": body,
    }
    if issubclass(cls, RateLimitError):
        unblock_at = parse_unblock_time(msg)
        if unblock_at is not None and server_now is not None:
            retry_after: float | None = max(0.0, unblock_at - server_now)
        else:
            retry_after = _retry_after_header(headers, server_now)
        ban = _ERROR_RATE_BAN.search(msg)
        if cls is IPBannedError:
            message += "; not retried: stop sending to this host until the ban lifts"
        return cls(
            message,
            unblock_at=unblock_at,
            retry_after=retry_after,
            banned_code=int(ban.group(1)) if ban else None,
            **common,
        )
    if status_code == 504 and cls is ServerError:
        message += "; the request may have executed (unknown status)"
    return cls(message, **common)


def _fallback_class(status_code: int) -> type[APIError]:
    return ServerError if status_code >= 500 else APIError


def _summarise_text(text: str) -> str:
    """A short, single-line excerpt of a non-JSON body (e.g. a proxy's HTML error page)."""
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    excerpt = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    excerpt = " ".join(excerpt.split())
    if not excerpt:
        return ""
    return "non-JSON body: " + (excerpt[:120] + "..." if len(excerpt) > 120 else excerpt)
