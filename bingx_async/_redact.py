"""Keep signatures, signed URLs and listen keys out of messages and log lines."""

from __future__ import annotations

import logging
import re

__all__ = ["install_httpx_log_filter", "install_websockets_log_filter", "redact"]

#: ``signature=...`` and ``listenKey=...`` in a query string, and ``"listenKey": "..."`` in
#: JSON (or a Python repr): a listen key opens the account's stream, so it is kept as
#: secret as a signature.
_SECRETS = re.compile(
    r"""((?:signature|listenKey)=)[^&\s"']*|(["']listenKey["']\s*:\s*["'])[^"']*""", re.IGNORECASE
)


def redact(text: str) -> str:
    """Replace any ``signature`` or ``listenKey`` value in ``text``."""
    return _SECRETS.sub(lambda match: f"{match.group(1) or match.group(2)}<redacted>", text)


class _RedactSecrets(logging.Filter):
    """httpx logs every request URL at INFO; ours carry the signature in the query. websockets
    logs the handshake's request line at DEBUG, with the listen key in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg = cleaned
            record.args = None
        return True


_FILTER = _RedactSecrets("bingx_async")


def install_httpx_log_filter() -> None:
    """Attach the redacting filter to httpx's logger (idempotent)."""
    _install(logging.getLogger("httpx"))


def install_websockets_log_filter() -> None:
    """Attach the redacting filter to the logger of websockets' clients (idempotent)."""
    _install(logging.getLogger("websockets.client"))


def _install(logger: logging.Logger) -> None:
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
