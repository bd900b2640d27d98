"""BingX's account stream (user data stream), client side; the client uses it for
``account_stream()`` and ``wait_fill``, and the package exports its public names.

Modules, one idea each:

- ``_events``: the typed events a bot sees, and the reading of one frame;
- ``_settings``: :class:`StreamSettings`, checked when made;
- ``_listen_key``: the listen key's life over REST (create, extend, replace, delete);
- ``_websocket``: one WebSocket connection at a time, reconnected with back-off;
- ``_subscription``: one subscriber's bounded queue, read as an async iterator;
- ``_fills``: orders' final updates, kept for callers waiting for a fill;
- ``_stream``: :class:`AccountStream`, which owns all of the above for one account.

``websockets`` is needed only once a stream is made (the ``stream`` extra).
"""

from __future__ import annotations

from ._events import (
    AccountUpdate,
    BalanceChange,
    EventsDropped,
    MalformedFrameError,
    OrderUpdate,
    OtherEvent,
    PositionChange,
    StreamEvent,
    StreamReconnected,
    parse_frame,
)
from ._listen_key import LISTEN_KEY_PATH, ListenKey, RestCall
from ._settings import DEFAULT_STREAM_SETTINGS, DEFAULT_STREAM_URL, DEMO_STREAM_URL, StreamSettings
from ._stream import AccountStream
from ._subscription import StreamSubscription

__all__ = [
    "DEFAULT_STREAM_SETTINGS",
    "DEFAULT_STREAM_URL",
    "DEMO_STREAM_URL",
    "LISTEN_KEY_PATH",
    "AccountStream",
    "AccountUpdate",
    "BalanceChange",
    "EventsDropped",
    "ListenKey",
    "MalformedFrameError",
    "OrderUpdate",
    "OtherEvent",
    "PositionChange",
    "RestCall",
    "StreamEvent",
    "StreamReconnected",
    "StreamSettings",
    "StreamSubscription",
    "parse_frame",
]
