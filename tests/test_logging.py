"""What the library tells the application's log: each line a user would search for, exactly."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from bingx_async import RetryPolicy
from bingx_async._budgets import CLOSE_POSITION

from .mock_bingx import EPOCH, MockBingX, closed

pytestmark = pytest.mark.looptime


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "bingx_async" and r.levelno == level
    ]


async def test_a_retry_is_logged_with_its_cause_and_wait(caplog: pytest.LogCaptureFixture) -> None:
    """INFO: "<endpoint>: <error class>; retry <n> in <seconds> s"."""
    answers = iter([httpx.Response(200, json={"code": 100410, "msg": "rate limited"})])
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with bingx.client(retry=RetryPolicy(wait_initial=0.25, wait_jitter=0)) as client:
            await client.close_position(1)
    assert lines(caplog, logging.INFO) == [f"{CLOSE_POSITION}: RateLimitError; retry 1 in 0.250 s"]


async def test_a_timestamp_rejection_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """INFO: "<endpoint>: timestamp rejected; re-syncing clock and retrying"."""
    answers = iter(
        [httpx.Response(200, json={"code": 100421, "msg": "Null timestamp or timestamp mismatch"})]
    )
    bingx = MockBingX()
    bingx.answer = lambda request: next(answers, None) or closed(request)
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with bingx.client(retry=RetryPolicy()) as client:
            await client.close_position(1)
    assert lines(caplog, logging.INFO) == [
        f"{CLOSE_POSITION}: timestamp rejected; re-syncing clock and retrying"
    ]


async def test_each_request_and_clock_measurement_is_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """DEBUG: one "sending" line per request, and the measured offset and round trip."""
    bingx = MockBingX(server_offset=1.5)
    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        async with bingx.client() as client:
            await client.close_position(1)
    assert lines(caplog, logging.DEBUG) == [
        "sending GET /openApi/swap/v2/server/time",
        "server clock: offset +1.500 s (round trip 0.000 s)",
        f"sending {CLOSE_POSITION}",
    ]


async def test_a_failed_clock_measurement_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """WARNING: "could not read BingX server time (<error>); keeping offset"."""
    bingx = MockBingX()
    handle = bingx.handle

    async def broken_time(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("server/time"):
            return httpx.Response(200, json={"code": 0, "data": {}})
        return await handle(request)

    bingx.handle = broken_time  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="bingx_async"):
        async with bingx.client() as client:
            await client.close_position(1)
    assert lines(caplog, logging.WARNING) == [
        "could not read BingX server time (server time answer has no integer serverTime "
        "(GET /openApi/swap/v2/server/time)); keeping offset"
    ]


async def test_odd_data_after_a_successful_close_is_a_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WARNING when a close succeeded but its data could not be read."""
    from bingx_async import ClosePositionResult

    def unreadable(*args: object, **kwargs: object) -> ClosePositionResult:
        raise ValueError("odd")

    monkeypatch.setattr(ClosePositionResult, "_from_data", unreadable)
    bingx = MockBingX()
    with caplog.at_level(logging.WARNING, logger="bingx_async"):
        async with bingx.client() as client:
            result = await client.close_position(7)
    assert result.position_id == "7"
    assert lines(caplog, logging.WARNING) == ["closePosition 7: unreadable data; keeping it raw"]


async def test_a_failing_progress_callback_is_logged_and_closing_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ERROR with the traceback; every close still gets its outcome."""

    def broken(_: object) -> None:
        raise RuntimeError("callback bug")

    bingx = MockBingX()
    with caplog.at_level(logging.ERROR, logger="bingx_async"):
        async with bingx.client() as client:
            outcomes = await client.close_positions([1, 2], on_progress=broken)
    assert len(outcomes) == 2
    assert lines(caplog, logging.ERROR) == ["close_positions: on_progress raised; continuing"] * 2
    assert all(r.exc_info is not None for r in caplog.records if r.levelno == logging.ERROR)


async def test_a_lowered_limit_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """WARNING naming the budget, the limit it held and the limit assumed from now on."""
    server_ms = round(EPOCH * 1000)

    def disabled(request: httpx.Request) -> httpx.Response:
        now_ms = server_ms + round(asyncio.get_running_loop().time() * 1000)
        msg = f"disabled period, unblocked after {now_ms + 1000}"
        return httpx.Response(200, json={"code": 100410, "msg": msg, "timestamp": now_ms})

    bingx = MockBingX(answer=disabled, latency=0.01)
    with caplog.at_level(logging.WARNING, logger="bingx_async"):
        async with bingx.client(retry=RetryPolicy(attempts=1)) as client:
            for _ in range(2):
                await client.close_positions(range(1, 6))
                await asyncio.sleep(1.5)
    account = next(k for k in (r.getMessage() for r in caplog.records) if "assuming" in k)
    assert account.startswith("rate limit: BingX blocked account ")
    assert account.endswith(f"{CLOSE_POSITION} although it held 5 per 1 s; assuming 4 from now on")
