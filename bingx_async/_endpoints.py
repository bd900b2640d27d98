"""The endpoints the client calls by name, and what the pipeline needs to know of each."""

from __future__ import annotations

from dataclasses import dataclass, field

from ._budgets import (
    ACCOUNT_UID,
    CLOSE_ALL_POSITIONS,
    CLOSE_POSITION,
    ORDER,
    POSITION_HISTORY,
    POSITIONS,
    SERVER_TIME,
    endpoint_name,
)

__all__ = [
    "CLOSE",
    "CLOSE_ALL",
    "HISTORY",
    "LIST_POSITIONS",
    "ORDER_QUERY",
    "TIME",
    "UID",
    "Endpoint",
    "listen_key_endpoint",
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    signed: bool
    #: Safe to send again when an earlier attempt's outcome is unknown.
    repeat_safe: bool
    #: Sends the API key (``X-BX-APIKEY``) without signing: it still acts for the account,
    #: and counts towards the account's budgets and error guard.
    keyed: bool = False
    #: BingX answers with its ``{"code", "msg", "data"}`` envelope (the call returns
    #: ``data``); ``False``: it may answer with a bare object, and the call returns the whole
    #: body (an envelope with a code other than 0 is still an error).
    enveloped: bool = True
    #: ``endpoint_name(method, path)``, worked out once (it is read several times a call).
    name: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", endpoint_name(self.method, self.path))

    @property
    def for_account(self) -> bool:
        """Whether the request acts for the account (signed, or carrying the API key)."""
        return self.signed or self.keyed

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
#: One order (``symbol`` and ``orderId``): how a fill not seen on the account stream is
#: looked up.
ORDER_QUERY = Endpoint.named(ORDER, signed=True, repeat_safe=True)


def listen_key_endpoint(method: str, path: str, *, signed: bool) -> Endpoint:
    """The listen key's ``POST`` (create), ``PUT`` (extend) or ``DELETE`` at ``path``.
    BingX's examples send only the API key; ``signed`` signs them too. All three are safe
    to repeat: a second key, extension or deletion does no harm."""
    return Endpoint(method, path, signed, True, keyed=True, enveloped=False)
