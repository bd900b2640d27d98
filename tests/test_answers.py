"""Every answer understood: BingX's error table by code and message, hostile or broken bodies,
redirects, and errors that survive pickling."""

from __future__ import annotations

import asyncio
import inspect
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bingx_async
from bingx_async import (
    APIError,
    BadRequestError,
    BingXClient,
    BingXError,
    CloseBlockedByOrdersError,
    OrderRejectedError,
    PositionNotFoundError,
    PositionPossiblyClosedError,
    ResponseValidationError,
    RetryPolicy,
    ServerError,
    TimestampError,
)
from bingx_async._codes import CODE_RULES, RATE_LIMIT_CODES, docs_table
from bingx_async._decode import decode
from bingx_async.testing import FakeClock

from .mock_bingx import MockBingX

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "POST /openApi/swap/v1/trade/closePosition"
ONCE = RetryPolicy(attempts=1)


def answering(*bodies: bytes | str, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    """closePosition answers these raw bodies in turn (server time is answered normally)."""
    queue = [b.encode() if isinstance(b, str) else b for b in bodies]

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=queue.pop(0))

    return answer


async def close_with(answer: Callable[[httpx.Request], httpx.Response], **options: Any) -> Any:
    """Close position 7 against ``answer``; its result or the exception it raised."""
    bingx = MockBingX(answer=answer)
    options.setdefault("retry", ONCE)
    async with bingx.client(**options) as client:
        try:
            return await client.close_position(7)
        except BingXError as error:
            return error


# --- BingX's code table -------------------------------------------------------------------------

CASES = [
    (101400, "No position to close", PositionNotFoundError),
    (101400, "Insufficient margin", OrderRejectedError),
    (101400, "Order size error", BadRequestError),
    (80012, "The current system is busy, please try again later", ServerError),
    (80012, "Service Unavailable", ServerError),
    (80012, "connect: connection refused", ServerError),
    (80012, "margin is not enough", OrderRejectedError),
    (80012, "symbol not exist", BadRequestError),
    (80012, "leverage illegal", BadRequestError),
    (80012, "trading has been locked", OrderRejectedError),
    (80012, "stop order cnt hit limit 50", OrderRejectedError),
    (
        80001,
        "At present, the actual position is occupied by a Limit Order. If you need to close "
        "the position, please cancel other orders first",
        CloseBlockedByOrdersError,
    ),
    (80001, "the account has positions or pending orders", CloseBlockedByOrdersError),
    (80001, "margin is not enough", OrderRejectedError),
    (80001, "The current system is busy", ServerError),
    (
        101212,
        "Failed. Please check if you have pending orders under the trading pair. If yes, "
        "please cancel them and try again",
        CloseBlockedByOrdersError,
    ),
    (80014, "timestamp is invalid", TimestampError),
    (109400, "CATI-USDT,symbol not exist, please verify it", BadRequestError),
    (80013, "too many open orders", OrderRejectedError),
    (80019, "order is being processed", ServerError),
    (109201, "same order number within 1s", BadRequestError),
    (123456, "a code nobody documented", APIError),
]


@pytest.mark.looptime
@pytest.mark.parametrize(("code", "msg", "expected"), CASES)
async def test_each_code_is_read_with_its_message(
    code: int, msg: str, expected: type[APIError]
) -> None:
    """The class depends on the code and, for shared codes, on the message."""
    body = json.dumps({"code": code, "msg": msg, "data": None})
    error = await close_with(answering(body), confirm_closes=False)
    assert type(error) is expected
    assert (error.code, error.msg) == (code, msg)
    assert error.may_have_executed is issubclass(expected, ServerError)


@pytest.mark.looptime
async def test_a_business_rejection_of_80012_is_not_retried() -> None:
    """ "margin is not enough" under 80012 is final and did not execute."""
    bingx = MockBingX(answer=answering(json.dumps({"code": 80012, "msg": "margin is not enough"})))
    async with bingx.client(retry=RetryPolicy()) as client:
        with pytest.raises(OrderRejectedError) as caught:
            await client.close_position(7)
    assert caught.value.may_have_executed is False
    assert len(bingx.sent) == 1


@pytest.mark.looptime
async def test_system_busy_under_80012_is_retried() -> None:
    """ "system busy" under 80012 is a server failure: the close is sent again."""
    busy = json.dumps({"code": 80012, "msg": "The current system is busy"})
    done = json.dumps({"code": 0, "msg": "", "data": {"positionId": "7", "orderId": 1}})
    bingx = MockBingX(answer=answering(busy, done))
    async with bingx.client(retry=RetryPolicy(wait_jitter=0)) as client:
        result = await client.close_position(7)
    assert result.order_id == "1"
    assert len(bingx.sent) == 2


@pytest.mark.looptime
async def test_no_position_under_101400_after_an_unknown_attempt_is_possibly_closed() -> None:
    """A 504, then 101400 "No position to close": possibly closed by the first attempt."""
    bingx = MockBingX(
        answer=answering(
            json.dumps({"code": 100500, "msg": "unknown status"}),
            json.dumps({"code": 101400, "msg": "No position to close"}),
        )
    )
    async with bingx.client(retry=RetryPolicy(wait_jitter=0), confirm_closes=False) as client:
        with pytest.raises(PositionPossiblyClosedError) as caught:
            await client.close_position(7)
    assert caught.value.code == 101400
    assert caught.value.may_have_executed is True


def test_open_orders_blocking_a_close_say_to_cancel_them() -> None:
    """CloseBlockedByOrdersError tells the bot what to do."""
    error = CloseBlockedByOrdersError("BingX error 101212: Failed", code=101212)
    assert isinstance(error, OrderRejectedError)
    assert "cancel the open orders" in str(error)


def test_the_rate_limit_codes_come_from_the_table() -> None:
    """100410, 100409 and 109429, and nothing else."""
    assert frozenset({100410, 100409, 109429}) == RATE_LIMIT_CODES


def test_every_code_has_a_fallback_rule() -> None:
    """A shared code's last rule matches any message, so no known code falls through."""
    last: dict[int, Any] = {}
    for rule in CODE_RULES:
        last[rule.code] = rule
    assert [code for code, rule in last.items() if rule.when is not None] == []


def test_the_docs_list_every_code_as_the_table_says() -> None:
    """docs/errors.md holds the table made from the code table, word for word."""
    text = (ROOT / "docs" / "errors.md").read_text()
    assert docs_table() in text


def test_the_readme_names_every_code_under_its_class() -> None:
    """Each code of the table appears in the README's error table on its class's row."""
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("|")]
    for rule in CODE_RULES:
        on_row = [row for row in rows if f"`{rule.error.__name__}`" in row.split("|")[-2]]
        assert any(re.search(rf"\b{rule.code}\b", row) for row in on_row), rule


# --- hostile and broken bodies ------------------------------------------------------------------

HOSTILE = [
    b'{"code":1e1000000}',
    b'{"code":1e100000000,"msg":"x"}',
    b'{"code":"\xc2\xb2","msg":"superscript two"}',
    b'{"code":' + b"9" * 5000 + b',"msg":"long"}',
    b'{"code":-' + b"1" * 80 + b"}",
    b'{"code":1.5,"msg":"x"}',
    b'{"code":NaN}',
    b'{"code":0,"data":{"positionId":NaN,"orderId":Infinity}}',
    b'{"code":0,"data":{"positionId":"7","orderId":-Infinity,"origQty":1e400000}}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"code":"0x10"}',
    b"\xff\xfe\x00{",
    b"",
]


@pytest.mark.looptime
@pytest.mark.timeout(5)
@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
async def test_a_hostile_body_ends_as_a_result_or_a_bingx_error(body: bytes) -> None:
    """Absurd numbers, odd digits, NaN, deep nesting: a result or a BingXError, at once."""
    outcome = await close_with(answering(body), confirm_closes=False)
    if isinstance(outcome, bingx_async.ClosePositionResult):
        assert outcome.position_id == "7"
        assert outcome.order_id is None
    else:
        assert isinstance(outcome, ResponseValidationError | APIError)


@pytest.mark.looptime
async def test_non_finite_numbers_never_become_ids() -> None:
    """NaN and Infinity in a success body are missing values: the requested ID stands."""
    body = b'{"code":0,"data":{"positionId":Infinity,"orderId":NaN,"symbol":"BTC-USDT"}}'
    result = await close_with(answering(body))
    assert (result.position_id, result.order_id, result.symbol) == ("7", None, "BTC-USDT")


@pytest.mark.looptime
async def test_an_absurd_leverage_in_a_position_is_missing() -> None:
    """ "leverage":1e400000 is read as no leverage, at once."""
    body = {"code": 0, "data": [{"positionId": "7", "symbol": "BTC-USDT", "leverage": "X"}]}
    text = json.dumps(body).replace('"X"', "1e400000")
    bingx = MockBingX(answer=answering(text))
    async with bingx.client() as client:
        (position,) = await client.request("GET", "/openApi/swap/v2/user/history", {})
    assert position["leverage"] is None


@pytest.mark.looptime
async def test_a_huge_message_gives_a_bounded_error() -> None:
    """A 5 MB msg: str(error) stays short, the raw body is kept up to 64 KiB."""
    msg = "x" * 5_000_000
    error = await close_with(answering(json.dumps({"code": 100400, "msg": msg})))
    assert isinstance(error, BadRequestError)
    assert len(str(error)) <= 1000
    assert error.msg is not None
    assert len(error.msg) <= 1000
    assert error.raw_body is not None
    assert len(error.raw_body) <= 64 * 1024
    assert error.body is None


@pytest.mark.looptime
async def test_a_huge_rate_limit_message_is_a_bounded_hold_reason() -> None:
    """A 5 MB 100410 message: the error that holds the budget for others is bounded too."""
    msg = "rate limited " + "y" * 5_000_000
    error = await close_with(answering(json.dumps({"code": 100410, "msg": msg})))
    assert len(str(error)) <= 1000


@pytest.mark.looptime
@pytest.mark.parametrize("server_time", ["100000000000000000000", "-5", "0", '"12"', "1e30"])
async def test_an_impossible_server_time_is_a_validation_error(server_time: str) -> None:
    """serverTime of 10^20 (and friends) is a ResponseValidationError, not an OSError."""
    body = f'{{"code":0,"msg":"","data":{{"serverTime":{server_time}}}}}'
    client = BingXClient(
        transport=httpx.MockTransport(lambda _: httpx.Response(200, content=body.encode())),
        clock=FakeClock(),
    )
    async with client:
        with pytest.raises(ResponseValidationError):
            await client.server_time()


# --- the decoder, fuzzed ------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from(["1e999999", "NaN", "Infinity", "9" * 70, "²", "-0"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["code", "msg", "data", "timestamp", "x"]), children)
    ),
    max_leaves=12,
)


def _jsonish(value: Any) -> bytes:
    """JSON, with some strings unquoted into raw number literals and constants."""
    text = json.dumps(value)
    for raw in ("1e999999", "NaN", "Infinity", "9" * 70):
        text = text.replace(f'"{raw}"', raw)
    return text.encode()


bodies = st.one_of(st.binary(max_size=300), json_values.map(_jsonish))
statuses = st.sampled_from([200, 200, 200, 301, 400, 403, 418, 429, 500, 502, 504, 999])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(status=statuses, body=bodies)
def test_any_answer_decodes_to_data_or_a_bingx_error(status: int, body: bytes) -> None:
    """Any status and any bytes: data, or a ResponseValidationError or APIError, quickly."""
    response = httpx.Response(status, content=body, headers={"location": "https://x.example/"})
    failure: BaseException | None = None
    try:
        decode(ENDPOINT, response, server_now=1_700_000_000.0)
    except BaseException as error:  # noqa: BLE001 - the type is what is checked
        failure = error
    if failure is not None:
        assert isinstance(failure, ResponseValidationError | APIError), repr(failure)
        assert len(str(failure)) <= 1000


# --- redirects ----------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_redirect_is_never_followed() -> None:
    """With a pool that follows redirects, a 301 is an error naming the other host, and
    nothing reaches it."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "elsewhere.example":
            return httpx.Response(200, json={"code": 0, "data": {}})
        if request.url.path.endswith("server/time"):
            return httpx.Response(200, json={"code": 0, "data": {"serverTime": 1_700_000_000_000}})
        return httpx.Response(301, headers={"location": "https://elsewhere.example/steal"})

    pool = httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True)
    async with (
        pool,
        BingXClient(
            api_key="k", secret_key="s", http_client=pool, clock=FakeClock(), retry=ONCE
        ) as client,
    ):
        with pytest.raises(APIError, match=r"redirects to elsewhere\.example") as caught:
            await client.close_position(7)
    assert "elsewhere.example" not in seen
    assert caught.value.status_code == 301
    assert caught.value.may_have_executed is False


# --- pickling -----------------------------------------------------------------------------------

PUBLIC_ERRORS = [
    value
    for value in vars(bingx_async).values()
    if inspect.isclass(value) and issubclass(value, BingXError)
]


def _sample(cls: type[BingXError]) -> BingXError:
    extra: dict[str, Any] = {}
    parameters = inspect.signature(cls.__init__).parameters
    if "banned_code" in parameters and "count" in parameters:  # ErrorRateGuardError
        extra = {"banned_code": 100202, "count": 20, "window": 480.0, "retry_after": 3.5}
        return cls("refused", endpoint=ENDPOINT, **extra)
    if cls is ResponseValidationError:
        return cls("not JSON", body="<html>", status_code=200, endpoint=ENDPOINT)
    error = cls("failed", code=100400, msg="bad", status_code=400, endpoint=ENDPOINT)
    error.attempts = 3
    return error


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda cls: cls.__name__)
def test_every_public_error_survives_pickling(cls: type[BingXError]) -> None:
    """Pickled and back (as a ProcessPoolExecutor does), with every attribute."""
    original = _sample(cls)
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert str(copy) == str(original)
    assert vars(copy) == vars(original)


def test_a_possibly_closed_error_pickles_with_its_earlier_error() -> None:
    """Nested errors come along."""
    earlier = ServerError("504", status_code=504)
    error = PositionPossiblyClosedError("gone", earlier_error=earlier, checked=("x",))
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy.earlier_error, ServerError)
    assert copy.earlier_error.status_code == 504
    assert copy.checked == ("x",)


# --- progress callbacks -------------------------------------------------------------------------


@pytest.mark.looptime
async def test_an_async_progress_callback_is_awaited() -> None:
    """on_progress may be a coroutine function: each call is awaited."""
    seen: list[str] = []

    async def progress(update: bingx_async.CloseProgress) -> None:
        await asyncio.sleep(0)
        seen.append(str(update.position_id))

    bingx = MockBingX()
    async with bingx.client() as client:
        await client.close_positions([1, 2, 3], on_progress=progress)
    assert sorted(seen) == ["1", "2", "3"]
