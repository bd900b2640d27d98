"""RedisLimits: rate-limit budgets, holds, error counts and closes in flight shared by every
process and machine that uses the same Redis.

BingX counts its per-UID limits across every program trading the account, and its IP
limits across every process on one address. One process's limiter cannot see the others;
Redis can. Everything that must be atomic is a Lua script (:mod:`._redis_scripts`), window
arithmetic runs on Redis's own clock, every key lives under one prefix with a hash tag (so
a Redis Cluster keeps them on one node) and every key expires.

Waiting never polls: a waiter sleeps until the moment Redis says its slot frees, or until a
message on the prefix's channel says something it waits on changed (an answer came back, a
hold was set, the process ahead took its turn, a shared close ended).

When Redis cannot be reached, calls go on under in-process limits, each budget cut to
``outage_share`` of itself (or, with ``on_outage="fail"``, are refused with
:class:`SharedLimitsUnavailableError`, nothing sent). One warning is logged per outage, and
Redis is asked again every ``outage_retry`` seconds until it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, Literal

from ._budgets import BudgetKey
from ._clock import Clock, Timer
from ._exceptions import ConfigurationError
from ._redis_scripts import ACQUIRE, GUARD_ADMIT, GUARD_FINISH, HOLD, RELEASE, SETTLE_CLOSE

__all__ = ["ENV_SHARED_LIMITS", "RedisLimits", "SharedStateDown", "check_redis_url"]

logger = logging.getLogger("bingx_async")

#: The environment variable naming the Redis to share limits through (a ``redis://`` URL).
ENV_SHARED_LIMITS = "BINGX_SHARED_LIMITS"

#: Seconds a Redis command may take before Redis counts as unreachable.
_COMMAND_TIMEOUT = 1.0

#: Connections to Redis per session at most (commands queue for a free one).
_MAX_CONNECTIONS = 32


class SharedStateDown(Exception):
    """Redis could not be used for this step (internal: the caller falls back or refuses)."""


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _with_hash_tag(prefix: str) -> str:
    if "{" in prefix and "}" in prefix.split("{", 1)[1]:
        return prefix if prefix.endswith(":") else prefix + ":"
    return "{" + prefix + "}:"


class RedisLimits:
    """Share rate limits, holds, error counts and closes in flight through Redis.

    ::

        client = BingXClient(api_key=..., secret_key=..., shared_limits="redis://localhost:6379/0")

    or, to choose the options below, ``shared_limits=RedisLimits("redis://...", egress="nat-a")``.
    ``redis`` is a URL or a ready ``redis.asyncio.Redis`` client (yours to close).

    * ``prefix``: where the keys live; a hash tag is added if it has none.
    * ``egress``: the name of the address this process sends from: IP budgets are shared by
      processes with the same egress. Default: this machine's host name. Give hosts behind
      one NAT address the same name.
    * ``lease``: seconds a request may stay in flight. A request still unanswered then is
      cut off, so a process that dies mid-request frees its slots at most ``lease`` later.
    * ``on_outage``: ``"local"`` (default) goes on under in-process limits cut to
      ``outage_share`` of each budget while Redis is unreachable; ``"fail"`` refuses calls
      with :class:`SharedLimitsUnavailableError` (nothing is sent) until it is back.
    * ``outage_retry``: seconds between attempts to reach Redis again during an outage.
    * ``time_source``: ``"redis"`` (default) dates everything on Redis's clock, so hosts'
      clock differences do not matter; ``"clock"`` uses the client's clock instead (for
      tests in virtual time, with every process on one clock).
    """

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str = "bingx_async",
        egress: str | None = None,
        lease: float = 15.0,
        on_outage: Literal["local", "fail"] = "local",
        outage_share: float = 0.25,
        outage_retry: float = 1.0,
        time_source: Literal["redis", "clock"] = "redis",
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise ConfigurationError("RedisLimits: prefix must be a non-empty string")
        if egress is not None and (not isinstance(egress, str) or not egress.strip()):
            raise ConfigurationError("RedisLimits: egress must be a non-empty string")
        for name, value in (("lease", lease), ("outage_retry", outage_retry)):
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigurationError(f"RedisLimits: {name} must be seconds > 0, got {value!r}")
        if lease <= 1.0:
            raise ConfigurationError("RedisLimits: lease must be longer than 1 s")
        if not (isinstance(outage_share, int | float) and 0 < outage_share <= 1):
            raise ConfigurationError(
                f"RedisLimits: outage_share must be in (0, 1], got {outage_share!r}"
            )
        if on_outage not in ("local", "fail"):
            raise ConfigurationError('RedisLimits: on_outage must be "local" or "fail"')
        if time_source not in ("redis", "clock"):
            raise ConfigurationError('RedisLimits: time_source must be "redis" or "clock"')
        self._redis: Any
        self._owns_redis: bool
        #: Where Redis is (host, port and database; never a password).
        self.where: str
        self._redis, self._owns_redis, self.where = _connect(redis)
        self.prefix: str = _with_hash_tag(prefix)
        self.egress: str = egress if egress is not None else socket.gethostname()
        self.lease: float = float(lease)
        self.on_outage = on_outage
        self.outage_share: float = float(outage_share)
        self.outage_retry: float = float(outage_retry)
        self.time_source = time_source
        #: This process's name in Redis (waiting turns, close claims).
        self.process_id: str = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.channel: str = self.prefix + "events"
        self._scripts = {
            name: self._redis.register_script(text)
            for name, text in (
                ("acquire", ACQUIRE),
                ("release", RELEASE),
                ("hold", HOLD),
                ("guard_admit", GUARD_ADMIT),
                ("guard_finish", GUARD_FINISH),
                ("settle_close", SETTLE_CLOSE),
            )
        }
        self._clock: Clock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._up = True
        #: Outages so far, and when the last one ended (monotonic; -inf: never).
        self.outages: int = 0
        self.recovered_at: float = -math.inf
        self._probe: Timer | None = None
        self._listener: asyncio.Task[None] | None = None
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def available(self) -> bool:
        """Whether Redis is in use now (``False`` during an outage, and once closed)."""
        return self._up and not self._closed

    def __repr__(self) -> str:
        state = "up" if self._up else "unreachable"
        return f"<RedisLimits {self.where} prefix={self.prefix!r} egress={self.egress!r} {state}>"

    # --- for the session ----------------------------------------------------------------

    def start(self, clock: Clock) -> None:
        """Begin serving a session, in its event loop and on its clock."""
        if self._clock is not None and self._clock is not clock:
            raise ConfigurationError("a RedisLimits serves one session; make one per session")
        self._clock = clock
        if self._listener is None and self.available:
            self._listener = self._spawn(self._listen())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Send what is still owed to Redis (releases), stop listening, close our client."""
        if self._probe is not None:
            self._probe.cancel()
        pending = [task for task in self._pending if not task.done()]
        if pending:
            # Releases and outcomes still owed: each is one command, bounded by its timeout.
            await asyncio.gather(*pending, return_exceptions=True)
        self._closed = True
        while self._tasks and self._clock is not None:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            try:
                async with self._clock.timeout_at(self._clock.monotonic() + 0.1):
                    await asyncio.gather(*tasks, return_exceptions=True)
            except TimeoutError:
                # A cancellation that lands as a redis-py write completes can be lost
                # (asyncio.wait_for on Python 3.11): cancel again.
                continue
        if self._owns_redis:
            await self._redis.aclose()
            await self._redis.connection_pool.disconnect()
        # Ready to serve another session of the same event loop (a default session that
        # closed with its last client, then a new client).
        self._clock = None
        self._closed = False

    # --- names --------------------------------------------------------------------------

    def budget_id(self, key: BudgetKey, window: float) -> str:
        kind, owner, name = key
        owner = _short_hash(owner) if kind == "account" else f"{self.egress}@{owner}"
        # No spaces: messages list the ids they concern separated by spaces.
        return f"{kind}|{owner}|{name}|{window:g}".replace(" ", "_")

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    def host_ban_key(self, host: str) -> str:
        return self.key("ban", f"{self.egress}@{host}")

    def lane_id(self, budget_ids: Iterable[str]) -> str:
        return _short_hash(" ".join(sorted(budget_ids)))

    def guard_keys(self, account: str, endpoint: str) -> list[str]:
        name = f"{_short_hash(account)}|{endpoint}"
        return [self.key("e", name), self.key("ef", name)]

    def close_keys(self, account: str | None, position_id: str) -> tuple[str, list[str]]:
        name = f"{_short_hash(account or '')}|{position_id}"
        return name, [self.key("c", name), self.key("o", name)]

    # --- commands -----------------------------------------------------------------------

    def now_arg(self) -> str:
        if self.time_source == "clock":
            assert self._clock is not None
            return repr(self._clock.time() * 1000)
        return ""

    async def run(self, script: str, keys: Sequence[str], args: Sequence[object]) -> Any:
        """Run one script; :class:`SharedStateDown` if Redis cannot be used."""
        if not self.available:
            raise SharedStateDown
        try:
            return await self._scripts[script](keys=list(keys), args=list(args))
        except Exception as error:
            self.outage(error)
            raise SharedStateDown from error

    async def command(self, name: str, *args: object) -> Any:
        if not self.available:
            raise SharedStateDown
        try:
            return await self._redis.execute_command(name, *args)
        except Exception as error:
            self.outage(error)
            raise SharedStateDown from error

    def later(self, work: Coroutine[Any, Any, None]) -> None:
        """Send ``work`` to Redis in the background (flushed by :meth:`aclose`)."""
        if self._clock is None or self._closed:
            work.close()
            return
        task = self._spawn(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle_close(
        self, keys: list[str], name: str, token: str, outcome: dict[str, Any], keep: float
    ) -> None:
        """Record the outcome of the close claimed with ``token``; let go of the claim."""
        text = json.dumps(outcome, separators=(",", ":"))
        with contextlib.suppress(SharedStateDown):
            await self.run(
                "settle_close", keys, [token, text, math.ceil(keep * 1000), self.channel, name]
            )

    # --- waking waiters -----------------------------------------------------------------

    def watch(self, names: Iterable[str]) -> asyncio.Event:
        """An event set when a message names one of ``names`` (or Redis comes or goes)."""
        event = asyncio.Event()
        for name in names:
            self._watchers.setdefault(name, set()).add(event)
        return event

    def unwatch(self, names: Iterable[str], event: asyncio.Event) -> None:
        for name in names:
            found = self._watchers.get(name)
            if found is not None:
                found.discard(event)
                if not found:
                    del self._watchers[name]

    def wake_all(self) -> None:
        for events in self._watchers.values():
            for event in events:
                event.set()

    def _wake(self, names: Iterable[str]) -> None:
        for name in names:
            for event in self._watchers.get(name, ()):
                event.set()

    async def _listen(self) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            # Whatever was published before this moment was missed: everyone looks again.
            self.wake_all()
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = message.get("data")
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    self._wake(text.split()[1:])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the connection went: an outage
            self.outage(error)
        finally:
            self._listener = None
            with contextlib.suppress(Exception):  # a dead connection: nothing more to do
                await pubsub.aclose()

    # --- outages ------------------------------------------------------------------------

    def outage(self, error: BaseException) -> None:
        """Redis failed: say so once, fall back, and try again later."""
        if not self.available:
            return
        self._up = False
        self.outages += 1
        mode = (
            f"going on under in-process limits ({self.outage_share:g} of each budget)"
            if self.on_outage == "local"
            else "refusing calls until it is back"
        )
        logger.warning(
            "shared limits: Redis at %s is unreachable (%s); %s",
            self.where,
            type(error).__name__,
            mode,
        )
        self.wake_all()
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        if self._clock is None or self._closed:
            return
        when = self._clock.monotonic() + self.outage_retry
        self._probe = self._clock.call_at(when, self._start_probe)

    def _start_probe(self) -> None:
        self._probe = None
        if not self._closed:
            self._spawn(self._try_again())

    async def _try_again(self) -> None:
        try:
            # Connections from before the outage are dead: start afresh.
            await self._redis.connection_pool.disconnect()
            await self._redis.execute_command("PING")
        except Exception:  # noqa: BLE001 - still down
            self._schedule_probe()
            return
        self._up = True
        assert self._clock is not None
        self.recovered_at = self._clock.monotonic()
        logger.warning("shared limits: Redis at %s is back; sharing limits again", self.where)
        if self._listener is None:
            self._listener = self._spawn(self._listen())
        self.wake_all()


def check_redis_url(url: str, name: str = "shared_limits") -> None:
    """Refuse, when a client is made, what cannot be a Redis URL or cannot be used."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(
            f"{name} must be a redis://, rediss:// or unix:// URL "
            f"(got {'a URL with scheme ' + repr(scheme) if scheme else 'no scheme'})"
        )
    try:
        import redis  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f'{name} needs redis-py: pip install "bingx-async[redis]"'
        ) from None


def _connect(redis: Any) -> tuple[Any, bool, str]:
    """The client to use, whether we own it, and where it points (no credentials)."""
    if isinstance(redis, str):
        try:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigurationError(
                'shared_limits needs redis-py: pip install "bingx-async[redis]"'
            ) from None
        try:
            # A bounded pool that makes a command wait for a free connection (a burst of
            # calls must not look like an outage), for at most the command timeout.
            pool = BlockingConnectionPool.from_url(
                redis,
                max_connections=_MAX_CONNECTIONS,
                timeout=_COMMAND_TIMEOUT,
                socket_timeout=_COMMAND_TIMEOUT,
                socket_connect_timeout=_COMMAND_TIMEOUT,
                # One more try on a fresh connection: a pooled one may have gone stale.
                retry=Retry(NoBackoff(), 1),
                decode_responses=True,
            )
            client = Redis(connection_pool=pool)
        except ValueError as error:
            raise ConfigurationError(f"shared_limits: not a Redis URL ({error})") from None
        return client, True, _where(client)
    if not all(hasattr(redis, name) for name in ("register_script", "pubsub", "execute_command")):
        raise ConfigurationError(
            "shared_limits must be a redis:// URL, a redis.asyncio.Redis client or a RedisLimits"
        )
    return redis, False, _where(redis)


def _where(client: Any) -> str:
    try:
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return str(kwargs["path"])
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
    except AttributeError:
        return type(client).__name__
