"""Limits shared through Redis: the user's handle (``RedisLimits``), the store behind it
(``RedisStore``), the engine that implements ``Limits`` with it, and the Lua scripts they
run."""

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
