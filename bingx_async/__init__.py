"""bingx_async: an asyncio client for the BingX perpetual-futures REST API."""

from __future__ import annotations

import inspect
import logging
import types
import typing
from importlib.metadata import PackageNotFoundError, version

from ._budgets import (
    DEFAULT_RATE_LIMITS,
    Budget,
    EndpointBudgets,
    IPGroup,
    RateLimitPolicy,
    endpoint_name,
)
from ._client import BingXClient, CloseProgress
from ._clock import Clock, SystemClock
from ._config import (
    DEFAULT_RECV_WINDOW,
    DEFAULT_RETRY,
    DEFAULT_TIMEOUT,
    DEMO_BASE_URL,
    PRODUCTION_BASE_URL,
    RetryPolicy,
)
from ._errorguard import DEFAULT_ERROR_GUARD, ErrorGuardPolicy
from ._exceptions import (
    APIError,
    AuthenticationError,
    BadRequestError,
    BingXError,
    ClientClosedError,
    CloseBlockedByOrdersError,
    ConfigurationError,
    ErrorRateGuardError,
    InvalidArgumentError,
    IPBannedError,
    OrderRejectedError,
    PermissionDeniedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    QueueTimeoutError,
    RateLimitError,
    RequestTimeout,
    ResponseValidationError,
    ServerError,
    SharedLimitsUnavailableError,
    TimestampError,
    TransportError,
)
from ._models import CloseAllResult, ClosePositionResult, Fill, Position
from ._ratelimit import BudgetUsage
from ._redis import RedisLimits
from ._session import BingXSession
from ._stream import (
    AccountUpdate,
    BalanceChange,
    EventsDropped,
    OrderUpdate,
    OtherEvent,
    PositionChange,
    StreamEvent,
    StreamReconnected,
    StreamSettings,
    StreamSubscription,
)

# Library convention: stay silent unless the application configures logging.
logging.getLogger("bingx_async").addHandler(logging.NullHandler())

try:
    __version__ = version("bingx-async")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "DEFAULT_ERROR_GUARD",
    "DEFAULT_RATE_LIMITS",
    "DEFAULT_RECV_WINDOW",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "DEMO_BASE_URL",
    "PRODUCTION_BASE_URL",
    "APIError",
    "AccountUpdate",
    "AuthenticationError",
    "BadRequestError",
    "BalanceChange",
    "BingXClient",
    "BingXError",
    "BingXSession",
    "Budget",
    "BudgetUsage",
    "ClientClosedError",
    "Clock",
    "CloseAllResult",
    "CloseBlockedByOrdersError",
    "ClosePositionResult",
    "CloseProgress",
    "ConfigurationError",
    "EndpointBudgets",
    "ErrorGuardPolicy",
    "ErrorRateGuardError",
    "EventsDropped",
    "Fill",
    "IPBannedError",
    "IPGroup",
    "InvalidArgumentError",
    "OrderRejectedError",
    "OrderUpdate",
    "OtherEvent",
    "PermissionDeniedError",
    "Position",
    "PositionChange",
    "PositionNotFoundError",
    "PositionPossiblyClosedError",
    "QueueTimeoutError",
    "RateLimitError",
    "RateLimitPolicy",
    "RedisLimits",
    "RequestTimeout",
    "ResponseValidationError",
    "RetryPolicy",
    "ServerError",
    "SharedLimitsUnavailableError",
    "StreamEvent",
    "StreamReconnected",
    "StreamSettings",
    "StreamSubscription",
    "SystemClock",
    "TimestampError",
    "TransportError",
    "__version__",
    "endpoint_name",
]

# Public classes and functions report the package as their module, so that tracebacks and
# reprs name ``bingx_async.PositionNotFoundError``, not the private module that defines it.
# typing.get_type_hints() (and pydantic, Hypothesis) look a class's annotations up in the
# module it reports: resolve them first, where they were written.
for _name in __all__:
    _value = globals()[_name]
    if isinstance(_value, type):
        _hints = typing.get_type_hints(_value, include_extras=True)
        _own = inspect.get_annotations(_value)
        _value.__annotations__ = {key: _hints[key] for key in _own}
    if isinstance(_value, type | types.FunctionType):
        _value.__module__ = __name__
del _name, _value, _hints, _own
