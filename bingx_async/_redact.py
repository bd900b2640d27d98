"""Keep signatures and signed URLs out of messages and log lines."""

from __future__ import annotations

import logging
import re

__all__ = ["install_httpx_log_filter", "redact"]

_SIGNATURE = re.compile(r"(signature=)[^&\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    """Replace any ``signature=...`` value in ``text``."""
    return _SIGNATURE.sub(r"\1<redacted>", text)


class _RedactSignatures(logging.Filter):
    """httpx logs every request URL at INFO; ours carry the signature in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_FILTER = _RedactSignatures("bingx_async")


def install_httpx_log_filter() -> None:
    """Attach the redacting filter to httpx's logger (idempotent)."""
    logger = logging.getLogger("httpx")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
