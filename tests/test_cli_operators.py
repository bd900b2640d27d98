"""The ``bingx-async`` command as operators run it: real processes, real signals, a terminal.

Every test runs ``python -m bingx_async`` from this checkout (see :func:`command`) against
``bingx-async simulate``, itself a process of its own; what the simulator answered is read
from its request log. A test that needs a terminal gets a pseudo-terminal as its
controlling terminal, so that Ctrl+C there is a real SIGINT.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import threading
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bingx_async._cli._report import ROW_KEYS
from tests.cli_process import ROOT, Run, command
from tests.redis_server import free_port

DOCS_CLI = ROOT / "docs" / "cli.md"
CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
POSITIONS_PATH = "/openApi/swap/v2/user/positions"
ERROR = "bingx-async: error:"
#: Seconds any one wait in these tests may take before the test fails.
PATIENCE = 10.0


def environment(**variables: str) -> dict[str, str]:
    """This checkout's package first on the path, no BINGX_* variable but those given."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("BINGX_")}
    # Output buffered as in a user's shell: what must show at once has to flush itself.
    env.pop("PYTHONUNBUFFERED", None)
    env["PYTHONPATH"] = str(ROOT)
    env.update(variables)
    return env


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start the command with ``argv``, no terminal, its output read as text."""
    # This interpreter and the command's own arguments:
    return subprocess.Popen(  # noqa: S603
        command(*argv),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*argv: str, env: dict[str, str] | None = None) -> Run:
    """Run the command to its end, with no terminal."""
    done = subprocess.run(  # noqa: S603 - this interpreter and the command's own arguments
        command(*argv),
        cwd=ROOT,
        env=env if env is not None else environment(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


class Lines:
    """A stream of a running process, read line by line in a thread."""

    def __init__(self, stream: object) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, pattern: str, count: int = 1) -> list[str]:
        """Wait until ``count`` lines match ``pattern``; those lines."""
        deadline = time.monotonic() + PATIENCE
        with self._changed:
            while True:
                found = [line for line in self.lines if re.search(pattern, line)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"no {count} lines matching {pattern!r} in {self.lines}"
                self._changed.wait(left)

    def finish(self) -> str:
        """Everything read, once the process closed its end."""
        self._thread.join(PATIENCE)
        self.stream.close()  # type: ignore[attr-defined]
        return "\n".join(self.lines) + ("\n" if self.lines else "")


@dataclass
class Account:
    api_key: str
    secret_key: str
    uid: str
    position_ids: list[str]


@dataclass
class Simulator:
    """``bingx-async simulate`` running in a process of its own."""

    process: subprocess.Popen[str]
    base_url: str
    accounts: list[Account]
    out: list[str]
    log: Lines
    given: int = 0
    header: list[str] = field(default_factory=list)

    def env(self, account: Account, **variables: str) -> dict[str, str]:
        """The environment the simulator's output tells a shell to export."""
        exported = {
            "BINGX_BASE_URL": self.base_url,
            "BINGX_API_KEY": account.api_key,
            "BINGX_SECRET_KEY": account.secret_key,
        }
        return environment(**{**exported, **variables})

    def take(self) -> Account:
        """An account no other test of the module uses."""
        account = self.accounts[self.given]
        self.given += 1
        return account

    def requests(self, account: Account, path: str) -> list[str]:
        """The simulator's log lines of ``account``'s requests to ``path``."""
        return [
            line for line in self.log.lines if line.startswith(f"{account.uid} ") and path in line
        ]

    def stop(self, signum: int = signal.SIGINT) -> int:
        self.process.send_signal(signum)
        code = self.process.wait(PATIENCE)
        self.log.finish()
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


def start_simulator(*options: str) -> Simulator:
    process = spawn(["simulate", *options], environment())
    assert process.stdout is not None
    assert process.stderr is not None
    out: list[str] = []
    accounts: list[Account] = []
    base_url = ""
    expected = int(options[options.index("--accounts") + 1]) if "--accounts" in options else 1
    while len(accounts) < expected or not accounts[-1].secret_key:
        line = process.stdout.readline()
        assert line, f"simulate ended: {process.stderr.read()}"
        out.append(line.rstrip("\n"))
        if line.startswith("export BINGX_BASE_URL="):
            base_url = line.split("=", 1)[1].strip()
        elif match := re.match(r"# account \d+ \(UID (\d+)\); positions: ?(.*)", line):
            accounts.append(Account("", "", match.group(1), match.group(2).split()))
        elif line.startswith("export BINGX_API_KEY="):
            accounts[-1].api_key = line.split("=", 1)[1].strip()
        elif line.startswith("export BINGX_SECRET_KEY="):
            accounts[-1].secret_key = line.split("=", 1)[1].strip()
    return Simulator(process, base_url, accounts, out, Lines(process.stderr))


@contextlib.contextmanager
def simulator(*options: str) -> Iterator[Simulator]:
    sim = start_simulator(*options)
    try:
        yield sim
    finally:
        if sim.process.poll() is None:
            sim.stop()


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[Simulator]:
    """One simulator for the module: 40 accounts of 15 positions, one account per test."""
    with simulator("--accounts", "40", "--positions", "15", "--seed", "7") as sim:
        yield sim


@pytest.fixture
def sim(shared_sim: Simulator) -> Simulator:
    return shared_sim


@pytest.fixture
def account(shared_sim: Simulator) -> Account:
    return shared_sim.take()


def open_ids(sim: Simulator, account: Account) -> list[str]:
    listed = run("positions", "--json", env=sim.env(account))
    assert listed.code == 0, listed.err
    return [row["position_id"] for row in json.loads(listed.out)]


# --- the package ------------------------------------------------------------------------------


def test_the_command_runs_from_this_checkout() -> None:
    """The tests' processes import this checkout's bingx_async, not an installed one."""
    done = subprocess.run(
        [sys.executable, "-c", "import bingx_async; print(bingx_async.__file__)"],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(done.stdout.strip()) == ROOT / "bingx_async" / "__init__.py"


def test_the_command_line_lives_in_a_subpackage_of_its_own() -> None:
    """The CLI and the demos are bingx_async._cli; the script and mutation testing follow."""
    package = ROOT / "bingx_async"
    assert not [p.name for p in package.glob("_cli.py")] + [
        p.name for p in package.glob("_demo*.py")
    ]
    modules = sorted(p.name for p in (package / "_cli").glob("_*.py") if p.name != "__init__.py")
    assert {"_demo.py", "_demo_processes.py", "_main.py", "_simulate.py"} <= set(modules)
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["project"]["scripts"] == {"bingx-async": "bingx_async._cli:main"}
    mutated = set(config["tool"]["mutmut"]["only_mutate"])
    demos = {"_demo.py", "_demo_processes.py"}  # the demos' runners: measured by benchmarks
    assert {f"bingx_async/_cli/{name}" for name in modules if name not in demos} <= mutated


# --- simulate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_simulate_prints_what_a_shell_needs_and_stops_cleanly(signum: int) -> None:
    """simulate prints the base URL, export lines and position IDs; a signal ends it, exit 0."""
    with simulator("--accounts", "2", "--positions", "3") as sim:
        exports = [line for line in sim.out if line.startswith("export ")]
        assert [line.split("=")[0] for line in exports] == [
            "export BINGX_BASE_URL",
            *["export BINGX_API_KEY", "export BINGX_SECRET_KEY"] * 2,
        ]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.base_url)
        first, second = sim.accounts
        assert len(set(first.position_ids + second.position_ids)) == 6
        assert open_ids(sim, first) == first.position_ids
        assert sim.stop(signum) == 0
    sim.log.finish()
    assert sim.log.lines[-1] == "simulator stopped"
    assert not [line for line in sim.log.lines if "Traceback" in line]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--accounts", "0"], "--accounts must be between 1 and 100"),
        (["--accounts", "101"], "--accounts must be between 1 and 100"),
        (["--positions", "-1"], "--positions must be between 0 and 1000"),
        (["--positions", "1001"], "--positions must be between 0 and 1000"),
        (["--latency", "-0.1"], "--latency must be between 0 and 60 seconds"),
        (["--latency", "60.5"], "--latency must be between 0 and 60 seconds"),
        (["--port", "-1"], "--port must be between 0 and 65535"),
        (["--port", "65536"], "--port must be between 0 and 65535"),
    ],
)
def test_simulate_refuses_sizes_out_of_range(options: list[str], message: str) -> None:
    """Bad sizes are bad input: exit 2, the range named, nothing served."""
    result = run("simulate", *options)
    assert (result.code, result.out) == (2, "")
    assert result.err_lines == [f"{ERROR} {message}"]


@pytest.mark.parametrize(
    ("accounts", "positions"), [(100, 0), (1, 1000)], ids=["100-accounts", "1000-positions"]
)
def test_simulate_serves_the_largest_and_smallest_sizes(accounts: int, positions: int) -> None:
    with simulator("--accounts", str(accounts), "--positions", str(positions)) as sim:
        assert len(sim.accounts) == accounts
        assert [len(account.position_ids) for account in sim.accounts] == [positions] * accounts
        assert sim.stop() == 0


def test_simulate_serves_on_the_port_given_with_numbered_accounts_of_every_symbol() -> None:
    port = free_port()
    with simulator("--port", str(port), "--accounts", "2", "--positions", "3") as sim:
        assert sim.base_url == f"http://127.0.0.1:{port}"
        headers = [line.split(" (UID")[0] for line in sim.out if line.startswith("# account")]
        assert headers == ["# account 1", "# account 2"]
        listed = run("positions", "--json", env=sim.env(sim.accounts[0]))
        symbols = sorted(row["symbol"] for row in json.loads(listed.out))
    assert symbols == ["BTC-USDT", "ETH-USDT", "SOL-USDT"]


def test_simulate_with_a_seed_serves_the_same_accounts_and_positions_each_time() -> None:
    runs = []
    for _ in range(2):
        with simulator("--seed", "7", "--positions", "2") as sim:
            runs.append([(a.uid, a.api_key, a.position_ids) for a in sim.accounts])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("latency", ["0", "60"])
def test_simulate_takes_the_smallest_and_largest_latency(latency: str) -> None:
    with simulator("--latency", latency) as sim:
        assert len(sim.accounts) == 1
        assert sim.stop() == 0


def test_simulate_logs_one_line_per_request_without_its_signature() -> None:
    """Each request answered is one line on stderr: account, method, path, position ID (if
    any), status and code; an unsigned request has no account."""
    with simulator("--positions", "1") as sim:
        account = sim.accounts[0]
        position = account.position_ids[0]
        result = run("close", position, env=sim.env(account))
        assert result.code == 0, result.err
        close = sim.log.wait_for(re.escape(CLOSE_PATH))
        time_lines = [line for line in sim.log.lines if "/server/time" in line]
    assert close == [f"{account.uid} POST {CLOSE_PATH} positionId={position} -> 200 code 0"]
    assert time_lines[0] == "- GET /openApi/swap/v2/server/time -> 200 code 0"
    assert not [line for line in sim.log.lines if "signature" in line]


def test_simulate_output_is_a_shell_script(tmp_path: Path) -> None:
    """Pasted into a shell, simulate's output sets the variables the command reads."""
    with simulator("--positions", "2") as sim:
        script = tmp_path / "env.sh"
        script.write_text("\n".join(sim.out) + "\n")
        shell = subprocess.run(  # noqa: S603 - the shell a user would paste into
            ["sh", "-c", f'. "{script}" && echo "$BINGX_BASE_URL $BINGX_API_KEY"'],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        )
        assert shell.stdout.split() == [sim.base_url, sim.accounts[0].api_key]


# --- close: the open positions first --------------------------------------------------------


def test_close_lists_open_positions_once_and_sends_only_for_open_ids(
    sim: Simulator, account: Account
) -> None:
    """Stale IDs are "not open" without a request; one listing, one close per open ID."""
    first, second = account.position_ids[:2]
    result = run("close", first, "123", second, "00123", env=sim.env(account))
    assert result.code == 0, result.err
    by_id = {line.split()[0]: line.split()[1] for line in result.out_lines}
    assert by_id == {first: "closed", "123": "not_open", second: "closed"}
    assert len(sim.requests(account, POSITIONS_PATH)) == 1
    closes = sim.requests(account, CLOSE_PATH)
    assert sorted(re.findall(r"positionId=(\d+)", " ".join(closes))) == sorted([first, second])
    assert "not open, nothing sent (1): 123" in result.err_lines


@pytest.mark.parametrize(
    "raw",
    [str(2**63), "1" * 25, "-5", "0", "1e5"],
    ids=["2**63", "25-digits", "negative", "zero", "float"],
)
def test_close_refuses_ids_out_of_range_before_sending_anything(
    sim: Simulator, account: Account, raw: str
) -> None:
    """An ID that is not a positive 64-bit integer is bad input: exit 2, no request at all."""
    before = len(sim.log.lines)
    result = run("close", account.position_ids[0], raw, env=sim.env(account))
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith(ERROR)
    assert result.out == ""
    time.sleep(0.05)
    assert sim.log.lines[before:] == []


def test_close_takes_the_largest_64_bit_id(sim: Simulator, account: Account) -> None:
    """2**63 - 1 is an ID BingX could have: looked up, reported not open, exit 0."""
    result = run("close", str(2**63 - 1), env=sim.env(account))
    assert result.code == 0
    assert result.out_lines == [
        f"{2**63 - 1}  not_open         not among the open positions: nothing sent"
    ]


# --- JSON ---------------------------------------------------------------------------------------


def documented_row_keys() -> list[str]:
    """The keys docs/cli.md gives for a row of close --json, in its table's order."""
    text = DOCS_CLI.read_text()
    section = text.split("### JSON rows", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)


def test_close_json_rows_have_one_documented_schema(sim: Simulator, account: Account) -> None:
    """Every row has the same keys, the library's names, as documented; failures say
    whether the close may have executed."""
    position_id = account.position_ids[0]
    result = run("close", "--json", position_id, "42", env=sim.env(account))
    rows = json.loads(result.out)
    assert result.code == 0
    assert [list(row) for row in rows] == [list(ROW_KEYS)] * 2
    assert list(ROW_KEYS) == documented_row_keys()
    closed, stale = rows
    assert closed["status"] == "closed"
    assert closed["orig_qty"] == "0.01"
    assert closed["symbol"] == "BTC-USDT"
    assert closed["may_have_executed"] is True
    # What BingX answered, as the library names it; nothing confirmed from the history.
    assert (closed["side"], closed["type"], closed["position_side"]) == ("Ask", "MARKET", "Long")
    assert closed["position_id"] == position_id
    assert str(closed["order_id"]).isdigit()
    assert (closed["confirmed_from_history"], closed["avg_close_price"], closed["close_time"]) == (
        False,
        None,
        None,
    )
    assert (stale["status"], stale["may_have_executed"], stale["order_id"]) == (
        "not_open",
        False,
        None,
    )


def test_close_jsonl_prints_each_outcome_as_soon_as_it_is_known(
    sim: Simulator, account: Account
) -> None:
    """With --jsonl, the first rows arrive while later closes still wait for the budget."""
    process = spawn(["close", "--jsonl", *account.position_ids[:8]], sim.env(account))
    out, err = Lines(process.stdout), Lines(process.stderr)
    out.wait_for("closed", count=5)
    assert process.poll() is None  # three closes wait for the next second's budget
    assert process.wait(PATIENCE) == 0
    rows = [json.loads(line) for line in out.finish().splitlines()]
    err.finish()
    assert [list(row) for row in rows] == [list(ROW_KEYS)] * 8
    assert {row["status"] for row in rows} == {"closed"}


# --- signals ------------------------------------------------------------------------------------


def summary(err: str) -> dict[str, list[str]]:
    """The report's groups on stderr: label -> IDs."""
    groups = {}
    for line in err.splitlines():
        if match := re.fullmatch(r"([a-z ,]+) \((\d+)\): ([\d ]+)", line):
            ids = match.group(3).split()
            assert len(ids) == int(match.group(2))
            groups[match.group(1)] = ids
    return groups


@pytest.mark.parametrize("output", ["text", "--json", "--jsonl"])
def test_sigterm_during_close_reports_every_outcome_then_exits_143(
    sim: Simulator, account: Account, output: str
) -> None:
    """SIGTERM: what closed, what was never sent (safe to run again), each ID once, then
    "interrupted" once and exit 143."""
    ids = account.position_ids[:12]
    options = [] if output == "text" else [output]
    process = spawn(["close", "-v", *options, *ids], sim.env(account))
    out, err = Lines(process.stdout), Lines(process.stderr)
    # Five closes fit the first second's budget; the other seven wait for the next one.
    err.wait_for(r"HTTP Request: POST .*closePosition", count=5)
    if output != "--json":
        out.wait_for(r"closed", count=5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(PATIENCE) == 143
    printed, said = out.finish(), err.finish()
    if output == "text":
        statuses = {line.split()[0]: line.split()[1] for line in printed.splitlines()}
        assert {
            line.split(maxsplit=1)[1] for line in printed.splitlines() if "not_sent" in line
        } == {"not_sent         interrupted before its close was sent"}
    else:
        rows = (
            json.loads(printed)
            if output == "--json"
            else [json.loads(line) for line in printed.splitlines()]
        )
        assert [list(row) for row in rows] == [list(ROW_KEYS)] * 12
        statuses = {row["position_id"]: row["status"] for row in rows}
        # Only what was never sent is known not to have executed.
        assert [row["may_have_executed"] for row in rows] == [
            row["status"] != "not_sent" for row in rows
        ]
    assert sorted(statuses) == sorted(ids)
    assert len(printed.splitlines()) == 12 or output == "--json"
    assert set(statuses.values()) <= {"closed", "unknown", "not_sent"}
    groups = summary(said)
    assert groups["not sent, safe to run again"] == [i for i in ids if statuses[i] == "not_sent"]
    assert len(groups["not sent, safe to run again"]) >= 5
    assert sorted(i for group in groups.values() for i in group) == sorted(ids)
    assert said.count("interrupted") == 1
    assert f"{ERROR} interrupted by SIGTERM" in said.splitlines()
    assert "may or may not" not in said
    # What was not sent is still open: safe to run again, and running again closes it.
    not_sent = groups["not sent, safe to run again"]
    assert set(not_sent) <= set(open_ids(sim, account))


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"]
)
def test_a_signal_while_closes_are_on_the_wire_reports_them_as_unknown(
    signum: int, code: int
) -> None:
    """Closes sent but unanswered are "sent, outcome unknown", never "not sent"."""
    with simulator("--positions", "3", "--latency", "0.3") as slow:
        (account,) = slow.accounts
        process = spawn(["close", "-v", *account.position_ids], slow.env(account))
        out, err = Lines(process.stdout), Lines(process.stderr)
        err.wait_for(r"sending POST /openApi/swap/v1/trade/closePosition", count=3)
        process.send_signal(signum)
        assert process.wait(PATIENCE) == code
        printed, said = out.finish(), err.finish()
    assert sorted(line.split()[0] for line in printed.splitlines()) == sorted(account.position_ids)
    assert {line.split(maxsplit=1)[1] for line in printed.splitlines()} == {
        "unknown          interrupted while its close was on the wire: check the position"
    }
    assert summary(said) == {"sent, outcome unknown, check these": account.position_ids}
    assert said.count("interrupted") == 1


# --- close-all's question, on a terminal ------------------------------------------------------


@dataclass
class Terminal:
    """A process whose controlling terminal is a pseudo-terminal this test types into."""

    process: subprocess.Popen[bytes]
    controller: int
    seen: bytes = b""

    def read_until(self, text: bytes) -> bytes:
        deadline = time.monotonic() + PATIENCE
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r} in {self.seen!r}"
            ready, _, _ = select.select([self.controller], [], [], left)
            if ready:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.controller, 4096)
        return self.seen

    def type(self, keys: bytes) -> None:
        os.write(self.controller, keys)

    def wait(self) -> int:
        code = self.process.wait(PATIENCE)
        with contextlib.suppress(OSError):
            while ready := select.select([self.controller], [], [], 0.1)[0]:
                chunk = os.read(ready[0], 4096)
                if not chunk:
                    break
                self.seen += chunk
        return code


@contextlib.contextmanager
def on_a_terminal(argv: list[str], env: dict[str, str]) -> Iterator[Terminal]:
    controller, terminal = pty.openpty()

    def take_the_terminal() -> None:
        os.setsid()
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(  # noqa: S603 - this interpreter and the command's own arguments
        command(*argv),
        cwd=ROOT,
        env=env,
        stdin=terminal,
        stdout=subprocess.PIPE,
        stderr=terminal,
        preexec_fn=take_the_terminal,
    )
    os.close(terminal)
    try:
        yield Terminal(process, controller)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
        os.close(controller)


PROMPT = b"Close 15 open positions at market (5 BTC-USDT, 5 ETH-USDT, 5 SOL-USDT)? [y/N] "


def test_close_all_asks_how_many_on_which_symbols_and_yes_closes_them(
    sim: Simulator, account: Account
) -> None:
    """The question names the count and the symbols; "y" closes every position."""
    with on_a_terminal(["close-all"], sim.env(account)) as terminal:
        terminal.read_until(b"[y/N] ")
        assert PROMPT in terminal.seen
        terminal.type(b"y\n")
        assert terminal.wait() == 0
    assert open_ids(sim, account) == []
    assert len(sim.requests(account, "closeAllPositions")) == 1


@pytest.mark.parametrize(
    ("keys", "code"), [(b"\x03", 130), (b"\x04", 130), (b"n\n", 0)], ids=["ctrl-c", "eof", "no"]
)
def test_close_all_stops_at_once_unless_the_answer_is_yes(
    sim: Simulator, account: Account, keys: bytes, code: int
) -> None:
    """Ctrl+C or end of input at the question exits 130 at once; "n" closes nothing, exit 0."""
    with on_a_terminal(["close-all"], sim.env(account)) as terminal:
        terminal.read_until(b"[y/N] ")
        started = time.monotonic()
        terminal.type(keys)
        assert terminal.wait() == code
        assert time.monotonic() - started < 2.0
    assert sim.requests(account, "closeAllPositions") == []
    assert len(open_ids(sim, account)) == 15
    if code == 130:
        assert terminal.seen.count(b"interrupted") == 1


# --- shared limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_an_unreachable_shared_limits_redis_stops_the_command_with_exit_6(
    sim: Simulator, account: Account, scheme: str
) -> None:
    """A Redis that cannot be reached: exit 6, one line saying so, nothing sent. Over TLS
    too, with the options of TLS connections (not a usage error)."""
    options = "?ssl_cert_reqs=none" if scheme == "rediss" else ""
    url = f"{scheme}://127.0.0.1:{free_port()}/0{options}"
    result = run("close", "--shared-limits", url, account.position_ids[0], env=sim.env(account))
    assert result.code == 6
    assert result.err_lines[-1].startswith(f"{ERROR} --shared-limits")
    assert "--on-outage local" in result.err_lines[-1]
    assert sim.requests(account, CLOSE_PATH) == []
    assert sim.requests(account, POSITIONS_PATH) == []


def test_a_wrong_redis_password_stops_the_command_with_exit_6(
    sim: Simulator, account: Account, redis_url: str
) -> None:
    """A Redis that refuses the password: exit 6, and the password is never printed."""
    url = redis_url.replace("redis://", "redis://operator:not-the-password@")
    result = run("positions", "--shared-limits", url, env=sim.env(account))
    assert result.code == 6
    assert "not-the-password" not in result.out + result.err
    assert sim.requests(account, POSITIONS_PATH) == []


def test_on_outage_local_goes_on_and_warns_without_verbose(
    sim: Simulator, account: Account
) -> None:
    """--on-outage local: the close goes through, and the warning reaches stderr without -v."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    position_id = account.position_ids[0]
    result = run(
        "close", "--shared-limits", url, "--on-outage", "local", position_id, env=sim.env(account)
    )
    assert result.code == 0, result.err
    assert result.out_lines[0].startswith(f"{position_id}  closed")
    warnings = [line for line in result.err_lines if line.startswith("bingx-async: warning:")]
    assert warnings
    assert "shared limits" in warnings[0]


# --- exit codes -------------------------------------------------------------------------------

SHARED_LIMITS = "--shared-limits (or BINGX_SHARED_LIMITS)"
#: URLs that cannot name a Redis, and what the command says of each.
BAD_REDIS_URLS = {
    "bad-port": (
        "redis://127.0.0.1:99999/0",
        f"{SHARED_LIMITS} is not a usable Redis URL: Port out of range 0-65535",
    ),
    "bad-ipv6": ("redis://[::1/0", f"{SHARED_LIMITS} is not a usable Redis URL: Invalid IPv6 URL"),
    "unknown-options": (
        "redis://127.0.0.1:6379/0?colour=blue&size=2",
        f"{SHARED_LIMITS} has an option Redis does not know: colour, size",
    ),
    "not-redis": (
        "http://cache:6379",
        f"{SHARED_LIMITS} must be a redis://, rediss:// or unix:// URL (got a URL with scheme "
        "'http')",
    ),
}


@pytest.mark.parametrize(("url", "message"), BAD_REDIS_URLS.values(), ids=BAD_REDIS_URLS.keys())
def test_a_malformed_shared_limits_url_is_a_usage_error(
    sim: Simulator, account: Account, url: str, message: str
) -> None:
    """A --shared-limits URL that cannot name a Redis: exit 2, one line that says what is
    wrong with it, nothing sent."""
    result = run("close", "1", "--shared-limits", url, env=sim.env(account))
    assert result.code == 2
    assert result.err_lines == [f"{ERROR} {message}"]
    assert sim.requests(account, "") == []


@pytest.mark.parametrize("argv", [["server-time"], ["positions"], ["close-all", "--yes"]])
def test_every_command_refuses_a_malformed_shared_limits_url(
    sim: Simulator, account: Account, argv: list[str]
) -> None:
    url, message = BAD_REDIS_URLS["bad-port"]
    result = run(*argv, "--shared-limits", url, env=sim.env(account))
    assert (result.code, result.err_lines) == (2, [f"{ERROR} {message}"])
    assert sim.requests(account, "") == []


@pytest.mark.parametrize("where", ["option", "environment"])
def test_a_plain_http_remote_base_url_is_a_usage_error(where: str) -> None:
    """Plain http:// to another machine is refused as bad input (2), before any request."""
    url = "http://bingx.example.com"
    env = environment(BINGX_API_KEY="k", BINGX_SECRET_KEY="s")
    if where == "option":
        result = run("close", "--base-url", url, "1", env=env)
    else:
        env["BINGX_BASE_URL"] = url
        result = run("close", "1", env=env)
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert "plain http://" in result.err_lines[0]


def test_exit_1_when_bingx_cannot_be_reached() -> None:
    env = environment(BINGX_API_KEY="k", BINGX_SECRET_KEY="s")
    result = run(
        "positions", "--base-url", f"http://127.0.0.1:{free_port()}", "--retries", "1", env=env
    )
    assert result.code == 1
    assert "could not connect" in result.err


def test_exit_3_when_the_keys_are_wrong(sim: Simulator, account: Account) -> None:
    env = sim.env(account, BINGX_SECRET_KEY="not-the-secret")
    result = run("positions", env=env)
    assert result.code == 3
    assert "not-the-secret" not in result.out + result.err


def test_exit_3_when_the_keys_are_missing(sim: Simulator) -> None:
    result = run("close", "1", env=environment(BINGX_BASE_URL=sim.base_url))
    assert result.code == 3
    assert "BINGX_API_KEY and BINGX_SECRET_KEY" in result.err


def documented_exit_codes() -> dict[int, str]:
    section = DOCS_CLI.read_text().split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(code): text for code, text in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M)}


def test_one_exit_code_table_in_the_cli_docs_that_the_readme_links_to() -> None:
    """docs/cli.md has the one table, every code this module tests; the README links to it."""
    assert set(documented_exit_codes()) == {0, 1, 2, 3, 4, 5, 6, 130, 143}
    readme = (ROOT / "README.md").read_text()
    assert "docs/cli.md#exit-codes" in readme
    assert not re.search(r"^\| *130 *\|", readme, flags=re.MULTILINE)
