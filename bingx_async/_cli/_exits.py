"""The command's exit codes (the table in docs/cli.md), and which error gives which."""

from __future__ import annotations

import signal

from bingx_async._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InvalidArgumentError,
    PermissionDeniedError,
    RateLimitError,
    SharedLimitsUnavailableError,
)

__all__ = [
    "EXIT_AUTH",
    "EXIT_BAD_INPUT",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_RATE_LIMITED",
    "EXIT_SHARED_LIMITS",
    "exit_code",
    "signal_exit_code",
]

EXIT_OK = 0
#: Any other failure: network, server, an unexpected answer.
EXIT_FAILURE = 1
#: Usage errors and bad input (argparse uses 2 too); nothing was sent.
EXIT_BAD_INPUT = 2
#: Authentication failed, permission denied, or credentials missing.
EXIT_AUTH = 3
#: Rate limited or banned.
EXIT_RATE_LIMITED = 4
#: Some of several closes failed.
EXIT_PARTIAL = 5
#: ``--shared-limits`` was given but its Redis cannot be used (and not ``--on-outage local``).
EXIT_SHARED_LIMITS = 6


def exit_code(error: BaseException) -> int:
    """The exit code an error ends the command with."""
    if isinstance(error, InvalidArgumentError):
        return EXIT_BAD_INPUT
    if isinstance(error, SharedLimitsUnavailableError):
        return EXIT_SHARED_LIMITS
    if isinstance(error, ConfigurationError | AuthenticationError | PermissionDeniedError):
        return EXIT_AUTH
    if isinstance(error, RateLimitError):
        return EXIT_RATE_LIMITED
    return EXIT_FAILURE


def signal_exit_code(signum: int) -> int:
    """What a shell reports for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signal.Signals(signum))
