"""BingX request signing: pure functions, no I/O and no clock.

BingX rebuilds the string to sign from the query parameters in the order it receives them,
with values *decoded*. So we sign ``k=v&k=v`` over raw values, then send the same pairs in
the same order with each value percent-encoded, and ``signature`` last.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from urllib.parse import quote

__all__ = ["ParamValue", "Params", "canonical_pairs", "encode_query", "raw_query", "sign"]

ParamValue = str | int | float | Decimal | bool | Sequence[object] | Mapping[str, object] | None
Params = Mapping[str, ParamValue]


def _format_value(value: ParamValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    # Plain digits, never exponent notation (str(Decimal("0.00000001")) is "1E-8", repr(1e-07)
    # is "1e-07"); repr gives a float's shortest round-tripping digits.
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        return format(Decimal(repr(value)), "f") if math.isfinite(value) else repr(value)
    # Lists and objects travel as compact JSON strings.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_pairs(params: Params) -> list[tuple[str, str]]:
    """Parameters as ``(key, raw value)`` pairs sorted by key, with ``None`` values dropped."""
    return [
        (key, _format_value(value)) for key, value in sorted(params.items()) if value is not None
    ]


def raw_query(pairs: Sequence[tuple[str, str]]) -> str:
    """The string BingX signs: ``k=v&k=v`` over raw, unencoded values."""
    return "&".join(f"{key}={value}" for key, value in pairs)


def encode_query(pairs: Sequence[tuple[str, str]]) -> str:
    """The same pairs, same order, percent-encoded for the URL (decodes back to ``raw_query``)."""
    return "&".join(f"{_quote(key)}={_quote(value)}" for key, value in pairs)


def _quote(text: str) -> str:
    # ASCII letters and digits are left as they are by quote(): skip it for names, IDs and
    # numbers without sign or point, the usual case.
    return text if text.isalnum() and text.isascii() else quote(text, safe="")


def sign(secret_key: str, payload: str) -> str:
    """Lower-case hex HMAC-SHA256 of ``payload`` under ``secret_key``."""
    return hmac.new(secret_key.encode(), payload.encode(), hashlib.sha256).hexdigest()
