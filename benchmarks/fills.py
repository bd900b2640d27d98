"""Fills of N gathered closes over real loopback HTTP and WebSocket, in real time.

N positions on one account, each with its own mark price and side (so that every fill
differs), are closed at once with ``close_positions(ids, wait_fill=True)``. The simulator
(``FakeBingX`` on the system clock) runs in this process, serves the REST API and the account
stream on 127.0.0.1 and records every request, so the requests are counted as BingX would see
them. Prints, each on a line of its own:

* positions closed, and the wall time of ``close_positions``;
* fills received, and how many equal the simulator's order (average price, quantity,
  realized profit, fee);
* fills by source: ``stream``, ``rest`` (one order query, once the stream had not shown the
  fill) or ``none``;
* order queries sent, and how many of them were for fills the stream had pushed on the
  connection that was open when their close arrived at the simulator (the client could have
  had them from the stream);
* REST requests by endpoint; rate-limit answers (100409, 100410, 109429) and any other error
  answer, by code;
* the stream's connections, reconnects, and the drops made;
* the span of the closes at the simulator (first arrival to last) against the theoretical
  minimum, (N - 5) / 5 s at 5 closes per second, and their ratio;
* the fill delay of each fill that came from the stream: from the simulator handing its
  ``ORDER_TRADE_UPDATE`` to the open connections to ``close_position`` returning inside
  ``close_positions`` (the moment ``on_progress`` is called), ``time.perf_counter`` on both
  sides; median, p90 and max;
* the memory an idle account stream holds: one ``account_stream()`` opened and left idle for
  ``--idle`` seconds, against a simulator in a child process (so that only the client's side
  is counted); Python allocations (``tracemalloc``, after ``gc.collect()``) by package, and
  the growth of the resident size (``/proc/self/statm``, measured in a pass of its own,
  without tracemalloc).

``--drops K`` cuts the stream's connections K times, evenly spaced over the expected span,
with the simulator's events delayed by 0.2 s so that some fills are on their way when a
connection goes and must come from the order query.

    PYTHONPATH=. python benchmarks/fills.py              # 50 positions
    PYTHONPATH=. python benchmarks/fills.py --drops 2
    PYTHONPATH=. python benchmarks/fills.py --positions 10 --json

(``PYTHONPATH=.`` from the repository's root, so that this checkout's library is measured.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.util
import json
import math
import multiprocessing
import os
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from bingx_async import BingXClient, ClosePositionResult, CloseProgress, Fill, StreamSettings
from bingx_async._cli._demo import theoretical_minimum
from bingx_async._codes import RATE_LIMIT_CODES
from bingx_async.testing import FakeBingX, SimAccount, SimOrder, SimStream

if TYPE_CHECKING:
    from bingx_async.testing._records import PositionSide
    from bingx_async.testing._stream import StreamConnection

API_KEY = "bench-api-key"
SECRET_KEY = "bench-secret-key"
CLOSE = "/openApi/swap/v1/trade/closePosition"
ORDER = "/openApi/swap/v2/trade/order"
LISTEN_KEY = "/openApi/user/auth/userDataStream"
SERVER_TIME = "/openApi/swap/v2/server/time"
#: With --drops, how late the simulator's events reach the stream: a fill is on its way this
#: long, and a drop meanwhile loses it.
DROP_EVENT_DELAY = 0.2
SIDES: tuple[PositionSide, ...] = ("LONG", "SHORT")
#: Packages whose allocations are shown apart; the rest is "other".
PACKAGES = ("bingx_async", "websockets", "httpx", "httpcore", "h11", "anyio", "asyncio")
KIB = 1024

_T = TypeVar("_T")


# --- what the simulator's stream does, seen from outside ------------------------------------


class StreamWatch:
    """What the simulator's stream did, seen by wrapping three of its private methods: when
    each order's filled event was handed to the open streams (``time.perf_counter``), since
    when the connection it went to had been open (``None``: none was; the simulator's
    clock), and how many connections opened."""

    def __init__(self, stream: SimStream) -> None:
        self.pushed_at: dict[str, float] = {}
        self.pushed_on_connection_since: dict[str, float | None] = {}
        self.connections = 0
        open_since: float | None = None
        deliver, attach, detach = stream._deliver, stream._attach, stream._detach

        def delivering(uid: str, events: list[Mapping[str, object]]) -> None:
            now = time.perf_counter()
            for event in events:
                order = event.get("o")
                if (
                    event.get("e") == "ORDER_TRADE_UPDATE"
                    and isinstance(order, Mapping)
                    and order.get("X") == "FILLED"
                ):
                    order_id = str(order.get("i"))
                    self.pushed_at.setdefault(order_id, now)
                    self.pushed_on_connection_since.setdefault(order_id, open_since)
            deliver(uid, events)

        def attaching(connection: StreamConnection) -> None:
            nonlocal open_since
            self.connections += 1
            open_since = stream.clock.monotonic()
            attach(connection)

        def detaching(connection: StreamConnection) -> None:
            nonlocal open_since
            detach(connection)
            if not stream.open_connections():
                open_since = None

        stream._deliver = delivering  # type: ignore[method-assign]
        stream._attach = attaching  # type: ignore[method-assign]
        stream._detach = detaching  # type: ignore[method-assign]


# --- the figures ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requests:
    """REST requests the simulator received, by endpoint; ``other`` by ``METHOD path``."""

    close: int
    listen_key_post: int
    listen_key_put: int
    listen_key_delete: int
    server_time: int
    order_query: int
    other: dict[str, int]


@dataclass(frozen=True, slots=True)
class Delays:
    """Fill delays in milliseconds (``None`` without any fill from the stream)."""

    count: int
    median_ms: float | None
    p90_ms: float | None
    max_ms: float | None


@dataclass(frozen=True, slots=True)
class CloseFigures:
    positions: int
    drops: int
    drops_made: int
    event_delay_s: float
    closed: int
    wall_s: float
    fills_received: int
    fills_equal: int
    fills_by_source: dict[str, int]
    order_queries: int
    rest_fills_pushed_on_their_connection: int
    requests: Requests
    rate_limit_answers: int
    other_error_answers: dict[str, int]
    stream_connections: int
    reconnects: int
    connections_cut: int
    span_s: float
    minimum_s: float
    span_ratio: float | None
    fill_delay: Delays


@dataclass(frozen=True, slots=True)
class IdleMemory:
    idle_s: float
    tracemalloc_kib: float
    blocks: int
    by_package_kib: dict[str, float]
    rss_kib: float | None


# --- the closes -----------------------------------------------------------------------------


def open_positions(sim: FakeBingX, account: SimAccount, count: int, seed: int) -> list[str]:
    """``count`` positions of ``account``: every mark price distinct and the side drawn at
    random, so that no two fills are alike."""
    rng = random.Random(seed)
    return [
        sim.add_position(
            account,
            position_side=rng.choice(SIDES),
            quantity=f"0.0{1 + n % 9}",
            avg_price="60000.0",
            mark_price=f"{59750 + 10 * n + rng.randrange(10)}.5",
        ).position_id
        for n in range(count)
    ]


def client_for(base_url: str, stream_url: str) -> BingXClient:
    """A client of the simulator's account, over plain HTTP and WebSocket on loopback."""
    return BingXClient(
        api_key=API_KEY,
        secret_key=SECRET_KEY,
        base_url=base_url,
        allow_insecure_http=True,
        stream=StreamSettings(url=stream_url),
    )


def is_the_simulators(fill: Fill, order: SimOrder | None) -> bool:
    """Whether ``fill`` says what the simulator's ``order`` filled."""
    return order is not None and (
        fill.avg_price,
        fill.quantity,
        fill.realized_profit,
        fill.fee,
    ) == (
        Decimal(order.avg_price),
        Decimal(order.quantity),
        Decimal(order.realized_profit),
        Decimal(order.commission),
    )


def count_requests(sim: FakeBingX) -> tuple[Requests, int, dict[str, int]]:
    """The simulator's requests by endpoint, its rate-limit answers, and its other error
    answers by code (``HTTP <status>`` for an error without a code)."""
    by_endpoint = Counter((request.method, request.path) for request in sim.requests)
    rate_limited = 0
    errors: Counter[str] = Counter()
    for request in sim.requests:
        if request.code in RATE_LIMIT_CODES:
            rate_limited += 1
        elif request.code not in (None, 0):
            errors[str(request.code)] += 1
        elif request.status_code is None or not 200 <= request.status_code < 300:
            errors[f"HTTP {request.status_code}"] += 1
    known = {
        ("POST", CLOSE),
        ("POST", LISTEN_KEY),
        ("PUT", LISTEN_KEY),
        ("DELETE", LISTEN_KEY),
        ("GET", SERVER_TIME),
        ("GET", ORDER),
    }
    requests = Requests(
        close=by_endpoint["POST", CLOSE],
        listen_key_post=by_endpoint["POST", LISTEN_KEY],
        listen_key_put=by_endpoint["PUT", LISTEN_KEY],
        listen_key_delete=by_endpoint["DELETE", LISTEN_KEY],
        server_time=by_endpoint["GET", SERVER_TIME],
        order_query=by_endpoint["GET", ORDER],
        other={
            f"{method} {path}": count
            for (method, path), count in sorted(by_endpoint.items())
            if (method, path) not in known
        },
    )
    return requests, rate_limited, dict(sorted(errors.items()))


def delays(seconds: list[float]) -> Delays:
    """Median, p90 (nearest rank) and max of ``seconds``, in milliseconds."""
    if not seconds:
        return Delays(0, None, None, None)
    ordered = sorted(seconds)
    p90 = ordered[math.ceil(0.9 * len(ordered)) - 1]
    median = (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2
    return Delays(len(ordered), median * 1e3, p90 * 1e3, ordered[-1] * 1e3)


async def close_run(positions: int, drops: int, seed: int) -> CloseFigures:
    """Open ``positions`` positions, close them all with ``wait_fill=True`` while the stream
    is cut ``drops`` times, and count what the client got and what the simulator saw."""
    sim = FakeBingX(seed=seed)
    account = sim.add_account(api_key=API_KEY, secret_key=SECRET_KEY)
    ids = open_positions(sim, account, positions, seed)
    watch = StreamWatch(sim.stream)
    event_delay = DROP_EVENT_DELAY if drops else 0.0
    sim.stream.delay_events(event_delay)
    minimum = theoretical_minimum([positions])
    returned_at: dict[str, float] = {}
    drops_made = cut = 0

    def note_return(progress: CloseProgress) -> None:
        outcome = progress.outcome
        if isinstance(outcome, ClosePositionResult) and outcome.order_id is not None:
            returned_at[outcome.order_id] = time.perf_counter()

    async def drop_stream() -> None:
        nonlocal drops_made, cut
        started = time.perf_counter()
        spacing = max(minimum, 1.0) / (drops + 1)
        for n in range(1, drops + 1):
            await asyncio.sleep(max(0.0, started + n * spacing - time.perf_counter()))
            cut += sim.stream.drop_connections()
            drops_made += 1

    async with (
        sim.serve() as base_url,
        sim.serve_stream() as stream_url,
        client_for(base_url, stream_url) as client,
    ):
        dropping = asyncio.create_task(drop_stream())
        started = time.perf_counter()
        try:
            results = await client.close_positions(ids, wait_fill=True, on_progress=note_return)
        finally:
            wall = time.perf_counter() - started
            dropping.cancel()  # the closes may end before every drop (few positions)
            with contextlib.suppress(asyncio.CancelledError):
                await dropping

    orders = {order.order_id: order for order in sim.orders(account)}
    arrived = {
        request.param("positionId"): request.arrived_at
        for request in sim.requests_to(CLOSE)
        if request.code == 0
    }
    sources = {"stream": 0, "rest": 0, "none": 0}
    equal = pushed_on_their_connection = 0
    fill_delays = []
    for result in results:
        if not isinstance(result, ClosePositionResult) or result.fill is None:
            sources["none"] += 1
            continue
        fill = result.fill
        order = orders.get(fill.order_id)
        sources[fill.source] += 1
        equal += fill.order_id == result.order_id and is_the_simulators(fill, order)
        if fill.source == "stream":
            fill_delays.append(returned_at[fill.order_id] - watch.pushed_at[fill.order_id])
        elif order is not None:
            # Asked of REST although the stream pushed it on a connection that was open when
            # the close arrived: the client need not have asked.
            since = watch.pushed_on_connection_since.get(fill.order_id)
            close_arrived = arrived.get(order.position_id)
            pushed_on_their_connection += (
                since is not None and close_arrived is not None and since <= close_arrived
            )
    requests, rate_limited, errors = count_requests(sim)
    arrivals = sim.arrivals(CLOSE, account)
    span = max(arrivals) - min(arrivals) if arrivals else 0.0
    return CloseFigures(
        positions=positions,
        drops=drops,
        drops_made=drops_made,
        event_delay_s=event_delay,
        closed=sum(isinstance(result, ClosePositionResult) for result in results),
        wall_s=wall,
        fills_received=sources["stream"] + sources["rest"],
        fills_equal=equal,
        fills_by_source=sources,
        order_queries=requests.order_query,
        rest_fills_pushed_on_their_connection=pushed_on_their_connection,
        requests=requests,
        rate_limit_answers=rate_limited,
        other_error_answers=errors,
        stream_connections=watch.connections,
        reconnects=max(0, watch.connections - 1),
        connections_cut=cut,
        span_s=span,
        minimum_s=minimum,
        span_ratio=span / minimum if minimum > 0 else None,
        fill_delay=delays(fill_delays),
    )


# --- an idle stream's memory ----------------------------------------------------------------


def serve_simulator(pipe: Connection, seed: int) -> None:
    """In a child process: serve a simulator's REST API and stream, send their URLs, and
    stop when told to."""
    asyncio.run(_serve_until_told(pipe, seed))


async def _serve_until_told(pipe: Connection, seed: int) -> None:
    sim = FakeBingX(seed=seed)
    sim.add_account(api_key=API_KEY, secret_key=SECRET_KEY)
    async with sim.serve() as base_url, sim.serve_stream() as stream_url:
        pipe.send((base_url, stream_url))
        with contextlib.suppress(EOFError):
            await asyncio.to_thread(pipe.recv)


def resident_bytes() -> int | None:
    """The process's resident size now (Linux), or ``None`` where it cannot be read."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def package_of(filename: str) -> str:
    parts = Path(filename).parts
    return next((name for name in PACKAGES if name in parts), "other")


async def idle_stream(
    base_url: str, stream_url: str, idle: float, sample: Callable[[], _T]
) -> tuple[_T, _T]:
    """``sample()`` with a new client ready but no stream, then with its account stream open
    and idle for ``idle`` seconds (a client's stream lives until the client closes)."""
    async with client_for(base_url, stream_url) as client:
        await client.server_time()  # the HTTP connection and the clock offset: not the stream's
        gc.collect()
        before = sample()
        async with client.account_stream():
            await asyncio.sleep(idle)
            gc.collect()
            return before, sample()


async def idle_stream_memory(idle: float, seed: int) -> IdleMemory:
    """What one idle ``account_stream()`` holds, against a simulator in a child process."""
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(
        target=serve_simulator, args=(child_end, seed), name="simulator", daemon=True
    )
    process.start()
    child_end.close()
    try:
        base_url, stream_url = await asyncio.to_thread(parent_end.recv)
        # Once first, for nothing: modules imported on a stream's first use.
        await idle_stream(base_url, stream_url, 0.0, lambda: None)
        rss_before, rss_open = await idle_stream(base_url, stream_url, idle, resident_bytes)
        # tracemalloc's own bookkeeping grows the resident size: a pass of its own.
        tracemalloc.start()
        try:
            before, during = await idle_stream(
                base_url, stream_url, idle, tracemalloc.take_snapshot
            )
        finally:
            tracemalloc.stop()
    finally:
        with contextlib.suppress(OSError):
            parent_end.send("stop")
        await asyncio.to_thread(process.join, 10)
        parent_end.close()
    not_ours = [tracemalloc.Filter(False, tracemalloc.__file__)]
    grown = during.filter_traces(not_ours).compare_to(before.filter_traces(not_ours), "filename")
    by_package: Counter[str] = Counter()
    for stat in grown:
        by_package[package_of(stat.traceback[0].filename)] += stat.size_diff
    return IdleMemory(
        idle_s=idle,
        tracemalloc_kib=sum(stat.size_diff for stat in grown) / KIB,
        blocks=sum(stat.count_diff for stat in grown),
        by_package_kib={name: size / KIB for name, size in by_package.most_common() if size},
        rss_kib=(rss_open - rss_before) / KIB
        if rss_open is not None and rss_before is not None
        else None,
    )


# --- the command line -----------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def print_closes(figures: CloseFigures) -> None:
    f = figures
    sources = f.fills_by_source
    r = f.requests
    other = ", ".join(f"{name} {count}" for name, count in r.other.items()) or "0"
    errors = ", ".join(f"{code} {n}" for code, n in f.other_error_answers.items()) or "none"
    ratio = "n/a" if f.span_ratio is None else f"{f.span_ratio:.3f}"
    d = f.fill_delay
    print(
        f"{f.positions} positions on one account, close_positions(wait_fill=True); "
        f"stream drops {f.drops}, events delayed {f.event_delay_s:g} s"
    )
    print(f"closed: {f.closed}/{f.positions}, wall {f.wall_s:.3f} s")
    print(f"fills received: {f.fills_received}/{f.positions}")
    print(f"fills equal to the simulator's: {f.fills_equal}/{f.positions}")
    print(
        f"fills by source: stream {sources['stream']}, rest {sources['rest']}, "
        f"none {sources['none']}"
    )
    print(f"order queries sent: {f.order_queries}")
    print(
        "rest fills the stream pushed on the connection open when their close arrived: "
        f"{f.rest_fills_pushed_on_their_connection}"
    )
    print(
        f"REST requests: closePosition {r.close}, listen key POST {r.listen_key_post} "
        f"PUT {r.listen_key_put} DELETE {r.listen_key_delete}, server time {r.server_time}, "
        f"order query {r.order_query}, other {other}"
    )
    print(f"rate-limit answers (100409, 100410, 109429): {f.rate_limit_answers}")
    print(f"other error answers: {errors}")
    print(
        f"stream: connections {f.stream_connections}, reconnects {f.reconnects}, "
        f"drops made {f.drops_made} (connections cut {f.connections_cut})"
    )
    print(
        f"close span at the simulator: {f.span_s:.3f} s, minimum {f.minimum_s:.3f} s, ratio {ratio}"
    )
    print(
        f"fill delay, stream push to close returning ({d.count} fills): median "
        f"{_ms(d.median_ms)}, p90 {_ms(d.p90_ms)}, max {_ms(d.max_ms)}"
    )


def print_memory(memory: IdleMemory) -> None:
    packages = ", ".join(
        f"{name} {kib:.1f}" for name, kib in memory.by_package_kib.items() if abs(kib) >= 0.05
    )
    rss = "n/a" if memory.rss_kib is None else f"{memory.rss_kib:+.0f} KiB"
    print(
        f"idle stream memory ({memory.idle_s:g} s open, simulator in a child process): "
        f"tracemalloc {memory.tracemalloc_kib:.1f} KiB in {memory.blocks} blocks "
        f"({packages or 'nothing'}); RSS {rss}"
    )


def _at_least(least: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {text}")
        return value

    return parse


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--positions", type=_at_least(1), default=50, help="positions to close")
    parser.add_argument("--drops", type=_at_least(0), default=0, help="stream drops during the run")
    parser.add_argument("--seed", type=int, default=1, help="seed of IDs, prices and sides")
    parser.add_argument("--idle", type=_seconds, default=1.0, help="seconds the stream idles")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("websockets") is None:
        parser.exit(1, "websockets not installed (pip install 'bingx-async[stream]')\n")
    closes = await close_run(args.positions, args.drops, args.seed)
    memory = await idle_stream_memory(args.idle, args.seed)
    if args.json:
        print(json.dumps({"closes": asdict(closes), "idle_stream": asdict(memory)}, indent=2))
    else:
        print_closes(closes)
        print_memory(memory)


if __name__ == "__main__":
    asyncio.run(main())
