"""Budgets as data: what a policy accepts, and which budgets each endpoint draws on."""

from __future__ import annotations

import dataclasses
import math

import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    Budget,
    ConfigurationError,
    EndpointBudgets,
    IPGroup,
    RateLimitPolicy,
    endpoint_name,
)
from bingx_async._budgets import CLOSE_POSITION, POSITION_HISTORY, POSITIONS, SERVER_TIME


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
    assert limits.budgets(CLOSE_POSITION, host="h", account="a") == [
        (("account", "a", CLOSE_POSITION), Budget(4, 1.0)),
        (("ip", "h", CLOSE_POSITION), Budget(300, 10.0)),
        (("ip-pool", "h", "group3"), Budget(2000, 10.0)),
    ]
    assert DEFAULT_RATE_LIMITS.for_endpoint(CLOSE_POSITION).per_account == (Budget(5, 1.0),)


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
    assert split.for_endpoint(CLOSE_POSITION).per_account == (Budget(1, 1.0),)
    assert split.ip_groups[2].per_endpoint == (Budget(37, 10.0),)


def test_splitting_accounts_too_keeps_ip_groups_and_divides_them() -> None:
    """accounts_too divides the account budgets and still divides the IP groups, each
    endpoint keeping its group."""
    split = DEFAULT_RATE_LIMITS.split_between(2, accounts_too=True)
    assert split.budgets(POSITIONS, host="h", account="a") == [
        (("account", "a", POSITIONS), Budget(2, 1.0)),
        (("ip", "h", POSITIONS), Budget(150, 10.0)),
        (("ip-pool", "h", "group3"), Budget(1000, 10.0)),
    ]


def test_unsigned_requests_draw_on_no_account_budget() -> None:
    """Server time is counted per IP only, in group 1's two totals."""
    assert DEFAULT_RATE_LIMITS.budgets(SERVER_TIME, host="h", account=None) == [
        (("ip-pool", "h", "group1"), Budget(500, 10.0)),
        (("ip-pool", "h", "group1"), Budget(1000, 60.0)),
    ]


def test_the_position_history_is_an_account_endpoint_of_group_two() -> None:
    """positionHistory: 5 per second per UID, IP group 2."""
    assert DEFAULT_RATE_LIMITS.for_endpoint(POSITION_HISTORY) == EndpointBudgets(
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
