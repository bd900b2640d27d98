"""What sharing limits through Redis costs per close: Redis commands and client CPU.

The script starts its own ``redis-server`` on a free port of 127.0.0.1, without persistence,
and closes positions against a transport that answers at once in this process (a
closePosition success echoing the ``positionId``; the server time), under budgets too large
ever to wait on (BingX's shape: one per account, one per endpoint and IP, one for the IP
group; every limit 10**9). Nothing reaches the network.

**Redis commands per close**, as Redis reports them, for the ``redis`` variant (and
``limits``, for comparison). ``INFO commandstats`` also counts the commands a Lua script
runs, so the commands are told apart by ``MONITOR``, which names each one's origin: a
client's address (a command the client sent: a round trip) or ``lua`` (run inside a
script). Each count is a run of its own, after ``FLUSHALL``, ``SCRIPT FLUSH`` and ``CONFIG
RESETSTAT``: make the client, warm it up (one server-time request, one close alone, then
max(20, 2C) closes C at a time: scripts loaded, connections opened, channel subscribed),
make N closes C at a time, close the client (it sends what it still owes Redis), then read
``INFO commandstats`` once it stops changing and ``MONITOR`` up to a marker (an ``ECHO``)
sent after that. The same run with no closes after the warm-up is the baseline: per
command, (count with N - count with 0) / N is what one close costs, so start-up, warm-up
and shut-down drop out; the script's own ``INFO``, ``CONFIG``, ``ECHO`` and ``MONITOR`` are
left out by name. Printed per variant: the commands sent per close, by name (goal for
``redis``: at most 2 in all), those run inside scripts, and every call commandstats
counted (their sum, a cross-check).

**Client CPU per close**: ``time.process_time()`` of this process, which runs only the
client and the instant transport (the same transport, and the same answers, for every
variant; Redis runs in its own process). Each variant makes N closes, C at a time, with
distinct position IDs, after the same warm-up; the timed region ends once the client is
closed, so releases owed to Redis are counted. The variants:

* ``plain``: a signed httpx request per close (HMAC-SHA256 over the query, as BingX wants),
  its JSON answer read; no limits at all;
* ``limits``: the same request after one ``hit`` of the ``limits`` library's moving window
  (``limits.aio.storage.RedisStorage`` on the same Redis, through redis-py, and
  ``MovingWindowRateLimiter``): what an off-the-shelf shared limiter costs;
* ``in-process``: ``BingXClient.close_position``, limits in-process;
* ``redis``: ``BingXClient.close_position`` with ``shared_limits=<the Redis URL>``.

Each variant runs ``--runs`` times (variants interleaved) and prints ms per close, median and
min; then redis - in-process (goal at most 0.35 ms), limits - plain, and in-process / plain
(goal at most 1.3). ``limits`` needs the ``bench`` dependency group
(``pip install --group bench``); without it that variant is skipped.

    python benchmarks/shared_cost.py                         # N = 2000, C = 50, 3 runs
    python benchmarks/shared_cost.py --closes 5000 --concurrency 100 --runs 5
    python benchmarks/shared_cost.py --variants in-process,redis

Options: ``--closes N`` (2000), ``--concurrency C`` (50), ``--runs`` (3), ``--variants``
(``plain,limits,in-process,redis``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import hmac
import importlib.util
import itertools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import httpx

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    Budget,
    IPGroup,
    RateLimitPolicy,
    endpoint_name,
)

VARIANTS = ("plain", "limits", "in-process", "redis")
BASE_URL = "https://open-api.bingx.com"
CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
TIME_PATH = "/openApi/swap/v2/server/time"
API_KEY = "bench-api-key"
SECRET_KEY = "bench-secret-key"
RECV_WINDOW_MS = 5000
#: The environment variable that would make the in-process client share too.
ENV_SHARED_LIMITS = "BINGX_SHARED_LIMITS"
#: Commands this script sends itself, left out of the counts.
OWN_COMMANDS = frozenset({"info", "config", "config|resetstat", "echo", "monitor"})
#: Commands whose first argument names what they do (as ``INFO commandstats`` names them).
CONTAINERS = frozenset({"acl", "client", "cluster", "command", "config", "function", "script"})
#: Goals: Redis commands per close; CPU ms per close, redis over in-process; in-process over plain.
GOAL_COMMANDS = 2.0
GOAL_REDIS_MS = 0.35
GOAL_RATIO = 1.3

_HUGE = 10**9
#: BingX's budget shape for closePosition (per account; per endpoint and IP; the IP group),
#: each too large to wait on.
POLICY: RateLimitPolicy = DEFAULT_RATE_LIMITS.with_ip_group(
    2, IPGroup(per_endpoint=(Budget(_HUGE, 10.0),), total=(Budget(_HUGE, 10.0),), pool="group2")
).with_endpoint(endpoint_name("POST", CLOSE_PATH), per_account=(Budget(_HUGE, 1.0),), ip_group=2)


# --- a redis-server of our own ------------------------------------------------------------


def _command(port: int, *args: str) -> bytes:
    """One command over a plain socket: the reply's status line or bulk string (enough for
    OK, PONG and INFO)."""
    request = b"".join(
        [f"*{len(args)}\r\n".encode()]
        + [f"${len(arg.encode())}\r\n{arg}\r\n".encode() for arg in args]
    )
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as connection:
        connection.sendall(request)
        with connection.makefile("rb") as stream:
            head = stream.readline()
            if head.startswith(b"-"):
                raise RuntimeError(f"redis-server answered {head.decode().strip()}")
            if head.startswith(b"$"):
                return stream.read(int(head[1:]) + 2)[:-2]
            return head.rstrip(b"\r\n")


class Redis:
    """``redis-server`` on a free port of 127.0.0.1, in the foreground, no persistence."""

    def __init__(self, executable: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        command = [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--daemonize", "no", "--dir", self.dir]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603
        mine = f"process_id:{self.process.pid}\r\n".encode()
        deadline = time.monotonic() + 10.0
        while True:
            with contextlib.suppress(OSError):
                if mine in _command(self.port, "INFO", "server"):
                    break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10.0)
        shutil.rmtree(self.dir, ignore_errors=True)

    def version(self) -> str:
        for line in _command(self.port, "INFO", "server").decode().splitlines():
            if line.startswith("redis_version:"):
                return line.partition(":")[2]
        return "?"

    def reset(self) -> None:
        """No keys, no scripts loaded, and every command count back to 0."""
        _command(self.port, "FLUSHALL")
        _command(self.port, "SCRIPT", "FLUSH")
        _command(self.port, "CONFIG", "RESETSTAT")

    def calls(self) -> Counter[str]:
        """Calls per command since the last reset, this script's own left out."""
        calls: Counter[str] = Counter()
        for line in _command(self.port, "INFO", "commandstats").decode().splitlines():
            name, _, stats = line.partition(":")
            command = name.removeprefix("cmdstat_")
            if name.startswith("cmdstat_") and command not in OWN_COMMANDS:
                calls[command] = int(stats.split("calls=", 1)[1].split(",", 1)[0])
        return calls

    async def settled_calls(self) -> Counter[str]:
        """The counts once two readings 50 ms apart agree (at most 2 s)."""
        calls = self.calls()
        for _ in range(40):
            await asyncio.sleep(0.05)
            again = self.calls()
            if again == calls:
                break
            calls = again
        return calls


class Monitor:
    """Redis's ``MONITOR`` feed: every command it runs, with where it came from (a client's
    address, or ``lua``: inside a script)."""

    def __init__(self, port: int) -> None:
        self.port = port
        #: Per command: sent by a client, and run inside scripts.
        self.sent: Counter[str] = Counter()
        self.scripted: Counter[str] = Counter()
        self._marks = itertools.count()

    async def __aenter__(self) -> Monitor:
        # A line holds a whole command (SCRIPT LOAD: the script): no 64 KiB line limit.
        self._reader, self._writer = await asyncio.open_connection(
            "127.0.0.1", self.port, limit=2**24
        )
        self._writer.write(b"*1\r\n$7\r\nMONITOR\r\n")
        await self._writer.drain()
        if await self._reader.readline() != b"+OK\r\n":
            raise RuntimeError("redis-server refused MONITOR")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def catch_up(self) -> None:
        """Read the feed up to now: a marker sent after everything else comes after it."""
        marker = f"shared-cost-mark-{next(self._marks)}"
        _command(self.port, "ECHO", marker)
        while True:
            line = (await self._reader.readline()).decode(errors="replace")
            if not line:
                raise RuntimeError("the MONITOR connection closed")
            # +1700000000.123456 [0 127.0.0.1:40000] "evalsha" "..." ...
            origin, _, words = line.partition("] ")
            parts = words.split('"')
            name = parts[1].lower() if len(parts) > 1 else "?"
            if name in CONTAINERS and len(parts) > 3:
                name = f"{name}|{parts[3].lower()}"
            if name == "echo" and marker in line:
                return
            if name not in OWN_COMMANDS:
                (self.scripted if origin.endswith(" lua") else self.sent)[name] += 1


# --- the server side: answers at once, in this process ------------------------------------


class InstantBingX(httpx.AsyncBaseTransport):
    """BingX answering at once: closePosition succeeds (echoing the position ID), server
    time is now; anything else is an empty success. The same for every variant."""

    def __init__(self) -> None:
        self.order_ids = itertools.count(1770656007907930112)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == CLOSE_PATH:
            position_id = request.url.params.get("positionId", "")
            data: object = {
                "orderId": next(self.order_ids),
                "positionId": position_id,
                "symbol": "BTC-USDT",
                "side": "Ask",
                "type": "MARKET",
                "positionSide": "Long",
                "origQty": "0.2",
            }
        elif path == TIME_PATH:
            data = {"serverTime": int(time.time() * 1000)}
        else:
            data = {}
        body = {"code": 0, "msg": "", "timestamp": int(time.time() * 1000), "data": data}
        return httpx.Response(
            200,
            content=json.dumps(body, separators=(",", ":")).encode(),
            headers={"Content-Type": "application/json"},
            request=request,
        )


# --- the variants -------------------------------------------------------------------------


class Closer(Protocol):
    """One variant's way of closing a position."""

    async def warm_up(self, ids: list[str], concurrency: int) -> None: ...

    async def close(self, position_id: str) -> None: ...

    async def aclose(self) -> None: ...


class PlainCloser:
    """A signed httpx request per close, nothing else."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.http = httpx.AsyncClient(transport=transport, base_url=BASE_URL)
        self.secret = SECRET_KEY.encode()

    async def warm_up(self, ids: list[str], concurrency: int) -> None:
        await self.http.get(TIME_PATH)
        await warm_up_closes(self.close, ids, concurrency)

    async def close(self, position_id: str) -> None:
        # Sorted keys, raw values; the signature over exactly the query sent, last.
        query = (
            f"positionId={position_id}&recvWindow={RECV_WINDOW_MS}"
            f"&timestamp={int(time.time() * 1000)}"
        )
        signature = hmac.new(self.secret, query.encode(), hashlib.sha256).hexdigest()
        response = await self.http.post(
            f"{CLOSE_PATH}?{query}&signature={signature}", headers={"X-BX-APIKEY": API_KEY}
        )
        body = response.json()
        if body.get("code") != 0 or body["data"]["positionId"] != position_id:
            raise RuntimeError(f"close of {position_id} failed: {body}")

    async def aclose(self) -> None:
        await self.http.aclose()


class LimitsCloser(PlainCloser):
    """The plain request after one hit of the ``limits`` library's moving window in Redis."""

    def __init__(self, transport: httpx.AsyncBaseTransport, redis_url: str) -> None:
        super().__init__(transport)
        import redis.asyncio
        from limits import RateLimitItemPerSecond
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        # Our own pool, so that its connections are closed with the variant.
        self.pool = redis.asyncio.ConnectionPool.from_url(redis_url)
        self.storage = RedisStorage(
            f"async+{redis_url}",
            implementation="redispy",
            connection_pool=self.pool,  # type: ignore[arg-type]  # documented, typed narrower
        )
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.item = RateLimitItemPerSecond(_HUGE)

    async def close(self, position_id: str) -> None:
        if not await self.limiter.hit(self.item, "closePosition", API_KEY):
            raise RuntimeError("the moving window refused a close")
        await super().close(position_id)

    async def aclose(self) -> None:
        await super().aclose()
        await self.pool.aclose()


class ClientCloser:
    """``BingXClient.close_position``, limits in-process or shared through Redis."""

    def __init__(self, transport: httpx.AsyncBaseTransport, redis_url: str | None) -> None:
        self.client = BingXClient(
            api_key=API_KEY,
            secret_key=SECRET_KEY,
            transport=transport,
            rate_limits=POLICY,
            shared_limits=redis_url,
        )

    async def warm_up(self, ids: list[str], concurrency: int) -> None:
        await self.client.server_time()
        await warm_up_closes(self.close, ids, concurrency)

    async def close(self, position_id: str) -> None:
        result = await self.client.close_position(position_id)
        if result.position_id != position_id:
            raise RuntimeError(f"close of {position_id} answered for {result.position_id}")

    async def aclose(self) -> None:
        await self.client.aclose()


def make_closer(variant: str, redis_url: str) -> Closer:
    transport = InstantBingX()
    if variant == "plain":
        return PlainCloser(transport)
    if variant == "limits":
        return LimitsCloser(transport, redis_url)
    return ClientCloser(transport, redis_url if variant == "redis" else None)


# --- one run ------------------------------------------------------------------------------


def warm_up_size(concurrency: int) -> int:
    """Closes made, ``concurrency`` at a time, before anything is counted or timed: enough
    to open every connection the run will use."""
    return max(20, 2 * concurrency)


def position_ids(first: int, count: int) -> list[str]:
    """``count`` distinct 19-digit position IDs from ``first``."""
    return [str(1751667128353910784 + first + index) for index in range(count)]


async def close_all(close: Callable[[str], Awaitable[None]], ids: list[str], c: int) -> None:
    """Close every ID, ``c`` at a time."""
    pending: Iterator[str] = iter(ids)

    async def worker() -> None:
        for position_id in pending:
            await close(position_id)

    async with asyncio.TaskGroup() as group:
        for _ in range(min(c, len(ids))):
            group.create_task(worker())


async def warm_up_closes(
    close: Callable[[str], Awaitable[None]], ids: list[str], concurrency: int
) -> None:
    """One close alone (every script loaded once, not once per concurrent first caller),
    then the rest ``concurrency`` at a time (every connection the run will need opened)."""
    await close(ids[0])
    await close_all(close, ids[1:], concurrency)


class Ids:
    """Fresh position IDs for every warm-up and run: no close is ever joined to another."""

    def __init__(self) -> None:
        self.next = 0

    def take(self, count: int) -> list[str]:
        ids = position_ids(self.next, count)
        self.next += count
        return ids


async def cpu_per_close(
    variant: str, redis: Redis, ids: Ids, closes: int, concurrency: int
) -> float:
    """CPU seconds of this process per close, the client's closing included."""
    redis.reset()
    closer = make_closer(variant, redis.url)
    try:
        await closer.warm_up(ids.take(warm_up_size(concurrency)), concurrency)
    except BaseException:
        await closer.aclose()
        raise
    todo = ids.take(closes)
    gc.collect()
    started = time.process_time()
    try:
        await close_all(closer.close, todo, concurrency)
    finally:
        await closer.aclose()
    return (time.process_time() - started) / closes


@dataclass(frozen=True, slots=True)
class Counts:
    """Commands Redis ran in one run, per command: sent by clients, run inside scripts, and
    every call in ``INFO commandstats`` (which counts both)."""

    sent: Counter[str]
    scripted: Counter[str]
    all: Counter[str]


async def commands(variant: str, redis: Redis, ids: Ids, closes: int, c: int) -> Counts:
    """What Redis ran for a run of ``closes`` closes, warm-up and closing included."""
    redis.reset()
    async with Monitor(redis.port) as monitor:
        closer = make_closer(variant, redis.url)
        try:
            await closer.warm_up(ids.take(warm_up_size(c)), c)
            await close_all(closer.close, ids.take(closes), c)
        finally:
            await closer.aclose()
        every = await redis.settled_calls()
        await monitor.catch_up()
    return Counts(monitor.sent, monitor.scripted, every)


@dataclass(frozen=True, slots=True)
class PerClose:
    sent: dict[str, float]
    scripted: dict[str, float]
    all: float


async def commands_per_close(
    variant: str, redis: Redis, ids: Ids, closes: int, concurrency: int
) -> PerClose:
    """(The counts of a run of N closes - those of a run of none) / N."""
    baseline = await commands(variant, redis, ids, 0, concurrency)
    loaded = await commands(variant, redis, ids, closes, concurrency)

    def per_close(loaded: Counter[str], baseline: Counter[str]) -> dict[str, float]:
        names = sorted(loaded.keys() | baseline.keys())
        return {name: (loaded[name] - baseline[name]) / closes for name in names}

    return PerClose(
        per_close(loaded.sent, baseline.sent),
        per_close(loaded.scripted, baseline.scripted),
        (loaded.all.total() - baseline.all.total()) / closes,
    )


# --- the command line ---------------------------------------------------------------------


def _variants(text: str) -> list[str]:
    variants = [variant.strip() for variant in text.split(",") if variant.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or not variants:
        raise argparse.ArgumentTypeError(f"variants are {', '.join(VARIANTS)}; got {text!r}")
    return [variant for variant in VARIANTS if variant in variants]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def _listed(per_close: dict[str, float]) -> str:
    shown = {name: count for name, count in per_close.items() if abs(count) >= 0.005}
    return ", ".join(f"{name} {count:.2f}" for name, count in shown.items()) or "none"


def _print_commands(variant: str, per_close: PerClose) -> None:
    sent = sum(per_close.sent.values())
    scripted = sum(per_close.scripted.values())
    line = f"  {variant:<10} sent {sent:5.2f}  ({_listed(per_close.sent)})"
    if variant == "redis":
        # A connection opened mid-run says HELLO once: a few thousandths of a command.
        line += f"  goal <= {GOAL_COMMANDS:g}: {_verdict(sent <= GOAL_COMMANDS + 0.01)}"
    print(line)
    print(f"  {'':<10} in scripts {scripted:.2f}  ({_listed(per_close.scripted)})")
    print(f"  {'':<10} INFO commandstats, every call: {per_close.all:.2f}")


def _print_cpu(per_close: dict[str, list[float]]) -> None:
    median = {variant: statistics.median(times) * 1e3 for variant, times in per_close.items()}
    least = {variant: min(times) * 1e3 for variant, times in per_close.items()}
    for variant in per_close:
        print(f"  {variant:<10} {median[variant]:7.3f} ms median, {least[variant]:.3f} min")

    def difference(a: str, b: str, goal: float | None) -> None:
        if a not in median or b not in median:
            return
        line = (
            f"  {a} - {b}: {median[a] - median[b]:+.3f} ms median, {least[a] - least[b]:+.3f} min"
        )
        if goal is not None:
            line += f"  goal <= {goal:g} ms: {_verdict(median[a] - median[b] <= goal)}"
        print(line)

    difference("redis", "in-process", GOAL_REDIS_MS)
    difference("limits", "plain", None)
    if "in-process" in median and "plain" in median:
        ratio = median["in-process"] / median["plain"]
        print(
            f"  in-process / plain: {ratio:.2f} median, {least['in-process'] / least['plain']:.2f}"
            f" min  goal <= {GOAL_RATIO:g}: {_verdict(ratio <= GOAL_RATIO)}"
        )


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--closes", type=_positive, default=2000, help="closes per run (N)")
    parser.add_argument("--concurrency", type=_positive, default=50, help="at a time (C)")
    parser.add_argument("--runs", type=_positive, default=3, help="runs per variant")
    parser.add_argument(
        "--variants", type=_variants, default=list(VARIANTS), help="e.g. in-process,redis"
    )
    args = parser.parse_args(argv)

    executable = shutil.which("redis-server")
    if executable is None:
        parser.exit(1, "redis-server not installed (apt-get install redis-server)\n")
    if importlib.util.find_spec("redis") is None:
        parser.exit(1, 'redis-py not installed (pip install "bingx-async[redis]")\n')
    variants = list(args.variants)
    if "limits" in variants and importlib.util.find_spec("limits") is None:
        print("limits skipped: not installed (pip install --group bench)")
        variants.remove("limits")
    os.environ.pop(ENV_SHARED_LIMITS, None)  # the in-process client must not share

    redis = Redis(executable)
    ids = Ids()
    try:
        print(
            f"{args.closes} closes, {args.concurrency} at a time, {args.runs} run(s); "
            f"redis-server {redis.version()} on 127.0.0.1:{redis.port}"
        )
        counted = [variant for variant in ("redis", "limits") if variant in variants]
        if counted:
            print(
                "Redis commands per close (N closes minus none; sent by the client, and run "
                "inside its scripts, as MONITOR reports them):"
            )
        for variant in counted:
            per_close = await commands_per_close(variant, redis, ids, args.closes, args.concurrency)
            _print_commands(variant, per_close)

        seconds: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(args.runs):
            for variant in variants:
                seconds[variant].append(
                    await cpu_per_close(variant, redis, ids, args.closes, args.concurrency)
                )
        print("Client CPU per close (time.process_time of this process):")
        _print_cpu(seconds)
    finally:
        redis.close()


if __name__ == "__main__":
    asyncio.run(main())
