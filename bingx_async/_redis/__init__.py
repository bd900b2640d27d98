"""Limits shared through Redis: the store (``RedisLimits``), the engine that implements
``Limits`` with it, and the Lua scripts they run."""

from ._engine import RedisSharedLimits
from ._store import ENV_SHARED_LIMITS, RedisLimits, SharedStateDown, check_redis_url

__all__ = [
    "ENV_SHARED_LIMITS",
    "RedisLimits",
    "RedisSharedLimits",
    "SharedStateDown",
    "check_redis_url",
]
