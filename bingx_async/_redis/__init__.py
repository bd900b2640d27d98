"""Limits shared through Redis: the store (:class:`RedisLimits`), the engine that implements
:class:`~bingx_async._limits.Limits` with it, and the Lua scripts they run."""

from ._engine import RedisSharedLimits
from ._store import ENV_SHARED_LIMITS, RedisLimits, SharedStateDown, check_redis_url

__all__ = [
    "ENV_SHARED_LIMITS",
    "RedisLimits",
    "RedisSharedLimits",
    "SharedStateDown",
    "check_redis_url",
]
