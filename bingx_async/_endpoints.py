"""The endpoints the client calls by name, and what the pipeline needs to know of each."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._budgets import (
    ACCOUNT_UID,
    CLOSE_ALL_POSITIONS,
    CLOSE_POSITION,
    POSITION_HISTORY,
    POSITIONS,
    SERVER_TIME,
    endpoint_name,
)

__all__ = ["CLOSE", "CLOSE_ALL", "HISTORY", "LIST_POSITIONS", "TIME", "UID", "Endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    signed: bool
    #: Safe to send again when an earlier attempt's outcome is unknown.
    repeat_safe: bool
    #: ``endpoint_name(method, path)``, worked out once (it is read several times a call).
    name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", endpoint_name(self.method, self.path))

    @classmethod
    def named(cls, name: str, *, signed: bool, repeat_safe: bool) -> Endpoint:
        method, path = name.split(" ", 1)
        return cls(method, path, signed, repeat_safe)


# Closing by ID is safe to repeat: a second close cannot close anything twice.
CLOSE = Endpoint.named(CLOSE_POSITION, signed=True, repeat_safe=True)
CLOSE_ALL = Endpoint.named(CLOSE_ALL_POSITIONS, signed=True, repeat_safe=False)
LIST_POSITIONS = Endpoint.named(POSITIONS, signed=True, repeat_safe=True)
HISTORY = Endpoint.named(POSITION_HISTORY, signed=True, repeat_safe=True)
TIME = Endpoint.named(SERVER_TIME, signed=False, repeat_safe=True)
UID = Endpoint.named(ACCOUNT_UID, signed=True, repeat_safe=True)
