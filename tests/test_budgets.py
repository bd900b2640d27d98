"""Budgets as data: what a policy accepts, which budgets each endpoint draws on, and the
host they are kept under."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    Budget,
    ConfigurationError,
    EndpointBudgets,
    IPGroup,
    RateLimitPolicy,
    endpoint_name,
)
from bingx_async._budgets import CLOSE_POSITION, POSITION_HISTORY, POSITIONS, SERVER_TIME
from bingx_async._config import host_identity
from bingx_async.testing import FakeBingX, LoopClock

from .conftest import case_id
from .mock_bingx import max_in_window


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "5"], ids=repr)
def test_a_budget_needs_a_whole_positive_limit(limit: object) -> None:
    """Budget(limit) is an int of at least 1, and the error names the field."""
    with pytest.raises(ConfigurationError, match=r"Budget\.limit"):
        Budget(limit, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("window", [0, -1.0, math.inf, math.nan, True, "1"], ids=repr)
def test_a_budget_needs_a_finite_positive_window(window: object) -> None:
    """Budget(window) is seconds above 0 and finite."""
    with pytest.raises(ConfigurationError, match=r"Budget\.window"):
        Budget(5, window)  # type: ignore[arg-type]


def test_the_smallest_budget_is_allowed() -> None:
    """One request per millisecond is a valid budget; its text is "1/0.001s"."""
    assert str(Budget(1, 0.001)) == "1/0.001s"


@pytest.mark.parametrize("margin", [-0.1, 60, 60.5, math.nan, "1"], ids=repr)
def test_a_margin_outside_zero_to_sixty_seconds_is_refused(margin: object) -> None:
    """RateLimitPolicy.margin is 0 up to (not including) 60 s."""
    with pytest.raises(ConfigurationError, match="margin"):
        RateLimitPolicy(margin=margin)  # type: ignore[arg-type]
    assert RateLimitPolicy(margin=59.9).margin == 59.9


def test_an_endpoint_naming_an_unknown_ip_group_is_refused() -> None:
    """Naming IP group 9 without defining it is a ConfigurationError when the policy is made."""
    with pytest.raises(ConfigurationError, match="unknown IP group 9"):
        DEFAULT_RATE_LIMITS.with_endpoint(CLOSE_POSITION, per_account=(), ip_group=9)


def test_an_overridden_endpoint_keeps_its_ip_group() -> None:
    """with_endpoint sets the account budgets and the IP group it is given."""
    limits = DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(4, 1.0),), ip_group=3
    )
    assert limits._budgets(CLOSE_POSITION, host="h", account="a") == [
        (("account", "a", CLOSE_POSITION), Budget(4, 1.0)),
        (("ip", "h", CLOSE_POSITION), Budget(300, 10.0)),
        (("ip-pool", "h", "group3"), Budget(2000, 10.0)),
    ]
    assert DEFAULT_RATE_LIMITS._for_endpoint(CLOSE_POSITION).per_account == (Budget(5, 1.0),)


@pytest.mark.parametrize("processes", [0, -2, True, 1.5], ids=repr)
def test_splitting_needs_a_whole_number_of_processes(processes: object) -> None:
    """split_between(n): n is an int of at least 1."""
    with pytest.raises(ConfigurationError, match="processes"):
        DEFAULT_RATE_LIMITS.split_between(processes)  # type: ignore[arg-type]


def test_splitting_between_one_process_changes_nothing() -> None:
    """split_between(1) is the policy itself."""
    assert DEFAULT_RATE_LIMITS.split_between(1, accounts_too=True) == DEFAULT_RATE_LIMITS


def test_a_split_never_goes_below_one_request() -> None:
    """5 per second split 8 ways is 1 per second, not 0."""
    split = DEFAULT_RATE_LIMITS.split_between(8, accounts_too=True)
    assert split._for_endpoint(CLOSE_POSITION).per_account == (Budget(1, 1.0),)
    assert split.ip_groups[2].per_endpoint == (Budget(37, 10.0),)


def test_splitting_accounts_too_keeps_ip_groups_and_divides_them() -> None:
    """accounts_too divides the account budgets and still divides the IP groups, each
    endpoint keeping its group."""
    split = DEFAULT_RATE_LIMITS.split_between(2, accounts_too=True)
    assert split._budgets(POSITIONS, host="h", account="a") == [
        (("account", "a", POSITIONS), Budget(2, 1.0)),
        (("ip", "h", POSITIONS), Budget(150, 10.0)),
        (("ip-pool", "h", "group3"), Budget(1000, 10.0)),
    ]


def test_unsigned_requests_draw_on_no_account_budget() -> None:
    """Server time is counted per IP only, in group 1's two totals."""
    assert DEFAULT_RATE_LIMITS._budgets(SERVER_TIME, host="h", account=None) == [
        (("ip-pool", "h", "group1"), Budget(500, 10.0)),
        (("ip-pool", "h", "group1"), Budget(1000, 60.0)),
    ]


def test_the_position_history_is_an_account_endpoint_of_group_two() -> None:
    """positionHistory: 5 per second per UID, IP group 2."""
    assert DEFAULT_RATE_LIMITS._for_endpoint(POSITION_HISTORY) == EndpointBudgets(
        (Budget(5, 1.0),), 2
    )


def test_endpoint_names_are_method_and_path() -> None:
    """endpoint_name upper-cases the method and gives the path one leading slash."""
    assert endpoint_name("post", "openApi/x") == "POST /openApi/x"
    assert endpoint_name("GET", "/openApi/x") == "GET /openApi/x"


def test_policies_are_frozen_copies() -> None:
    """Overrides return new policies; the mappings inside cannot be changed in place."""
    limits = DEFAULT_RATE_LIMITS.with_ip_group(
        3, IPGroup(per_endpoint=(), total=(Budget(10, 1.0),), pool="group2")
    )
    assert limits.ip_groups[3].pool == "group2"
    assert DEFAULT_RATE_LIMITS.ip_groups[3].pool == "group3"
    with pytest.raises(TypeError):
        limits.endpoints["x"] = EndpointBudgets()  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        limits.margin = 1.0  # type: ignore[misc]


def test_endpoint_names_strip_only_slashes() -> None:
    """A path's own letters are kept, whatever they are."""
    assert endpoint_name("get", "//XyZ/a") == "GET /XyZ/a"


def test_the_default_budgets_naming_an_unknown_group_are_named_in_the_error() -> None:
    """The policy says which entry names the missing group: here, "default"."""
    with pytest.raises(ConfigurationError, match=r"^default names unknown IP group 7$"):
        RateLimitPolicy(default=EndpointBudgets((Budget(5, 1.0),), 7))


# --- one host, one budget -------------------------------------------------------------------

#: One host as a user may spell it; BingX counts them all as one.
SPELLINGS = [
    "https://open-api.bingx.com",
    "https://OPEN-API.BingX.com",
    "https://open-api.bingx.com:443",
    "https://open-api.bingx.com.",
    "https://Open-Api.bingx.com.:443/",
]


@pytest.mark.parametrize(
    ("base_url", "host"),
    [(url, "open-api.bingx.com") for url in SPELLINGS]
    + [
        ("https://open-api.bingx.com:8443", "open-api.bingx.com:8443"),
        ("http://open-api.bingx.com:443", "open-api.bingx.com:443"),
        ("http://127.0.0.1:80", "127.0.0.1"),
        ("http://127.0.0.1:8080", "127.0.0.1:8080"),
        ("http://[::1]", "[::1]"),
        ("http://[0:0::1]:80", "[::1]"),
        ("https://[::1]:8443", "[::1]:8443"),
    ],
    ids=case_id,
)
@pytest.mark.looptime
async def test_budgets_are_kept_under_the_host_however_it_is_spelled(
    base_url: str, host: str
) -> None:
    """Lower case, no trailing dot, no default port, IPv6 in brackets: the budgets a client
    reports are named by that host."""
    assert host_identity(base_url) == host
    sim = FakeBingX(clock=LoopClock(), seed=4)
    account = sim.add_account()
    position = sim.add_position(account)
    async with BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        base_url=base_url,
        allow_insecure_http=True,
        clock=sim.clock,
        transport=sim.transport(),
    ) as client:
        await client.close_position(position.position_id)
        keys = {usage.key for usage in client.rate_limit_usage()}
    assert {key[1].rpartition("@")[2] for key in keys if key[0] == "account"} == {host}
    assert {key[1] for key in keys if key[0] != "account"} == {host}


@pytest.mark.looptime
async def test_clients_spelling_one_host_differently_share_its_budgets() -> None:
    """Four clients of one account, each spelling BingX's host its own way, close 20
    positions at once: BingX sees at most 5 closes in any second, and no violation."""
    sim = FakeBingX(clock=LoopClock(), seed=4)
    account = sim.add_account()
    ids = [sim.add_position(account).position_id for _ in range(20)]
    clients = [
        BingXClient(
            api_key=account.api_key,
            secret_key=account.secret_key,
            base_url=url,
            clock=sim.clock,
            transport=sim.transport(),
        )
        for url in SPELLINGS[1:]
    ]
    try:
        results = await asyncio.gather(
            *(clients[n % 4].close_position(position_id) for n, position_id in enumerate(ids))
        )
    finally:
        for client in clients:
            await client.aclose()
    assert [r.position_id for r in results] == ids
    assert max_in_window(sim.arrivals("/openApi/swap/v1/trade/closePosition"), 1.0) == 5
    assert sim.violations == 0
    assert sim.positions(account) == []
