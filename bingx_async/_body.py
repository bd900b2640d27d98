"""Reading an answer's body, bounded as it arrives.

The body is read from the socket chunk by chunk and inflated here, never by httpx, so that
neither what arrives nor what it inflates to can grow past the cap (:data:`MAX_BODY` in
:mod:`bingx_async._decode`): a 1 MB gzip bomb costs at most the cap, not gigabytes. Only the
encodings BingX uses are read: none (``identity``), ``gzip`` and ``deflate``; requests ask
for exactly those.
"""

from __future__ import annotations

import io
import zlib

import httpx

from ._exceptions import ResponseValidationError, error_text

__all__ = ["ACCEPT_ENCODING", "read_body"]

#: Sent with every request: the encodings :func:`read_body` can inflate.
ACCEPT_ENCODING = "gzip, deflate"

_GZIP = zlib.MAX_WBITS | 16
_ZLIB = zlib.MAX_WBITS
_RAW_DEFLATE = -zlib.MAX_WBITS
#: Inflated at most this much at a time (64 KiB of a bomb inflates to 64 MiB).
_STEP = 256 * 1024


class _Inflater:
    """``zlib.decompressobj`` for one Content-Encoding; ``deflate`` as zlib data, or raw
    deflate when it does not start like zlib data (servers send both, as httpx reads both)."""

    __slots__ = ("_decoder", "_first", "_raw_fallback")

    def __init__(self, encoding: str) -> None:
        self._raw_fallback = encoding == "deflate"
        self._decoder = zlib.decompressobj(_GZIP if encoding == "gzip" else _ZLIB)
        self._first = True

    def inflate(self, data: bytes, max_length: int) -> tuple[bytes, bool]:
        """At most ``max_length`` bytes of output; whether input was left over."""
        try:
            out = self._decoder.decompress(data, max_length)
        except zlib.error:
            if not (self._first and self._raw_fallback):
                raise
            self._decoder = zlib.decompressobj(_RAW_DEFLATE)
            out = self._decoder.decompress(data, max_length)
        self._first = False
        return out, bool(self._decoder.unconsumed_tail)

    def tail(self) -> bytes:
        """Input held back by the last call (``max_length`` stopped it)."""
        return self._decoder.unconsumed_tail


async def read_body(response: httpx.Response, *, endpoint: str, limit: int) -> bytes:
    """The body of a streamed ``response``, inflated; at most ``limit`` bytes on the wire and
    ``limit`` bytes inflated, else :class:`ResponseValidationError` as soon as either is
    passed (nothing beyond is read). Also raised for an encoding BingX does not use."""
    inflater = _inflater(response, endpoint)
    if response.is_stream_consumed:
        # Read (and inflated) already by a transport that builds answers in memory, such
        # as httpx.MockTransport; a network transport never does.
        content = response.content
        if len(content) > limit:
            raise _too_large(response, endpoint, limit, "once inflated")
        return content
    kept = io.BytesIO()  # getvalue() hands over its buffer without a copy
    try:
        await _read(response, inflater, kept, endpoint, limit)
    except BaseException:
        kept.close()  # the error's traceback must not hold on to what was read
        raise
    return kept.getvalue()


async def _read(
    response: httpx.Response,
    inflater: _Inflater | None,
    kept: io.BytesIO,
    endpoint: str,
    limit: int,
) -> None:
    received = 0
    async for chunk in response.aiter_raw():
        received += len(chunk)
        if received > limit:
            raise _too_large(response, endpoint, limit, "as sent")
        if inflater is None:
            kept.write(chunk)
            continue
        data = chunk
        while data:
            room = limit - kept.tell()
            try:
                out, left_over = inflater.inflate(data, min(room + 1, _STEP))
            except zlib.error as error:
                raise _undecodable(response, endpoint, error) from None
            kept.write(out)
            if kept.tell() > limit:
                raise _too_large(response, endpoint, limit, "once inflated")
            data = inflater.tail() if left_over else b""


def _inflater(response: httpx.Response, endpoint: str) -> _Inflater | None:
    value = response.headers.get("content-encoding", "")
    if not value:
        return None
    codings = [c.strip().lower() for c in value.split(",")]
    codings = [c for c in codings if c not in ("", "identity")]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater("deflate" if codings[0] == "deflate" else "gzip")
    shown = value if len(value) <= 60 else f"{value[:60]}..."
    raise ResponseValidationError(
        f"BingX answered HTTP {response.status_code} with Content-Encoding {shown!r}; only "
        f"gzip, deflate or none are read ({endpoint})",
        body="",
        status_code=response.status_code,
        endpoint=endpoint,
    )


def _too_large(
    response: httpx.Response, endpoint: str, limit: int, how: str
) -> ResponseValidationError:
    return ResponseValidationError(
        f"BingX answered HTTP {response.status_code} with a body over {_size(limit)} {how}; "
        f"it was not read further ({endpoint})",
        body="",
        status_code=response.status_code,
        endpoint=endpoint,
    )


def _undecodable(
    response: httpx.Response, endpoint: str, error: zlib.error
) -> ResponseValidationError:
    return ResponseValidationError(
        f"BingX answered HTTP {response.status_code} with a body that does not inflate as its "
        f"Content-Encoding says ({error_text(error)}; {endpoint})",
        body="",
        status_code=response.status_code,
        endpoint=endpoint,
    )


def _size(limit: int) -> str:
    mib = limit / (1024 * 1024)
    return f"{mib:g} MiB" if mib >= 1 and mib == int(mib) else f"{limit} bytes"
