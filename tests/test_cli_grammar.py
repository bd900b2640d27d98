"""The command line's grammar, option by option, against a reviewed listing.

Every command, option, default, choice and help text a user can see is listed in
``tests/cli_grammar.txt``; a change to any of them fails here until the listing is
regenerated (``BINGX_ASYNC_WRITE_GRAMMAR=1 pytest tests/test_cli_grammar.py``) and the
difference reviewed beside docs/cli.md. The listing is built from the parser itself rather
than from ``--help``, whose layout differs between Python versions.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bingx_async._cli._arguments import parser

LISTING = Path(__file__).with_name("cli_grammar.txt")


def _value(value: object) -> str:
    if value is argparse.SUPPRESS:
        return "SUPPRESS"
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, dict):
        return repr(list(value))
    return repr(value)


def _describe(command: argparse.ArgumentParser) -> Iterator[str]:
    yield f"[{command.prog}]"
    yield f"  description: {command.description!r}"
    yield f"  epilog: {command.epilog!r}"
    exclusive = {
        id(action): index
        for index, group in enumerate(command._mutually_exclusive_groups)
        for action in group._group_actions
    }
    for action in command._actions:
        name = ", ".join(action.option_strings) or action.dest
        fields = {
            "dest": action.dest,
            "nargs": action.nargs,
            "default": action.default,
            "type": action.type,
            "choices": action.choices,
            "required": action.required,
            "metavar": action.metavar,
            "exclusive_group": exclusive.get(id(action)),
        }
        yield f"  {name} ({type(action).__name__}): " + " ".join(
            f"{key}={_value(val)}" for key, val in fields.items()
        )
        yield f"    help: {action.help!r}"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield f"    command {choice.dest}: {choice.help!r}"
            for sub in action.choices.values():
                yield from _describe(sub)


def listing() -> str:
    return "\n".join(_describe(parser())) + "\n"


def test_the_grammar_is_the_reviewed_one() -> None:
    """Commands, options, defaults, choices and help texts are exactly the listed ones."""
    if os.environ.get("BINGX_ASYNC_WRITE_GRAMMAR"):
        LISTING.write_text(listing())
        pytest.skip("listing written; review its difference")
    assert listing() == LISTING.read_text()


def test_the_listing_names_every_command_the_docs_name() -> None:
    """The listing is not empty or stale: it has each command docs/cli.md has a section for."""
    text = LISTING.read_text()
    for command in ("demo", "simulate", "close", "close-all", "positions", "server-time"):
        assert f"[bingx-async {command}]" in text
