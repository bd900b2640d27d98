"""BingXSession: the one owner of everything clients share.

Two accounts in one bot share their host's IP budgets; two clients of one key share its
account budgets, its error counts and its closes in flight; every client of a host shares
BingX's clock offset. All of that lives in a session, an object with a visible life:
created, used by clients, closed. Closing it ends what it owns: waiters are refused, calls
in flight end with ``ClientClosedError``, wake-ups and background tasks are cancelled.

Clients that are not given a session use their event loop's default one (per clock). It
lives as long as its loop: when its last client closes it keeps its rate-limit state for the
loop's next client but runs nothing and refers to nothing of the loop (one with shared limits
closes instead: Redis keeps its state). A loop that shuts down with clients still open
(``asyncio.run`` and ``asyncio.Runner`` finalise asynchronous generators, which is how the
session hears of it) closes it, so nothing of the library outlives the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ._clock import Clock, SystemClock
from ._confirm import SymbolBook
from ._exceptions import ClientClosedError
from ._flights import Flights
from ._limits import Limits
from ._memory_limits import MemoryLimits
from ._ratelimit import BudgetUsage
from ._redis import RedisLimits, RedisSharedLimits
from ._stream._registry import StreamRegistry
from ._timesync import ServerClock

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["BingXSession", "default_session"]


class BingXSession:
    """What clients share: rate-limit budgets and holds, error counts, BingX's clock offset,
    and closes in flight.

    Clients made without ``session=`` share their event loop's default session, which is
    what most bots want (it lives as long as the loop, so clients made one after another
    share it too). Pass a session explicitly to decide who shares with whom, or to
    control when shared state ends:

    ```python
    async with BingXSession() as session:
        strategy = BingXClient(session=session, api_key=..., secret_key=...)
        risk = BingXClient(session=session, api_key=..., secret_key=...)
    ```

    A session belongs to the event loop it is first used in. ``clock`` is the clock of every
    client using it (default [`SystemClock`][bingx_async.SystemClock]).

    ``shared_limits`` shares all of this with other processes and machines through Redis: a
    ``redis://`` URL, a ``redis.asyncio.Redis`` client, or a
    [`RedisLimits`][bingx_async.RedisLimits] for its options (see
    [shared limits through Redis][shared-limits]). The session closes what it made
    from a URL.
    """

    def __init__(self, *, clock: Clock | None = None, shared_limits: Any = None) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._shared: RedisLimits | None = None
        #: Budgets and holds, error counts and claims, in memory or shared through Redis.
        self._limits: Limits
        if shared_limits is None:
            self._limits = MemoryLimits(self._clock)
        else:
            store = (
                shared_limits
                if isinstance(shared_limits, RedisLimits)
                else RedisLimits(shared_limits)
            )
            self._shared = store
            self._limits = RedisSharedLimits(self._clock, store._store)
        self._server_clocks: dict[str, ServerClock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Calls in flight (see :mod:`bingx_async._flights`).
        self._flights = Flights(self._clock, self._spawn)
        #: Which symbol each position is in, as far as clients of this session have seen.
        self._symbols: SymbolBook = SymbolBook()
        #: ``uid="auto"``: per (host, key fingerprint), the UID, a lookup under way, or
        #: until when not to ask again.
        self._uids: dict[tuple[str, str], str | float | asyncio.Future[str | None]] = {}
        self._connections: set[Connection] = set()
        #: Account streams, one per account, shared by its clients.
        self._streams = StreamRegistry()
        self._loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._closed = False
        self._default = False
        self._default_key: tuple[Clock, object] = (self._clock, None)
        self._lifetime: AsyncGenerator[None, None] | None = None

    # --- public -------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def shared_limits(self) -> RedisLimits | None:
        """The Redis this session shares its limits through, if any."""
        return self._shared

    def rate_limit_usage(self) -> list[BudgetUsage]:
        """What every budget of this session holds now (call from its event loop); with
        shared limits, this process's part."""
        return self._limits.usage()

    async def __aenter__(self) -> Self:
        self._check_usable()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """End everything the session owns (idempotent).

        Calls still queued or in flight end with
        [`ClientClosedError`][bingx_async.ClientClosedError]; clients using the session can make no
        more calls.
        """
        if not self._closed:
            await self._streams.aclose()
        tasks = self._shutdown("the session was closed")
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._limits.aclose()
        lifetime, self._lifetime = self._lifetime, None
        if lifetime is not None:
            await lifetime.aclose()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<BingXSession {state}: {len(self._connections)} client(s), "
            f"{len(self._flights)} call(s) in flight, clock={self._clock!r}>"
        )

    # --- for clients and the pipeline (private to the library) --------------------------

    def _server_clock(self, host: str) -> ServerClock:
        """BingX's clock as measured from ``host``."""
        found = self._server_clocks.get(host)
        if found is None:
            found = self._server_clocks[host] = ServerClock(self._clock)
        return found

    def _attach(self, connection: Connection) -> None:
        """``connection``'s client uses this session from now on."""
        self._check_usable()
        self._connections.add(connection)

    async def _detach(self, connection: Connection) -> None:
        """``connection``'s client is closing: end the flights only it could send, and, if
        it was a default session's last client, close the session when Redis keeps what it
        shares, or else let it rest until the next client (see ``_rest``)."""
        self._flights.connection_closing(connection)
        self._connections.discard(connection)
        if self._default and not self._connections:
            if self._shared is not None:
                await self.aclose()
            else:
                await self._rest()

    def _usable(self) -> bool:
        """Whether the session is open and in use in the running event loop (what
        ``_check_usable`` checks, without raising or starting anything)."""
        loop = self._loop
        return not self._closed and loop is not None and loop() is asyncio.get_running_loop()

    def _check_usable(self) -> None:
        """Raise unless the session is open and this is its event loop."""
        if self._closed:
            raise ClientClosedError("this BingXSession is closed", may_have_executed=False)
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = weakref.ref(loop)
            self._limits.start()
        elif self._loop() is not loop:
            raise RuntimeError(
                "a BingXSession belongs to the event loop it was first used in; "
                "make one per event loop"
            )
        if self._lifetime is None:
            self._watch_loop_end()

    # --- internals ----------------------------------------------------------------------

    async def _rest(self) -> None:
        """The default session's last client closed: end the session's tasks and let go of
        its event loop, but keep what the loop's next clients must know (budgets and holds,
        error counts, BingX's clock offset, remembered outcomes), so that short-lived
        clients keep to BingX's limits together.

        Resting, the session refers to nothing of its loop (no task, timer or future, no
        traceback), so the registry of default sessions, which holds loops weakly, lets go of
        the session when its loop is gone, however the loop was closed.
        """
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._connections or self._closed:
            return  # a client came meanwhile, or the session was closed
        self._limits.rest()
        self._flights.rest()
        lifetime, self._lifetime = self._lifetime, None
        if lifetime is not None:
            await lifetime.aclose()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` in a task the session owns (cancelled when it closes)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _shutdown(self, reason: str) -> list[asyncio.Task[None]]:
        """Refuse waiters, end flights, cancel wake-ups and tasks; return the tasks."""
        if self._closed:
            return []
        self._closed = True
        self._limits.close(
            lambda: ClientClosedError(f"not sent: {reason}", may_have_executed=False)
        )
        self._flights.close(reason)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        self._connections.clear()
        _forget_default(self)
        return tasks

    def _watch_loop_end(self) -> None:
        """Close when the event loop shuts down its asynchronous generators.

        The loop learns of an asynchronous generator when it first iterates; that first
        step runs to its ``yield`` without suspending, so it is driven here directly.
        """

        async def lifetime() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                # Still watched (not let go of by aclose() or _rest()): the loop ended.
                if self._lifetime is not None:
                    self._lifetime = None
                    self._shutdown("its event loop ended")

        self._lifetime = lifetime()
        with contextlib.suppress(StopIteration):
            self._lifetime.__anext__().send(None)


#: The default sessions: per event loop, one per clock. The loop is held weakly (a resting
#: session refers to nothing of it), and an entry is removed when its session closes.
_DEFAULTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Clock, object], BingXSession]
] = weakref.WeakKeyDictionary()


def default_session(clock: Clock, shared_limits: object = None) -> BingXSession:
    """The running event loop's default session for ``clock`` and ``shared_limits``
    (clients naming the same Redis URL share one), created on first use."""
    loop = asyncio.get_running_loop()
    per_loop = _DEFAULTS.setdefault(loop, {})
    key = (clock, shared_limits)
    session = per_loop.get(key)
    if session is None:
        # A loop closed without finalising its asynchronous generators never told its
        # sessions; let go of them here.
        for closed in [other for other in _DEFAULTS if other.is_closed()]:
            del _DEFAULTS[closed]
        session = per_loop[key] = BingXSession(clock=clock, shared_limits=shared_limits)
        session._default = True
        session._default_key = key
        session._check_usable()
    return session


def _forget_default(session: BingXSession) -> None:
    loop = session._loop() if session._loop is not None else None
    per_loop = _DEFAULTS.get(loop) if loop is not None else None
    key = session._default_key
    if per_loop is not None and per_loop.get(key) is session:
        del per_loop[key]
        if not per_loop:
            del _DEFAULTS[loop]  # type: ignore[arg-type]
