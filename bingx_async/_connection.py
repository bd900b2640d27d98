"""One client's way to BingX: its connection pool, its key pair, and the requests on the wire.

The pipeline signs and sends through a :class:`Connection`; closing it stops new sends at
once and lets the requests already on the wire get their answers before the pool closes,
so that their outcomes are known.
"""

from __future__ import annotations

import asyncio
import logging
from typing import NamedTuple

import httpx

from . import _decode
from ._body import ACCEPT_ENCODING, read_body
from ._config import Credentials, host_identity
from ._endpoints import Endpoint
from ._exceptions import (
    ClientClosedError,
    InvalidArgumentError,
    RequestTimeout,
    TransportError,
    error_text,
)
from ._signing import Params, canonical_pairs, encode_query, raw_query, sign

__all__ = ["MAX_URL_LENGTH", "Connection", "Reply"]

logger = logging.getLogger("bingx_async")

#: The longest URL sent (all parameters travel in the query string). Servers commonly refuse
#: request lines over 8 KiB; BingX's own limit is not documented.
MAX_URL_LENGTH = 8192
#: What signing adds: ``?``, ``&timestamp=`` (13 digits), ``&recvWindow=``, ``&signature=``
#: (64 hex digits), with room to spare.
_SIGNED_OVERHEAD = 128


class Reply(NamedTuple):
    """An answer as read: its status, its headers as sent, and its body, inflated."""

    status_code: int
    headers: httpx.Headers
    content: bytes


class Connection:
    """A connection pool to one BingX host, with the credentials that sign for it."""

    def __init__(
        self,
        *,
        base_url: str,
        credentials: Credentials | None,
        recv_window_ms: int,
        timeout: httpx.Timeout,
        http: httpx.AsyncClient,
        owns_http: bool,
    ) -> None:
        self.base_url = base_url
        #: The host as BingX counts it (see :func:`host_identity`): what budgets, accounts
        #: and the clock offset are kept under.
        self.host: str = host_identity(base_url)
        self.credentials = credentials
        self.recv_window_ms = recv_window_ms
        #: Applied to every request, so that a pool of the caller's keeps it too (in the
        #: form httpx's transports read, made once rather than for every request).
        self._timeout = timeout.as_dict()
        self._http = http
        self._owns_http = owns_http
        #: False once closing began: nothing new is sent through it.
        self.open: bool = True
        self._on_wire = 0
        self._drained: asyncio.Event | None = None

    def check_size(self, endpoint: Endpoint, params: Params) -> None:
        """Refuse, before it takes a rate-limit slot, a request too long to send."""
        query = encode_query(canonical_pairs(params))
        length = len(self.base_url) + len(endpoint.path) + len(query) + _SIGNED_OVERHEAD
        if length > MAX_URL_LENGTH:
            raise InvalidArgumentError(
                f"{endpoint.name}: the request would be about {length} characters long, more "
                f"than the {MAX_URL_LENGTH} a URL may have; send less in its parameters"
            )

    def build_request(
        self, endpoint: Endpoint, params: Params, *, timestamp_ms: int | None
    ) -> httpx.Request:
        """The request to send; signed (with ``timestamp_ms``) when it is given, or with only
        the API key for a keyed endpoint."""
        # A pool of our own asks for the encodings once, in its default headers.
        headers: dict[str, str] = {} if self._owns_http else {"Accept-Encoding": ACCEPT_ENCODING}
        if timestamp_ms is None:
            query = encode_query(canonical_pairs(params))
            if endpoint.keyed:
                assert self.credentials is not None, "keyed requests are built with credentials"
                headers["X-BX-APIKEY"] = self.credentials.api_key
        else:
            credentials = self.credentials
            assert credentials is not None, "signed requests are built only with credentials"
            signed_params = dict(params)
            signed_params["timestamp"] = timestamp_ms
            signed_params["recvWindow"] = self.recv_window_ms
            pairs = canonical_pairs(signed_params)
            signature = sign(credentials.secret_key, raw_query(pairs))
            query = f"{encode_query(pairs)}&signature={signature}"
            headers["X-BX-APIKEY"] = credentials.api_key
        url = f"{self.base_url}{endpoint.path}" + (f"?{query}" if query else "")
        return self._http.build_request(
            endpoint.method, url, headers=headers, extensions={"timeout": self._timeout}
        )

    async def send(self, endpoint: Endpoint, request: httpx.Request) -> Reply:
        """Send ``request`` and read its answer, body included (bounded: see
        :mod:`bingx_async._body`); httpx's errors become :class:`TransportError` here, and
        only here."""
        if not self.open:
            raise ClientClosedError(
                f"not sent: the client was closed ({endpoint.name})",
                endpoint=endpoint.name,
                may_have_executed=False,
            )
        logger.debug("sending %s", endpoint.name)
        self._on_wire += 1
        try:
            # Never followed, whatever the pool says: a redirect would carry the API key and
            # the signed query to another host (and turn the POST into a GET there).
            streamed = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                # Read at call time: the cap stays settable where it is documented.
                body = await read_body(streamed, endpoint=endpoint.name, limit=_decode.MAX_BODY)
            finally:
                await streamed.aclose()
            return Reply(streamed.status_code, streamed.headers, body)
        except httpx.TimeoutException as exc:
            before_sending = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)
            stage = "connecting" if before_sending else "waiting for BingX"
            raise RequestTimeout(
                f"{endpoint.name} timed out {stage} ({type(exc).__name__})",
                endpoint=endpoint.name,
                may_have_executed=not before_sending,
            ) from exc
        except httpx.ConnectError as exc:
            raise TransportError(
                f"could not connect to {self.host} for {endpoint.name}: {error_text(exc)}",
                endpoint=endpoint.name,
                may_have_executed=False,
            ) from exc
        except httpx.HTTPError as exc:
            raise TransportError(
                f"{endpoint.name} failed after sending ({_named(exc)}); "
                "the request may have executed",
                endpoint=endpoint.name,
                may_have_executed=True,
            ) from exc
        finally:
            self._on_wire -= 1
            if self._on_wire == 0 and self._drained is not None:
                self._drained.set()

    async def aclose(self) -> None:
        """Stop sending; wait for the answers still on the wire; close the pool if ours."""
        self.open = False
        try:
            if self._on_wire:
                self._drained = asyncio.Event()
                await self._drained.wait()
        finally:
            if self._owns_http:
                await self._http.aclose()


def _named(error: BaseException) -> str:
    """``ReadError: the reason``, or only ``ReadError`` when it gives none."""
    name = type(error).__name__
    text = error_text(error)
    return name if text == name else f"{name}: {text}"
