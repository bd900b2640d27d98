"""The decode stage of the pipeline: an HTTP answer becomes BingX's ``data`` or an error."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import httpx

from ._exceptions import ResponseValidationError, body_code, error_from_response

__all__ = ["decode", "server_time_from"]


def decode(endpoint: str, response: httpx.Response, *, server_now: float) -> Any:
    """The body's ``data`` when its code is 0; otherwise raise the mapped error.

    ``server_now`` is the best estimate of BingX's clock (epoch seconds), used to turn an
    "unblocked after T" into a wait when the body carries no timestamp of its own.
    """
    try:
        text = response.text
        body = json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError, LookupError):
        # Not JSON, too deeply nested, or in an unknown charset.
        text = response.content[:2000].decode("utf-8", "replace")
        body = None
    if isinstance(body, dict) and body_code(body) == 0:
        return body.get("data")
    raise error_from_response(
        status_code=response.status_code,
        body=body if isinstance(body, dict) else None,
        text=text,
        endpoint=endpoint,
        headers=response.headers,
        server_now=server_now,
    )


def server_time_from(data: Any, endpoint: str) -> int:
    """BingX's clock in epoch milliseconds, from the server-time answer's ``data``."""
    server_time = data.get("serverTime") if isinstance(data, Mapping) else None
    if isinstance(server_time, bool) or not isinstance(server_time, int):
        raise ResponseValidationError(
            f"server time answer has no integer serverTime ({endpoint})",
            body=str(data),
            endpoint=endpoint,
            may_have_executed=False,
        )
    return server_time
