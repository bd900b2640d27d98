"""Answers' bodies bounded as they arrive, and total_timeout bounding the reading of them."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib.util
import sys
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import httpx
import pytest

from bingx_async import (
    BingXClient,
    RequestTimeout,
    ResponseValidationError,
    RetryPolicy,
    SystemClock,
)
from bingx_async._decode import MAX_BODY
from bingx_async._pipeline import _CutOffs
from bingx_async.testing import LoopClock

from .mock_bingx import EPOCH

MIB = 1024 * 1024
ONCE = RetryPolicy(attempts=1)
ENVELOPE = b'{"code":0,"msg":"","data":{"serverTime":1700000000000}}'


def _load_benchmark() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hostile_bodies.py"
    spec = importlib.util.spec_from_file_location("benchmarks_hostile_bodies", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


hostile = _load_benchmark()


def streamed(body: bytes, chunk: int = 64 * 1024) -> Callable[[], AsyncIterator[bytes]]:
    """``body`` as a network transport hands it over: chunk by chunk, not read beforehand."""

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    return chunks


def client_answering(
    answer: Callable[[httpx.Request], httpx.Response], **options: object
) -> BingXClient:
    options.setdefault("retry", ONCE)
    return BingXClient(
        api_key="key",
        secret_key="secret",
        clock=LoopClock(EPOCH),
        transport=httpx.MockTransport(answer),
        clock_sync_interval=None,
        **options,  # type: ignore[arg-type]
    )


async def refusal(answer: Callable[[httpx.Request], httpx.Response]) -> ResponseValidationError:
    """What ``server_time()`` raises, asked of a client that BingX answers with ``answer``."""
    async with client_answering(answer) as client:
        with pytest.raises(ResponseValidationError) as caught:
            await client.server_time()
    return caught.value


# --- 1: bodies bounded as they arrive -------------------------------------------------------


async def test_a_gzip_bomb_is_refused_without_inflating_it() -> None:
    """128 KB of gzip that inflates to 128 MiB: ResponseValidationError, and no more memory
    than the cap and a little (httpx alone would inflate all of it)."""
    bomb = hostile.gzip_bomb(128)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=streamed(bomb)())

    async with client_answering(answer) as client:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseValidationError) as caught:
                await client.close_position(1)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert str(caught.value) == (
        "BingX answered HTTP 200 with a body over 8 MiB once inflated; it was not read "
        "further (POST /openApi/swap/v1/trade/closePosition)"
    )
    assert caught.value.may_have_executed is True  # a close: it may have executed
    assert peak < MAX_BODY + 4 * MIB, f"peak {peak / MIB:.1f} MiB"


async def test_a_body_sent_over_the_cap_is_not_read_to_its_end() -> None:
    """64 MiB sent as is: refused once 8 MiB have arrived; the rest is never read."""
    handed_over = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal handed_over
        for _ in range(1024):
            handed_over += 64 * 1024
            yield bytes(64 * 1024)

    refused = await refusal(lambda request: httpx.Response(200, content=chunks()))
    assert "a body over 8 MiB as sent; it was not read further" in str(refused)
    assert handed_over <= MAX_BODY + 64 * 1024


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(ENVELOPE)),
        ("x-gzip", gzip.compress(ENVELOPE)),
        ("deflate", zlib.compress(ENVELOPE)),
        ("deflate", zlib.compress(ENVELOPE)[2:-4]),  # raw deflate, as some servers send it
        ("identity", ENVELOPE),
        ("", ENVELOPE),
    ],
    ids=["gzip", "x-gzip", "zlib deflate", "raw deflate", "identity", "none"],
)
async def test_the_encodings_bingx_uses_are_read(encoding: str, body: bytes) -> None:
    """gzip, deflate (zlib or raw) and none: the answer is read, chunk by small chunk."""
    headers = {"Content-Encoding": encoding} if encoding else {}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=headers, content=streamed(body, chunk=3)())

    async with client_answering(answer) as client:
        when = await client.server_time()
    assert when.timestamp() == 1_700_000_000


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, gzip", "compress"])
async def test_an_encoding_bingx_does_not_use_is_refused(encoding: str) -> None:
    """Any other Content-Encoding: ResponseValidationError naming it, nothing inflated."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Encoding": encoding}, content=streamed(b"\x00" * 64)()
        )

    refused = await refusal(answer)
    assert str(refused) == (
        f"BingX answered HTTP 200 with Content-Encoding {encoding!r}; only gzip, deflate or "
        "none are read (GET /openApi/swap/v2/server/time)"
    )


async def test_a_body_that_does_not_inflate_is_refused() -> None:
    """A gzip header over garbage: ResponseValidationError, not a transport failure."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            headers={"Content-Encoding": "gzip"},
            content=streamed(b"\x1f\x8b\x08\x00" + b"\xff" * 40)(),
        )

    refused = await refusal(answer)
    assert "with a body that does not inflate as its Content-Encoding says" in str(refused)


async def test_requests_ask_only_for_the_encodings_read() -> None:
    """Accept-Encoding names gzip and deflate only (never br or zstd, whatever is installed)."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Accept-Encoding"])
        return httpx.Response(200, content=ENVELOPE)

    async with client_answering(answer) as client:
        await client.server_time()
    # A pool of the caller's, whose own defaults may name more encodings.
    pool = httpx.AsyncClient(
        transport=httpx.MockTransport(answer), headers={"Accept-Encoding": "gzip, br, zstd"}
    )
    async with (
        pool,
        BingXClient(
            api_key="key",
            secret_key="secret",
            clock=LoopClock(EPOCH),
            http_client=pool,
            clock_sync_interval=None,
            retry=ONCE,
        ) as client,
    ):
        await client.server_time()
    assert seen == ["gzip, deflate", "gzip, deflate"]


# --- 2: total_timeout bounds the reading of the answer --------------------------------------


def trickling(request: httpx.Request) -> httpx.Response:
    """An answer whose body sends a byte a second for almost three hours."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10_000):
            await asyncio.sleep(1.0)
            yield b" "

    return httpx.Response(200, content=chunks())


@pytest.mark.looptime
async def test_a_trickling_answer_ends_the_call_at_its_total_timeout() -> None:
    """A close whose answer trickles in: RequestTimeout at total_timeout exactly, saying
    the call's time ran out after sending, with may_have_executed=True."""
    loop = asyncio.get_running_loop()
    policy = RetryPolicy(total_timeout=3.0)
    async with client_answering(trickling, retry=policy) as client:
        started = loop.time()
        with pytest.raises(RequestTimeout) as caught:
            await client.close_position(1)
        elapsed = loop.time() - started
    assert elapsed == pytest.approx(3.0, abs=1e-3)
    assert str(caught.value).startswith(
        "POST /openApi/swap/v1/trade/closePosition was cut off when the call's total_timeout "
        "ran out, 3.000 s after it was sent and before its answer was read; it may have "
        "executed"
    )
    assert caught.value.may_have_executed is True


@pytest.mark.looptime
async def test_calls_in_flight_together_are_each_cut_off_at_their_own_deadline() -> None:
    """One client's trickling calls, the later deadline first: each ends at its own time,
    and one that finished does not keep the others from being cut off."""
    loop = asyncio.get_running_loop()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("positionId") == "4":
            return httpx.Response(200, content=b'{"code":0,"msg":"","data":{}}')
        return trickling(request)

    async with client_answering(answer) as client:
        started = loop.time()
        ended: dict[int, float] = {}

        async def close(position: int, seconds: float) -> None:
            with contextlib.suppress(RequestTimeout, ResponseValidationError):
                await client.close_position(position, retry=RetryPolicy(total_timeout=seconds))
            ended[position] = loop.time() - started

        await asyncio.gather(close(1, 5.0), close(2, 2.0), close(3, 3.5), close(4, 1.0))
    assert ended[1] == pytest.approx(5.0, abs=1e-3)
    assert ended[2] == pytest.approx(2.0, abs=1e-3)
    assert ended[3] == pytest.approx(3.5, abs=1e-3)
    assert ended[4] < 1.0


@pytest.mark.looptime
async def test_calls_one_after_another_are_each_cut_off_at_their_deadline() -> None:
    """The cut-off timer is set anew for each call that comes after the last one ended."""
    loop = asyncio.get_running_loop()
    async with client_answering(trickling) as client:
        for position, seconds in ((1, 1.5), (2, 2.5), (3, 0.5)):
            started = loop.time()
            with pytest.raises((RequestTimeout, ResponseValidationError)):
                await client.close_position(position, retry=RetryPolicy(total_timeout=seconds))
            assert loop.time() - started == pytest.approx(seconds, abs=1e-3)


@pytest.mark.looptime
async def test_a_read_that_trickles_past_total_timeout_is_not_sent_again() -> None:
    """A read cut off at total_timeout is not retried: the call ends there."""
    sent: list[float] = []
    loop = asyncio.get_running_loop()

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(loop.time())
        return trickling(request)

    async with client_answering(answer, retry=RetryPolicy(total_timeout=2.0)) as client:
        with pytest.raises(RequestTimeout):
            await client.server_time()
    assert len(sent) == 1


# --- 5: over a real socket ------------------------------------------------------------------


async def test_a_gzip_bomb_over_a_socket_ends_bounded() -> None:
    """A 128 MiB gzip bomb served on 127.0.0.1: ResponseValidationError, memory under the cap
    plus 16 MiB, and the call over within total_timeout + 1 s. One request: a retry of it
    could be cut off by total_timeout instead, on a busy machine."""
    server = hostile.HostileServer("bomb", hostile.gzip_bomb(128))
    outcome = await hostile.hit(server, total_timeout=1.0, attempts=1)
    assert isinstance(outcome.error, ResponseValidationError), repr(outcome.error)
    assert outcome.peak < MAX_BODY + 16 * MIB, f"peak {outcome.peak / MIB:.1f} MiB"
    assert outcome.elapsed < 1.0 + 1.0, f"{outcome.elapsed:.2f} s"


async def test_an_endless_body_over_a_socket_ends_at_total_timeout() -> None:
    """A chunked body that never ends, on 127.0.0.1: RequestTimeout (may have executed) at
    total_timeout, with memory flat."""
    started = time.perf_counter()
    outcome = await hostile.hit(hostile.HostileServer("trickle"), total_timeout=0.5)
    assert isinstance(outcome.error, RequestTimeout), repr(outcome.error)
    assert outcome.error.may_have_executed is True
    assert "total_timeout ran out" in str(outcome.error)
    assert 0.5 <= outcome.elapsed < 0.5 + 1.0, f"{outcome.elapsed:.2f} s"
    assert outcome.peak < 1 * MIB, f"peak {outcome.peak / MIB:.1f} MiB"
    assert time.perf_counter() - started < 3.0


# --- the cap to the byte, and what a refusal carries ----------------------------------------

TIME = "GET /openApi/swap/v2/server/time"


def padded(size: int) -> bytes:
    """A valid answer of exactly ``size`` bytes (JSON allows trailing spaces)."""
    return ENVELOPE + b" " * (size - len(ENVELOPE))


@pytest.mark.parametrize("read_before", [False, True], ids=["streamed", "in memory"])
@pytest.mark.parametrize("encoding", ["", "gzip"])
async def test_a_body_of_exactly_the_cap_is_read_and_one_byte_more_is_not(
    monkeypatch: pytest.MonkeyPatch, read_before: bool, encoding: str
) -> None:
    """The cap is the most allowed, as sent and once inflated, whether the transport hands the
    body over in chunks or already read."""
    monkeypatch.setattr("bingx_async._decode.MAX_BODY", 4096)

    def answer_of(size: int) -> Callable[[httpx.Request], httpx.Response]:
        body = padded(size)
        if encoding:
            # Stored, not compressed: as sent it is a little larger than inflated.
            body = gzip.compress(body, compresslevel=0) if read_before else gzip.compress(body)
        headers = {"Content-Encoding": encoding} if encoding else {}
        content = body if read_before else streamed(body, chunk=1000)()
        return lambda request: httpx.Response(200, headers=headers, content=content)

    async with client_answering(answer_of(4096)) as client:
        assert (await client.server_time()).timestamp() == 1_700_000_000.0
    refused = await refusal(answer_of(4097))
    assert (refused.status_code, refused.endpoint, refused.body) == (200, TIME, "")
    assert str(refused).startswith("BingX answered HTTP 200 with a body over 4096 bytes ")
    assert str(refused).endswith(f"it was not read further ({TIME})")


@pytest.mark.parametrize(
    ("cap", "shown"),
    [
        (MIB, "1 MiB"),
        (2 * MIB, "2 MiB"),
        (MIB + MIB // 2, "1572864 bytes"),
        (MIB // 2, "524288 bytes"),
    ],
)
async def test_the_cap_is_named_in_mib_only_when_it_is_whole_mib(
    monkeypatch: pytest.MonkeyPatch, cap: int, shown: str
) -> None:
    monkeypatch.setattr("bingx_async._decode.MAX_BODY", cap)
    body = bytes(cap + 1)

    refused = await refusal(lambda request: httpx.Response(200, content=body))
    assert str(refused) == (
        f"BingX answered HTTP 200 with a body over {shown} once inflated; it was not read "
        f"further ({TIME})"
    )


async def test_a_body_sent_over_the_cap_carries_the_answers_status_and_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bingx_async._decode.MAX_BODY", 1000)
    body = streamed(bytes(5000), chunk=600)

    refused = await refusal(lambda request: httpx.Response(503, content=body()))
    assert (refused.status_code, refused.endpoint, refused.body) == (503, TIME, "")
    assert str(refused) == (
        f"BingX answered HTTP 503 with a body over 1000 bytes as sent; it was not read further "
        f"({TIME})"
    )


async def test_a_body_that_does_not_inflate_names_the_answer_and_zlibs_reason() -> None:
    body = streamed(b"\x1f\x8b\x08\x00 certainly not gzip")

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, headers={"Content-Encoding": "gzip"}, content=body())

    refused = await refusal(answer)
    assert (refused.status_code, refused.endpoint, refused.body) == (502, TIME, "")
    assert str(refused).startswith(
        "BingX answered HTTP 502 with a body that does not inflate as its Content-Encoding "
        "says (Error -3 while decompressing data: "
    )
    assert str(refused).endswith(f"; {TIME})")


async def test_an_unread_encoding_is_named_shortened_with_the_answers_status() -> None:
    value = "br, " + "x" * 70

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, headers={"Content-Encoding": value}, content=ENVELOPE)

    refused = await refusal(answer)
    assert (refused.status_code, refused.endpoint, refused.body) == (404, TIME, "")
    assert str(refused) == (
        f"BingX answered HTTP 404 with Content-Encoding {value[:60] + '...'!r}; only gzip, "
        f"deflate or none are read ({TIME})"
    )


async def test_identity_listed_beside_gzip_is_read_as_gzip() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"Content-Encoding": "identity, gzip"}
        return httpx.Response(200, headers=headers, content=streamed(gzip.compress(ENVELOPE))())

    async with client_answering(answer) as client:
        assert (await client.server_time()).timestamp() == 1_700_000_000.0


class _TaskOn:
    """Stands for a request's task on ``loop`` (what a cut-off asks of it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def cancel(self) -> bool:
        return True


def test_cut_offs_are_set_on_a_new_loop_after_one_closed_before_setting_them() -> None:
    """A request armed on a loop that was closed before its next turn (when the timer is
    set) does not keep a later loop's requests from being cut off."""
    cut_offs = _CutOffs()
    clock = SystemClock()
    closed = asyncio.new_event_loop()
    try:
        lone = cut_offs.arm(
            clock, time.monotonic() + 60.0, cast("asyncio.Task[Any]", _TaskOn(closed))
        )
        cut_offs.disarm(lone)
    finally:
        closed.close()  # its next turn never comes

    async def hang() -> None:
        await asyncio.sleep(10.0)

    async def main() -> bool:
        task = asyncio.get_running_loop().create_task(hang())
        cut = cut_offs.arm(clock, clock.monotonic() + 0.05, task)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), timeout=2.0)
        cut_offs.disarm(cut)
        return cut.fired

    assert asyncio.run(main()) is True
