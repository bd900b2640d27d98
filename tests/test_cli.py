"""The ``bingx-async`` command: exit codes, output lines, and nothing secret in any output.

``main(argv)`` runs its own event loop (``asyncio.run``), so each test calls it in a worker
thread while the FakeBingX server it talks to runs in the test's loop. A few tests start
``python -m bingx_async`` as a real subprocess to prove the entry point itself works.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import pty
import re
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

import bingx_async
from bingx_async._cli import main
from bingx_async._cli._output import ProgressBar
from bingx_async._cli._report import CloseReport
from bingx_async._client import CloseProgress
from bingx_async._exceptions import (
    APIError,
    AuthenticationError,
    BingXError,
    RateLimitError,
)
from bingx_async._models import ClosePositionResult
from bingx_async.testing import CustomAnswer, FakeBingX, GatewayTimeout, SimAccount

from . import cli_process
from .cli_process import Run

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
CLOSE_ENDPOINT = f"POST {CLOSE_PATH}"
ERROR_PREFIX = "bingx-async: error:"
DOCS_CLI = cli_process.ROOT / "docs" / "cli.md"


@dataclass(frozen=True)
class Exchange:
    """A FakeBingX served on 127.0.0.1 whose account's keys are in the environment."""

    sim: FakeBingX
    account: SimAccount
    url: str

    def secrets(self) -> list[str]:
        """The secret key and every signature the simulator received."""
        signatures = [r.param("signature") for r in self.sim.requests]
        return [self.account.secret_key, *(s for s in signatures if s)]


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """Run ``bingx-async argv`` in a worker thread (main() starts its own event loop)."""
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


async def subprocess_cli(*argv: str) -> Run:
    """Run ``python -m bingx_async argv`` as a real process."""
    process = await asyncio.create_subprocess_exec(
        *cli_process.command(*argv),
        cwd=cli_process.ROOT,
        stdin=asyncio.subprocess.DEVNULL,  # no terminal: nothing can be asked
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


class TerminalStream(io.StringIO):
    """A terminal to type into or draw on: ``isatty()`` is what the command asks."""

    def isatty(self) -> bool:
        return True


def unused_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def assert_no_secrets(exchange: Exchange, *texts: str) -> None:
    for text in texts:
        for secret in exchange.secrets():
            assert secret not in text


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """main() sets the library logger's level; give the next test the level it had."""
    logger = logging.getLogger("bingx_async")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture
async def exchange(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Exchange]:
    sim = FakeBingX(seed=11)
    account = sim.add_account()
    monkeypatch.setenv("BINGX_API_KEY", account.api_key)
    monkeypatch.setenv("BINGX_SECRET_KEY", account.secret_key)
    async with sim.serve() as url:
        yield Exchange(sim, account, url)


# --- the entry point --------------------------------------------------------------------------


async def test_module_prints_help() -> None:
    """``python -m bingx_async --help`` prints the usage and exits 0."""
    run = await subprocess_cli("--help")
    assert run.code == 0
    assert run.out.startswith("usage: bingx-async")
    for command in ("demo", "close", "positions", "server-time"):
        assert command in run.out
    assert run.err == ""


async def test_module_reports_bad_input_in_one_line() -> None:
    """``python -m bingx_async close 12a`` exits 2 with one error line, no traceback."""
    run = await subprocess_cli("close", "12a")
    assert run.code == 2
    assert run.err_lines == [
        f"{ERROR_PREFIX} position_id must contain only the digits 0-9, got '12a'"
    ]
    assert run.out == ""


async def test_module_verbose_logs_never_show_secrets(exchange: Exchange) -> None:
    """A real ``-v`` run logs its requests with the signature redacted, never the secret."""
    position = exchange.sim.add_position(exchange.account)
    run = await subprocess_cli("-v", "close", "--base-url", exchange.url, position.position_id)
    assert run.code == 0
    assert "signature=<redacted>" in run.err
    assert_no_secrets(exchange, run.out, run.err)


async def test_module_prints_its_version() -> None:
    """``python -m bingx_async --version`` prints the installed version and exits 0."""
    run = await subprocess_cli("--version")
    assert run.code == 0
    assert run.out_lines == [f"bingx-async {bingx_async.__version__}"]
    assert run.err == ""


@pytest.mark.parametrize(
    "where",
    [["-v", "--json", "close"], ["close", "-v", "--json"], ["-v", "close", "--json"]],
    ids=["before", "after", "both-sides"],
)
async def test_module_takes_verbose_and_json_before_or_after_the_command(
    exchange: Exchange, where: list[str]
) -> None:
    """-v and --json mean the same before and after the command, in a real process."""
    position = exchange.sim.add_position(exchange.account)
    run = await subprocess_cli(*where, "--base-url", exchange.url, position.position_id)
    assert run.code == 0
    assert "sending POST /openApi/swap/v1/trade/closePosition" in run.err
    (closed,) = json.loads(run.out)
    assert closed["position_id"] == position.position_id
    assert_no_secrets(exchange, run.out, run.err)


async def test_module_close_dry_run_shows_what_would_close_and_closes_nothing(
    exchange: Exchange,
) -> None:
    """close --dry-run lists each ID as open (symbol, side, size) or not, and sends no close."""
    position = exchange.sim.add_position(exchange.account, symbol="ETH-USDT", quantity="0.5")
    run = await subprocess_cli(
        "close", "--dry-run", "--base-url", exchange.url, position.position_id, "424242"
    )
    assert run.code == 0
    assert run.out_lines == [
        f"{position.position_id}  would close: ETH-USDT LONG amount 0.5",
        "424242  not open: nothing to close",
    ]
    assert exchange.sim.requests_to("/openApi/swap/v1/trade/closePosition") == []
    assert len(exchange.sim.positions(exchange.account)) == 1


async def test_module_close_all_with_yes_closes_every_position(exchange: Exchange) -> None:
    """close-all --yes closes every open position in one request and lists the orders."""
    for symbol in ("BTC-USDT", "ETH-USDT"):
        exchange.sim.add_position(exchange.account, symbol=symbol)
    run = await subprocess_cli("close-all", "--yes", "--json", "--base-url", exchange.url)
    assert run.code == 0
    assert len(json.loads(run.out)["order_ids"]) == 2
    assert exchange.sim.positions(exchange.account) == []
    assert len(exchange.sim.requests_to("/openApi/swap/v2/trade/closeAllPositions")) == 1
    assert_no_secrets(exchange, run.out, run.err)


async def test_module_close_all_without_yes_asks_and_a_pipe_cannot_answer(
    exchange: Exchange,
) -> None:
    """Without --yes and without a terminal to ask on, close-all refuses: exit 2, nothing sent."""
    exchange.sim.add_position(exchange.account)
    run = await subprocess_cli("close-all", "--base-url", exchange.url)
    assert run.code == 2
    assert run.err_lines == [
        f"{ERROR_PREFIX} close-all closes every open position: confirm with --yes"
    ]
    assert exchange.sim.requests_to("/openApi/swap/v2/trade/closeAllPositions") == []


CLOSE_ALL_PATH = "/openApi/swap/v2/trade/closeAllPositions"


@pytest.mark.parametrize("answer", ["y\n", "yes\n", " Y \n", "YES\n"])
async def test_close_all_on_a_terminal_asks_and_yes_closes(
    capsys: pytest.CaptureFixture[str],
    exchange: Exchange,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
) -> None:
    """Asked on a terminal, y or yes (any case, spaces around) closes every position."""
    exchange.sim.add_position(exchange.account, symbol="ETH-USDT")
    monkeypatch.setattr(sys, "stdin", TerminalStream(answer))
    run = await cli(capsys, "close-all", "--base-url", exchange.url)
    assert run.code == 0
    assert run.err == "Close 1 open position at market (1 ETH-USDT)? [y/N] "
    assert run.out_lines[0] == "closing orders placed: 1"
    assert re.fullmatch(r"  order \d+", run.out_lines[1])
    assert len(run.out_lines) == 2
    assert exchange.sim.positions(exchange.account) == []
    assert len(exchange.sim.requests_to(CLOSE_ALL_PATH)) == 1


@pytest.mark.parametrize("answer", ["n\n", "\n", "no\n", "yess\n", "y es\n"])
async def test_close_all_on_a_terminal_closes_nothing_unless_the_answer_is_yes(
    capsys: pytest.CaptureFixture[str],
    exchange: Exchange,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
) -> None:
    """The question counts the positions of each symbol (sorted); any other answer: nothing
    closed, exit 0."""
    for symbol in ("ETH-USDT", "BTC-USDT", "ETH-USDT"):
        exchange.sim.add_position(exchange.account, symbol=symbol)
    monkeypatch.setattr(sys, "stdin", TerminalStream(answer))
    run = await cli(capsys, "close-all", "--base-url", exchange.url)
    assert run.code == 0
    assert run.err == (
        "Close 3 open positions at market (1 BTC-USDT, 2 ETH-USDT)? [y/N] nothing closed\n"
    )
    assert run.out == ""
    assert exchange.sim.requests_to(CLOSE_ALL_PATH) == []
    assert len(exchange.sim.positions(exchange.account)) == 3


async def test_close_all_asks_about_a_position_without_a_symbol_as_question_mark(
    capsys: pytest.CaptureFixture[str], exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listed position whose symbol BingX left out is counted under "?"."""
    listing = [{"positionId": "123", "positionSide": "LONG", "positionAmt": "0.01"}]
    exchange.sim.inject(
        CustomAnswer(status_code=200, body={"code": 0, "msg": "", "data": listing}),
        path="/openApi/swap/v2/user/positions",
    )
    monkeypatch.setattr(sys, "stdin", TerminalStream("n\n"))
    run = await cli(capsys, "close-all", "--base-url", exchange.url)
    assert run.code == 0
    assert run.err == "Close 1 open position at market (1 ?)? [y/N] nothing closed\n"


async def test_close_all_on_a_terminal_stops_at_the_end_of_input(
    capsys: pytest.CaptureFixture[str], exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl+D at the question: the line is ended, one error line, exit 130, nothing closed."""
    exchange.sim.add_position(exchange.account)
    exchange.sim.add_position(exchange.account)
    monkeypatch.setattr(sys, "stdin", TerminalStream(""))
    run = await cli(capsys, "close-all", "--base-url", exchange.url)
    assert run.code == 130
    assert run.err_lines == [
        "Close 2 open positions at market (2 BTC-USDT)? [y/N] ",
        f"{ERROR_PREFIX} interrupted: end of input, no answer",
    ]
    assert run.out == ""
    assert exchange.sim.requests_to(CLOSE_ALL_PATH) == []


async def test_close_all_of_one_symbol_closes_only_that_symbol(
    capsys: pytest.CaptureFixture[str], exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close-all --symbol: the question and the close both stay within that symbol."""
    kept = exchange.sim.add_position(exchange.account, symbol="ETH-USDT")
    exchange.sim.add_position(exchange.account, symbol="BTC-USDT")
    monkeypatch.setattr(sys, "stdin", TerminalStream("y\n"))
    run = await cli(capsys, "close-all", "--symbol", "BTC-USDT", "--base-url", exchange.url)
    assert run.code == 0
    assert run.err == "Close 1 open position at market (1 BTC-USDT)? [y/N] "
    assert run.out_lines[0] == "closing orders placed: 1"
    assert [p.position_id for p in exchange.sim.positions(exchange.account)] == [kept.position_id]


@pytest.mark.parametrize("output", ["text", "--json", "--jsonl"])
async def test_close_all_reports_its_orders_and_failures_and_exits_5_on_a_failure(
    capsys: pytest.CaptureFixture[str], exchange: Exchange, output: str
) -> None:
    """What BingX reports placed and failed is printed as it is; a failure is exit 5."""
    exchange.sim.inject(
        CustomAnswer(
            status_code=200,
            body={"code": 0, "msg": "", "data": {"success": [111, 222], "failed": [333]}},
        ),
        path=CLOSE_ALL_PATH,
    )
    options = [] if output == "text" else [output]
    run = await cli(capsys, "close-all", "--yes", *options, "--base-url", exchange.url)
    assert run.code == 5
    assert run.err == ""
    value = {"order_ids": ["111", "222"], "failed": ["333"]}
    if output == "text":
        assert run.out_lines == [
            "closing orders placed: 2",
            "  order 111",
            "  order 222",
            "  failed: 333",
        ]
    elif output == "--json":
        assert run.out == json.dumps(value, indent=2) + "\n"
    else:
        assert run.out_lines == [json.dumps(value)]


DOCUMENTED_COMMANDS = [
    [],
    ["demo"],
    ["simulate"],
    ["close"],
    ["close-all"],
    ["positions"],
    ["server-time"],
]


@pytest.mark.parametrize(
    "command", DOCUMENTED_COMMANDS, ids=[c[0] if c else "top" for c in DOCUMENTED_COMMANDS]
)
async def test_module_help_of_every_documented_command(command: list[str]) -> None:
    """Every command of docs/cli.md answers --help: exit 0, its usage, nothing on stderr."""
    run = await subprocess_cli(*command, "--help")
    assert run.code == 0
    assert run.out.startswith(f"usage: bingx-async {' '.join(command)}".rstrip())
    assert run.err == ""


def test_every_command_in_the_cli_docs_is_tested_for_help() -> None:
    documented = set(re.findall(r"^## `([a-z-]+)`", DOCS_CLI.read_text(), flags=re.MULTILINE))
    assert documented == {c[0] for c in DOCUMENTED_COMMANDS if c}


async def test_module_close_shares_limits_through_the_redis_it_is_given(
    exchange: Exchange, redis_url: str
) -> None:
    """close --shared-limits URL closes through shared limits; the URL is never printed."""
    position = exchange.sim.add_position(exchange.account)
    run = await subprocess_cli(
        "close", "--shared-limits", redis_url, "--base-url", exchange.url, position.position_id
    )
    assert run.code == 0
    assert redis_url not in run.out + run.err
    assert exchange.sim.positions(exchange.account) == []


async def test_module_close_of_many_ids_reports_progress_in_plain_lines_off_a_terminal(
    exchange: Exchange,
) -> None:
    """Not on a terminal: a plain progress line every ten outcomes and at the end, on stderr."""
    ids = [exchange.sim.add_position(exchange.account).position_id for _ in range(12)]
    run = await subprocess_cli("close", "--base-url", exchange.url, *ids)
    assert run.code == 0
    assert run.err_lines == ["closed 10/12", "closed 12/12", f"closed (12): {' '.join(ids)}"]
    assert len(run.out_lines) == 12


async def test_close_of_many_ids_draws_a_live_line_on_a_terminal(exchange: Exchange) -> None:
    """On a terminal: one line redrawn in place, taken away before each outcome is printed."""
    ids = [exchange.sim.add_position(exchange.account).position_id for _ in range(3)]
    controller, terminal = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *cli_process.command("close", "--base-url", exchange.url, *ids),
            cwd=cli_process.ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=terminal,
        )
        out, _ = await process.communicate()
        os.close(terminal)
        drawn = await asyncio.to_thread(_read_all, controller)
    finally:
        os.close(controller)
    assert process.returncode == 0
    text = drawn.decode()
    assert "\rclosing [" in text
    assert "3/3  failed 0" in text
    assert "\x1b[K" in text  # the line was taken away before an outcome was printed
    assert len(out.decode().splitlines()) == 3


def _read_all(fd: int) -> bytes:
    drawn = b""
    with contextlib.suppress(OSError):  # EIO once the other end is closed
        while chunk := os.read(fd, 4096):
            drawn += chunk
    return drawn


def bar(done: int, total: int, failed: int = 0) -> str:
    """The live progress line as drawn: 30 cells, ``#`` for the share done (rounded down)."""
    filled = 30 * done // total
    return f"\rclosing [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}  failed {failed}"


async def test_close_on_a_terminal_redraws_one_progress_line_in_place(
    capsys: pytest.CaptureFixture[str], exchange: Exchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stderr on a terminal: the bar is drawn after each outcome, cleared before the next
    row is printed, ends with a newline once all are done, then the summary."""
    ids = [exchange.sim.add_position(exchange.account).position_id for _ in range(4)]
    terminal = TerminalStream()
    monkeypatch.setattr(sys, "stderr", terminal)
    run = await cli(capsys, "close", "--base-url", exchange.url, *ids)
    assert run.code == 0
    assert len(run.out_lines) == 4
    clear = "\r\x1b[K"
    assert terminal.getvalue() == (
        f"{bar(1, 4)}{clear}{bar(2, 4)}{clear}{bar(3, 4)}{clear}{bar(4, 4)}\n"
        f"closed (4): {' '.join(ids)}\n"
    )
    assert bar(1, 4) == "\rclosing [#######.......................] 1/4  failed 0"
    assert bar(3, 4) == "\rclosing [######################........] 3/4  failed 0"


def test_the_progress_line_counts_failures_as_they_come() -> None:
    """Each outcome that is not a close counts as failed on the line from then on."""
    terminal = TerminalStream()
    progress = ProgressBar(3, terminal)
    refused = APIError("refused", code=80020)
    closed = ClosePositionResult("2", "9", "BTC-USDT", "SELL", "MARKET", "LONG", None, data={})
    outcomes: list[ClosePositionResult | APIError] = [refused, closed, refused]
    for done, outcome in enumerate(outcomes, start=1):
        progress(CloseProgress(position_id=str(done), outcome=outcome, done=done, total=3))
    assert terminal.getvalue() == f"{bar(1, 3, 1)}{bar(2, 3, 1)}{bar(3, 3, 2)}\n"
    assert bar(3, 3, 2) == "\rclosing [##############################] 3/3  failed 2"


@pytest.mark.parametrize("output", ["text", "--json", "--jsonl"])
async def test_close_dry_run_shows_each_id_open_or_not_and_sends_nothing(
    capsys: pytest.CaptureFixture[str], exchange: Exchange, output: str
) -> None:
    """close --dry-run: for each ID, in the order given, its symbol, side and size if it is
    open, else that nothing would be closed; one listing, no close, exit 0, nothing on stderr."""
    position = exchange.sim.add_position(exchange.account, symbol="ETH-USDT", quantity="0.5")
    options = [] if output == "text" else [output]
    argv = ["close", "--dry-run", *options, "--base-url", exchange.url]
    run = await cli(capsys, *argv, "424242", position.position_id)
    assert run.code == 0
    assert run.err == ""
    rows = [
        {
            "position_id": "424242",
            "open": False,
            "symbol": None,
            "position_side": None,
            "position_amt": None,
        },
        {
            "position_id": position.position_id,
            "open": True,
            "symbol": "ETH-USDT",
            "position_side": "LONG",
            "position_amt": "0.5",
        },
    ]
    if output == "text":
        assert run.out_lines == [
            "424242  not open: nothing to close",
            f"{position.position_id}  would close: ETH-USDT LONG amount 0.5",
        ]
    elif output == "--json":
        assert run.out == json.dumps(rows, indent=2) + "\n"
    else:
        assert run.out_lines == [json.dumps(row) for row in rows]
    assert exchange.sim.requests_to(CLOSE_PATH) == []
    assert len(exchange.sim.requests_to("/openApi/swap/v2/user/positions")) == 1
    assert len(exchange.sim.positions(exchange.account)) == 1


# --- bad input and configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("12a", "position_id must contain only the digits 0-9, got '12a'"),
        ("", "position_id is empty"),
    ],
)
async def test_close_with_a_bad_id_exits_2(
    capsys: pytest.CaptureFixture[str], raw: str, message: str
) -> None:
    """A malformed ID is one error line on stderr and exit code 2."""
    run = await cli(capsys, "close", raw)
    assert run.code == 2
    assert run.err_lines == [f"{ERROR_PREFIX} {message}"]
    assert run.out == ""


async def test_retries_below_one_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """``--retries 0`` is bad input, rejected before anything is sent."""
    run = await cli(capsys, "server-time", "--retries", "0")
    assert run.code == 2
    assert run.err_lines == [f"{ERROR_PREFIX} --retries must be at least 1"]


async def test_missing_command_exits_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """No command at all is a usage error (argparse exits 2)."""
    with pytest.raises(SystemExit) as caught:
        await asyncio.to_thread(main, [])
    assert caught.value.code == 2
    assert "usage: bingx-async" in capsys.readouterr().err


async def test_close_without_credentials_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """Without BINGX_API_KEY/BINGX_SECRET_KEY, close exits 3 with one line naming both."""
    run = await cli(capsys, "close", "123")
    lines = run.out_lines + run.err_lines
    assert run.code == 3
    assert len(lines) == 1
    assert "BINGX_API_KEY" in lines[0]
    assert "BINGX_SECRET_KEY" in lines[0]
    assert "Traceback" not in run.err


async def test_positions_without_credentials_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """Without credentials, positions exits 3 with one error line on stderr."""
    run = await cli(capsys, "positions")
    assert run.code == 3
    assert len(run.err_lines) == 1
    assert run.err_lines[0].startswith(ERROR_PREFIX)
    assert "BINGX_API_KEY" in run.err
    assert "BINGX_SECRET_KEY" in run.err
    assert run.out == ""


async def test_close_against_an_unreachable_host_fails_fast(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening: exit 1 at once, one line saying it could not connect."""
    monkeypatch.setenv("BINGX_API_KEY", "key")
    monkeypatch.setenv("BINGX_SECRET_KEY", "secret")
    port = unused_port()
    loop = asyncio.get_running_loop()
    started = loop.time()
    run = await cli(
        capsys, "close", "--base-url", f"http://127.0.0.1:{port}", "--retries", "1", "123"
    )
    assert loop.time() - started < 2.0
    lines = run.out_lines + run.err_lines
    assert run.code == 1
    assert len(lines) == 1
    assert f"could not connect to 127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in run.err


async def test_positions_against_an_unreachable_host_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening: positions prints one error line on stderr and exits 1."""
    monkeypatch.setenv("BINGX_API_KEY", "key")
    monkeypatch.setenv("BINGX_SECRET_KEY", "secret")
    port = unused_port()
    run = await cli(capsys, "positions", "--base-url", f"http://127.0.0.1:{port}", "--retries", "1")
    assert run.code == 1
    assert len(run.err_lines) == 1
    assert run.err_lines[0].startswith(f"{ERROR_PREFIX} could not connect to 127.0.0.1:{port}")
    assert run.out == ""


# --- against a simulated BingX ----------------------------------------------------------------


async def test_close_prints_one_closed_line_and_exits_0(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """close ID prints "ID  closed  order N" and the position is gone."""
    position = exchange.sim.add_position(exchange.account)
    run = await cli(capsys, "close", "--base-url", exchange.url, position.position_id)
    assert run.code == 0
    (line,) = run.out_lines
    assert re.fullmatch(rf"{position.position_id}  closed {{11}}order \d+", line)
    assert run.err_lines == [f"closed (1): {position.position_id}"]
    assert exchange.sim.positions(exchange.account) == []


async def test_close_json_lists_each_outcome(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """close --json prints one object per ID with its status, order, symbol and orig_qty."""
    position = exchange.sim.add_position(exchange.account, symbol="ETH-USDT", quantity="0.5")
    run = await cli(capsys, "close", "--json", "--base-url", exchange.url, position.position_id)
    (row,) = json.loads(run.out)
    assert run.code == 0
    assert row["position_id"] == position.position_id
    assert row["status"] == "closed"
    assert row["symbol"] == "ETH-USDT"
    assert row["orig_qty"] == "0.5"
    assert isinstance(row["order_id"], str)
    assert row["order_id"].isdigit()


async def test_close_with_one_refused_close_exits_5(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """One ID closed and one refused by BingX is a partial failure: both reported, exit 5."""
    refused, closed = (exchange.sim.add_position(exchange.account) for _ in range(2))
    exchange.sim.inject(
        CustomAnswer(status_code=200, body={"code": 80020, "msg": "risk forbidden"}),
        path=CLOSE_PATH,
    )
    run = await cli(
        capsys, "close", "--base-url", exchange.url, refused.position_id, closed.position_id
    )
    assert run.code == 5
    statuses = sorted(line.split()[1] for line in run.out_lines)
    assert statuses == ["closed", "error"]
    assert "failed, nothing done, safe to run again (1): " in run.err
    assert len(exchange.sim.positions(exchange.account)) == 1


async def test_a_close_that_possibly_closed_is_reported_closed_not_failed(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """A 504 after the close executed, and a history that does not show it yet: the position
    is gone from the open ones, so it possibly closed. That is grouped as closed, exit 0."""
    position = exchange.sim.add_position(exchange.account)
    exchange.sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    exchange.sim.inject(
        CustomAnswer(status_code=200, body={"code": 0, "msg": "", "data": []}),
        path="/openApi/swap/v1/trade/positionHistory",
        count=5,
    )
    run = await cli(capsys, "close", "--json", "--base-url", exchange.url, position.position_id)
    (row,) = json.loads(run.out)
    assert (row["status"], row["error"], row["may_have_executed"]) == (
        "possibly_closed",
        "PositionPossiblyClosedError",
        True,
    )
    assert run.code == 0
    assert f"closed (1): {position.position_id}" in run.err_lines


async def test_a_close_confirmed_from_the_history_says_so(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """A 504 after the close executed: the history shows the close, which is reported closed,
    with its price and time from the history and no order ID."""
    position = exchange.sim.add_position(exchange.account)
    exchange.sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    run = await cli(capsys, "close", "--base-url", exchange.url, position.position_id)
    assert run.code == 0
    assert run.out_lines == [
        f"{position.position_id}  closed           closed (confirmed from the position history)"
    ]
    second = exchange.sim.add_position(exchange.account)
    exchange.sim.inject(GatewayTimeout(after_executing=True), path=CLOSE_PATH)
    run = await cli(capsys, "close", "--json", "--base-url", exchange.url, second.position_id)
    (row,) = json.loads(run.out)
    assert (row["status"], row["order_id"], row["confirmed_from_history"]) == ("closed", None, True)
    assert row["avg_close_price"] is not None
    assert row["close_time"] is not None


async def test_close_json_reports_not_found(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """A listed position BingX then says it does not hold: not_found, its error and code; the
    position is not open, so that is no failure (exit 0)."""
    position = exchange.sim.add_position(exchange.account)
    exchange.sim.inject(
        CustomAnswer(status_code=200, body={"code": 101205, "msg": "No position to close"}),
        path=CLOSE_PATH,
    )
    run = await cli(capsys, "close", "--json", "--base-url", exchange.url, position.position_id)
    (row,) = json.loads(run.out)
    assert run.code == 0
    assert row["position_id"] == position.position_id
    assert row["status"] == "not_found"
    assert row["error"] == "PositionNotFoundError"
    assert row["code"] == 101205
    assert row["may_have_executed"] is False


async def test_close_while_rate_limited_exits_4(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """An endpoint disabled for a minute is not waited for: exit 4 at once."""
    position = exchange.sim.add_position(exchange.account)
    exchange.sim.block(CLOSE_ENDPOINT, 60.0)
    run = await cli(capsys, "close", "--base-url", exchange.url, position.position_id)
    assert run.code == 4
    (line,) = run.out_lines
    assert line.startswith(f"{position.position_id}  error            BingX error 100410: ")
    assert len(exchange.sim.requests_to(CLOSE_PATH)) == 1
    assert len(exchange.sim.positions(exchange.account)) == 1


async def test_positions_prints_one_line_per_position(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """positions prints ID, symbol, side, amount, entry and pnl for each position."""
    long = exchange.sim.add_position(exchange.account, symbol="BTC-USDT", quantity="0.01")
    short = exchange.sim.add_position(
        exchange.account, symbol="ETH-USDT", position_side="SHORT", quantity="2"
    )
    run = await cli(capsys, "positions", "--base-url", exchange.url)
    assert run.code == 0
    assert run.out_lines == [
        f"{long.position_id}  BTC-USDT       LONG   amount 0.01  entry 60000.0  pnl 0.0000",
        f"{short.position_id}  ETH-USDT       SHORT  amount 2  entry 60000.0  pnl 0.0000",
    ]


async def test_positions_says_when_there_are_none(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """positions on an empty account prints "no open positions" and exits 0."""
    run = await cli(capsys, "positions", "--base-url", exchange.url)
    assert run.code == 0
    assert run.out_lines == ["no open positions"]


async def test_positions_json_has_the_documented_fields(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """positions --json is a list of objects with decimals as strings and no raw data."""
    position = exchange.sim.add_position(exchange.account, symbol="BTC-USDT", quantity="0.01")
    run = await cli(capsys, "positions", "--json", "--base-url", exchange.url)
    (row,) = json.loads(run.out)
    assert run.code == 0
    assert row["position_id"] == position.position_id
    assert row["symbol"] == "BTC-USDT"
    assert row["position_side"] == "LONG"
    assert row["position_amt"] == "0.01"
    assert row["avg_price"] == "60000.0"
    assert row["leverage"] == 10
    assert "data" not in row


async def test_positions_jsonl_prints_one_object_per_line(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    first, second = (
        exchange.sim.add_position(exchange.account, symbol=symbol)
        for symbol in ("BTC-USDT", "ETH-USDT")
    )
    run = await cli(capsys, "positions", "--jsonl", "--base-url", exchange.url)
    rows = [json.loads(line) for line in run.out_lines]
    assert run.code == 0
    assert [(row["position_id"], row["symbol"]) for row in rows] == [
        (first.position_id, "BTC-USDT"),
        (second.position_id, "ETH-USDT"),
    ]
    assert all("data" not in row for row in rows)


async def test_server_time_prints_iso_and_milliseconds(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """server-time prints BingX's clock as ISO 8601 and epoch milliseconds."""
    before = exchange.sim.server_time_ms()
    run = await cli(capsys, "server-time", "--base-url", exchange.url)
    after = exchange.sim.server_time_ms()
    assert run.code == 0
    (line,) = run.out_lines
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT[\d:.]+\+00:00) \((\d{13})\)", line)
    assert match is not None
    assert before <= int(match.group(2)) <= after


async def test_server_time_json_has_ms_and_iso(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """server-time --json has server_time_ms (int) and iso (str)."""
    before = exchange.sim.server_time_ms()
    run = await cli(capsys, "server-time", "--json", "--base-url", exchange.url)
    answer = json.loads(run.out)
    assert run.code == 0
    assert set(answer) == {"server_time_ms", "iso"}
    assert before <= answer["server_time_ms"] <= exchange.sim.server_time_ms()
    assert answer["iso"].endswith("+00:00")


@pytest.mark.parametrize(
    "argv",
    [
        ["close"],
        ["close", "--json"],
        ["-v", "close"],
        ["positions"],
        ["-v", "positions", "--json"],
        ["-v", "server-time"],
    ],
)
async def test_output_never_shows_the_secret_or_signature(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    exchange: Exchange,
    argv: list[str],
) -> None:
    """Neither the secret key nor any signature appears in stdout, stderr or the logs."""
    caplog.set_level(logging.DEBUG)
    position = exchange.sim.add_position(exchange.account)
    ids = [position.position_id, "999"] if "close" in argv else []
    run = await cli(capsys, *argv, "--base-url", exchange.url, *ids)
    assert run.code in (0, 5)
    assert_no_secrets(exchange, run.out, run.err, caplog.text)


async def test_verbose_logs_show_the_request_with_the_signature_redacted(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, exchange: Exchange
) -> None:
    """With -v the signed request is logged, its signature replaced by <redacted>."""
    caplog.set_level(logging.DEBUG)
    run = await cli(capsys, "-v", "positions", "--base-url", exchange.url)
    (request,) = exchange.sim.requests_to("/openApi/swap/v2/user/positions")
    assert run.code == 0
    assert "sending GET /openApi/swap/v2/user/positions" in caplog.text
    assert "&signature=<redacted>" in caplog.text
    assert str(request.param("signature")) not in caplog.text


async def test_verbose_log_lines_carry_the_time_level_and_logger(
    capsys: pytest.CaptureFixture[str], exchange: Exchange
) -> None:
    """Each -v line starts with an ISO 8601 time to the millisecond, its level and logger."""
    before = datetime.now(UTC).replace(microsecond=0)
    run = await cli(capsys, "-v", "positions", "--base-url", exchange.url)
    after = datetime.now(UTC)
    assert run.code == 0
    line = re.compile(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) (DEBUG|INFO) (bingx_async|httpx): "
    )
    matches = [line.match(text) for text in run.err_lines]
    assert all(matches), run.err
    times = [datetime.fromisoformat(m.group(1)) for m in matches if m]
    assert all(before <= time <= after for time in times), times
    assert [(m.group(2), m.group(3)) for m in matches if m].count(("INFO", "httpx")) >= 1
    assert any(
        m.group(3) == "bingx_async" and "sending GET /openApi/swap/v2/user/positions" in text
        for m, text in zip(matches, run.err_lines, strict=True)
        if m
    )


# --- the demo ---------------------------------------------------------------------------------


async def test_demo_closes_every_position_without_rejections(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """demo --positions 10 closes 10/10 with no rejection by the exchange, exit 0."""
    run = await cli(capsys, "demo", "--positions", "10", "--seed", "1")
    assert run.code == 0
    assert "closed:                    10/10" in run.out_lines
    assert "rejected by the exchange:  0" in run.out_lines
    assert "closed 10/10" in run.err_lines


async def test_demo_json_is_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """demo --json prints the summary as JSON: all closed, none rejected."""
    run = await cli(capsys, "demo", "--positions", "5", "--jitter", "0", "--json")
    report = json.loads(run.out)
    assert run.code == 0
    assert report["positions"] == 5
    assert report["closed"] == report["positions"]
    assert report["rejected"] == 0
    assert report["failed"] == 0


async def test_demo_at_its_smallest_and_widest(capsys: pytest.CaptureFixture[str]) -> None:
    """One position on one account, with the largest jitter (1 s), is valid input: the
    banner says 0-1000 ms, and the JSON summary has its ratio."""
    run = await cli(
        capsys, "demo", "--positions", "1", "--accounts", "1", "--jitter", "1", "--json"
    )
    assert run.code == 0
    assert "(strict rolling windows, 0-1000 ms network jitter): closing 1 positions" in run.err
    report = json.loads(run.out)
    assert report["closed"] == report["positions"] == report["accounts"] == 1
    assert report["arrival_jitter"] == 1.0
    assert isinstance(report["ratio"], float)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jitter", "1.01"], "--jitter must be between 0 and 1 second"),
        (["--jitter", "-0.01"], "--jitter must be between 0 and 1 second"),
        (["--positions", "0"], "need --positions >= 1 and 1 <= --accounts <= --positions"),
        (["--accounts", "0"], "need --positions >= 1 and 1 <= --accounts <= --positions"),
    ],
)
async def test_demo_refuses_input_out_of_range(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    run = await cli(capsys, "demo", *argv)
    assert run.code == 2
    assert run.err_lines == [f"{ERROR_PREFIX} {message}"]


async def test_demo_rejects_more_accounts_than_positions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """demo --accounts above --positions is bad input: exit 2, one line."""
    run = await cli(capsys, "demo", "--positions", "1", "--accounts", "2")
    assert run.code == 2
    assert run.err_lines == [
        f"{ERROR_PREFIX} need --positions >= 1 and 1 <= --accounts <= --positions"
    ]


@pytest.mark.parametrize("given", ["option", "environment"])
async def test_demo_with_processes_compares_own_and_shared_limits(
    capsys: pytest.CaptureFixture[str],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
) -> None:
    """demo --processes 2 with --shared-limits URL (or BINGX_SHARED_LIMITS): two runs, the
    shared one without rejection."""
    shared = ["--shared-limits", redis_url] if given == "option" else []
    if given == "environment":
        monkeypatch.setenv("BINGX_SHARED_LIMITS", redis_url)
    positions = "6" if given == "option" else "2"
    run = await cli(
        capsys,
        "demo",
        "--processes",
        "2",
        "--positions",
        positions,
        "--jitter",
        "0",
        *shared,
        "--json",
    )
    own, shared = json.loads(run.out)
    assert run.code == 0
    assert (own["shared"], shared["shared"]) == (False, True)
    assert shared["closed"] == shared["positions"] == int(positions)
    assert shared["rejected"] == 0
    assert redis_url not in run.out + run.err


async def test_demo_with_processes_and_no_redis_prints_one_row_and_how_to_share(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BINGX_SHARED_LIMITS", raising=False)
    run = await cli(capsys, "demo", "--processes", "2", "--positions", "6", "--jitter", "0")
    assert run.code == 0
    header, row, hint = run.out_lines
    assert header.split() == ["limits", "closed", "rejected", "span", "minimum", "ratio"]
    assert re.fullmatch(r"each process its own  +6/6 +\d+ +[0-9.]+s +[0-9.]+s +[0-9.]+", row)
    assert hint == "(give --shared-limits redis://HOST:6379/0 to see them share one budget)"
    assert "2 processes closing 6 positions of one account at once" in run.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--processes", "0"], "--processes must be between 1 and 32"),
        (["--processes", "33"], "--processes must be between 1 and 32"),
        # 32 is allowed: the next check speaks.
        (
            ["--processes", "32", "--positions", "2"],
            "need at least one position per process (--positions)",
        ),
        (
            ["--processes", "3", "--positions", "2"],
            "need at least one position per process (--positions)",
        ),
        (["--processes", "2", "--accounts", "2"], "--processes runs on one account"),
        (
            ["--processes", "2", "--shared-limits", "http://cache:6379"],
            "--shared-limits (or BINGX_SHARED_LIMITS) must be a redis://",
        ),
    ],
    ids=["zero", "too-many", "the-most", "too-few-positions", "accounts", "not-redis"],
)
async def test_demo_with_processes_refuses_bad_input(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    run = await cli(capsys, "demo", *argv)
    assert run.code == 2
    assert message in run.err
    assert run.err.splitlines()[-1].startswith(f"{ERROR_PREFIX} {message}")


@pytest.mark.parametrize(
    ("errors", "code"),
    [
        ((AuthenticationError("bad key", may_have_executed=False),) * 2, 3),
        ((RateLimitError("busy", may_have_executed=False),) * 2, 4),
        # Failures that call for different codes: the general one.
        (
            (
                AuthenticationError("bad key", may_have_executed=False),
                RateLimitError("busy", may_have_executed=False),
            ),
            1,
        ),
    ],
    ids=["auth", "rate-limited", "mixed"],
)
def test_a_run_whose_every_close_failed_exits_with_their_code_or_the_general_one(
    errors: tuple[BingXError, ...], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = [str(n) for n in range(1, len(errors) + 1)]
    report = CloseReport(ids, mode="json", sent=set(ids))
    for done, (position_id, error) in enumerate(zip(ids, errors, strict=True), start=1):
        report.add(CloseProgress(position_id, error, done, len(ids)))

    assert report.finish() == code
    rows = json.loads(capsys.readouterr().out)
    assert [row["status"] for row in rows] == ["error"] * len(ids)


def test_an_interrupted_run_on_a_terminal_takes_its_live_line_away_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = TerminalStream()
    monkeypatch.setattr(sys, "stderr", terminal)
    report = CloseReport(["1", "2", "3"], mode="text", sent={"1", "2"})
    report.expect(3)
    closed = ClosePositionResult("1", "9", "BTC-USDT", "SELL", "MARKET", "LONG", None, data={})
    report.add(CloseProgress(position_id="1", outcome=closed, done=1, total=3))

    report.interrupted()

    assert terminal.getvalue() == (
        f"{bar(1, 3)}\r\x1b[K\n"
        "closed (1): 1\n"
        "not sent, safe to run again (1): 3\n"
        "sent, outcome unknown, check these (1): 2\n"
    )
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [
        ["1", "closed"],
        ["2", "unknown"],
        ["3", "not_sent"],
    ]


def test_an_interrupted_run_off_a_terminal_prints_only_its_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    report = CloseReport(["1", "2"], mode="text", sent=set())
    report.expect(2)

    report.interrupted()

    assert stream.getvalue() == "not sent, safe to run again (2): 1 2\n"
    assert len(capsys.readouterr().out.splitlines()) == 2
