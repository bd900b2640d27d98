"""Listen keys: what opens an account stream. Each belongs to one account (UID) and is valid
until a moment on the clock (``clock.monotonic()`` seconds); a key past that moment is
expired, one deleted is unknown."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["KeyState", "ListenKeys"]

KeyState = Literal["live", "expired", "unknown"]


@dataclass(slots=True)
class _Key:
    uid: str
    expires_at: float


class ListenKeys:
    """Every listen key handed out and not deleted, expired ones included (so that a stream
    on an expired key can still be told why it ends)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._keys: dict[str, _Key] = {}

    def create(self, uid: str, *, now: float, validity: float) -> str:
        """A new key for ``uid``, valid for ``validity`` seconds: 64 hex digits, as BingX's."""
        key = f"{self._rng.getrandbits(256):064x}"
        self._keys[key] = _Key(uid, now + validity)
        return key

    def state(self, key: str, now: float) -> KeyState:
        """Whether ``key`` is live, expired or unknown (never created, or deleted) at ``now``."""
        found = self._keys.get(key)
        if found is None:
            return "unknown"
        return "live" if now < found.expires_at else "expired"

    def owner(self, key: str, now: float) -> str | None:
        """The UID a live ``key`` belongs to; ``None`` for an expired or unknown key."""
        return self._keys[key].uid if self.state(key, now) == "live" else None

    def expires_at(self, key: str) -> float | None:
        """When ``key`` expires (or expired); ``None`` if it is unknown."""
        found = self._keys.get(key)
        return found.expires_at if found is not None else None

    def extend(self, key: str, *, now: float, validity: float) -> None:
        """Make a live ``key`` valid for ``validity`` seconds from ``now``."""
        self._keys[key].expires_at = now + validity

    def expire(self, key: str, now: float) -> None:
        """Make ``key`` expire at ``now`` (if it expires later)."""
        found = self._keys[key]
        found.expires_at = min(found.expires_at, now)

    def delete(self, key: str) -> None:
        """Forget ``key``: it becomes unknown."""
        del self._keys[key]

    def live(self, uid: str, now: float) -> list[str]:
        """The live keys of ``uid``, oldest first."""
        return [
            key for key, found in self._keys.items() if found.uid == uid and now < found.expires_at
        ]
