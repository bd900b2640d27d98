"""Run hand-made mutants through the tests: mutation testing for code mutmut cannot mutate.

mutmut leaves string constants alone, so the Lua scripts (Python strings run by Redis) get
mutants written by hand in a list (``mutants.toml`` here): each replaces one exact piece of
text, which must occur exactly once in its file, or the mutant is stale.

    python -m tests.lua_mutants.run [--jobs N] [--only ID ...] [--list FILE] [TEST ...]

Each of N workers copies the package, the tests and what pytest needs (``pyproject.toml`` and
``[tool.mutmut] also_copy``) to a temporary directory once. There the unmutated copy must
pass the test selection first (the baseline); then each mutant is applied in turn, pytest
runs (``-x``, every test under ``--timeout``), and the file is restored. A mutant is killed
when pytest fails, a timeout included, and survives when it passes. The Redis tests start
their own ``redis-server`` on a free port, so workers do not share a server.

The selection is the TEST arguments if given, else the list's ``tests``, else the Redis test
files. Exit status: 0 (the table is a report, whatever the score), 1 if the baseline fails
or a mutant could not be run, 2 if a mutant is stale or the list is malformed.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import glob
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Mutant", "MutantList", "load", "main"]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_LIST = Path(__file__).with_name("mutants.toml")
DEFAULT_TESTS = ("tests/test_shared*.py", "tests/test_redis*.py")
#: Copied whatever ``[tool.mutmut] also_copy`` says.
COPIED = ("bingx_async", "tests", "pyproject.toml")
PYTEST = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")
#: Seconds a run interrupted at its limit has to end (and stop its Redis servers) before it
#: is killed.
GRACE = 10.0

EXIT_BASELINE_FAILED = EXIT_ERROR = 1
EXIT_STALE = 2


class ListError(Exception):
    """The mutant list is malformed, or a mutant is stale."""


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    find: str
    replace: str
    description: str
    equivalent: str | None = None

    def apply(self, text: str) -> str:
        return text.replace(self.find, self.replace, 1)


@dataclass(frozen=True)
class MutantList:
    mutants: tuple[Mutant, ...]
    tests: tuple[str, ...]


_REQUIRED = ("id", "file", "find", "replace", "description")
_OPTIONAL = ("equivalent",)


def load(path: Path) -> MutantList:
    """Read a mutant list; :class:`ListError` names whatever is wrong with it."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ListError(f"{path}: {error}") from error
    unknown = set(data) - {"tests", "mutant"}
    if unknown:
        raise ListError(f"{path}: unknown top-level keys {sorted(unknown)}")
    tests = data.get("tests", list(DEFAULT_TESTS))
    if not isinstance(tests, list) or not all(isinstance(t, str) for t in tests) or not tests:
        raise ListError(f"{path}: `tests` must be a non-empty list of strings")
    mutants: list[Mutant] = []
    seen: set[str] = set()
    for number, entry in enumerate(data.get("mutant", []), start=1):
        where = f"{path}: mutant #{number}"
        if not isinstance(entry, dict):
            raise ListError(f"{where}: not a table")
        missing = [key for key in _REQUIRED if key not in entry]
        unknown = set(entry) - {*_REQUIRED, *_OPTIONAL}
        if missing or unknown:
            raise ListError(f"{where}: missing keys {missing}, unknown keys {sorted(unknown)}")
        if not all(isinstance(value, str) for value in entry.values()):
            raise ListError(f"{where}: every value must be a string")
        mutant = Mutant(**entry)
        if mutant.id in seen:
            raise ListError(f"{where}: id {mutant.id!r} used twice")
        if mutant.find == mutant.replace:
            raise ListError(f"{where} ({mutant.id}): `replace` is the text it replaces")
        seen.add(mutant.id)
        mutants.append(mutant)
    return MutantList(tuple(mutants), tuple(tests))


def copied_paths(root: Path) -> tuple[str, ...]:
    """What each worker copies: the package, the tests, pyproject.toml and mutmut's also_copy."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    also = config.get("tool", {}).get("mutmut", {}).get("also_copy", [])
    copied = tuple(dict.fromkeys(path.rstrip("/") for path in (*COPIED, *also)))
    missing = [path for path in copied if not (root / path).exists()]
    if missing:
        raise ListError(f"{missing} (to be copied for pytest) missing from {root}")
    return copied


def stale(mutants: Sequence[Mutant], root: Path, copied: Sequence[str]) -> list[str]:
    """Why each stale mutant is stale: its file is missing or not copied, or its text does
    not occur exactly once."""
    problems = []
    for mutant in mutants:
        path = root / mutant.file
        if not any(Path(mutant.file).is_relative_to(top) for top in copied):
            problems.append(f"{mutant.id}: {mutant.file} is not in the copied paths {copied}")
        elif not path.is_file():
            problems.append(f"{mutant.id}: {mutant.file} does not exist")
        else:
            count = path.read_text().count(mutant.find)
            if count != 1:
                problems.append(
                    f"{mutant.id}: {mutant.find!r} occurs {count} times in {mutant.file}"
                    " (it must occur exactly once)"
                )
    return problems


def expand(selection: Sequence[str], root: Path) -> list[str]:
    """The selection with its globs expanded from the root (a glob that matches nothing is an
    error); node ids and options pass unchanged."""
    expanded: list[str] = []
    for item in selection:
        if glob.has_magic(item) and not item.startswith("-") and "::" not in item:
            matches = sorted(glob.glob(item, root_dir=root))
            if not matches:
                raise ListError(f"test selection {item!r} matches no file")
            expanded.extend(matches)
        else:
            expanded.append(item)
    return expanded


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    result: str  # killed, survived, equivalent
    seconds: float = 0.0
    detail: str = ""


# The node id runs to " - " (the message) or the end of the line: a parameter's id may hold
# spaces.
_FAILED = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", re.MULTILINE)


def _culprit(output: str, exit_code: int) -> str:
    """The first test that failed, as pytest's summary names it, and whether a test timed out
    (in its call or its teardown)."""
    found = _FAILED.search(output)
    if found is None:
        return f"pytest exit {exit_code}"
    test = found.group(1).rsplit("::", 1)[-1]
    return f"{test} (timeout)" if "from pytest-timeout" in output else test


class Worker:
    """A copy of the repository in a temporary directory, where pytest runs one mutant at a
    time."""

    def __init__(self, index: int, root: Path, copied: Sequence[str]) -> None:
        self.index = index
        self.dir = Path(tempfile.mkdtemp(prefix=f"mutants-{index}-"))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
        for name in copied:
            source = root / name
            if source.is_dir():
                shutil.copytree(source, self.dir / name, ignore=ignore)
            else:
                shutil.copy2(source, self.dir / name)
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()
        self.stopping = False

    def pytest(
        self, selection: Sequence[str], timeout: float, limit: float
    ) -> tuple[int | None, str]:
        """Run pytest in the copy: its exit status and output. A run past ``limit`` seconds
        is interrupted, and its status is ``None``."""
        # Hypothesis replays the failures it saved: one mutant's must not reach the next.
        shutil.rmtree(self.dir / ".hypothesis", ignore_errors=True)
        env = dict(os.environ)
        # No bytecode cache: a mutant and the original text can have the same size and
        # modification second, which would let a stale .pyc be taken for the file.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.dir), env.get("PYTHONPATH")]))
        command = [sys.executable, *PYTEST, f"--timeout={timeout:g}", *selection]
        with self._lock:
            if self.stopping:
                return None, "stopped"
            # A session of its own: the run and its redis-servers can be ended together.
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and tests
                command,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        process = self._process
        try:
            output, _ = process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.end()
            output, _ = process.communicate()
            return None, output + f"\n(run interrupted after {limit:g} s)"
        finally:
            with self._lock:
                self._process = None
        return process.returncode, output

    def end(self) -> None:
        """Interrupt the running pytest and its redis-servers (SIGINT lets fixtures clean up),
        then kill whatever is left after a grace period."""
        with self._lock:
            process = self._process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=GRACE)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def run(
        self, mutant: Mutant, selection: Sequence[str], timeout: float, limit: float
    ) -> Outcome:
        path = self.dir / mutant.file
        original = path.read_text()
        path.write_text(mutant.apply(original))
        start = time.monotonic()
        try:
            code, output = self.pytest(selection, timeout, limit)
        finally:
            path.write_text(original)
        seconds = time.monotonic() - start
        if code == 0:
            return Outcome(mutant, "survived", seconds)
        if code is None:
            return Outcome(mutant, "killed", seconds, f"run longer than {limit:g} s")
        return Outcome(mutant, "killed", seconds, _culprit(output, code))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _in_threads(workers: Sequence[Worker], job: Callable[[Worker], None]) -> None:
    """Run ``job(worker)`` in one thread per worker; Ctrl-C ends every pytest run."""
    threads = [threading.Thread(target=job, args=(worker,), daemon=True) for worker in workers]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        for worker in workers:
            worker.stopping = True
            worker.end()
        for thread in threads:
            thread.join()
        raise


def print_table(outcomes: Sequence[Outcome]) -> None:
    rows = [("id", "description", "result", "seconds", "killed by / why equivalent")]
    for outcome in outcomes:
        seconds = "" if outcome.result == "equivalent" else f"{outcome.seconds:.1f}"
        rows.append(
            (outcome.mutant.id, outcome.mutant.description, outcome.result, seconds, outcome.detail)
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for i, row in enumerate(rows):
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].ljust(widths[2]),
            row[3].rjust(widths[3]),
            row[4],
        ]
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in [*widths, len(row[4])]))


def summary(outcomes: Sequence[Outcome]) -> str:
    killed = sum(outcome.result == "killed" for outcome in outcomes)
    survived = sum(outcome.result == "survived" for outcome in outcomes)
    equivalent = sum(outcome.result == "equivalent" for outcome in outcomes)
    errors = len(outcomes) - killed - survived - equivalent
    counted = len(outcomes) - equivalent - errors
    score = f"{killed}/{counted} = {100 * killed / counted:.1f} %" if counted else "n/a"
    text = (
        f"{len(outcomes)} mutants: {killed} killed, {survived} survived, "
        f"{equivalent} equivalent (excluded)"
    )
    if errors:
        text += f", {errors} not run (errors, excluded)"
    return f"{text}; score {score}"


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.lua_mutants.run",
        description="Run hand-made mutants (text replacements) through the tests.",
    )
    parser.add_argument("tests", nargs="*", help="pytest selection (default: the list's tests)")
    parser.add_argument("--list", type=Path, default=DEFAULT_LIST, help="the mutant list (TOML)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel workers (default 2)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="ID", help="only these mutants (globs)"
    )
    parser.add_argument(
        "--timeout", type=float, default=20, help="pytest-timeout per test, in s (default 20)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")

    try:
        listed = load(args.list)
        mutants = [
            m
            for m in listed.mutants
            if not args.only or any(fnmatch.fnmatch(m.id, p) for p in args.only)
        ]
        if not mutants:
            raise ListError(f"no mutant in {args.list} matches {args.only}")
        copied = copied_paths(ROOT)
        problems = stale(mutants, ROOT, copied)
        if problems:
            raise ListError("stale mutants:\n  " + "\n  ".join(problems))
        selection = expand(args.tests or listed.tests, ROOT)
    except ListError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_STALE

    to_run = [mutant for mutant in mutants if mutant.equivalent is None]
    jobs = max(1, min(args.jobs, len(to_run)))
    print(f"{len(to_run)} mutants to run ({len(mutants) - len(to_run)} equivalent), {jobs} workers")
    print(f"tests: {' '.join(selection)}", flush=True)
    started = time.monotonic()
    # The pytest runs are sessions of their own, which a Ctrl-C or a SIGTERM to this process
    # does not reach: both end them here.
    signal.signal(signal.SIGTERM, _interrupt)
    workers: list[Worker] = []
    try:
        for index in range(jobs):
            workers.append(Worker(index, ROOT, copied))
        # The baseline runs in every copy at once, as the mutants will.
        baselines: dict[int, tuple[int | None, str, float]] = {}

        def baseline(worker: Worker) -> None:
            start = time.monotonic()
            code, output = worker.pytest(selection, args.timeout, limit=600)
            baselines[worker.index] = (code, output, time.monotonic() - start)

        _in_threads(workers, baseline)
        for index, (code, output, _) in sorted(baselines.items()):
            if code != 0:
                tail = "\n".join(output.splitlines()[-30:])
                print(
                    f"\nbaseline failed: the unmutated copy (worker {index}) does not pass the "
                    f"selection (pytest exit {code}); no mutant was run.\n{tail}",
                    file=sys.stderr,
                )
                return EXIT_BASELINE_FAILED
        slowest = max(seconds for _, _, seconds in baselines.values())
        # A mutant whose run hangs in a way pytest-timeout cannot end is killed at this limit.
        limit = 60 + 2 * slowest
        print(f"baseline passed in {slowest:.1f} s; a mutant's run is cut off at {limit:.0f} s")

        pending: queue.SimpleQueue[Mutant] = queue.SimpleQueue()
        for mutant in to_run:
            pending.put(mutant)
        outcomes: dict[str, Outcome] = {}
        done = threading.Lock()

        def work(worker: Worker) -> None:
            while not worker.stopping:
                try:
                    mutant = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcome = worker.run(mutant, selection, args.timeout, limit)
                except Exception as error:  # noqa: BLE001 - reported in the table
                    outcome = Outcome(mutant, "error", detail=repr(error))
                with done:
                    outcomes[mutant.id] = outcome
                    print(
                        f"[{len(outcomes)}/{len(to_run)}] {mutant.id}: {outcome.result}"
                        f" ({outcome.seconds:.1f} s)",
                        flush=True,
                    )

        _in_threads(workers, work)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        for worker in workers:
            worker.close()

    table = [
        Outcome(mutant, "equivalent", detail=mutant.equivalent)
        if mutant.equivalent is not None
        else outcomes.get(mutant.id, Outcome(mutant, "error", detail="not run"))
        for mutant in mutants
    ]
    print()
    print_table(table)
    print(f"\n{summary(table)}")
    print(f"{time.monotonic() - started:.0f} s in all, {jobs} workers")
    return EXIT_ERROR if any(outcome.result == "error" for outcome in table) else 0


if __name__ == "__main__":
    sys.exit(main())
