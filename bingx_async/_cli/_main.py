"""``main()``: parse the command line, run the command, turn what happened into an exit code.

Nothing secret is ever printed: errors are one line, without tracebacks.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from bingx_async._exceptions import BingXError, InvalidArgumentError

from . import _commands
from ._arguments import parser
from ._exits import EXIT_OK, exit_code, signal_exit_code
from ._output import fail, logging_to_stderr
from ._signals import Stopped, run

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = parser().parse_args(argv)
    args.json = getattr(args, "json", False)
    args.jsonl = getattr(args, "jsonl", False)
    with logging_to_stderr(verbose=getattr(args, "verbose", False)):
        try:
            return _dispatch(args)
        except Stopped as stopped:
            return stopped.code
        except BingXError as error:
            fail(str(error))
            return exit_code(error)
        except KeyboardInterrupt:
            fail("interrupted by SIGINT")
            return signal_exit_code(signal.SIGINT)
        except EOFError:
            fail("interrupted: end of input, no answer")
            return signal_exit_code(signal.SIGINT)


def _dispatch(args: argparse.Namespace) -> int:
    command: str = args.command
    if command == "demo":
        from ._demo_command import demo

        return run(lambda: demo(args))
    if command == "simulate":
        from ._simulate import simulate

        return run(lambda: simulate(args))
    if command == "close":
        return run(lambda: _commands.close(args))
    if command == "close-all":
        if not args.yes:
            if not sys.stdin.isatty():
                raise InvalidArgumentError(
                    "close-all closes every open position: confirm with --yes"
                )
            listed = run(lambda: _commands.list_positions(args))
            if not listed:
                which = f" of {args.symbol}" if args.symbol else ""
                print(f"no open positions{which}: nothing to close", file=sys.stderr)
                return EXIT_OK
            if not _commands.confirm_close_all(args, listed):
                print("nothing closed", file=sys.stderr)
                return EXIT_OK
        return run(lambda: _commands.close_all(args))
    if command == "positions":
        return run(lambda: _commands.positions(args))
    return run(lambda: _commands.server_time(args))
