"""Client settings: hosts, defaults, credentials and the retry policy.

This is the only module that reads ``os.environ``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import math
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ._budgets import RateLimitPolicy
from ._errorguard import ErrorGuardPolicy
from ._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_RECV_WINDOW",
    "DEFAULT_RETRY",
    "DEFAULT_TIMEOUT",
    "DEMO_BASE_URL",
    "ENV_API_KEY",
    "ENV_BASE_URL",
    "ENV_SECRET_KEY",
    "PRODUCTION_BASE_URL",
    "UID_AUTO",
    "Credentials",
    "RetryPolicy",
    "Settings",
    "host_identity",
    "resolve_settings",
]

PRODUCTION_BASE_URL = "https://open-api.bingx.com"
"""BingX's host for real trading: the default ``base_url``."""
DEMO_BASE_URL = "https://open-api-vst.bingx.com"
"""BingX's demo-trading host (virtual USDT, USDT-M perpetuals only, same API keys)."""

ENV_API_KEY = "BINGX_API_KEY"

#: ``uid=UID_AUTO``: ask BingX for each key's UID (``GET /openApi/account/v1/uid``).
UID_AUTO = "auto"
ENV_SECRET_KEY = "BINGX_SECRET_KEY"  # noqa: S105 - a variable name, not a secret
ENV_BASE_URL = "BINGX_BASE_URL"

DEFAULT_RECV_WINDOW = 5.0
"""Seconds a signed request stays valid at BingX (sent as ``recvWindow`` in ms)."""
DEFAULT_TIMEOUT = 10.0
"""Seconds for connect, read, write and pool acquisition, each."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An API key pair. The secret never appears in ``repr``."""

    api_key: str
    secret_key: str

    @property
    def fingerprint(self) -> str:
        """A short, non-reversible label for the key (safe for logs and budget names)."""
        return hashlib.sha256(self.api_key.encode()).hexdigest()[:10]

    def __repr__(self) -> str:
        return f"Credentials(api_key=<{self.fingerprint}>, secret_key=<hidden>)"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a call retries when BingX says "not now".

    * ``attempts``: requests at most per call (1 disables retrying).
    * ``total_timeout``: seconds a whole call may take, counted from when it is made: time
      queued for the rate limiter, back-off and server-named waits all count (``None``: no
      limit). A call never starts to wait past it: it fails at once instead, with the last
      error, or [`QueueTimeoutError`][bingx_async.QueueTimeoutError] if it could not even be
      sent. A request still unanswered when it runs out, or whose body is still arriving,
      is cut off: [`RequestTimeout`][bingx_async.RequestTimeout] with
      ``may_have_executed=True``.
    * ``max_server_wait``: the longest single wait BingX may impose; an unblock time further
      away than this fails at once with [`RateLimitError`][bingx_async.RateLimitError]
      instead of waiting.
    * ``wait_initial``/``wait_max``/``wait_exp_base``/``wait_jitter``: backoff for failures
      that name no time (seconds; jitter is a random extra of up to that many seconds).
    * ``unblock_margin``: seconds added after a server-named unblock time.
    * ``retry_ip_bans``: also wait out HTTP 418/403 bans when the answer says for how long
      (``Retry-After``) and that fits ``max_server_wait``; off by default, since insisting
      after a ban can make BingX ban longer.
    * ``ip_ban_hold``: after a 418/403 that names no time, seconds during which no request
      goes to that host from this process (BingX describes its firewall ban as about five
      minutes; other calls fail at once with [`IPBannedError`][bingx_async.IPBannedError]).
    """

    attempts: int = 5
    total_timeout: float | None = 30.0
    max_server_wait: float = 10.0
    wait_initial: float = 0.5
    wait_max: float = 8.0
    wait_exp_base: float = 2.0
    wait_jitter: float = 0.5
    unblock_margin: float = 0.05
    retry_ip_bans: bool = False
    ip_ban_hold: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError(f"RetryPolicy.attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ConfigurationError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.total_timeout is not None:
            _require_positive("RetryPolicy.total_timeout", self.total_timeout)
        for name in ("max_server_wait", "wait_initial", "wait_max", "wait_jitter"):
            _require_non_negative(f"RetryPolicy.{name}", getattr(self, name))
        _require_non_negative("RetryPolicy.unblock_margin", self.unblock_margin)
        _require_non_negative("RetryPolicy.ip_ban_hold", self.ip_ban_hold)
        base = self.wait_exp_base
        if isinstance(base, bool) or not isinstance(base, int | float) or not 1 <= base < math.inf:
            raise ConfigurationError(
                f"RetryPolicy.wait_exp_base must be a finite number >= 1, got {base!r}"
            )

    def _backoff(self, retry_number: int, jitter: float) -> float:
        """Wait before retry ``retry_number`` (1-based) when the server named no time.

        ``jitter`` is a uniform random draw in [0, 1).
        """
        if self.wait_initial == 0:
            base = 0.0
        else:
            try:
                base = self.wait_initial * self.wait_exp_base ** (retry_number - 1)
            except OverflowError:  # a float power past 1e308: far beyond wait_max anyway
                base = math.inf
        return min(self.wait_max, base) + self.wait_jitter * jitter


def _require_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")


def _require_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ConfigurationError(f"{name} must be a number of seconds >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ConfigurationError(f"{name} must be finite, got {value!r}")


DEFAULT_RETRY = RetryPolicy()
"""Five requests per call, 30 s in total, and a server-imposed wait of up to 10 s."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the client resolved from its arguments and the environment, all checked."""

    credentials: Credentials | None
    base_url: str
    recv_window: float
    timeout: httpx.Timeout
    uid: str | None
    clock_sync_interval: float | None


def _validate_base_url(base_url: str, *, allow_insecure_http: bool) -> str:
    text = base_url.strip()
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:
        # Never echo the URL here: its user:password would end up in the message.
        raise ConfigurationError(
            "base_url must not carry credentials (user:password@); BingX takes the API key "
            "pair as api_key and secret_key"
        )
    if not (text.isascii() and text.isprintable()) or " " in text:
        raise ConfigurationError(f"base_url must be printable ASCII, got {text!r}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"base_url must be an absolute http(s) URL such as {PRODUCTION_BASE_URL!r}, "
            f"got {text!r}"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (parts.netloc.endswith(":") and port is None):
        raise ConfigurationError(f"base_url has an invalid port (1-65535), got {text!r}")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base_url must not carry a query or fragment, got {text!r}")
    if parts.scheme == "http" and not allow_insecure_http and not _is_local(parts.hostname):
        raise ConfigurationError(
            f"base_url {text!r} is plain http:// to a host that is not this machine: the API "
            "key and signed requests would cross the network unencrypted. Use https://, or "
            "pass allow_insecure_http=True if a TLS proxy in between is intended"
        )
    return text.rstrip("/")


#: The port each scheme uses when a URL names none.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def host_identity(base_url: str) -> str:
    """The host of ``base_url`` as BingX counts it, whatever its spelling: lower case,
    without a trailing dot or the scheme's default port (another port stays), an IPv6
    address in brackets.

    Budgets, account keys and BingX's clock offset are kept per host under this name, so
    that clients spelling one host differently share them.
    """
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is None or port == _DEFAULT_PORTS.get(parts.scheme):
        return host
    return f"{host}:{port}"


def _is_local(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _credential(value: str | None, env_name: str, argument: str) -> str | None:
    if value is None:
        value = os.environ.get(env_name) or None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{argument} must be a non-empty string")
    if value != value.strip():
        raise ConfigurationError(f"{argument} has leading or trailing whitespace")
    if not (value.isascii() and value.isprintable()) or " " in value:
        # The key travels in an HTTP header; BingX issues keys of letters and digits.
        raise ConfigurationError(f"{argument} must be printable ASCII without spaces")
    return value


def resolve_settings(
    *,
    api_key: str | None,
    secret_key: str | None,
    base_url: str | None,
    recv_window: float,
    timeout: float | httpx.Timeout,
    retry: RetryPolicy,
    rate_limits: RateLimitPolicy,
    error_guard: ErrorGuardPolicy | None,
    clock_sync_interval: float | None,
    uid: str | None,
    allow_insecure_http: bool,
) -> Settings:
    """Apply the precedence argument > environment variable > default, and check every
    option: this is the one place a client's settings are validated."""
    key = _credential(api_key, ENV_API_KEY, "api_key")
    secret = _credential(secret_key, ENV_SECRET_KEY, "secret_key")
    if (key is None) != (secret is None):
        missing = ("api_key", ENV_API_KEY) if key is None else ("secret_key", ENV_SECRET_KEY)
        raise ConfigurationError(
            f"{missing[0]} is missing: pass it or set the {missing[1]} environment variable"
        )
    credentials = Credentials(key, secret) if key is not None and secret is not None else None

    url = base_url if base_url is not None else os.environ.get(ENV_BASE_URL) or PRODUCTION_BASE_URL
    if not isinstance(url, str):
        raise ConfigurationError(f"base_url must be a string, got {type(url).__name__}")
    if not isinstance(allow_insecure_http, bool):
        raise ConfigurationError("allow_insecure_http must be True or False")
    base = _validate_base_url(url, allow_insecure_http=allow_insecure_http)

    _require_positive("recv_window", recv_window)
    if recv_window * 1000 < 1:
        raise ConfigurationError("recv_window must be at least 0.001 seconds")
    if not isinstance(timeout, httpx.Timeout):
        _require_positive("timeout", timeout)
        timeout = httpx.Timeout(timeout)
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError("retry must be a RetryPolicy")
    if not isinstance(rate_limits, RateLimitPolicy):
        raise ConfigurationError("rate_limits must be a RateLimitPolicy")
    if error_guard is not None and not isinstance(error_guard, ErrorGuardPolicy):
        raise ConfigurationError("error_guard must be an ErrorGuardPolicy or None")
    if clock_sync_interval is not None:
        _require_positive("clock_sync_interval", clock_sync_interval)
    if uid is not None and (not isinstance(uid, str) or not uid.strip()):
        raise ConfigurationError("uid must be a non-empty string")
    return Settings(
        credentials=credentials,
        base_url=base,
        recv_window=float(recv_window),
        timeout=timeout,
        uid=uid,
        clock_sync_interval=clock_sync_interval,
    )
