"""BingX's error codes: the one table that says what each answer means.

Several codes carry unrelated messages (80012 is "system busy" and "margin is not enough"),
so a code can have several rules, tried in order: the first whose pattern the message
matches wins, and a rule without a pattern matches any message. Codes not listed fall back
to the HTTP status, then to ``APIError``.

What is retried follows from the class (see ``bingx_async._retry``); the rate-limit codes,
the error-rate guard and the error tables in the docs are derived from this table too
(``python -m bingx_async._codes`` prints the docs' table).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    CloseBlockedByOrdersError,
    OrderRejectedError,
    PermissionDeniedError,
    PositionNotFoundError,
    RateLimitError,
    ServerError,
    TimestampError,
)

__all__ = ["CODE_RULES", "RATE_LIMIT_CODES", "CodeRule", "class_for", "docs_table"]


@dataclass(frozen=True, slots=True)
class CodeRule:
    """Answers with ``code`` whose message matches ``when`` (any, if ``None``) raise ``error``."""

    code: int
    error: type[APIError]
    meaning: str
    when: str | None = None

    def matches(self, msg: str) -> bool:
        return self.when is None or _pattern(self.when).search(msg) is not None


@functools.cache
def _pattern(when: str) -> re.Pattern[str]:
    return re.compile(when, re.IGNORECASE)


_TIMESTAMP = r"timestamp"
_OPEN_ORDERS = r"cancel (?:the |other |all )?orders|occupied by|pending orders"
_TRANSIENT = r"busy|unavailable|network|connection refused|invalid connection|timed? ?out|try again"

#: Every code BingX's swap API is known to answer, from its error pages (2023-2025).
CODE_RULES: tuple[CodeRule, ...] = (
    # Keys and permissions.
    CodeRule(100001, AuthenticationError, "signature verification failed"),
    CodeRule(100412, AuthenticationError, "null signature"),
    CodeRule(100413, AuthenticationError, "incorrect or null API key"),
    CodeRule(100004, PermissionDeniedError, "the key lacks the permission"),
    CodeRule(100419, PermissionDeniedError, "IP not in the key's whitelist"),
    # Parameters; three codes also mean a timestamp outside recvWindow.
    CodeRule(80014, TimestampError, "timestamp is invalid", _TIMESTAMP),
    CodeRule(80014, BadRequestError, "invalid parameter"),
    CodeRule(109400, TimestampError, "timestamp is invalid", _TIMESTAMP),
    CodeRule(109400, BadRequestError, "invalid parameter (e.g. symbol not exist)"),
    CodeRule(100421, TimestampError, "null timestamp or timestamp mismatch", _TIMESTAMP),
    CodeRule(100421, BadRequestError, "pair restricted from API trading, and the like"),
    CodeRule(100400, BadRequestError, "invalid parameter"),
    CodeRule(80016, BadRequestError, "order does not exist"),
    CodeRule(101414, BadRequestError, "leverage above the maximum"),
    CodeRule(109201, BadRequestError, "same order number twice within 1 s"),
    # No such position.
    CodeRule(101205, PositionNotFoundError, "no position to close"),
    CodeRule(80017, PositionNotFoundError, "position not exist"),
    CodeRule(109422, PositionNotFoundError, "position not exist"),
    CodeRule(109420, PositionNotFoundError, "no position for the symbol"),
    CodeRule(101400, PositionNotFoundError, "no position to close", r"no position"),
    CodeRule(101400, OrderRejectedError, "insufficient margin", r"margin"),
    CodeRule(101400, BadRequestError, "order size error, invalid parameter, callback rate"),
    # Open orders stand in the way.
    CodeRule(80001, CloseBlockedByOrdersError, "the position is held by open orders", _OPEN_ORDERS),
    CodeRule(80001, BadRequestError, "order not exist", r"order not exist"),
    CodeRule(80001, OrderRejectedError, "margin is not enough", r"margin"),
    CodeRule(80001, ServerError, "the system is busy", _TRANSIENT),
    CodeRule(80001, OrderRejectedError, "any other refusal"),
    CodeRule(101212, CloseBlockedByOrdersError, "pending orders on the pair block it"),
    # Business rejections: nothing executed.
    CodeRule(80020, OrderRejectedError, "risk forbidden"),
    CodeRule(109403, OrderRejectedError, "risk forbidden"),
    CodeRule(100202, OrderRejectedError, "insufficient balance"),
    CodeRule(101204, OrderRejectedError, "insufficient margin"),
    CodeRule(80013, OrderRejectedError, "too many open orders"),
    CodeRule(80018, OrderRejectedError, "order already filled"),
    CodeRule(101209, OrderRejectedError, "position value above the maximum for the leverage"),
    CodeRule(101415, OrderRejectedError, "pair suspended from opening"),
    CodeRule(101514, OrderRejectedError, "temporarily suspended from opening"),
    # 80012: refusals by their message; "system busy" and the rest are server failures.
    CodeRule(80012, OrderRejectedError, "margin is not enough", r"margin"),
    CodeRule(80012, BadRequestError, "symbol not exist", r"symbol not exist"),
    CodeRule(80012, BadRequestError, "invalid parameter", r"invalid param"),
    CodeRule(80012, BadRequestError, "leverage illegal", r"leverage"),
    CodeRule(80012, OrderRejectedError, "trading has been locked", r"locked"),
    CodeRule(80012, OrderRejectedError, "position limit, stop order count limit", r"limit"),
    CodeRule(80012, ServerError, "service unavailable, system busy, network failed", _TRANSIENT),
    CodeRule(80012, ServerError, "any other message: treated as a server failure"),
    # Rate limits (100409 and 100410 became 109429 on 2025-10-16).
    CodeRule(100410, RateLimitError, "rate limited, disabled period, error-rate ban"),
    CodeRule(100409, RateLimitError, "rate limited"),
    CodeRule(109429, RateLimitError, "rate limited"),
    # BingX failed: the request may have executed.
    CodeRule(100500, ServerError, "internal error"),
    CodeRule(100503, ServerError, "service unavailable"),
    CodeRule(109500, ServerError, "internal error"),
    CodeRule(101500, ServerError, "RPC timeout"),
    CodeRule(80019, ServerError, "order being processed"),
)

_BY_CODE: dict[int, tuple[CodeRule, ...]] = {}
for _rule in CODE_RULES:
    _BY_CODE[_rule.code] = (*_BY_CODE.get(_rule.code, ()), _rule)

#: BingX's rate-limit codes.
RATE_LIMIT_CODES = frozenset(
    rule.code for rule in CODE_RULES if issubclass(rule.error, RateLimitError)
)


def class_for(code: int, msg: str) -> type[APIError] | None:
    """The exception for body ``code`` with message ``msg``; ``None`` for an unknown code."""
    for rule in _BY_CODE.get(code, ()):
        if rule.matches(msg):
            return rule.error
    return None


def docs_table() -> str:
    """The table of every code, as docs/errors.md has it."""
    lines = ["| Code | Message | Exception |", "|---|---|---|"]
    for rule in CODE_RULES:
        # A pipe in a code span stays in its cell (Python-Markdown's tables); escaped there, the
        # page would show the backslash.
        when = "" if rule.when is None else f" (message matching `{rule.when}`)"
        message = rule.meaning.replace("|", "\\|") + when
        lines.append(f"| {rule.code} | {message} | `{rule.error.__name__}` |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - prints the docs' table
    print(docs_table())
