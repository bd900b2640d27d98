"""Checks on call arguments, so bad input fails clearly before anything is sent."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import SupportsIndex

from ._exceptions import InvalidArgumentError
from ._signing import Params

__all__ = ["validate_params", "validate_position_id", "validate_symbol"]

_SYMBOL = re.compile(r"[A-Za-z0-9]+-[A-Za-z0-9]+")
_PARAM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: Parameters the pipeline sets itself on every signed request.
_RESERVED = frozenset({"timestamp", "recvWindow", "signature"})
_MAX_ID_DIGITS = 32
#: The largest position ID sent. BingX's docs type ``positionId`` as a string and name no
#: range; every ID they show (and every ID seen) is a 19-digit snowflake that fits a signed
#: 64-bit integer, as its order IDs do. A larger number cannot be a position: refusing it
#: here keeps a mistyped ID from costing a request, and an error counted towards a ban.
MAX_POSITION_ID = 2**63 - 1


def validate_position_id(position_id: object) -> str:
    """A BingX position ID as its canonical decimal string (no leading zeros): a positive
    integer, given as int or digits."""
    if isinstance(position_id, bool) or position_id is None:
        raise InvalidArgumentError(
            f"position_id must be a str or int of digits, got {type(position_id).__name__}"
        )
    if isinstance(position_id, str):
        text = position_id
    elif isinstance(position_id, SupportsIndex):
        # Any integer type (int, numpy.int64 ...); floats cannot hold 19-digit IDs exactly.
        text = str(operator.index(position_id))
    else:
        raise InvalidArgumentError(
            f"position_id must be a str or int of digits, got {type(position_id).__name__}"
        )
    if not text.strip():
        raise InvalidArgumentError("position_id is empty")
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgumentError(
            f"position_id must contain only the digits 0-9, got {position_id!r}"
        )
    if len(text) > _MAX_ID_DIGITS:
        raise InvalidArgumentError(f"position_id is too long ({len(text)} digits)")
    canonical = text.lstrip("0")
    if not canonical:
        raise InvalidArgumentError(f"position_id must be a positive number, got {position_id!r}")
    if int(canonical) > MAX_POSITION_ID:
        raise InvalidArgumentError(
            f"position_id {canonical} is larger than any BingX position ID (at most 2^63-1)"
        )
    # "0008" and "8" are one position: leading zeros are dropped, so both close (and share)
    # as "8".
    return canonical


def validate_symbol(symbol: object) -> str:
    """A contract symbol such as ``"BTC-USDT"``."""
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
        raise InvalidArgumentError(f"symbol must look like 'BTC-USDT', got {symbol!r}")
    return symbol


def validate_params(params: Mapping[str, object]) -> Params:
    """Parameters for ``BingXClient.request``: names, value types, no reserved names."""
    if not isinstance(params, Mapping):
        raise InvalidArgumentError(f"params must be a mapping, got {type(params).__name__}")
    checked: dict[str, object] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not _PARAM_NAME.fullmatch(name):
            raise InvalidArgumentError(f"parameter name {name!r} is not a valid BingX name")
        if name in _RESERVED:
            raise InvalidArgumentError(f"parameter {name!r} is set by the client; do not pass it")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgumentError(f"parameter {name!r} is {value!r}")
        if isinstance(value, Decimal) and not value.is_finite():
            raise InvalidArgumentError(f"parameter {name!r} is {value!r}")
        if value is not None and not isinstance(
            value, str | int | float | Decimal | bool | list | tuple | dict
        ):
            raise InvalidArgumentError(
                f"parameter {name!r} has unsupported type {type(value).__name__}"
            )
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgumentError(
                    f"parameter {name!r} is not valid text (lone surrogate)"
                ) from None
        checked[name] = value
    return checked  # type: ignore[return-value]
