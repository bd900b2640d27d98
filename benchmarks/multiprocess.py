"""K processes closing M positions each on the same account, over real HTTP, at one simulator.

The strict simulator (rolling windows, 0-30 ms arrival jitter) is served on 127.0.0.1 by this
process; K worker processes (``multiprocessing``, spawn) each open one client per account,
warm the clock offset, wait for a common start signal, then close M positions on every
account with ``close_positions``. Every figure about rejections and timing is counted at the
simulator, so it is what BingX would see. The modes:

* ``none``: each process limits itself in-process, believing it has every budget to itself;
* ``split``: each process takes ``DEFAULT_RATE_LIMITS.split_between(K, accounts_too=True)``,
  its 1/K of every budget (rounded down, to at least 1 per window: with K > 5 the processes
  together exceed 5 closes per second again);
* ``redis``: the processes share their budgets through Redis (``shared_limits=URL``), a
  ``redis-server`` this script starts on a free port of 127.0.0.1, without persistence.

Per mode it prints: positions closed, rate-limit answers (100410) and other rejections at the
server, the server-side span (from the first close the simulator executed to the last), the
theoretical minimum for the closes executed (every budget used at its full rate), their
ratio, and each process's share of the closes executed under steady load, from one second
after the first to the middle of the span (a fair share is 1/K each; the first second's
slots go to whoever asks first). Failed closes are listed by error type.

    python benchmarks/multiprocess.py                       # 4 x 25 on 1 account, all modes
    python benchmarks/multiprocess.py --modes none,split --processes 4 --closes 25
    python benchmarks/multiprocess.py --modes redis --kill-one
    python benchmarks/multiprocess.py --modes redis --redis-outage 2
    python benchmarks/multiprocess.py --modes none,redis --overhead

Options: ``--processes K`` (4), ``--closes M`` (25, per process and account), ``--accounts``
(1), ``--modes`` (``none,split,redis``), ``--jitter`` (0.03 s), ``--seed`` (1),
``--kill-one``, ``--redis-outage SECONDS``, ``--overhead`` and ``--overhead-calls`` (2000).

``--kill-one`` SIGKILLs the last process once the server has executed a third of the closes,
and reports what the survivors got and the pace of closes after the kill. ``--redis-outage
S`` (``redis`` mode) stops Redis at that moment for S seconds, then starts it again on the
same port (empty), and reports the rejections that arrived during the outage, the calls that
ended without a known outcome, and how many commands Redis ran after it came back (none:
the processes never went back to sharing). ``--overhead`` times sequential requests through
one client against a transport that answers at once, under budgets too large to wait on, in
``none`` and each other selected mode but ``split`` (which only changes numbers); the
difference is the per-request cost of the mode. Every client retries with
``RetryPolicy(total_timeout=120.0)``, so that a close does not give up merely because its
turn is far off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import httpx

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXError,
    Budget,
    ClosePositionResult,
    IPGroup,
    RetryPolicy,
)
from bingx_async._budgets import POSITIONS
from bingx_async._cli._demo import theoretical_minimum
from bingx_async.testing import FakeBingX, NoAnswer, RecordedRequest, SimResponse

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
#: The simulator's rate-limit code (its default, as BingX's).
RATE_LIMIT_ANSWER = 100410
MODES = ("none", "split", "redis")
#: The environment variable that would make the ``none`` and ``split`` clients share too.
ENV_SHARED_LIMITS = "BINGX_SHARED_LIMITS"
#: Every call of every worker ends within about this many seconds of the start.
CALL_TIMEOUT = 120.0
RETRY = RetryPolicy(total_timeout=CALL_TIMEOUT)
#: The disruptions (``--kill-one``, ``--redis-outage``) strike once the server has executed
#: this share of the closes.
DISRUPT_AT = 1 / 3


# --- a redis-server of our own ------------------------------------------------------------


def _redis_command(port: int, *args: str) -> bytes:
    """One command over a plain socket; the raw reply (enough for OK, integers and INFO)."""
    request = b"".join(
        [f"*{len(args)}\r\n".encode()]
        + [f"${len(arg.encode())}\r\n{arg}\r\n".encode() for arg in args]
    )
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as connection:
        connection.sendall(request)
        with connection.makefile("rb") as stream:
            head = stream.readline()
            if head.startswith(b"$"):
                return stream.read(int(head[1:]) + 2)[:-2]
            return head.rstrip(b"\r\n")


class Redis:
    """``redis-server`` on a free port of 127.0.0.1, no persistence; stop and start again."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", self.dir]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603
        mine = f"process_id:{self.process.pid}\r\n".encode()
        deadline = time.monotonic() + 10.0
        while True:
            with contextlib.suppress(OSError):
                if mine in _redis_command(self.port, "INFO", "server"):
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10.0)
            self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def flushall(self) -> None:
        _redis_command(self.port, "FLUSHALL")

    def commands(self) -> int:
        """Commands run since the server started, INFO itself not counted."""
        info = _redis_command(self.port, "INFO", "commandstats").decode()
        return sum(
            int(line.split("calls=", 1)[1].split(",", 1)[0])
            for line in info.splitlines()
            if line.startswith("cmdstat_") and not line.startswith("cmdstat_info:")
        )


# --- the worker processes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    index: int
    mode: str
    processes: int
    base_url: str
    redis_url: str | None
    #: Per account: API key, secret key, the position IDs this worker closes.
    accounts: tuple[tuple[str, str, tuple[str, ...]], ...]


@dataclass(slots=True)
class WorkerResult:
    closed: int = 0
    #: Failed closes by error type.
    errors: Counter[str] = field(default_factory=Counter)
    #: Failed closes whose outcome is unknown (they may have executed).
    unknown: int = 0


def _client_options(mode: str, processes: int, redis_url: str | None) -> dict[str, Any]:
    """The keyword arguments that make a client of ``mode``."""
    if mode == "split":
        return {"rate_limits": DEFAULT_RATE_LIMITS.split_between(processes, accounts_too=True)}
    if mode == "redis":
        return {"shared_limits": redis_url}
    return {}


async def _receive(connection: Connection) -> object | None:
    """The next message on ``connection`` without blocking the loop; ``None`` at EOF."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(connection.fileno(), on_readable)
    try:
        await readable
    finally:
        loop.remove_reader(connection.fileno())
    try:
        message: object = connection.recv()
    except (EOFError, OSError):
        return None
    return message


async def _work(connection: Connection, plan: WorkerPlan) -> None:
    if plan.mode != "redis":
        os.environ.pop(ENV_SHARED_LIMITS, None)
    result = WorkerResult()
    try:
        options = _client_options(plan.mode, plan.processes, plan.redis_url)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    BingXClient(
                        api_key=api_key,
                        secret_key=secret_key,
                        base_url=plan.base_url,
                        retry=RETRY,
                        **options,
                    )
                )
                for api_key, secret_key, _ in plan.accounts
            ]
            # Warm the clock offset (and any shared state) before the common start.
            await asyncio.gather(*(client.server_time() for client in clients))
            connection.send(("ready", None))
            if await _receive(connection) != "go":
                return
            outcomes = await asyncio.gather(
                *(
                    client.close_positions(ids)
                    for client, (_, _, ids) in zip(clients, plan.accounts, strict=True)
                )
            )
    except Exception as error:  # noqa: BLE001 - reported to the parent, which prints it
        connection.send(("failed", f"{type(error).__name__}: {error}"))
        return
    for outcome in (outcome for per_account in outcomes for outcome in per_account):
        if isinstance(outcome, ClosePositionResult):
            result.closed += 1
        else:
            result.errors[type(outcome).__name__] += 1
            result.unknown += isinstance(outcome, BingXError) and outcome.may_have_executed
    connection.send(("done", result))


def worker(connection: Connection, plan: WorkerPlan) -> None:
    """A worker process's entry point."""
    asyncio.run(_work(connection, plan))


# --- one run of one mode ------------------------------------------------------------------


@dataclass(slots=True)
class ModeReport:
    mode: str
    processes: int
    total: int
    failure: str | None = None
    #: Counted at the server: closes executed, 100410 answers, other rejections by code.
    closed: int = 0
    rate_limited: int = 0
    other_rejections: Counter[int] = field(default_factory=Counter)
    #: Per process, at the server: closes executed and rejections.
    executed_by: list[int] = field(default_factory=list)
    rejected_by: list[int] = field(default_factory=list)
    span: float = 0.0
    minimum: float = 0.0
    #: Each process's share of the closes executed from 1 s after the first to mid-span.
    first_half: list[float] = field(default_factory=list)
    #: What each process reported (``None``: it reported nothing, e.g. it was killed).
    results: list[WorkerResult | None] = field(default_factory=list)
    killed: int | None = None
    killed_at: float = 0.0
    closes_after_kill: list[float] = field(default_factory=list)
    outage: tuple[float, float] | None = None
    outage_rejections: int = 0
    redis_commands_after_outage: int = 0

    @property
    def ratio(self) -> float:
        return self.span / self.minimum if self.minimum > 0 else float("nan")


class Simulator(FakeBingX):
    """The simulator, telling when it has executed a given number of closes."""

    def __init__(self, *, disrupt_after: int, **options: Any) -> None:
        super().__init__(**options)
        self.executed = 0
        self._disrupt_after = disrupt_after
        #: Set once ``disrupt_after`` closes have been executed.
        self.disrupt = asyncio.Event()

    async def handle(
        self, method: str, path: str, query: str, headers: Mapping[str, str]
    ) -> SimResponse | NoAnswer:
        answer = await super().handle(method, path, query, headers)
        # handle() records the request last, with no await after it: it is the newest.
        request = self.requests[-1]
        if request.path == CLOSE_PATH and request.code == 0:
            self.executed += 1
            if self.executed >= self._disrupt_after:
                self.disrupt.set()
        return answer


async def _kill_one(report: ModeReport, process: Any, index: int, sim: Simulator) -> None:
    await sim.disrupt.wait()
    os.kill(process.pid, signal.SIGKILL)
    report.killed, report.killed_at = index, sim.clock.monotonic()


async def _cut_redis(report: ModeReport, redis: Redis, seconds: float, sim: Simulator) -> None:
    await sim.disrupt.wait()
    stopped_at = sim.clock.monotonic()
    await asyncio.to_thread(redis.stop)  # blocking calls off the loop that serves the simulator
    await asyncio.sleep(seconds)
    await asyncio.to_thread(redis.start)
    report.outage = (stopped_at, sim.clock.monotonic())


def _start_workers(
    mode: str,
    plans: list[tuple[tuple[str, str, tuple[str, ...]], ...]],
    base_url: str,
    redis: Redis | None,
) -> tuple[list[Any], list[Connection]]:
    context = multiprocessing.get_context("spawn")
    processes, pipes = [], []
    for index, accounts in enumerate(plans):
        parent_end, child_end = context.Pipe()
        plan = WorkerPlan(
            index, mode, len(plans), base_url, redis.url if redis is not None else None, accounts
        )
        process = context.Process(
            target=worker, args=(child_end, plan), name=f"worker-{index + 1}", daemon=True
        )
        process.start()
        child_end.close()
        processes.append(process)
        pipes.append(parent_end)
    return processes, pipes


def _failures(messages: Sequence[object]) -> list[str]:
    return sorted(
        {
            str(message[1]) if isinstance(message, tuple) else "the process exited"
            for message in messages
            if not (isinstance(message, tuple) and message[0] in ("ready", "done"))
        }
    )


async def run_mode(mode: str, args: argparse.Namespace, redis: Redis | None) -> ModeReport:
    """Seed the simulator, start the workers, let them close at once, count at the server."""
    report = ModeReport(mode, args.processes, args.processes * args.closes * args.accounts)
    if mode == "redis" and redis is None:
        report.failure = "skipped: redis-server not installed (apt-get install redis-server)"
        return report
    if redis is not None:
        redis.flushall()
    sim = Simulator(
        disrupt_after=math.ceil(report.total * DISRUPT_AT),
        arrival_jitter=args.jitter,
        seed=args.seed,
        window="rolling",
    )
    accounts = [sim.add_account() for _ in range(args.accounts)]
    owner: dict[str, int] = {}
    plans = []
    for index in range(args.processes):
        per_account = []
        for account in accounts:
            ids = tuple(sim.add_position(account).position_id for _ in range(args.closes))
            owner.update(dict.fromkeys(ids, index))
            per_account.append((account.api_key, account.secret_key, ids))
        plans.append(tuple(per_account))

    async with sim.serve() as base_url:
        processes, pipes = _start_workers(mode, plans, base_url, redis)
        try:
            failures = _failures(await asyncio.gather(*(_receive(pipe) for pipe in pipes)))
            if failures:
                report.failure = "failed: " + "; ".join(failures)
                return report
            for pipe in pipes:
                pipe.send("go")
            disruption = None
            if args.kill_one:
                disruption = _kill_one(report, processes[-1], len(processes) - 1, sim)
            elif args.redis_outage and mode == "redis" and redis is not None:
                disruption = _cut_redis(report, redis, args.redis_outage, sim)
            disrupting = asyncio.create_task(disruption) if disruption is not None else None
            deadline = CALL_TIMEOUT + 60.0
            try:
                messages = await asyncio.wait_for(
                    asyncio.gather(*(_receive(pipe) for pipe in pipes)), deadline
                )
            except TimeoutError:
                report.failure = f"failed: no outcome from every process within {deadline:.0f} s"
                return report
            finally:
                if disrupting is not None:
                    if not sim.disrupt.is_set():
                        disrupting.cancel()  # too few closes executed for it to strike
                    with contextlib.suppress(asyncio.CancelledError):
                        await disrupting  # an outage under way ends with Redis started again
        finally:
            for pipe in pipes:
                with contextlib.suppress(OSError):
                    pipe.send("stop")  # to a process still waiting for "go"
            for process in processes:
                process.join(timeout=5.0)
                if process.is_alive():
                    process.kill()
                    process.join()
            for pipe in pipes:
                pipe.close()
    report.results = [
        message[1] if isinstance(message, tuple) and message[0] == "done" else None
        for message in messages
    ]
    failures = _failures([m for index, m in enumerate(messages) if index != report.killed])
    if failures:
        report.failure = "failed: " + "; ".join(failures)
    if report.outage is not None and redis is not None:
        report.redis_commands_after_outage = redis.commands()
    _tally(report, sim, [account.uid for account in accounts], owner)
    return report


def _tally(report: ModeReport, sim: FakeBingX, uids: list[str], owner: dict[str, int]) -> None:
    """Everything counted at the server."""
    closes = sim.requests_to(CLOSE_PATH)
    executed = [request for request in closes if request.code == 0]
    rejected = [request for request in closes if request.code not in (0, None)]

    def by_process(requests: list[RecordedRequest]) -> list[int]:
        counts = Counter(owner[str(request.param("positionId"))] for request in requests)
        return [counts[index] for index in range(report.processes)]

    report.closed = len(executed)
    report.rate_limited = sum(request.code == RATE_LIMIT_ANSWER for request in rejected)
    report.other_rejections = Counter(
        request.code for request in rejected if request.code not in (None, RATE_LIMIT_ANSWER)
    )
    report.executed_by, report.rejected_by = by_process(executed), by_process(rejected)
    if report.outage is not None:
        start, end = report.outage
        report.outage_rejections = sum(start <= r.arrived_at <= end for r in rejected)
    if report.killed is not None:
        report.closes_after_kill = [
            r.arrived_at for r in executed if r.arrived_at > report.killed_at
        ]
    if not executed:
        return
    first = min(request.arrived_at for request in executed)
    report.span = max(request.arrived_at for request in executed) - first
    per_account = Counter(request.account for request in executed)
    report.minimum = theoretical_minimum([per_account[uid] for uid in uids])
    # Steady load: from one window after the start (the first window's slots go to whoever
    # asks first) to the middle of the span, while every process still has closes to make.
    early = by_process(
        [r for r in executed if first + 1.0 <= r.arrived_at <= first + report.span / 2]
    )
    report.first_half = [count / max(1, sum(early)) for count in early]


# --- printing -----------------------------------------------------------------------------

_COLUMNS = (
    f"{'mode':<6} {'closed':>9} {'100410':>7} {'other':>6} {'span s':>7} {'min s':>6} "
    f"{'ratio':>6}  steady share per process"
)


def _print(report: ModeReport) -> None:
    if report.failure is not None and not report.results:
        print(f"{report.mode:<6} {report.failure}")
        return
    other = sum(report.other_rejections.values())
    shares = "/".join(f"{share * 100:.0f}" for share in report.first_half) + " %"
    print(
        f"{report.mode:<6} {f'{report.closed}/{report.total}':>9} {report.rate_limited:>7} "
        f"{other:>6} {report.span:>7.2f} {report.minimum:>6.2f} {report.ratio:>6.3f}  {shares}"
    )
    if report.other_rejections:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(report.other_rejections.items()))
        print(f"       other rejections by code: {codes}")
    errors: Counter[str] = Counter()
    for result in report.results:
        if result is not None:
            errors.update(result.errors)
    unknown = sum(result.unknown for result in report.results if result is not None)
    if errors:
        named = ", ".join(f"{name} {n}" for name, n in errors.most_common())
        print(f"       failed closes: {named} ({unknown} with unknown outcome)")
    if report.killed is not None:
        survivors = [i for i in range(report.processes) if i != report.killed]
        reported = [report.results[i] for i in survivors]
        closed = sum(result.closed for result in reported if result is not None)
        wanted = report.total // report.processes * len(survivors)
        after = report.closes_after_kill
        pace = len(after) / (max(after) - report.killed_at) if len(after) > 1 else 0.0
        print(
            f"       killed process {report.killed + 1} (it had {report.executed_by[report.killed]}"
            f" closes executed); survivors: {closed}/{wanted} closed, "
            f"{sum(report.rejected_by[i] for i in survivors)} rejections; after the kill "
            f"{len(after)} closes at {pace:.2f}/s"
        )
    if report.outage is not None:
        start, end = report.outage
        used = "used again" if report.redis_commands_after_outage > 0 else "NOT used again"
        print(
            f"       redis down {end - start:.2f} s: {report.outage_rejections} rejections "
            f"arrived meanwhile, {unknown} calls ended without outcome; "
            f"{report.redis_commands_after_outage} redis commands after the restart ({used})"
        )
    if report.failure is not None:
        print(f"       {report.failure}")


# --- the overhead of a mode ---------------------------------------------------------------


def _answer(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/server/time"):
        data: object = {"serverTime": int(time.time() * 1000)}
    else:
        data = []
    return httpx.Response(200, json={"code": 0, "msg": "", "data": data})


async def per_request(mode: str, calls: int, redis: Redis | None) -> float:
    """Seconds per sequential ``get_positions`` through one client of ``mode``, against a
    transport that answers at once, under budgets too large ever to wait on."""
    huge = (Budget(10**9, 1.0),)
    group = IPGroup(per_endpoint=huge, total=huge, pool="group3")
    policy = DEFAULT_RATE_LIMITS.with_ip_group(3, group).with_endpoint(
        POSITIONS, per_account=huge, ip_group=3
    )
    if redis is not None:
        redis.flushall()
    options = _client_options(mode, 1, redis.url if redis is not None else None)
    options.setdefault("rate_limits", policy)
    async with BingXClient(
        api_key="bench-key",
        secret_key="bench-secret",
        transport=httpx.MockTransport(_answer),
        retry=RetryPolicy(attempts=1),
        **options,
    ) as client:
        for _ in range(min(100, calls)):  # warm up: connections, scripts, caches
            await client.get_positions()
        started = time.perf_counter()
        for _ in range(calls):
            await client.get_positions()
        return (time.perf_counter() - started) / calls


async def overhead(modes: Sequence[str], calls: int, redis: Redis | None) -> None:
    print(f"\noverhead: {calls} sequential requests, instant answers, budgets never full")
    baseline = await per_request("none", calls, None)
    print(f"{'none':<6} {baseline * 1e6:8.1f} us/request")
    for mode in modes:
        if mode in ("none", "split"):
            continue  # split only changes the numbers in the budgets
        if mode == "redis" and redis is None:
            print(f"{mode:<6} skipped: redis-server not installed")
            continue
        try:
            seconds = await per_request(mode, calls, redis)
        except Exception as error:  # noqa: BLE001 - printed instead of the figure
            print(f"{mode:<6} failed: {type(error).__name__}: {error}")
            continue
        print(
            f"{mode:<6} {seconds * 1e6:8.1f} us/request "
            f"({(seconds - baseline) * 1e6:+.1f} us over none)"
        )


# --- the command line ---------------------------------------------------------------------


def _modes(text: str) -> list[str]:
    modes = [mode.strip() for mode in text.split(",") if mode.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return modes


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--processes", type=int, default=4, help="worker processes (K)")
    parser.add_argument("--closes", type=int, default=25, help="closes per process per account")
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--modes", type=_modes, default=list(MODES), help="e.g. none,split")
    parser.add_argument("--jitter", type=float, default=0.03, help="largest delay, seconds")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kill-one", action="store_true", help="SIGKILL one process mid-run")
    parser.add_argument(
        "--redis-outage", type=float, default=0.0, metavar="SECONDS", help="stop Redis mid-run"
    )
    parser.add_argument("--overhead", action="store_true", help="per-request cost of each mode")
    parser.add_argument("--overhead-calls", type=int, default=2000)
    args = parser.parse_args()
    if args.kill_one and args.redis_outage:
        parser.error("--kill-one and --redis-outage are separate runs")

    executable = shutil.which("redis-server")
    redis = Redis(executable) if "redis" in args.modes and executable is not None else None
    try:
        if redis is not None:
            redis.start()
        print(
            f"{args.processes} processes x {args.closes} closes x {args.accounts} account(s), "
            f"rolling windows, jitter 0-{args.jitter * 1000:.0f} ms"
        )
        print(_COLUMNS)
        for mode in args.modes:
            _print(await run_mode(mode, args, redis))
        if args.overhead:
            await overhead(args.modes, args.overhead_calls, redis)
    finally:
        if redis is not None:
            redis.close()


if __name__ == "__main__":
    asyncio.run(main())
