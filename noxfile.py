"""Development sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``.

On demand only: ``nox -s mutate`` (mutation testing, slow) and ``nox -s mutate_lua`` (the same
for the Redis Lua scripts, with hand-made mutants).
"""

from __future__ import annotations

import re
import shutil
from collections import Counter, defaultdict
from fnmatch import fnmatch
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_external_run = True

PYTHONS = ["3.11", "3.12", "3.13"]

MUTMUT = "mutmut>=3.8,<4"
#: mutmut's working copy of the code and its results; ``[tool.mutmut]`` in pyproject.toml
#: says which modules get mutants.
MUTANTS = Path("mutants")
STATUSES = ["killed", "survived", "timeout", "suspicious", "skipped", "no tests", "not checked"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite under coverage."""
    session.install("-e", ".[redis,stream]", "--group", "tests")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "report")


@nox.session
def tests_without_stream(session: nox.Session) -> None:
    """The test suite without the ``stream`` extra: the core needs no WebSocket library
    (the account stream's tests skip)."""
    session.install("-e", ".[redis]", "--group", "tests")
    session.run("pytest", "-q", "-n", "2", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("--group", "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests, the benchmarks and this file."""
    session.install("-e", ".[redis,stream]", "--group", "typing", "nox")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site, with the API reference from the docstrings: mkdocs build --strict, then
    a check of the pages as built (no raw role, no escaped pipe, no broken link)."""
    session.install("-e", ".[redis,stream]", "--group", "docs")
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )
    session.run("python", ".ci/check_site.py", "site")


@nox.session
def verifytypes(session: nox.Session) -> None:
    """pyright --verifytypes: every public name's type is known (on an installed copy)."""
    session.install(".[redis,stream]", "--group", "verifytypes")
    session.run("pyright", "--verifytypes", "bingx_async", "--ignoreexternal")


@nox.session
def mutate(session: nox.Session) -> None:
    """Mutation testing (mutmut 3) of the core modules listed in pyproject's ``[tool.mutmut]``.

    ``nox -s mutate`` runs them all; ``nox -s mutate -- _signing _retry`` only those modules
    (a mutant name or glob, as ``mutmut run`` takes it, works too). Arguments that start with
    ``-`` go to ``mutmut run`` as they are, e.g. ``--max-children=2``. Results are kept in
    mutants/ and reused by the next run; delete that directory to start over.
    """
    session.install("-e", ".[redis,stream]", "--group", "tests", MUTMUT)
    options = [arg for arg in session.posargs if arg.startswith("-")]
    patterns = [_mutant_pattern(arg) for arg in session.posargs if not arg.startswith("-")]
    # mutmut copies the tests over its previous copy: a deleted or renamed test would live on.
    for copied in ("tests", "docs"):
        shutil.rmtree(MUTANTS / copied, ignore_errors=True)
    session.run("mutmut", "run", *options, *patterns)
    listing = session.run("mutmut", "results", "--all=true", silent=True)
    if isinstance(listing, str):  # None under --install-only
        _print_mutation_report(listing, patterns)


@nox.session
def mutate_lua(session: nox.Session) -> None:
    """Hand-made mutants of the Redis Lua scripts, which mutmut cannot mutate (they are strings).

    The list is tests/lua_mutants/mutants.toml; the runner, tests/lua_mutants/run.py, takes
    its options from the arguments: ``nox -s mutate_lua -- --jobs 4 --only 'acquire-*'``, and
    test paths to run instead of the Redis tests.
    """
    session.install("-e", ".[redis,stream]", "--group", "tests")
    session.run("python", "-m", "tests.lua_mutants.run", *session.posargs)


def _mutant_pattern(arg: str) -> str:
    """The mutants of one module, named ``_signing``, ``bingx_async._signing`` or by its path."""
    if "*" in arg or "__mutmut_" in arg:
        return arg
    module = arg.removesuffix(".py").replace("/", ".")
    if not module.startswith("bingx_async."):
        module = f"bingx_async.{module}"
    return f"{module}.*"


def _print_mutation_report(listing: str, patterns: list[str]) -> None:
    """Counts per module, then every mutant that was not killed, with how to see it."""
    counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
    not_killed: list[str] = []
    for line in listing.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if "__mutmut_" not in name or (patterns and not any(fnmatch(name, p) for p in patterns)):
            continue
        module = re.split(r"\.x[_ǁ]", name, maxsplit=1)[0]
        counts[module][status] += 1
        if status != "killed":
            not_killed.append(f"  {status:<12} {name}")
    header = "".join(f"{status:>12}" for status in ["total", *STATUSES])
    print(f"\n{'module':<28}{header}")
    for module, by_status in sorted(counts.items()):
        row = [by_status.total(), *(by_status[status] for status in STATUSES)]
        print(f"{module:<28}" + "".join(f"{n:>12}" for n in row))
    print(f"\nNot killed ({len(not_killed)}); see one with `mutmut show NAME`:")
    print("\n".join(not_killed))
