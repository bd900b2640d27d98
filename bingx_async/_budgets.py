"""BingX's documented rate-limit budgets, as data.

Sources (see docs/rate-limits-and-retries.md): every endpoint page names a per-UID rate and an
IP group; the IP groups' numbers come from BingX's rate-limit page (Oct-Nov 2025). BingX has
changed these numbers several times, so every value here can be overridden through
``RateLimitPolicy``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from ._exceptions import ConfigurationError

__all__ = [
    "ACCOUNT_UID",
    "CLOSE_POSITION",
    "DEFAULT_RATE_LIMITS",
    "LISTEN_KEY",
    "ORDER",
    "POSITIONS",
    "POSITION_HISTORY",
    "SERVER_TIME",
    "Budget",
    "BudgetKey",
    "EndpointBudgets",
    "IPGroup",
    "RateLimitPolicy",
    "endpoint_name",
]

CLOSE_POSITION = "POST /openApi/swap/v1/trade/closePosition"
CLOSE_ALL_POSITIONS = "POST /openApi/swap/v2/trade/closeAllPositions"
POSITIONS = "GET /openApi/swap/v2/user/positions"
POSITION_HISTORY = "GET /openApi/swap/v1/trade/positionHistory"
SERVER_TIME = "GET /openApi/swap/v2/server/time"
#: The account's UID. Its budgets are not documented: the default (5/s per UID, group 2).
ACCOUNT_UID = "GET /openApi/account/v1/uid"
#: One order. Its budgets are not documented: the default (5/s per UID, group 2).
ORDER = "GET /openApi/swap/v2/trade/order"
#: The account stream's listen key, created with POST, extended with PUT, ended with DELETE.
LISTEN_KEY = "POST /openApi/user/auth/userDataStream"
LISTEN_KEY_METHODS = ("POST", "PUT", "DELETE")


def endpoint_name(method: str, path: str) -> str:
    """The key endpoints are known by: ``"POST /openApi/swap/v1/trade/closePosition"``."""
    return f"{method.upper()} /{path.lstrip('/')}"


@dataclass(frozen=True, slots=True)
class Budget:
    """At most ``limit`` requests in any rolling window of ``window`` seconds."""

    limit: int
    window: float

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ConfigurationError(f"Budget.limit must be an int >= 1, got {self.limit!r}")
        if (
            isinstance(self.window, bool)
            or not isinstance(self.window, int | float)
            or not (self.window > 0 and math.isfinite(self.window))
        ):
            raise ConfigurationError(f"Budget.window must be seconds > 0, got {self.window!r}")

    def __str__(self) -> str:
        return f"{self.limit}/{self.window:g}s"


@dataclass(frozen=True, slots=True)
class IPGroup:
    """An IP group's budgets: ``per_endpoint`` for each endpoint of the group on one IP, and
    ``total`` for all of them together. Groups naming the same ``pool`` share their totals."""

    per_endpoint: tuple[Budget, ...]
    total: tuple[Budget, ...]
    pool: str


@dataclass(frozen=True, slots=True)
class EndpointBudgets:
    """The budgets one endpoint draws on: per account (UID) and its IP group, if any."""

    per_account: tuple[Budget, ...] = ()
    ip_group: int | None = None


K = TypeVar("K")
V = TypeVar("V")

#: One budget's identity: ``("account", uid, endpoint)``, ``("ip", host, endpoint)`` or
#: ``("ip-pool", host, pool)``.
BudgetKey = tuple[str, str, str]


def _frozen(mapping: Mapping[K, V]) -> Mapping[K, V]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """Which budgets each endpoint draws on, and how large they are.

    ``endpoints`` maps [`endpoint_name`][bingx_async.endpoint_name] strings to their budgets;
    endpoints not listed use ``default``. ``margin`` (seconds) is added to every window. It
    defaults to 0: a slot is dated by the answer to the request that used it, which already
    comes after BingX counted that request, so the next use of the slot reaches BingX more than
    one window later. ``adapt``: when BingX disables an endpoint although the budget was kept,
    assume BingX now allows one less per window (for a while; see docs). Override with
    [`with_endpoint`][bingx_async.RateLimitPolicy.with_endpoint] and
    [`with_ip_group`][bingx_async.RateLimitPolicy.with_ip_group].
    """

    endpoints: Mapping[str, EndpointBudgets] = field(default_factory=dict)
    ip_groups: Mapping[int, IPGroup] = field(default_factory=dict)
    default: EndpointBudgets = EndpointBudgets()
    margin: float = 0.0
    adapt: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoints", _frozen(self.endpoints))
        object.__setattr__(self, "ip_groups", _frozen(self.ip_groups))
        if not (isinstance(self.margin, int | float) and 0 <= self.margin < 60):
            raise ConfigurationError(f"RateLimitPolicy.margin must be 0..60 s, got {self.margin!r}")
        for name, budgets in [*self.endpoints.items(), ("default", self.default)]:
            if budgets.ip_group is not None and budgets.ip_group not in self.ip_groups:
                raise ConfigurationError(f"{name} names unknown IP group {budgets.ip_group}")

    def _for_endpoint(self, endpoint: str) -> EndpointBudgets:
        return self.endpoints.get(endpoint, self.default)

    def with_endpoint(
        self, endpoint: str, *, per_account: tuple[Budget, ...], ip_group: int | None
    ) -> RateLimitPolicy:
        """A copy with ``endpoint`` (e.g. ``"POST /openApi/swap/v1/trade/closePosition"``)
        drawing on the given budgets."""
        endpoints = dict(self.endpoints)
        endpoints[endpoint] = EndpointBudgets(tuple(per_account), ip_group)
        return dataclasses.replace(self, endpoints=endpoints)

    def with_ip_group(self, number: int, group: IPGroup) -> RateLimitPolicy:
        """A copy with IP group ``number`` replaced."""
        groups = dict(self.ip_groups)
        groups[number] = group
        return dataclasses.replace(self, ip_groups=groups)

    def split_between(self, processes: int, *, accounts_too: bool = False) -> RateLimitPolicy:
        """A copy for one of ``processes`` processes that share this machine's IP.

        The limiter coordinates the clients of one process; processes do not see each other.
        Giving each process ``1/processes`` of every IP budget keeps their sum within
        BingX's. With ``accounts_too``, account budgets are divided as well (for one API key
        used by several processes). Limits are rounded down, to at least 1.
        """
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ConfigurationError(f"processes must be an int >= 1, got {processes!r}")

        def divide(budgets: tuple[Budget, ...]) -> tuple[Budget, ...]:
            return tuple(Budget(max(1, b.limit // processes), b.window) for b in budgets)

        groups = {
            number: IPGroup(divide(group.per_endpoint), divide(group.total), group.pool)
            for number, group in self.ip_groups.items()
        }
        if not accounts_too:
            return dataclasses.replace(self, ip_groups=groups)

        def per_account(spec: EndpointBudgets) -> EndpointBudgets:
            return EndpointBudgets(divide(spec.per_account), spec.ip_group)

        return dataclasses.replace(
            self,
            ip_groups=groups,
            endpoints={name: per_account(spec) for name, spec in self.endpoints.items()},
            default=per_account(self.default),
        )

    def _budgets(
        self, endpoint: str, *, host: str, account: str | None
    ) -> list[tuple[BudgetKey, Budget]]:
        """Every budget a request to ``endpoint`` must fit into, with the key it is counted under.

        ``account`` is ``None`` for unsigned requests, which have no per-account budget.
        """
        spec = self._for_endpoint(endpoint)
        found: list[tuple[BudgetKey, Budget]] = []
        if account is not None:
            found += [(("account", account, endpoint), b) for b in spec.per_account]
        if spec.ip_group is not None:
            group = self.ip_groups[spec.ip_group]
            found += [(("ip", host, endpoint), b) for b in group.per_endpoint]
            found += [(("ip-pool", host, group.pool), b) for b in group.total]
        return found


_PER_SECOND_5 = (Budget(5, 1.0),)
_PER_SECOND_2 = (Budget(2, 1.0),)
_LISTEN_KEY_PATH = LISTEN_KEY.split(" ", 1)[1]
_ACCOUNT_GROUP = IPGroup(
    per_endpoint=(Budget(300, 10.0),), total=(Budget(2000, 10.0),), pool="group2"
)

DEFAULT_RATE_LIMITS = RateLimitPolicy(
    endpoints={
        CLOSE_POSITION: EndpointBudgets(_PER_SECOND_5, 2),
        CLOSE_ALL_POSITIONS: EndpointBudgets(_PER_SECOND_5, 2),
        POSITIONS: EndpointBudgets(_PER_SECOND_5, 3),
        POSITION_HISTORY: EndpointBudgets(_PER_SECOND_5, 2),
        SERVER_TIME: EndpointBudgets((), 1),
        ORDER: EndpointBudgets(_PER_SECOND_5, 2),
        **{
            endpoint_name(method, _LISTEN_KEY_PATH): EndpointBudgets(_PER_SECOND_2, 2)
            for method in LISTEN_KEY_METHODS
        },
    },
    ip_groups={
        1: IPGroup(per_endpoint=(), total=(Budget(500, 10.0), Budget(1000, 60.0)), pool="group1"),
        2: _ACCOUNT_GROUP,
        3: dataclasses.replace(_ACCOUNT_GROUP, pool="group3"),
    },
    default=EndpointBudgets(_PER_SECOND_5, 2),
)
"""BingX's budgets as documented in late 2025.

* closePosition, closeAllPositions and positionHistory: 5/s per UID, in IP group 2;
  positions: 5/s per UID, in group 3.
* Groups 2 and 3: 300 per 10 s per endpoint and 2000 per 10 s for the group, per IP.
  Whether groups 2 and 3 share one total is not documented; they are kept apart here.
* The listen key (create, extend, delete): 2/s per UID each, in group 2. The order query's
  budgets are not documented: 5/s per UID, in group 2, like the default.
* Group 1 (market data, server time): 500 per 10 s and 1000 per minute per IP.
* Unknown endpoints (``default``): 5/s per UID and group 2's per-endpoint budget, counted
  in group 2's total.
"""
