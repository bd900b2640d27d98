"""Run a script of the package in a fresh interpreter that cannot import ``websockets``, as
when the ``stream`` extra is not installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bingx_async

#: The first line of every such script: ``import websockets`` then raises ImportError.
_BLOCK = 'import sys\nsys.modules["websockets"] = None  # as if it were not installed\n'


def run_without_websockets(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` run by this interpreter, on this copy of the package, without websockets."""
    return subprocess.run(  # noqa: S603 - our own interpreter, our own code
        [sys.executable, "-c", _BLOCK + script],
        cwd=Path(bingx_async.__file__).parent.parent,  # this copy of the package
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
