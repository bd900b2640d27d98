"""The decode stage of the pipeline: an HTTP answer becomes BingX's ``data`` or an error.

Three steps, each bounded whatever the body:

1. **parse**: JSON with limits on numbers (at most 64 digits and an exponent of at most 100:
   ``1e1000000`` would otherwise cost the event loop half a minute to turn into an integer),
   ``NaN`` and ``Infinity`` read as missing values, and bodies over 8 MiB refused;
2. **classify**: the body code (ASCII digits only, at most 12 of them) and message select a
   class from BingX's code table (:mod:`bingx_async._codes`), else the HTTP status does;
3. **build**: the error, with its message cut to a bounded length and the raw body kept up
   to 64 KiB.

Every failure is a :class:`ResponseValidationError` or an :class:`APIError`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from ._codes import class_for
from ._exceptions import (
    MAX_RAW_BODY,
    APIError,
    AuthenticationError,
    BadRequestError,
    BingXError,
    IPBannedError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
)

__all__ = [
    "MAX_BODY",
    "body_code",
    "decode",
    "error_from_response",
    "parse_body",
    "parse_unblock_time",
    "server_time_from",
]

#: Bodies larger than this are not parsed (BingX's largest answers are a few hundred KiB).
MAX_BODY = 8 * 1024 * 1024
#: A JSON number with more digits than this is read as missing.
_MAX_DIGITS = 64
#: ... and so is one whose decimal exponent is further from 0 than this.
_MAX_EXPONENT = 100
#: BingX's codes have 5 or 6 digits.
_CODE = re.compile(r"-?[0-9]{1,12}")
_CODE_BOUND = 10**12
#: Only this much of a message is searched for unblock times and such.
_MSG_SCANNED = 2000
#: The latest epoch millisecond a date can hold (the end of year 9999).
_LAST_MS = 253_402_300_799_999


class Answer(Protocol):
    """What :func:`decode` reads of an answer (an ``httpx.Response`` has it too)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> httpx.Headers: ...

    @property
    def content(self) -> bytes: ...


def decode(endpoint: str, response: Answer, *, server_now: float, enveloped: bool = True) -> Any:
    """The body's ``data`` when its code is 0; otherwise raise the mapped error.

    ``server_now`` is the best estimate of BingX's clock (epoch seconds), used to turn an
    "unblocked after T" into a wait when the body carries no timestamp of its own.
    ``enveloped=False``: the endpoint may answer with a bare JSON object (the listen key's);
    a 2xx answer with one, or with no body, is returned whole (``{}`` for no body).
    """
    content = response.content
    body = parse_body(content)
    if body is not None and body_code(body) == 0 and not 300 <= response.status_code < 400:
        return body if not enveloped else body.get("data")
    if not enveloped and 200 <= response.status_code < 300:
        if body is not None and "code" not in body:
            return body
        if not content.strip():
            return {}
    raise error_from_response(
        status_code=response.status_code,
        body=body,
        text=content[:MAX_RAW_BODY].decode("utf-8", "replace"),
        endpoint=endpoint,
        headers=response.headers,
        server_now=server_now,
    )


def parse_body(content: bytes) -> dict[str, Any] | None:
    """The JSON object in ``content``, or ``None`` when it holds none (or is too large)."""
    if len(content) > MAX_BODY:
        return None
    try:
        # What json.loads(content, parse_int=..., ...) does, without a new decoder each time.
        body = _DECODER.decode(content.decode(json.detect_encoding(content), "surrogatepass"))
    except (ValueError, RecursionError, LookupError):
        # Not JSON, too deeply nested, or in an unknown charset.
        return None
    return body if isinstance(body, dict) else None


def _integer(text: str) -> int | None:
    return int(text) if len(text) - text.startswith("-") <= _MAX_DIGITS else None


def _decimal(text: str) -> Decimal | None:
    if len(text) > 2 * _MAX_DIGITS:
        return None
    try:
        number = Decimal(text)
    except InvalidOperation:  # pragma: no cover - json only passes valid literals
        return None
    return number if abs(number.adjusted()) <= _MAX_EXPONENT else None


def _non_finite(_: str) -> None:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, and no amount or ID."""
    return None


_DECODER = json.JSONDecoder(parse_int=_integer, parse_float=_decimal, parse_constant=_non_finite)


def body_code(body: Mapping[str, Any]) -> int | None:
    """The body's ``code``: an integer, or a string of ASCII digits; ``None`` otherwise."""
    code = body.get("code")
    if type(code) is int:
        return code if -_CODE_BOUND < code < _CODE_BOUND else None  # as _CODE reads its str
    if isinstance(code, bool):
        return None
    if isinstance(code, Decimal):
        integral = code == code.to_integral_value() and code.adjusted() < 12
        return int(code) if integral else None
    if isinstance(code, int):
        code = str(code)
    if isinstance(code, str) and _CODE.fullmatch(code.strip()):
        return int(code)
    return None


def server_time_from(data: Any, endpoint: str) -> int:
    """BingX's clock in epoch milliseconds, from the server-time answer's ``data``."""
    server_time = data.get("serverTime") if isinstance(data, Mapping) else None
    if isinstance(server_time, bool) or not isinstance(server_time, int):
        raise ResponseValidationError(
            f"server time answer has no integer serverTime ({endpoint})",
            body=_clip_repr(data),
            endpoint=endpoint,
            may_have_executed=False,
        )
    if not 0 < server_time <= _LAST_MS:
        raise ResponseValidationError(
            f"server time answer has an impossible serverTime ({endpoint})",
            body=_clip_repr(data),
            endpoint=endpoint,
            may_have_executed=False,
        )
    return server_time


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
    if 300 <= status_code < 400:
        return _redirect(status_code, headers, endpoint, text)
    code = body_code(body) if body is not None else None
    kept = body if body is not None and len(text) < MAX_RAW_BODY else None
    if body is not None and code is not None:
        msg = _message(body.get("msg"))
        stamp = body.get("timestamp")
        if isinstance(stamp, int) and not isinstance(stamp, bool) and 0 < stamp <= _LAST_MS:
            server_now = stamp / 1000
        cls = class_for(code, msg) or _BY_STATUS.get(status_code) or _fallback_class(status_code)
        # A rate-limit code on a 418/403 is still a ban: never retried.
        if issubclass(cls, RateLimitError) and _BY_STATUS.get(status_code) is IPBannedError:
            cls = IPBannedError
    else:
        if 200 <= status_code < 300:
            return ResponseValidationError(
                f"BingX answered HTTP {status_code} with a body that is not its JSON envelope "
                f"({endpoint})",
                body=text,
                status_code=status_code,
                endpoint=endpoint,
            )
        cls = _BY_STATUS.get(status_code) or _fallback_class(status_code)
        msg = _summarise_text(text) or f"HTTP {status_code}"

    message = _describe(status_code, code, msg, endpoint)
    common: dict[str, Any] = {
        "code": code,
        "msg": msg,
        "status_code": status_code,
        "endpoint": endpoint,
        "body": kept,
        "raw_body": text,
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


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: IPBannedError,
    418: IPBannedError,
    429: RateLimitError,
}

_UNBLOCK_TIME = re.compile(
    r"after(?:\s+time)?\s*:?\s*([0-9]{10}(?:[0-9]{3})?)(?![0-9])", re.IGNORECASE
)
_ERROR_RATE_BAN = re.compile(r"over\s+[0-9]+\s+error\s+code\s*:?\s*([0-9]{1,12})", re.IGNORECASE)


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
    if not value or len(value) > 64:
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


def _redirect(status_code: int, headers: Mapping[str, str], endpoint: str, text: str) -> APIError:
    """A 3xx: redirects are never followed (they would carry the key and signed query)."""
    location = headers.get("location", "")
    try:
        host = urlsplit(location).hostname if location else None
    except ValueError:
        host = None
    target = f"to {host}" if host else "elsewhere"
    return APIError(
        f"HTTP {status_code} ({endpoint}): BingX's address redirects {target}; redirects are "
        "never followed, since the request carries the API key and a signed query. Check "
        "base_url",
        status_code=status_code,
        endpoint=endpoint,
        raw_body=text,
        may_have_executed=False,
    )


def _message(value: Any) -> str:
    """BingX's ``msg``, as text, cut to the length anything here reads of it."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else _clip_repr(value)
    return (
        text if len(text) <= _MSG_SCANNED else f"{text[:_MSG_SCANNED]}... ({len(text)} characters)"
    )


def _clip_repr(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_RAW_BODY else text[:MAX_RAW_BODY]


def _describe(status_code: int, code: int | None, msg: str, endpoint: str) -> str:
    where = f"HTTP {status_code}, {endpoint}"
    if len(msg) > 500:
        msg = f"{msg[:500]}... ({len(msg)} characters)"
    if code is None:
        return f"{msg} ({where})"
    return f"BingX error {code}: {msg} ({where})"


def _fallback_class(status_code: int) -> type[APIError]:
    return ServerError if status_code >= 500 else APIError


def _summarise_text(text: str) -> str:
    """A short, single-line excerpt of a non-JSON body (e.g. a proxy's HTML error page)."""
    text = text[:_MSG_SCANNED]
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
    excerpt = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    excerpt = " ".join(excerpt.split())
    if not excerpt:
        return ""
    return "non-JSON body: " + (excerpt[:120] + "..." if len(excerpt) > 120 else excerpt)
