"""Calls in flight: each runs as a task its session owns, awaited by one or more callers.

Running a call in a task of its own, rather than in the caller's, is what lets it end with
its true outcome whatever happens to the callers:

* Concurrent closes of one position (by any client of the session, same account) share one
  flight: one request, the same outcome for all. Sharing is keyed; other calls fly alone.
* A caller that is cancelled only stops waiting. When the last caller leaves, a flight with
  nothing on the wire is withdrawn at once (never sent); one with a request on the wire
  stays until that request's answer, so its rate-limit slot is dated right and a new caller
  of the same position joins it and gets its outcome.
* An outcome nobody was left to receive is remembered for a while, per key: a later close
  of that position gets the result, or knows that an earlier attempt may have closed it.
* A flight sends through any still-open connection of the clients that asked for it, so
  closing one client never strands a close another client is waiting for.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar, cast

from ._clock import Clock
from ._connection import Connection
from ._exceptions import BingXError, ClientClosedError, detached

__all__ = ["Flight", "Flights"]

T = TypeVar("T")

#: Seconds an outcome nobody received is remembered for a later call of the same key.
ORPHAN_MEMORY = 600.0
#: At most this many such outcomes are remembered (the oldest are forgotten first).
ORPHAN_LIMIT = 10_000


class Flight(Generic[T]):
    """One call in progress."""

    __slots__ = (
        "connections",
        "followers",
        "key",
        "on_wire",
        "outcome",
        "sent_at",
        "stop_after_answer",
        "task",
        "unknown",
    )

    def __init__(self, key: Hashable | None, outcome: asyncio.Future[T]) -> None:
        self.key = key
        self.outcome = outcome
        self.task: asyncio.Task[None] | None = None
        #: One future per caller waiting for the outcome (see ``Flights.run``).
        self.followers: list[asyncio.Future[T]] = []
        self.connections: list[Connection] = []
        #: Requests of this flight on the wire now.
        self.on_wire = 0
        #: When (``clock.monotonic()``) its latest request left, if one did.
        self.sent_at: float | None = None
        #: Every caller left while a request was on the wire: finish that one, retry nothing.
        self.stop_after_answer = False
        #: The latest failure of this call (or of an earlier one for the same key that
        #: nobody heard the end of) whose outcome is unknown.
        self.unknown: BingXError | None = None

    def child(self) -> Flight[Any]:
        """A flight for a call made on this one's behalf, sending through its connections."""
        child: Flight[Any] = Flight(None, asyncio.get_running_loop().create_future())
        child.connections = self.connections
        return child

    def connection(self) -> Connection | None:
        """A connection still open among those of the clients that asked for this call."""
        for connection in self.connections:
            if connection.open:
                return connection
        return None

    @property
    def waiters(self) -> int:
        """Callers waiting for the outcome."""
        return len(self.followers)

    def succeed(self, result: T) -> None:
        """The call ended with ``result``: for every caller still waiting."""
        self.outcome.set_result(result)
        for follower in self.followers:
            if not follower.done():
                follower.set_result(result)

    def fail(self, error: BaseException) -> None:
        """The call ended with ``error``: for every caller still waiting."""
        self.outcome.set_exception(error)
        # Retrieved: each waiter re-raises it from a future of its own, if any is left.
        self.outcome.exception()
        for follower in self.followers:
            if not follower.done():
                follower.set_exception(error)


class Flights:
    """The calls in flight of one session."""

    def __init__(
        self, clock: Clock, spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    ) -> None:
        self._clock = clock
        self._spawn = spawn
        self._by_key: dict[Hashable, Flight[Any]] = {}
        self._all: set[Flight[Any]] = set()
        self._orphans: OrderedDict[Hashable, tuple[float, object]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._all)

    async def run(
        self,
        key: Hashable | None,
        connection: Connection,
        work: Callable[[Flight[T]], Awaitable[T]],
    ) -> T:
        """``work(flight)``'s outcome, from the flight of ``key`` if one is under way."""
        loop = asyncio.get_running_loop()
        flight: Flight[T] | None = self._by_key.get(key) if key is not None else None
        if flight is None:
            inherited = self._take_orphan(key) if key is not None else None
            if inherited is not None and not isinstance(inherited, BingXError):
                return cast(T, inherited)  # results are kept per key
            flight = self._start(key, work, inherited, loop)
        if connection not in flight.connections:
            flight.connections.append(connection)
        flight.stop_after_answer = False
        # A future of this caller's own, set with the outcome (as asyncio.shield would, without
        # its hops through the event loop): cancelling the caller cancels only it.
        follower: asyncio.Future[T] = loop.create_future()
        followers = flight.followers
        followers.append(follower)
        try:
            return await follower
        finally:
            followers.remove(follower)
            if not followers and not flight.outcome.done():
                self._abandon(flight)

    def connection_closing(self, connection: Connection) -> None:
        """``connection`` sends nothing more: flights with no other open connection end now
        (or, with a request on the wire, once its answer is in)."""
        for flight in list(self._all):
            stranded = connection in flight.connections and flight.connection() is None
            if stranded and not flight.on_wire:
                self._end(flight, _closed_error(flight, "the client was closed"))

    def close(self, reason: str) -> None:
        """End every flight: waiters get ``ClientClosedError``."""
        for flight in list(self._all):
            self._end(flight, _closed_error(flight, reason))
        self._orphans.clear()

    def rest(self) -> None:
        """No client is left: keep the outcomes remembered for later calls, without the
        tracebacks of the errors among them (their frames refer to the event loop)."""
        now = self._clock.monotonic()
        for key, (until, kept) in list(self._orphans.items()):
            if until < now:
                del self._orphans[key]
            elif isinstance(kept, BingXError):
                self._orphans[key] = (until, detached(kept))

    def tasks(self) -> list[asyncio.Task[None]]:
        return [flight.task for flight in self._all if flight.task is not None]

    # --- internals ----------------------------------------------------------------------

    def _start(
        self,
        key: Hashable | None,
        work: Callable[[Flight[T]], Awaitable[T]],
        inherited: BingXError | None,
        loop: asyncio.AbstractEventLoop,
    ) -> Flight[T]:
        outcome: asyncio.Future[T] = loop.create_future()
        flight = Flight(key, outcome)
        flight.unknown = inherited
        if key is not None:
            self._by_key[key] = flight
        self._all.add(flight)
        flight.task = self._spawn(self._fly(flight, work))
        return flight

    async def _fly(self, flight: Flight[T], work: Callable[[Flight[T]], Awaitable[T]]) -> None:
        try:
            result = await work(flight)
        except asyncio.CancelledError:
            if not flight.outcome.done():
                flight.fail(_cancelled_error(flight))
            raise
        except BaseException as error:
            if not flight.outcome.done():
                flight.fail(error)
            if not isinstance(error, Exception):
                raise
        else:
            if not flight.outcome.done():
                flight.succeed(result)
        finally:
            if self._forget(flight):
                self._remember(flight)

    def _abandon(self, flight: Flight[Any]) -> None:
        if flight.on_wire:
            flight.stop_after_answer = True
        else:
            self._end(flight, None)

    def _end(self, flight: Flight[Any], error: BingXError | None) -> None:
        """Stop ``flight`` now; its waiters, if any are left, get ``error``."""
        if error is not None and not flight.outcome.done():
            flight.fail(error)
        if self._forget(flight):
            self._remember(flight)
        if flight.task is not None:
            flight.task.cancel()

    def _forget(self, flight: Flight[Any]) -> bool:
        """Take ``flight`` off the books; ``False`` if that was done already."""
        if flight not in self._all:
            return False
        self._all.discard(flight)
        if flight.key is not None and self._by_key.get(flight.key) is flight:
            del self._by_key[flight.key]
        return True

    def _remember(self, flight: Flight[Any]) -> None:
        """Keep what a later call of the same key must know: a result nobody received, or
        that an attempt may have executed."""
        if flight.key is None:
            return
        outcome = flight.outcome
        error = outcome.exception() if outcome.done() else flight.unknown
        if outcome.done() and error is None:
            if flight.waiters:
                return
            kept: object = outcome.result()
        elif isinstance(error, BingXError) and error.may_have_executed:
            kept = error
        elif flight.unknown is not None:
            kept = flight.unknown
        else:
            return
        self._orphans[flight.key] = (self._clock.monotonic() + ORPHAN_MEMORY, kept)
        self._orphans.move_to_end(flight.key)
        while len(self._orphans) > ORPHAN_LIMIT:
            self._orphans.popitem(last=False)

    def _take_orphan(self, key: Hashable) -> Any:
        found = self._orphans.pop(key, None)
        if found is None or found[0] < self._clock.monotonic():
            return None
        return found[1]


def _closed_error(flight: Flight[Any], reason: str) -> ClientClosedError:
    unknown = flight.unknown
    if flight.on_wire:
        # Only a session's close ends a flight with a request on the wire (a client's close
        # waits for the answer): that request may have reached BingX and executed.
        message = f"{reason} while a request of the call was on the wire; it may have executed"
    elif unknown is None:
        message = f"not sent: {reason}"
    else:
        message = (
            f"{reason} before the call ended; an earlier attempt's outcome is unknown "
            f"({type(unknown).__name__})"
        )
    error = ClientClosedError(message, may_have_executed=unknown is not None or flight.on_wire > 0)
    error.earlier_error = unknown
    return error


def _cancelled_error(flight: Flight[Any]) -> BingXError:
    unknown = flight.unknown
    may_have_executed = unknown is not None
    error = BingXError(
        "the call was cancelled from outside before it ended (for example by a shutdown that "
        "cancels every task)"
        + ("; a request of it may have executed" if may_have_executed else "; nothing was sent"),
        may_have_executed=may_have_executed,
    )
    error.earlier_error = unknown
    return error
