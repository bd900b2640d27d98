"""SIGINT and SIGTERM: the command stops, says what it knows, and exits 130 or 143.

Both cancel the command's task, so that it can report every outcome known so far
(``docker stop``, systemd and ``timeout`` send SIGTERM, a terminal SIGINT).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ._exits import signal_exit_code
from ._output import fail

__all__ = ["Stopped", "run"]

T = TypeVar("T")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """The command was stopped by a signal; ``code`` is the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work()`` in a new event loop; a signal raises ``Stopped`` once the work
    has reported what it knows (by catching the cancellation and raising it again)."""
    return asyncio.run(_guarded(work))


async def _guarded(work: Callable[[], Awaitable[T]]) -> T:
    received: list[int] = []
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    installed = threading.current_thread() is threading.main_thread()

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    if installed:
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, stop, signum)
    try:
        return await work()
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        name = signal.Signals(received[0]).name
        fail(f"interrupted by {name}")
        raise Stopped(signal_exit_code(received[0])) from None
    finally:
        if installed:
            for signum in _SIGNALS:
                loop.remove_signal_handler(signum)
