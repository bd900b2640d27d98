"""The client a command works through, built from its options; what is refused before it.

Everything a command is given is checked before anything is sent: a malformed
``--shared-limits`` URL or a plain-http ``--base-url`` to another machine is bad input
(exit 2), not an authentication failure. A Redis that is given but cannot be used stops
the command (exit 6) unless ``--on-outage local`` says to go on without it.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from bingx_async._client import BingXClient
from bingx_async._config import (
    DEFAULT_TIMEOUT,
    DEMO_BASE_URL,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_SECRET_KEY,
    RetryPolicy,
    _is_local,
    _validate_base_url,
)
from bingx_async._endpoints import CLOSE
from bingx_async._exceptions import (
    ConfigurationError,
    InvalidArgumentError,
    SharedLimitsUnavailableError,
    error_text,
)
from bingx_async._redis import ENV_SHARED_LIMITS, RedisLimits, check_redis_url
from bingx_async._session import BingXSession

__all__ = ["Connected", "check_shared_limits_url", "connect", "shared_limits_url"]

_SHARED_LIMITS = f"--shared-limits (or {ENV_SHARED_LIMITS})"


@dataclass
class Connected:
    """A command's client, and the position IDs whose close request has left this process."""

    client: BingXClient
    limits: RedisLimits | None
    sent: set[str] = field(default_factory=set)


def shared_limits_url(args: argparse.Namespace) -> str | None:
    """The Redis URL to share limits through: ``--shared-limits``, else the environment's."""
    given: str | None = args.shared_limits
    return given or os.environ.get(ENV_SHARED_LIMITS) or None


def check_shared_limits_url(url: str) -> None:
    """Refuse, as bad input, a URL that cannot name a Redis: wrong scheme, bad port or IPv6
    literal, an option Redis's client does not know."""
    try:
        check_redis_url(url, _SHARED_LIMITS)
    except ConfigurationError as error:
        raise InvalidArgumentError(error.message) from None
    from redis.asyncio.connection import Connection, parse_url

    try:
        options = parse_url(url)
    except ValueError as error:
        raise InvalidArgumentError(
            f"{_SHARED_LIMITS} is not a usable Redis URL: {error_text(error)}"
        ) from None
    kind = options.pop("connection_class", Connection)
    known: set[str] = set()
    for cls in kind.__mro__:
        init = cls.__dict__.get("__init__")
        if init is not None:
            known.update(inspect.signature(init).parameters)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidArgumentError(
            f"{_SHARED_LIMITS} has an option Redis does not know: {', '.join(unknown)}"
        )


def _base_url(args: argparse.Namespace) -> str | None:
    """The API host to use, checked; ``None`` for the library's default."""
    given: str | None = args.base_url or (DEMO_BASE_URL if args.demo_trading else None)
    url = given or os.environ.get(ENV_BASE_URL) or None
    if url is None:
        return None
    name = "--base-url" if given else ENV_BASE_URL
    try:
        _validate_base_url(url, allow_insecure_http=True)
    except ConfigurationError as error:
        raise InvalidArgumentError(f"{name}: {error.message}") from None
    parts = urlsplit(url.strip())
    if parts.scheme == "http" and not _is_local(parts.hostname or ""):
        raise InvalidArgumentError(
            f"{name} {url.strip()!r} is plain http:// to a host that is not this machine: the "
            "API key and signed requests would cross the network unencrypted; use https://"
        )
    return url


@contextlib.asynccontextmanager
async def connect(args: argparse.Namespace) -> AsyncIterator[Connected]:
    """The client for ``args``, open for the ``async with`` block, and everything it uses
    closed after it."""
    if args.retries < 1:
        raise InvalidArgumentError("--retries must be at least 1")
    base_url = _base_url(args)
    url = shared_limits_url(args)
    if url is not None:
        check_shared_limits_url(url)
    if args.command != "server-time":
        missing = [name for name in (ENV_API_KEY, ENV_SECRET_KEY) if not os.environ.get(name)]
        if missing:
            raise ConfigurationError(
                f"{args.command} needs an API key pair: set {' and '.join(missing)} in the "
                "environment"
            )
    limits = RedisLimits(url, on_outage=args.on_outage) if url is not None else None
    sent: set[str] = set()

    async def note_sent(request: httpx.Request) -> None:
        if request.url.path.endswith(CLOSE.path):
            position_id = request.url.params.get("positionId")
            if position_id is not None:
                sent.add(position_id)

    # The pool the library would make, plus a hook that sees each close leave.
    http = httpx.AsyncClient(
        timeout=DEFAULT_TIMEOUT,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
        headers={"User-Agent": "bingx-async"},
        follow_redirects=False,
        event_hooks={"request": [note_sent]},
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(http.aclose)
        session = await stack.enter_async_context(BingXSession(shared_limits=limits))
        client = await stack.enter_async_context(
            BingXClient(
                base_url=base_url,
                retry=RetryPolicy(attempts=args.retries),
                session=session,
                http_client=http,
            )
        )
        try:
            yield Connected(client, limits, sent)
        except SharedLimitsUnavailableError as error:
            if limits is None or limits.problem is None:
                raise
            raise SharedLimitsUnavailableError(
                f"{_SHARED_LIMITS} cannot be used: {limits.problem}. Nothing was sent; "
                "--on-outage local goes on under in-process limits instead",
                may_have_executed=False,
            ) from error
