"""What the command writes: error and warning lines, logs, progress, JSON values.

Results go to stdout; errors, warnings, progress and reports about the run to stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from bingx_async._client import CloseProgress
from bingx_async._models import ClosePositionResult

__all__ = ["ProgressBar", "fail", "jsonable", "logging_to_stderr", "print_json"]

PREFIX = "bingx-async"


def fail(message: str) -> None:
    """One error line on stderr."""
    print(f"{PREFIX}: error: {message}", file=sys.stderr, flush=True)


def jsonable(value: Any) -> Any:
    """Decimals and times as strings; everything else as it is."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def print_json(value: Any, *, lines: bool = False) -> None:
    """``value`` on stdout: indented, or on one line (``--jsonl``)."""
    text = json.dumps(value) if lines else json.dumps(value, indent=2)
    print(text, flush=True)


class _TimedFormatter(logging.Formatter):
    """``-v`` lines: when (ISO 8601, local time with its offset, milliseconds), level, logger."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


def _about_shared_limits(record: logging.LogRecord) -> bool:
    return f"{os.sep}_redis{os.sep}" in record.pathname


@contextlib.contextmanager
def logging_to_stderr(*, verbose: bool) -> Iterator[None]:
    """Warnings about the shared limits always reach stderr (limits that degrade must not
    do so silently); with ``-v``, everything the library and httpx log. Everything is
    restored afterwards."""
    handler = logging.StreamHandler(sys.stderr)
    loggers = [logging.getLogger("bingx_async")]
    if verbose:
        handler.setFormatter(_TimedFormatter())
        loggers.append(logging.getLogger("httpx"))
    else:
        handler.setFormatter(logging.Formatter(f"{PREFIX}: warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        handler.addFilter(_about_shared_limits)
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        if verbose:
            logger.setLevel(logging.DEBUG if logger.name == "bingx_async" else logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


class ProgressBar:
    """Progress on ``stream``: a line redrawn in place on a terminal, else a plain line every
    ten outcomes and at the end."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.interactive = stream.isatty()
        self.failed = 0
        self.done = 0

    def __call__(self, update: CloseProgress) -> None:
        if not isinstance(update.outcome, ClosePositionResult):
            self.failed += 1
        self.done = update.done
        if self.interactive:
            self._draw()
            if update.done == self.total:
                self.stream.write("\n")
        elif update.done % 10 == 0 or update.done == self.total:
            self.stream.write(f"closed {update.done}/{self.total}\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take the live line away (before something else is printed on the terminal)."""
        if self.interactive and 0 < self.done < self.total:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self) -> None:
        width = 30
        filled = width * self.done // self.total
        self.stream.write(
            f"\rclosing [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total}  failed {self.failed}"
        )
