"""``uid="auto"``: keys of one account share its budgets once BingX has said whose they are.

Real time, with closePosition scaled down to 5 per 0.25 s, against :class:`FakeBingX`, which
keeps the per-account budgets per UID, as BingX does.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from bingx_async import DEFAULT_RATE_LIMITS, BingXClient, BingXSession, Budget
from bingx_async.testing import CustomAnswer, FakeBingX, SimAccount

from .mock_bingx import MockBingX, closed

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
UID_PATH = "/openApi/account/v1/uid"
FAST = DEFAULT_RATE_LIMITS.with_endpoint(
    f"POST {CLOSE_PATH}", per_account=(Budget(5, 0.25),), ip_group=2
)


def two_keys_of_one_account(sim: FakeBingX) -> tuple[SimAccount, SimAccount]:
    first = sim.add_account(uid="24681357")
    second = sim.add_account(uid="24681357")
    return first, second


@pytest.mark.parametrize(("uid", "violations"), [("auto", 0), (None, 1)], ids=["auto", "per-key"])
async def test_keys_of_one_account_share_its_budget_with_uid_auto(
    uid: str | None, violations: int
) -> None:
    sim = FakeBingX(seed=31, rate_limits=FAST, disabled_period=0.3)
    keys = two_keys_of_one_account(sim)
    positions = [sim.add_position(keys[0]) for _ in range(10)]
    async with BingXSession() as session:
        clients = [
            BingXClient(
                api_key=key.api_key,
                secret_key=key.secret_key,
                uid=uid,
                session=session,
                transport=sim.transport(),
                rate_limits=FAST,
            )
            for key in keys
        ]
        await asyncio.gather(
            *(clients[n % 2].close_position(p.position_id) for n, p in enumerate(positions))
        )

    if violations:
        assert sim.violations >= 1  # each key believed it had the whole budget
    else:
        assert sim.violations == 0
        assert len(sim.requests_to(UID_PATH)) == 2  # once per key, before its first close
        assert len(sim.requests_to(CLOSE_PATH)) == 10


async def test_without_an_answer_the_key_stands_for_the_account_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = FakeBingX(seed=32)
    account = sim.add_account()
    position = sim.add_position(account)
    sim.inject(
        CustomAnswer(status_code=200, body={"code": 100004, "msg": "permission denied"}),
        path=UID_PATH,
    )
    async with BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        uid="auto",
        transport=sim.transport(),
    ) as client:
        with caplog.at_level(logging.WARNING, logger="bingx_async"):
            result = await client.close_position(position.position_id)
            await client.get_positions()

    assert result.position_id == position.position_id
    assert len(sim.requests_to(UID_PATH)) == 1  # not asked again within the minute
    assert ["uid=auto" in r.getMessage() for r in caplog.records].count(True) == 1


async def test_a_cancelled_lookup_leaves_no_one_waiting_and_is_asked_again() -> None:
    sim = FakeBingX(seed=33)
    account = sim.add_account()
    position = sim.add_position(account)
    async with BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        uid="auto",
        transport=sim.transport(),
    ) as client:
        first = asyncio.ensure_future(client.get_positions())
        waiting = asyncio.ensure_future(client.get_positions())
        for _ in range(3):
            await asyncio.sleep(0)
        first.cancel()
        listed = await asyncio.wait_for(waiting, 5)
        result = await client.close_position(position.position_id)

    assert [p.position_id for p in listed] == [position.position_id]
    assert result.position_id == position.position_id
    assert first.cancelled()


@pytest.mark.looptime
async def test_a_uid_said_after_calls_were_made_per_key_takes_over_their_budgets() -> None:
    """BingX does not say the UID at first: the first close counts under the key; asked
    again a minute later, it says, and the next close counts under the UID."""
    said = iter([False, True])

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path != UID_PATH:
            return closed(request)
        if next(said):
            return httpx.Response(200, json={"code": 0, "msg": "", "data": {"uid": 24681357}})
        return httpx.Response(200, json={"code": 100004, "msg": "permission denied"})

    bingx = MockBingX(answer=answer)
    async with bingx.client(uid="auto") as client:
        await client.close_position(1)
        await asyncio.sleep(61.0)
        await client.close_position(2)
        usage = client.rate_limit_usage()

    closes = {
        u.key[1]: u.in_window for u in usage if u.key[::2] == ("account", f"POST {CLOSE_PATH}")
    }
    assert len(closes) == 2
    assert closes["24681357@open-api.bingx.com"] == 1  # the second close
    assert [sent.path for sent in bingx.sent] == [UID_PATH, CLOSE_PATH, UID_PATH, CLOSE_PATH]
