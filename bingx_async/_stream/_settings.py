"""How an account stream behaves: one frozen dataclass of settings, checked when made."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from bingx_async._config import DEMO_BASE_URL, PRODUCTION_BASE_URL, host_identity
from bingx_async._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_STREAM_SETTINGS",
    "DEFAULT_STREAM_URL",
    "DEMO_STREAM_URL",
    "StreamSettings",
    "stream_settings_for",
]

#: BingX's swap account stream (production).
DEFAULT_STREAM_URL = "wss://open-api-swap.bingx.com/swap-market"
#: ... and its demo-trading (VST) twin.
DEMO_STREAM_URL = "wss://vst-open-api-ws.bingx.com/swap-market"


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Settings of an account stream; durations in seconds.

    * ``url``: the WebSocket address; the listen key is added as ``?listenKey=``.
    * ``extend_every``: how often the listen key is extended (BingX keeps one 60 minutes
      after it is created or extended; clients extend every 30 minutes).
    * ``idle_timeout``: a connection that brings no frame (not even ``Ping``) for this long is
      taken for dead and replaced (``None``: never).
    * ``open_timeout``: how long opening a connection may take.
    * ``backoff_initial``, ``backoff_max``, ``backoff_jitter``: the wait before the n-th
      attempt in a row to connect again is ``min(backoff_max, backoff_initial * 2**n)``, less
      a random part of up to ``backoff_jitter`` of it (0: none, 1: all of it).
    * ``queue_size``: events each subscriber may leave unread; when one more arrives, the
      oldest is dropped (the subscriber then gets an ``EventsDropped`` marker).
    * ``keep_fills_for``, ``max_kept_fills``: how long, and how many, orders' final updates
      are kept for ``wait_fill`` calls that start after the update arrived.
    * ``delete_timeout``: how long deleting the listen key may take when the stream closes.
    * ``ready_timeout``: how long a close with ``wait_fill`` waits for the stream's first
      connection before sending anyway (never more than half its ``total_timeout``; its fill
      is then asked of BingX over REST if not seen). Once one wait ran out, or once the
      stream has listened, closes do not wait for it.
    * ``fill_timeout``: how long a close with ``wait_fill`` waits for its fill on the stream,
      from its answer, before asking BingX once over REST (within the call's
      ``total_timeout``).
    * ``sign_listen_key``: sign the listen-key requests too. BingX's examples send only the
      API key; whether a signature is required is not documented.
    * ``allow_insecure``: allow ``ws://`` to a host other than this machine (the listen key
      would cross the network unencrypted).
    """

    url: str = DEFAULT_STREAM_URL
    extend_every: float = 1800.0
    idle_timeout: float | None = 60.0
    open_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    backoff_jitter: float = 0.5
    queue_size: int = 1000
    keep_fills_for: float = 60.0
    max_kept_fills: int = 10_000
    delete_timeout: float = 5.0
    ready_timeout: float = 5.0
    fill_timeout: float = 5.0
    sign_listen_key: bool = False
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        _check_url(self.url, allow_insecure=self.allow_insecure)
        for name in (
            "extend_every",
            "open_timeout",
            "backoff_max",
            "keep_fills_for",
            "ready_timeout",
            "fill_timeout",
        ):
            _require_positive(name, getattr(self, name))
        if self.idle_timeout is not None:
            _require_positive("idle_timeout", self.idle_timeout)
        for name in ("backoff_initial", "delete_timeout"):
            _require_non_negative(name, getattr(self, name))
        jitter = self.backoff_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter <= 1:
            raise ConfigurationError(f"backoff_jitter must be between 0 and 1, got {jitter!r}")
        for name in ("queue_size", "max_kept_fills"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be an integer >= 1, got {value!r}")

    def _backoff(self, attempt: int, random: float) -> float:
        """The wait before connection attempt ``attempt`` (0 for the first after a drop),
        with ``random`` drawn from [0, 1)."""
        # 2**attempt grows without bound: cap the exponent first.
        full = min(self.backoff_max, self.backoff_initial * 2.0 ** min(attempt, 64))
        return full * (1.0 - self.backoff_jitter * random)


def _check_url(url: object, *, allow_insecure: bool) -> None:
    if not isinstance(url, str):
        raise ConfigurationError(f"url must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError("url must not carry credentials (user:password@)")
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigurationError("url must be a ws:// or wss:// address with a host")
    if parts.fragment:
        raise ConfigurationError("url must not have a fragment (#...)")
    if any(name.lower() == "listenkey" for name, _ in parse_qsl(parts.query)):
        raise ConfigurationError("url must not name a listenKey: the stream adds its own")
    if parts.scheme == "ws" and not allow_insecure and not _is_local(parts.hostname):
        raise ConfigurationError(
            f"url is plain ws:// to {parts.hostname}, not this machine: the listen key would "
            "cross the network unencrypted. Use wss://, or pass allow_insecure=True"
        )


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _require_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")


def _require_non_negative(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise ConfigurationError(f"{name} must be a finite number >= 0, got {value!r}")


DEFAULT_STREAM_SETTINGS = StreamSettings()


def stream_settings_for(host: str) -> StreamSettings | None:
    """The default settings for a client of ``host`` (as ``host_identity`` names it): BingX's
    stream for its production host, the demo stream for the demo host, and ``None`` (not
    known) for any other."""
    if host == host_identity(PRODUCTION_BASE_URL):
        return DEFAULT_STREAM_SETTINGS
    if host == host_identity(DEMO_BASE_URL):
        return _DEMO_STREAM_SETTINGS
    return None


_DEMO_STREAM_SETTINGS = StreamSettings(url=DEMO_STREAM_URL)
