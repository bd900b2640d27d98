"""RedisLimits: the Redis that a session's limits are shared through; RedisStore, what runs
on it, and its health.

BingX counts its per-UID limits across every program trading the account, and its IP
limits across every process on one address. One process's limiter cannot see the others;
Redis can. Everything that must be atomic is a Lua script (``_scripts``), window
arithmetic runs on Redis's own clock, every key lives under one prefix with a hash tag (so
a Redis Cluster keeps them on one node) and every key but the epoch expires.

Waiting never polls: a waiter sleeps until the moment Redis says its slot frees, or until a
message on the prefix's channel says something it waits on changed.

A Redis that cannot keep the shared state is not used: one that evicts keys under memory
pressure, a replica, one whose user may not run a command the scripts need, one that does
not answer. Each is found at start (and whenever a command fails), said once in a warning
(or in the error of every call, with ``on_outage="fail"``) that names what to change, and
checked again every ``outage_retry`` seconds; meanwhile calls go on under in-process limits
cut to ``outage_share`` of each budget. A Redis that answers but lost the state (flushed,
restarted empty) is found through the epoch key and handled like the start of an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Literal

from bingx_async._budgets import BudgetKey
from bingx_async._clock import Clock, Timer
from bingx_async._exceptions import ConfigurationError, error_text

from ._health import eviction_problem, problem, replica_problem
from ._scripts import ADMIT, FINISH, HOLD, PROBE

__all__ = [
    "ENV_SHARED_LIMITS",
    "MillisecondsSince",
    "RedisLimits",
    "RedisStore",
    "SharedStateDown",
    "check_redis_url",
]

logger = logging.getLogger("bingx_async")

#: The environment variable naming the Redis to share limits through (a ``redis://`` URL).
ENV_SHARED_LIMITS = "BINGX_SHARED_LIMITS"

#: Seconds a Redis command may take before Redis counts as unreachable.
_COMMAND_TIMEOUT = 1.0

#: Connections to Redis per session at most (commands queue for a free one).
_MAX_CONNECTIONS = 32


class MillisecondsSince:
    """An argument of a script sent later: milliseconds from ``since`` (monotonic) to when
    it is sent."""

    __slots__ = ("since",)

    def __init__(self, since: float) -> None:
        self.since = since

    def at(self, now: float) -> float:
        return max(0.0, (now - self.since) * 1000)


#: A script to run in the background: its name, keys, arguments, and what gets its answer.
_Queued = tuple[str, Sequence[str], Sequence[object], "Callable[[Any], None] | None"]


class SharedStateDown(Exception):
    """Redis could not be used for this step (internal: the caller falls back or refuses)."""


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _with_hash_tag(prefix: str) -> str:
    # Redis hashes only what is between the first "{" and the next "}", when that is not
    # empty: then every key of the prefix is in one slot of a cluster.
    opening = prefix.find("{")
    if opening >= 0 and prefix.find("}", opening) > opening + 1:
        return prefix if prefix.endswith(":") else prefix + ":"
    return "{" + prefix + "}:"


class RedisLimits:
    """Share rate limits, holds, error counts and closes in flight through Redis.

    ```python
    client = BingXClient(shared_limits="redis://localhost:6379/0")
    ```

    or, to choose the options below, ``shared_limits=RedisLimits("redis://...", egress="nat-a")``.
    ``redis`` is a URL or a ready ``redis.asyncio.Redis`` client (yours to close). The Redis
    must keep what it is given: ``maxmemory-policy noeviction`` (or no ``maxmemory``), a
    primary rather than a replica, and a user allowed the commands the scripts run (see the
    docs' shared-limits page). A Redis that is not so is refused when first used.

    * ``prefix``: where the keys live; a hash tag is added if it has none.
    * ``egress``: the name of the address this process sends from: IP budgets are shared by
      processes with the same egress. Default: this machine's host name. Give hosts behind
      one NAT address the same name.
    * ``lease``: seconds a request may stay in flight, and a close stay claimed without news.
      A request still unanswered then is cut off, so a process that dies mid-request frees
      its slots, and its claims, at most ``lease`` later.
    * ``on_outage``: ``"local"`` (default) goes on under in-process limits cut to
      ``outage_share`` of each budget while Redis cannot be used; ``"fail"`` refuses calls
      with [`SharedLimitsUnavailableError`][bingx_async.SharedLimitsUnavailableError] (nothing is
      sent) until it can.
    * ``outage_retry``: seconds between checks of a Redis that could not be used.
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
        self._store = RedisStore(
            redis,
            prefix=prefix,
            egress=egress,
            lease=float(lease),
            on_outage=on_outage,
            outage_share=float(outage_share),
            outage_retry=float(outage_retry),
            time_source=time_source,
        )

    # The options as given (``prefix`` with its hash tag), and where Redis is.

    @property
    def prefix(self) -> str:
        """The keys' prefix, with its hash tag (``"{bingx_async}:"`` by default)."""
        return self._store.prefix

    @property
    def egress(self) -> str:
        return self._store.egress

    @property
    def lease(self) -> float:
        return self._store.lease

    @property
    def on_outage(self) -> Literal["local", "fail"]:
        return self._store.on_outage

    @property
    def outage_share(self) -> float:
        return self._store.outage_share

    @property
    def outage_retry(self) -> float:
        return self._store.outage_retry

    @property
    def time_source(self) -> Literal["redis", "clock"]:
        return self._store.time_source

    @property
    def where(self) -> str:
        """Where Redis is: host, port and database (never a password)."""
        return self._store.where

    # Health.

    @property
    def available(self) -> bool:
        """Whether Redis is in use now (``False`` during an outage, and once closed)."""
        return self._store.available

    @property
    def problem(self) -> str | None:
        """Why Redis is not in use now (``None`` while it is): what to change, in words."""
        return self._store.problem

    def __repr__(self) -> str:
        state = "up" if self.available else "not in use"
        return f"<RedisLimits {self.where} prefix={self.prefix!r} egress={self.egress!r} {state}>"


class RedisStore:
    """The machinery behind a :class:`RedisLimits`: its Redis client and scripts, the
    epoch, waking waiters, and Redis's health. The engine
    (:class:`~bingx_async._redis._engine.RedisSharedLimits`) runs on it."""

    def __init__(
        self,
        redis: Any,
        *,
        prefix: str,
        egress: str | None,
        lease: float,
        on_outage: Literal["local", "fail"],
        outage_share: float,
        outage_retry: float,
        time_source: Literal["redis", "clock"],
    ) -> None:
        self._redis: Any
        self._owns_redis: bool
        #: Where Redis is (host, port and database; never a password).
        self.where: str
        self._redis, self._owns_redis, self.where = _connect(redis)
        self.prefix: str = _with_hash_tag(prefix)
        self.egress: str = egress if egress is not None else socket.gethostname()
        self.lease = lease
        self.on_outage = on_outage
        self.outage_share = outage_share
        self.outage_retry = outage_retry
        self.time_source = time_source
        #: This process's name in Redis (waiting turns, close claims).
        self.process_id: str = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.channel: str = self.prefix + "events"
        self.epoch_key: str = self.prefix + "epoch"
        #: A key no script writes: given where a request has no key of a kind.
        self.unused_key: str = self.prefix + "-"
        #: The epoch a script writes if it finds none.
        self.new_epoch: str = uuid.uuid4().hex
        self._ids = itertools.count()
        self._scripts = {
            name: self._redis.register_script(text)
            for name, text in (("admit", ADMIT), ("finish", FINISH), ("hold", HOLD))
        }
        self._probe_script = self._redis.register_script(PROBE)
        #: The epoch this process knows ("" until the first check), and the last epoch
        #: whose loss it noted.
        self.epoch: str = ""
        self._loss_noted = ""
        self._clock: Clock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._up = False
        #: Why Redis is not used now (``None`` while it is).
        self.problem: str | None = "not checked yet"
        self._checked: asyncio.Event | None = None
        #: Outages and losses of state so far, and when the last one ended (monotonic;
        #: -inf: never).
        self.outages: int = 0
        self.recovered_at: float = -math.inf
        self._warned: str | None = None
        self._retry_timer: Timer | None = None
        self._listener: asyncio.Task[None] | None = None
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def available(self) -> bool:
        """Whether Redis is in use now (``False`` during an outage, and once closed)."""
        return self._up and not self._closed

    def __repr__(self) -> str:
        state = "up" if self.available else "not in use"
        return f"<RedisStore {self.where} prefix={self.prefix!r} egress={self.egress!r} {state}>"

    # --- for the session ----------------------------------------------------------------

    def start(self, clock: Clock) -> None:
        """Begin serving a session, in its event loop and on its clock: check Redis."""
        if self._clock is not None and self._clock is not clock:
            raise ConfigurationError("a RedisLimits serves one session; make one per session")
        if self._clock is not None:
            return
        self._clock = clock
        self._checked = asyncio.Event()
        self._spawn(self._check_and_use())

    async def ready(self) -> None:
        """Wait for the first check of Redis (bounded by the command timeouts)."""
        if self._checked is not None and not self._checked.is_set():
            await self._checked.wait()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def aclose(self) -> None:
        """Send what is still owed to Redis (finishes), stop listening, close our client."""
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        pending = [task for task in self._pending if not task.done()]
        if pending:
            # Finishes and outcomes still owed: each is one script, bounded by its timeout.
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
        self._up = False
        self._listener = None
        self._checked = None
        self.problem = "not checked yet"
        self._warned = None

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

    def claim_keys(self, name: str) -> tuple[str, list[str]]:
        """A claim's id in messages, and its claim, outcome and waiters keys."""
        short = _short_hash(name)
        return short, [self.key("c", short), self.key("o", short), self.key("cw", short)]

    def permit_id(self) -> str:
        """A name for one admitted attempt, unique among every process's."""
        return f"{self.process_id}:{next(self._ids):x}"

    # --- commands -----------------------------------------------------------------------

    def now_arg(self) -> str:
        if self.time_source == "clock":
            assert self._clock is not None
            return repr(self._clock.time() * 1000)
        return ""

    async def run_many(
        self, script: str, calls: Sequence[tuple[Sequence[str], Sequence[object]]]
    ) -> list[Any]:
        """Run ``script`` once per call, in one write; ``SharedStateDown`` if Redis
        cannot be used. Answers after the first may be errors, for the caller to weigh.

        Scripts queued by ``send_later`` go first, in the same write: what an attempt
        sends after its request costs no round trip of its own.
        """
        if not self.available:
            raise SharedStateDown
        queued, self._queue = self._queue, []
        batch: list[_Queued] = [*queued, *((script, keys, args, None) for keys, args in calls)]
        try:
            if len(batch) == 1:
                keys, args = calls[0]
                answers = [await self._scripts[script](keys=keys, args=args)]
            else:
                answers = await self._send_batch(batch)
        except Exception as error:
            self.outage(problem(error, self.where))
            raise SharedStateDown from error
        self._deliver(queued, answers)
        mine = answers[len(queued) :]
        if isinstance(mine[0], Exception):
            self.outage(problem(mine[0], self.where))
            raise SharedStateDown from mine[0]
        return mine

    def send_later(
        self,
        script: str,
        keys: Sequence[str],
        args: Sequence[object],
        then: Callable[[Any], None] | None = None,
    ) -> None:
        """Run ``script`` soon, in the background (``then`` gets its answer).

        Scripts queued in one turn of the event loop go to Redis together, in one pipeline:
        one write and one read for many closes' finishes. What cannot be sent (Redis gone,
        the session closed) is left to the leases, which end the slots and claims.
        """
        if self._clock is None or self._closed or not self.available:
            return
        self._queue.append((script, keys, args, then))
        if self._flusher is None:
            self._flusher = task = self._spawn(self._flush())
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _flush(self) -> None:
        try:
            while self._queue and not self._closed and self.available:
                batch, self._queue = self._queue, []
                try:
                    answers = await self._send_batch(batch)
                except Exception as error:  # noqa: BLE001 - any failure: Redis is not usable
                    self.outage(problem(error, self.where))
                    return
                self._deliver(batch, answers)
        finally:
            self._flusher = None
            self._queue.clear()

    def _deliver(self, batch: list[_Queued], answers: list[Any]) -> None:
        for (*_, then), answer in zip(batch, answers, strict=False):
            if isinstance(answer, Exception):
                self.outage(problem(answer, self.where))
            elif then is not None:
                then(answer)

    async def _send_batch(self, batch: list[_Queued]) -> list[Any]:
        from redis.exceptions import NoScriptError

        assert self._clock is not None
        now = self._clock.monotonic()
        for index, (name, keys, args, then) in enumerate(batch):
            if any(isinstance(arg, MillisecondsSince) for arg in args):
                args = [arg.at(now) if isinstance(arg, MillisecondsSince) else arg for arg in args]
                batch[index] = (name, keys, args, then)
        if len(batch) == 1:
            name, keys, args, _ = batch[0]
            return [await self._scripts[name](keys=keys, args=args)]
        pipe = self._redis.pipeline(transaction=False)
        for name, keys, args, _ in batch:
            pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        answers: list[Any] = await pipe.execute(raise_on_error=False)
        for index, answer in enumerate(answers):
            if isinstance(answer, NoScriptError):
                # Redis restarted or its scripts were flushed: load this one and run it.
                name, keys, args, _ = batch[index]
                answers[index] = await self._scripts[name](keys=keys, args=args)
        return answers

    # --- the epoch ----------------------------------------------------------------------

    def lost_state(self, epoch: str) -> None:
        """A script found another epoch: Redis lost what it held. Adopt the new epoch, and
        go on as at the start of an outage until every window has passed."""
        if epoch == self.epoch:
            return
        had, self.epoch = self.epoch, epoch
        if epoch == self.new_epoch:
            self.new_epoch = uuid.uuid4().hex
        if had and self._loss_noted != had:
            self._note_loss(had)

    def suspect_lost_state(self, epoch: str) -> None:
        """A finish made under ``epoch`` found another: the next admission learns which. If
        ``epoch`` is still the one relied on, its windows are gone from now on; a newer one
        adopted meanwhile noted that loss already."""
        if epoch and epoch == self.epoch and self._loss_noted != epoch:
            self._note_loss(epoch)

    def _note_loss(self, lost: str) -> None:
        """The state of epoch ``lost`` is gone (noted once per epoch)."""
        self._loss_noted = lost
        self.outages += 1
        assert self._clock is not None
        self.recovered_at = self._clock.monotonic()
        logger.warning(
            "shared limits: Redis at %s lost the shared state (flushed, evicted or restarted "
            "empty); keeping to %g of each budget until the windows it held have passed",
            self.where,
            self.outage_share,
        )
        # Whoever sleeps on what Redis said must ask the stand-in now.
        self.wake_all()

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

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        pubsub = self._redis.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "subscribe" and not subscribed.done():
                    # Redis confirmed (a refusal comes instead, as an error).
                    subscribed.set_result(None)
                    # Whatever was published before this moment was missed: look again.
                    self.wake_all()
                elif kind == "message":
                    data = message.get("data")
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    self._wake(text.split()[1:])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - the connection went, or was refused
            if not subscribed.done():
                subscribed.set_exception(error)
            else:
                self.outage(problem(error, self.where))
        finally:
            self._listener = None
            with contextlib.suppress(Exception):  # a dead connection: nothing more to do
                await pubsub.aclose()

    # --- health -------------------------------------------------------------------------

    async def _check_and_use(self) -> None:
        try:
            problem = await self._check()
        finally:
            if self._checked is not None:
                self._checked.set()
        if problem is None:
            self._use()
        else:
            self._refuse(problem)

    async def _check(self) -> str | None:
        """What keeps this Redis from holding the shared state, or ``None`` if nothing."""
        assert self._clock is not None
        try:
            async with self._clock.timeout_at(self._clock.monotonic() + 4 * _COMMAND_TIMEOUT):
                if self._owns_redis:
                    # Connections from before an outage are dead: start afresh.
                    await self._redis.connection_pool.disconnect()
                found = await eviction_problem(self._redis, self.where)
                if found is None:
                    found = await replica_problem(self._redis, self.where)
                if found is not None:
                    return found
                probe = [self.key("probe", name) for name in ("z", "h", "s")]
                epoch = await self._probe_script(
                    keys=[self.epoch_key, *probe], args=[uuid.uuid4().hex, self.channel]
                )
                if self._listener is None:
                    subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._listener = self._spawn(self._listen(subscribed))
                    await subscribed
        except TimeoutError:
            return f"Redis at {self.where} did not answer within {4 * _COMMAND_TIMEOUT:g} s"
        except Exception as error:  # noqa: BLE001 - whatever it is, Redis is not usable
            return problem(error, self.where)
        self.lost_state(epoch if isinstance(epoch, str) else str(epoch))
        return None

    def _use(self) -> None:
        was_down = self._warned is not None
        self._up = True
        self.problem = None
        self._warned = None
        if was_down:
            assert self._clock is not None
            self.outages += 1
            self.recovered_at = self._clock.monotonic()
            logger.warning("shared limits: Redis at %s is back; sharing limits again", self.where)
        self.wake_all()

    def _refuse(self, problem: str) -> None:
        self._up = False
        self.problem = problem
        if self._warned != problem:
            self._warned = problem
            mode = (
                f"going on under in-process limits ({self.outage_share:g} of each budget)"
                if self.on_outage == "local"
                else "refusing calls until it is fixed"
            )
            logger.warning("shared limits: %s; %s", problem, mode)
        self.wake_all()
        if self._clock is not None and not self._closed and self._retry_timer is None:
            when = self._clock.monotonic() + self.outage_retry
            self._retry_timer = self._clock.call_at(when, self._check_again)

    def _check_again(self) -> None:
        self._retry_timer = None
        if not self._closed and self._clock is not None:
            self._spawn(self._check_and_use())

    def outage(self, problem: str) -> None:
        """Redis failed a command: say so once, fall back, and check again later."""
        if not self.available:
            return
        self._refuse(problem)


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
            raise ConfigurationError(
                f"shared_limits: not a Redis URL ({error_text(error)})"
            ) from None
        return client, True, _where(client)
    if not all(hasattr(redis, name) for name in ("register_script", "pubsub", "execute_command")):
        raise ConfigurationError(
            "shared_limits must be a redis:// URL, a redis.asyncio.Redis client or a RedisLimits"
        )
    get_encoder = getattr(redis, "get_encoder", None)
    if get_encoder is not None and not get_encoder().decode_responses:
        raise ConfigurationError(
            "shared_limits: the redis.asyncio.Redis client must be made with decode_responses=True"
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
