"""``python -m bingx_async`` as a process of its own, and mutation testing through it.

mutmut's first pass (``MUTANT_UNDER_TEST=stats``) notes which functions each test runs, but
only in the test's own process: the command's processes append theirs to a file
(:data:`NOTES`), which :func:`hand_back_notes` adds to the test's after its call. mutmut
collects a test's notes before its fixtures are torn down, so they must be handed back by
then: notes added later would be counted as the next test's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ROOT", "Run", "command", "hand_back_notes", "start_noting", "stop_noting"]

#: The checkout (mutmut's copy of it, under mutmut) whose bingx_async the processes run.
ROOT = Path(__file__).resolve().parent.parent
#: The environment variable naming the file the command's processes write their notes to.
NOTES = "CLI_TEST_MUTMUT_NOTES"

_RELAY = """
import atexit, json, os, runpy, sys
from mutmut.state import state
def _hand_back():
    if os.environ.get("CLI_TEST_MUTMUT_NOTES"):
        with open(os.environ["CLI_TEST_MUTMUT_NOTES"], "a") as notes:
            notes.write(json.dumps(sorted(state()._stats)) + "\\n")
atexit.register(_hand_back)
sys.argv[0] = "bingx-async"
runpy.run_module("bingx_async", run_name="__main__", alter_sys=True)
"""


def _noting() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


def command(*argv: str) -> list[str]:
    """``python -m bingx_async argv`` (the module the ``bingx-async`` script runs)."""
    if _noting():
        return [sys.executable, "-c", _RELAY, *argv]
    return [sys.executable, "-m", "bingx_async", *argv]


def start_noting() -> None:
    """Under mutmut's first pass, give the processes the session's notes file."""
    if _noting():
        os.environ[NOTES] = os.path.join(tempfile.mkdtemp(prefix="bingx-async-mutmut-"), "notes")


def hand_back_notes() -> None:
    """Add what the processes noted since the last call to this test's notes."""
    path = os.environ.get(NOTES)
    if not path or not _noting():
        return
    from mutmut.state import state  # type: ignore[import-not-found, unused-ignore]

    taken = Path(f"{path}.taken")
    try:
        os.replace(path, taken)  # a process that ends from now on starts a new file
    except FileNotFoundError:
        return
    for line in taken.read_text().splitlines():
        state()._stats.update(json.loads(line))
    taken.unlink()


def stop_noting() -> None:
    path = os.environ.pop(NOTES, None)
    if path:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


@dataclass(frozen=True)
class Run:
    """One run of the command: its exit code and what it printed."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    @property
    def out_lines(self) -> list[str]:
        return self.out.splitlines()
