"""The account stream's exchange side: listen keys and their REST endpoints, the streams open on
them, what every fill pushes to them, and faults that make the delivery go wrong.

BingX's account stream, as documented: ``POST /openApi/user/auth/userDataStream``
hands out a listen key valid for 60 minutes, ``PUT`` extends it to 60 minutes from then,
``DELETE`` ends it; a WebSocket on ``/swap-market?listenKey=<key>`` then receives the account's
events, each frame gzip-compressed, with a text ``Ping`` now and then that expects ``Pong``.

The WebSocket server itself lives in ``_stream_server``, the one module that needs the
``websockets`` package; nothing here imports it. Events are only made while a stream server
runs ([`FakeBingX.serve_stream`][bingx_async.testing.FakeBingX.serve_stream]).

Time is read, and waited on, only through the simulator's clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from bingx_async._budgets import endpoint_name
from bingx_async._clock import Clock, Timer
from bingx_async._exceptions import ConfigurationError

from ._endpoints import KeyedHandler, WalletChange
from ._events import account_update, listen_key_expired, order_trade_update
from ._listenkeys import ListenKeys
from ._records import SimAccount, SimOrder, SimPosition
from ._wire import Incoming, SimResponse, encode

if TYPE_CHECKING:
    from ._simulator import FakeBingX

__all__ = ["LISTEN_KEY_PATH", "STREAM_PATH", "TIMER_SLACK", "SimStream", "StreamConnection"]

LISTEN_KEY_PATH = "/openApi/user/auth/userDataStream"
#: The WebSocket path of the swap account stream.
STREAM_PATH = "/swap-market"

Event = Mapping[str, object]

#: Timers may fire this much before their moment (the loop's resolution): treat that as due.
TIMER_SLACK = 0.001
_NORMAL_CLOSURE = 1000


class StreamConnection(Protocol):
    """One open stream, as the exchange side sees it (the server implements it)."""

    @property
    def listen_key(self) -> str: ...

    @property
    def uid(self) -> str: ...

    def push(self, event: Event | str) -> None:
        """Queue ``event`` (or a text such as ``Ping``) to be sent, gzipped, in order."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the stream with a close frame once what is queued has been sent."""
        ...

    def abort(self) -> None:
        """Cut the connection now, without a close frame."""
        ...


class SimStream:
    """The account stream of a [`FakeBingX`][bingx_async.testing.FakeBingX] (``sim.stream``):
    listen keys, the open streams, and the faults of their delivery.

    Settings (plain attributes, read when used): ``ping_interval`` seconds between the server's
    ``Ping`` texts (``None``: no pings), ``max_missed_pongs`` pings in a row left without a
    ``Pong`` before the server closes the stream (code 1008), ``listen_key_validity`` seconds a
    key lives after it is created or extended, ``new_order_events`` to push an
    ``ORDER_TRADE_UPDATE`` with status ``NEW`` before the ``FILLED`` one,
    ``require_signature`` to verify the listen-key requests' signature and timestamp like any
    signed request (BingX's docs send only the API key), and ``reject_invalid_keys``: a
    connection for an unknown or expired key is refused at the handshake with HTTP 401 when
    true, or accepted and closed at once with code 1008 when false.
    """

    def __init__(self, sim: FakeBingX) -> None:
        self.ping_interval: float | None = 5.0
        self.max_missed_pongs = 2
        self.listen_key_validity: float = 3600.0
        self.new_order_events = False
        self.require_signature = False
        self.reject_invalid_keys = True
        self._sim = sim
        self._keys = ListenKeys(sim._rng)
        self._connections: list[StreamConnection] = []
        self._published: dict[str, list[Event]] = {}
        self._servers = 0
        self._delay = 0.0
        self._duplicate = False
        self._holding = False
        self._held: list[tuple[str, list[Event]]] = []
        self._delayed: deque[tuple[float, str, list[Event]]] = deque()
        self._timer: Timer | None = None
        self._refuse_until = -math.inf
        self._refusal_status = 503

    @property
    def clock(self) -> Clock:
        """The simulator's clock."""
        return self._sim.clock

    # --- inspection -------------------------------------------------------------------------

    def listen_keys(self, account: SimAccount) -> list[str]:
        """The account's live listen keys, oldest first."""
        return self._keys.live(account.uid, self.clock.monotonic())

    def open_connections(self, account: SimAccount | None = None) -> int:
        """How many streams are open (for ``account``, if given)."""
        return sum(account is None or c.uid == account.uid for c in self._connections)

    def published(self, account: SimAccount) -> list[dict[str, object]]:
        """Every account event made for ``account``, in order, as made (before any fault)."""
        return [dict(event) for event in self._published.get(account.uid, [])]

    # --- faults -----------------------------------------------------------------------------

    def drop_connections(self, account: SimAccount | None = None) -> int:
        """Cut every open stream (of ``account``, if given) now, without a close frame, as a
        network failure would; returns how many were cut."""
        cut = [c for c in self._connections if account is None or c.uid == account.uid]
        for connection in cut:
            connection.abort()
            self._detach(connection)
        return len(cut)

    def delay_events(self, seconds: float) -> None:
        """Account events made from now on reach the streams ``seconds`` later (0: at once).
        Events are never reordered: one made later waits for those before it."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ConfigurationError(f"seconds must be finite and >= 0, got {seconds!r}")
        self._delay = seconds

    def duplicate_events(self, enabled: bool = True) -> None:
        """Send every account event twice in a row (or stop doing so)."""
        self._duplicate = enabled

    def hold_events(self) -> None:
        """Keep account events back until
        [`release_events`][bingx_async.testing.SimStream.release_events]."""
        self._holding = True

    def release_events(self) -> None:
        """Stop holding events back, and send those held, in order, to the streams open now."""
        self._holding = False
        held, self._held = self._held, []
        for uid, events in held:
            self._push(uid, events)

    def expire_listen_key(self, listen_key: str) -> None:
        """Make ``listen_key`` expire now: its streams get ``listenKeyExpired`` and close."""
        if self._keys.state(listen_key, self.clock.monotonic()) == "unknown":
            raise ConfigurationError("unknown listen key")
        self._keys.expire(listen_key, self.clock.monotonic())
        self._end_streams(listen_key, expired=True)

    def refuse_connections(self, seconds: float, *, status_code: int = 503) -> None:
        """Refuse new stream connections for ``seconds``: the handshake is answered with
        ``status_code`` instead of switching protocols. Open streams are not touched."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ConfigurationError(f"seconds must be finite and >= 0, got {seconds!r}")
        self._refuse_until = self.clock.monotonic() + seconds
        self._refusal_status = status_code

    # --- for the simulator and the server -----------------------------------------------------

    def _handlers(self) -> dict[str, KeyedHandler]:
        return {
            endpoint_name("POST", LISTEN_KEY_PATH): self._create_key,
            endpoint_name("PUT", LISTEN_KEY_PATH): self._extend_key,
            endpoint_name("DELETE", LISTEN_KEY_PATH): self._delete_key,
        }

    def _on_fill(
        self, account: SimAccount, position: SimPosition, order: SimOrder, wallet: WalletChange
    ) -> None:
        if not self._servers:
            return
        now_ms = self._sim.server_time_ms()
        events: list[Event] = []
        if self.new_order_events:
            events.append(order_trade_update(order, "NEW", event_ms=now_ms))
        events.append(order_trade_update(order, "FILLED", event_ms=now_ms))
        events.append(account_update(position, order, wallet, event_ms=now_ms))
        self._published.setdefault(account.uid, []).extend(events)
        self._push(account.uid, events)

    def _refusal(self) -> int | None:
        """The HTTP status to refuse a new connection with, if connections are refused now."""
        return self._refusal_status if self.clock.monotonic() < self._refuse_until else None

    def _key_owner(self, listen_key: str) -> str | None:
        return self._keys.owner(listen_key, self.clock.monotonic())

    def _key_expiry(self, listen_key: str) -> float | None:
        return self._keys.expires_at(listen_key)

    def _key_expired(self, listen_key: str) -> None:
        """For the server: ``listen_key`` has reached its expiry on the clock."""
        self._end_streams(listen_key, expired=True)

    def _attach(self, connection: StreamConnection) -> None:
        self._connections.append(connection)

    def _detach(self, connection: StreamConnection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)

    def _server_started(self) -> None:
        self._servers += 1

    def _server_stopped(self) -> None:
        self._servers -= 1
        if not self._servers:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._delayed.clear()

    # --- listen-key endpoints -----------------------------------------------------------------

    def _create_key(self, incoming: Incoming, account: SimAccount) -> SimResponse:
        key = self._keys.create(
            account.uid, now=incoming.arrived_at, validity=self.listen_key_validity
        )
        return SimResponse(200, encode({"listenKey": key}))

    def _extend_key(self, incoming: Incoming, account: SimAccount) -> SimResponse:
        key = incoming.value("listenKey")
        refused = self._check_key(key, incoming, account)
        if refused is not None:
            return refused
        assert key is not None
        self._keys.extend(key, now=incoming.arrived_at, validity=self.listen_key_validity)
        return SimResponse(200, b"{}")

    def _delete_key(self, incoming: Incoming, account: SimAccount) -> SimResponse:
        key = incoming.value("listenKey")
        refused = self._check_key(key, incoming, account)
        if refused is not None:
            return refused
        assert key is not None
        self._keys.delete(key)
        self._end_streams(key, expired=False)
        return SimResponse(200, b"{}")

    def _check_key(
        self, key: str | None, incoming: Incoming, account: SimAccount
    ) -> SimResponse | None:
        """BingX's documented answers: 204 without a ``listenKey``, 404 for a key that is not
        (or no longer) there; bodies are not documented, so they are empty."""
        if not key:
            return SimResponse(204, b"")
        if self._keys.owner(key, incoming.arrived_at) != account.uid:
            return SimResponse(404, b"")
        return None

    # --- delivery -----------------------------------------------------------------------------

    def _push(self, uid: str, events: list[Event]) -> None:
        if self._holding:
            self._held.append((uid, events))
        elif self._delay > 0 or self._delayed:
            self._delayed.append((self.clock.monotonic() + self._delay, uid, events))
            self._schedule()
        else:
            self._deliver(uid, events)

    def _deliver(self, uid: str, events: list[Event]) -> None:
        copies = 2 if self._duplicate else 1
        for connection in [c for c in self._connections if c.uid == uid]:
            for event in events:
                for _ in range(copies):
                    connection.push(event)

    def _schedule(self) -> None:
        if self._timer is None and self._delayed:
            self._timer = self.clock.call_at(self._delayed[0][0], self._deliver_due)

    def _deliver_due(self) -> None:
        self._timer = None
        now = self.clock.monotonic()
        while self._delayed and self._delayed[0][0] <= now + TIMER_SLACK:
            _, uid, events = self._delayed.popleft()
            self._deliver(uid, events)
        self._schedule()

    def _end_streams(self, listen_key: str, *, expired: bool) -> None:
        ending = [c for c in self._connections if c.listen_key == listen_key]
        for connection in ending:
            if expired:
                event = listen_key_expired(listen_key, event_ms=self._sim.server_time_ms())
                connection.push(event)
                connection.close(_NORMAL_CLOSURE, "listenKey expired")
            else:
                connection.close(_NORMAL_CLOSURE, "listenKey deleted")
