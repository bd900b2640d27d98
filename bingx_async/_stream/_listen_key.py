"""The listen key's life: created over REST, extended on time, replaced when BingX forgets it,
deleted when the stream closes.

REST requests go through an injected callable (:data:`RestCall`), so that the client can send
them through its rate limiter and error guard, and tests through a fake. Every wait goes
through the clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from bingx_async._clock import Clock
from bingx_async._decode import body_code, error_from_response
from bingx_async._exceptions import APIError, BingXError, ResponseValidationError, error_text
from bingx_async._redact import redact

__all__ = ["LISTEN_KEY_PATH", "ListenKey", "ListenKeys", "RestCall"]

logger = logging.getLogger("bingx_async")

LISTEN_KEY_PATH = "/openApi/user/auth/userDataStream"

#: ``(method, path, params) -> body``: sends one request with the account's API key and
#: returns the answer's JSON body as decoded (BingX's ``{"code", "msg", "data"}`` envelope or
#: the bare ``{"listenKey": ...}`` object: both are read). It raises a
#: [`BingXError`][bingx_async.BingXError] when BingX answers with an error: an
#: ``APIError`` with ``status_code`` 404 for a listen key BingX does not know. It should end
#: in bounded time (the client's pipeline does): the stream waits for it.
RestCall = Callable[[str, str, Mapping[str, str]], Awaitable[Any]]

#: After a failed extension, try again this much later (seconds), or at ``extend_every`` if
#: that comes first.
EXTEND_RETRY = 60.0
_CREATE = f"POST {LISTEN_KEY_PATH}"
_EXTEND = f"PUT {LISTEN_KEY_PATH}"
_DELETE = f"DELETE {LISTEN_KEY_PATH}"
#: A key goes into the stream's URL as is: only characters that need no escaping there.
_KEY = re.compile(r"[A-Za-z0-9._~-]{1,512}")
_GONE = re.compile(r"listen\s*key.*(expire|not\s*exist|invalid|not\s*found)", re.IGNORECASE)


class ListenKey:
    """A listen key: whoever holds it can read the account's stream, so it shows only a
    fingerprint in reprs and strings; ``reveal`` gives the key itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible label of the key (safe for logs)."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:10]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ListenKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash((ListenKey, self._value))

    def __repr__(self) -> str:
        return f"<listen key {self.fingerprint}>"

    __str__ = __repr__


class ListenKeys:
    """The account's listen key: one at a time, created when first needed.

    ``get`` gives the current key (creating one); ``discard`` forgets one BingX no
    longer takes; ``keep_alive`` extends the current key every ``extend_every`` seconds
    until cancelled; ``delete`` ends it, in at most ``delete_timeout`` seconds.
    """

    def __init__(
        self, rest: RestCall, clock: Clock, *, extend_every: float, delete_timeout: float
    ) -> None:
        self._rest = rest
        self._clock = clock
        self._extend_every = extend_every
        self._delete_timeout = delete_timeout
        self._key: ListenKey | None = None
        #: When the current key is next extended (``clock.monotonic()``).
        self._extend_at = 0.0
        self._creating = asyncio.Lock()
        self._created = asyncio.Event()
        #: Keys created so far.
        self.created = 0

    @property
    def current(self) -> ListenKey | None:
        return self._key

    async def get(self) -> ListenKey:
        """The current key; one is created if there is none (one request at a time)."""
        async with self._creating:
            if self._key is None:
                body = await self._rest("POST", LISTEN_KEY_PATH, {})
                self._key = _key_from(body)
                self._extend_at = self._clock.monotonic() + self._extend_every
                self.created += 1
                self._created.set()
                logger.debug("account stream: created %r", self._key)
            return self._key

    def discard(self, key: ListenKey) -> None:
        """``key`` is no longer valid (expired, refused): the next ``get`` creates another."""
        if self._key == key:
            self._key = None
            self._created.clear()
            logger.debug("account stream: %r is no longer valid", key)

    async def extend(self) -> bool:
        """Extend the current key; ``False`` when BingX no longer knows it (it is discarded
        then). Other failures raise."""
        key = self._key
        if key is None:
            return True
        try:
            body = await self._rest("PUT", LISTEN_KEY_PATH, {"listenKey": key.reveal()})
            _check_answer(body, _EXTEND)
        except BingXError as error:
            if not _key_is_gone(error):
                raise
            self.discard(key)
            return False
        if self._key == key:
            self._extend_at = self._clock.monotonic() + self._extend_every
        logger.debug("account stream: extended %r", key)
        return True

    async def keep_alive(self, on_gone: Callable[[ListenKey], None]) -> None:
        """Extend the current key on time, until cancelled; a key BingX no longer knows is
        discarded and passed to ``on_gone``. A failed extension is tried again a minute
        later (the key stays valid for 60 minutes)."""
        while True:
            key = self._key
            if key is None:
                await self._created.wait()
                continue
            wait = self._extend_at - self._clock.monotonic()
            if wait > 0:
                await self._clock.sleep(wait)
                continue  # the key may have been replaced meanwhile
            try:
                extended = await self.extend()
            except Exception as error:  # noqa: BLE001 - any failure: try again later
                retry_in = min(EXTEND_RETRY, self._extend_every)
                logger.warning(
                    "account stream: could not extend the listen key (%s); retrying in %.0f s",
                    redact(error_text(error)),
                    retry_in,
                )
                if self._key == key:
                    self._extend_at = self._clock.monotonic() + retry_in
                continue
            if not extended:
                on_gone(key)

    async def delete(self) -> None:
        """Delete the current key, if any: best effort, in at most ``delete_timeout``
        seconds; failures are logged, never raised."""
        key, self._key = self._key, None
        if key is None:
            return
        self._created.clear()
        try:
            async with self._clock.timeout_at(self._clock.monotonic() + self._delete_timeout):
                _check_answer(
                    await self._rest("DELETE", LISTEN_KEY_PATH, {"listenKey": key.reveal()}),
                    _DELETE,
                )
        except TimeoutError:
            logger.debug("account stream: deleting %r timed out; it expires by itself", key)
        except Exception as error:  # noqa: BLE001 - best effort: the key expires by itself
            logger.debug(
                "account stream: could not delete %r (%s); it expires by itself",
                key,
                redact(error_text(error)),
            )
        else:
            logger.debug("account stream: deleted %r", key)

    def __repr__(self) -> str:
        return f"<ListenKeys current={self._key!r}>"


def _key_from(body: Any) -> ListenKey:
    """The key in a creation answer: ``{"listenKey": ...}``, or the same inside ``data``."""
    _check_answer(body, _CREATE)
    found = body.get("listenKey") if isinstance(body, Mapping) else None
    if found is None and isinstance(body, Mapping) and isinstance(body.get("data"), Mapping):
        found = body["data"].get("listenKey")
    if not isinstance(found, str) or not _KEY.fullmatch(found):
        raise ResponseValidationError(
            f"the listen-key answer carries no usable listenKey ({_CREATE})",
            body=redact(str(body)),
            endpoint=_CREATE,
            may_have_executed=False,
        )
    return ListenKey(found)


def _check_answer(body: Any, endpoint: str) -> None:
    """Raise the error an enveloped answer with a code other than 0 stands for."""
    if isinstance(body, Mapping) and "code" in body and body_code(body) != 0:
        kept = {name: value for name, value in body.items() if name != "listenKey"}
        raise error_from_response(
            status_code=200,
            body=kept,
            text=redact(str(kept)),
            endpoint=endpoint,
            headers={},
            server_now=None,
        )


def _key_is_gone(error: BingXError) -> bool:
    """Whether ``error`` says BingX does not know the key (any more)."""
    if isinstance(error, APIError) and error.status_code == 404:
        return True
    return bool(error.msg and _GONE.search(error.msg))
