"""The ``bingx-async`` command (also ``python -m bingx_async``) and its demos.

Nothing here is public API: the command's interface is its options, its output and its exit
codes, documented in docs/cli.md.
"""

from __future__ import annotations

from ._main import main

__all__ = ["main"]
