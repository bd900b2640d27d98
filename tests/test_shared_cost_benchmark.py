"""``benchmarks/shared_cost.py`` end to end, in its smallest configuration."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .redis_server import find_redis_server

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "shared_cost.py"


def _skip_without_requirements() -> None:
    if importlib.util.find_spec("limits") is None:
        pytest.skip("limits not installed (pip install --group bench)")
    if find_redis_server() is None:
        pytest.skip("redis-server not installed; apt-get install redis-server")
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py not installed; pip install -e '.[redis]'")


def test_shared_cost_prints_every_figure_and_counts_one_command_per_limits_hit() -> None:
    """20 closes, 5 at a time, one run: every variant's CPU per close, the comparisons with
    their goals, and Redis commands per close, of which one moving-window hit is exactly one
    EVALSHA sent (the commands its script runs counted apart)."""
    _skip_without_requirements()
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(  # noqa: S603 - this interpreter, a script of the repository
        [sys.executable, str(SCRIPT), "--closes", "20", "--concurrency", "5", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout
    assert "  limits     sent  1.00  (evalsha 1.00)\n" in output
    assert re.search(
        r"in scripts 4\.00 +\(expire 1\.00, lindex 1\.00, lpush 1\.00, ltrim 1", output
    )
    sent = re.search(
        r"^  redis +sent +(\d+\.\d\d) +\(.*evalsha.*\)  goal <= 2: (NOT )?met$", output, re.M
    )
    assert sent is not None, output
    assert float(sent[1]) > 0
    for variant in ("plain", "limits", "in-process", "redis"):
        assert re.search(rf"^  {variant} +\d+\.\d{{3}} ms median, \d+\.\d{{3}} min$", output, re.M)
    assert re.search(
        r"^  redis - in-process: [+-]\d+\.\d{3} ms median, .* goal <= 0\.35 ms: ", output, re.M
    )
    assert re.search(r"^  limits - plain: [+-]\d+\.\d{3} ms median", output, re.M)
    assert re.search(r"^  in-process / plain: \d+\.\d\d median, .* goal <= 1\.3: ", output, re.M)
