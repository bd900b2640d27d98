"""``benchmarks/fills.py`` end to end, small: 10 positions (about 1 s of closes at 5/s, in real
time over loopback HTTP and WebSocket) and a 0.2 s idle stream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "fills.py"

pytestmark = pytest.mark.usefixtures("websockets_installed")


def run_script(*options: str) -> str:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(  # noqa: S603 - this interpreter, a script of the repository
        [sys.executable, str(SCRIPT), "--positions", "10", "--idle", "0.2", *options],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def figure(output: str, pattern: str) -> re.Match[str]:
    found = re.search(rf"^{pattern}$", output, re.M)
    assert found is not None, f"no line matching {pattern!r} in:\n{output}"
    return found


def test_fills_benchmark_prints_every_figure() -> None:
    """Every figure on its line: all fills received and equal to the simulator's, one order
    query per fill from REST, no rate-limit or other error answer, one stream connection,
    the closes' span against the 1 s minimum, the fill delay and the idle stream's memory."""
    output = run_script()
    figure(
        output,
        r"10 positions on one account, close_positions\(wait_fill=True\); "
        r"stream drops 0, events delayed 0 s",
    )
    figure(output, r"closed: 10/10, wall \d+\.\d{3} s")
    figure(output, r"fills received: 10/10")
    figure(output, r"fills equal to the simulator's: 10/10")
    sources = figure(output, r"fills by source: stream (\d+), rest (\d+), none 0")
    assert int(sources[1]) + int(sources[2]) == 10
    figure(output, rf"order queries sent: {sources[2]}")
    figure(
        output,
        r"rest fills the stream pushed on the connection open when their close arrived: \d+",
    )
    figure(
        output,
        rf"REST requests: closePosition 10, listen key POST 1 PUT 0 DELETE 1, server time 1, "
        rf"order query {sources[2]}, other 0",
    )
    figure(output, r"rate-limit answers \(100409, 100410, 109429\): 0")
    figure(output, r"other error answers: none")
    figure(output, r"stream: connections 1, reconnects 0, drops made 0 \(connections cut 0\)")
    span = figure(
        output,
        r"close span at the simulator: (\d+\.\d{3}) s, minimum 1\.000 s, ratio (\d+\.\d{3})",
    )
    assert float(span[2]) == pytest.approx(float(span[1]), abs=0.001)
    assert 0.9 < float(span[1]) < 10
    delay = figure(
        output,
        rf"fill delay, stream push to close returning \({sources[1]} fills\): median "
        r"(\d+\.\d\d) ms, p90 (\d+\.\d\d) ms, max (\d+\.\d\d) ms",
    )
    assert float(delay[1]) <= float(delay[2]) <= float(delay[3])
    memory = figure(
        output,
        r"idle stream memory \(0\.2 s open, simulator in a child process\): tracemalloc "
        r"(-?\d+\.\d) KiB in (-?\d+) blocks \(.*bingx_async \d+\.\d.*\); RSS ([+-]\d+ KiB|n/a)",
    )
    assert float(memory[1]) > 0
    assert int(memory[2]) > 0


def test_fills_benchmark_with_a_stream_drop_prints_json() -> None:
    """``--drops 1 --json``: the stream is cut once mid-run; still every fill received and
    equal to the simulator's, as many order queries as fills from REST, no rate-limit
    answer."""
    figures = json.loads(run_script("--drops", "1", "--json"))
    closes = figures["closes"]
    assert closes["closed"] == closes["fills_received"] == closes["fills_equal"] == 10
    sources = closes["fills_by_source"]
    assert sources["stream"] + sources["rest"] == 10
    assert sources["none"] == 0
    assert closes["order_queries"] == closes["requests"]["order_query"] == sources["rest"]
    assert 0 <= closes["rest_fills_pushed_on_their_connection"] <= sources["rest"]
    assert closes["rate_limit_answers"] == 0
    assert closes["other_error_answers"] == {}
    assert closes["requests"]["close"] == 10
    assert closes["requests"]["other"] == {}
    assert closes["drops_made"] == closes["connections_cut"] == 1
    assert closes["event_delay_s"] == 0.2
    # The reconnect may come after the last close, and the stream then closes unreconnected.
    assert closes["reconnects"] in (0, 1)
    assert closes["minimum_s"] == 1.0
    assert closes["fill_delay"]["count"] == sources["stream"]
    memory = figures["idle_stream"]
    assert memory["idle_s"] == 0.2
    assert memory["tracemalloc_kib"] > 0
    assert memory["blocks"] > 0
