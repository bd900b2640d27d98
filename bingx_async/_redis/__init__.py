"""Limits shared through Redis: the user's handle (:class:`RedisLimits`), the store behind it
(:class:`RedisStore`), the engine that implements :class:`~bingx_async._limits.Limits` with
it, and the Lua scripts they run."""

from ._engine import RedisSharedLimits
from ._store import ENV_SHARED_LIMITS, RedisLimits, RedisStore, SharedStateDown, check_redis_url

__all__ = [
    "ENV_SHARED_LIMITS",
    "RedisLimits",
    "RedisSharedLimits",
    "RedisStore",
    "SharedStateDown",
    "check_redis_url",
]
