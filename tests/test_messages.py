"""Messages say what happened: the time really waited, "not sent" only when nothing may have
executed, and never an empty exception's "()"."""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXSession,
    Budget,
    QueueTimeoutError,
    RateLimitPolicy,
    RedisLimits,
    RetryPolicy,
    TransportError,
    _exceptions,
)
from bingx_async._budgets import CLOSE_POSITION
from bingx_async._config import Credentials
from bingx_async._connection import Connection
from bingx_async._endpoints import CLOSE
from bingx_async._timesync import ServerClock
from bingx_async.testing import LoopClock

from .mock_bingx import EPOCH, MockBingX
from .redis_server import free_port

PACKAGE = Path(__file__).resolve().parents[1] / "bingx_async"


def one_close_a_minute() -> RateLimitPolicy:
    return DEFAULT_RATE_LIMITS.with_endpoint(
        CLOSE_POSITION, per_account=(Budget(1, 60.0),), ip_group=2
    )


def gateway_timeout(request: httpx.Request) -> httpx.Response:
    return httpx.Response(504, json={"code": 100500, "msg": "unknown status"})


# --- QueueTimeoutError: the time really waited, "not sent" only when true -------------------


@pytest.mark.looptime
async def test_a_queue_timeout_after_an_unknown_outcome_says_the_call_may_have_executed() -> None:
    """A close whose first answer (a 504) took 44 s, then queued for its budget until
    total_timeout: the message gives the 45 s the call waited, and does not say "not sent"
    of a call that may have executed."""
    bingx = MockBingX(answer=gateway_timeout, latency=44.0)
    retry = RetryPolicy(total_timeout=45.0, wait_initial=0.5, wait_jitter=0)
    async with bingx.client(
        retry=retry, rate_limits=one_close_a_minute(), confirm_closes=False
    ) as client:
        with pytest.raises(QueueTimeoutError) as caught:
            await client.close_position(7)
    assert caught.value.may_have_executed is True
    assert str(caught.value) == (
        "POST /openApi/swap/v1/trade/closePosition waited 45.000 s for its rate-limit budgets "
        "and the call's total_timeout ran out; this attempt was not sent, but an earlier "
        "one's outcome is unknown (ServerError), so the call may have executed"
    )


async def test_a_queue_timeout_under_stand_in_limits_gives_the_time_the_call_waited() -> None:
    """Shared limits whose Redis is unreachable (in-process stand-in limits): the time a
    QueueTimeoutError gives counts from the call's start, not from when it reached the
    stand-in queue."""
    bingx = MockBingX(answer=gateway_timeout, latency=0.3)
    limits = RedisLimits(f"redis://127.0.0.1:{free_port()}", on_outage="local")
    retry = RetryPolicy(total_timeout=0.6, wait_initial=0.05, wait_jitter=0)
    async with BingXSession(clock=bingx.clock, shared_limits=limits) as session:
        client = BingXClient(
            api_key="key",
            secret_key="secret",
            session=session,
            transport=httpx.MockTransport(bingx.handle),
            retry=retry,
            rate_limits=one_close_a_minute(),
            confirm_closes=False,
        )
        async with client:
            with pytest.raises(QueueTimeoutError) as caught:
                await client.close_position(7)
    waited = float(str(caught.value).split(" waited ")[1].split(" s ")[0])
    assert waited == pytest.approx(0.6, abs=0.1), str(caught.value)


# --- no "()" from an exception that says nothing -------------------------------------------


@pytest.mark.parametrize(
    "error", [httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError]
)
async def test_an_httpx_failure_without_text_is_named_not_left_empty(
    error: type[httpx.TransportError],
) -> None:
    """An httpx error whose text is empty: the message names its class instead."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise error("", request=request)

    link = Connection(
        base_url="https://open-api.bingx.com",
        credentials=Credentials("key", "secret"),
        recv_window_ms=5000,
        timeout=httpx.Timeout(10.0),
        http=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        owns_http=True,
    )
    with pytest.raises(TransportError) as caught:
        await link.send(CLOSE, link.build_request(CLOSE, {"positionId": "1"}, timestamp_ms=1))
    await link.aclose()
    text = str(caught.value)
    assert error.__name__ in text
    for empty in ("()", ": )", ": ;"):
        assert empty not in text, text
    assert not text.endswith(": "), text


async def test_a_failed_clock_read_names_the_error(caplog: pytest.LogCaptureFixture) -> None:
    """A clock measurement that fails with a bare TimeoutError logs its name, not "()"."""

    async def measure() -> tuple[int, float, float]:
        raise TimeoutError

    clock = ServerClock(LoopClock(EPOCH))
    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        await clock.sync(measure)
    assert caplog.messages == ["could not read BingX server time (TimeoutError); keeping offset"]


#: The library's own errors: every one it raises is given its message where it is made.
OWN = frozenset(_exceptions.__all__)


def _foreign(types: str) -> bool:
    """Whether ``types`` (an annotation, or an except clause's classes) names an exception
    class other than the library's own."""
    parts = [p.strip() for p in types.strip("()").replace("|", ",").split(",")]
    return any(p.endswith(("Error", "Exception", "error")) and p not in OWN for p in parts)


def _exception_names(function: ast.AST) -> set[str]:
    """Names that hold an exception in ``function``: ``except ... as name`` and parameters
    annotated with an exception class (other than the library's own)."""
    names = {
        node.name
        for node in ast.walk(function)
        if isinstance(node, ast.ExceptHandler)
        and node.name is not None
        and (node.type is None or _foreign(ast.unparse(node.type)))
    }
    if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
        for arg in [*function.args.args, *function.args.kwonlyargs]:
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            if _foreign(annotation):
                names.add(arg.arg)
    return names


def _bare_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Where an exception's own text goes into a message or a log line as is."""
    found: set[tuple[int, str]] = set()
    functions = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name != "error_text"  # the one place that reads an exception's text
    ]
    for function in functions:
        names = _exception_names(function)
        for node in ast.walk(function):
            # f"{error}" or f"{error!s}" (f"{error!r}" always says something)
            if (
                isinstance(node, ast.FormattedValue)
                and isinstance(node.value, ast.Name)
                and node.value.id in names
                and node.conversion != ord("r")
            ):
                found.add((node.lineno, f"f-string of {node.value.id}"))
            if isinstance(node, ast.Call):
                func = node.func
                # str(error)
                if (
                    isinstance(func, ast.Name)
                    and func.id == "str"
                    and any(isinstance(a, ast.Name) and a.id in names for a in node.args)
                ):
                    found.add((node.lineno, "str() of an exception"))
                # logger.warning("... %s", error)
                if (
                    isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name)
                    and func.value.id in ("logger", "logging", "log")
                ):
                    for arg in node.args[1:]:
                        if isinstance(arg, ast.Name) and arg.id in names:
                            found.add((node.lineno, f"logged {arg.id} as %s"))
    return sorted(found)


def test_no_message_or_log_line_shows_an_exception_text_as_is() -> None:
    """Every log call and message in the library that shows an exception does it through
    error_text() (its text, or its class name when it has none): never "()"."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, what in _bare_uses(tree):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert offenders == []


def test_the_walk_finds_what_it_looks_for() -> None:
    """The walk above flags each way of showing an exception's text as is."""
    source = (
        "def f(x):\n"
        "    try:\n"
        "        pass\n"
        "    except Exception as error:\n"
        "        logger.warning('failed: %s', error)\n"
        "        raise ValueError(f'failed ({error})')\n"
        "def g(problem: BaseException):\n"
        "    return str(problem)\n"
        "def h(problem: BaseException):\n"
        "    return f'{problem!r} {error_text(problem)}'\n"
        "def i(problem: BingXError | None):\n"
        "    return str(problem)\n"
    )
    assert [line for line, _ in _bare_uses(ast.parse(source))] == [5, 6, 8]


async def test_cancelling_a_clock_read_still_logs_nothing_empty(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A measurement that raises an exception with an empty text of any kind: no "()"."""

    async def measure() -> tuple[int, float, float]:
        raise OSError("")

    clock = ServerClock(LoopClock(EPOCH))
    with caplog.at_level(logging.DEBUG, logger="bingx_async"):
        await asyncio.wait_for(clock.sync(measure), 1.0)
    assert "()" not in caplog.text
