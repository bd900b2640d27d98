"""The faults ``FakeBingX.inject`` accepts, the queue of those still pending, and the
answer (or lack of one) each fault gives."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._wire import NoAnswer, SimResponse, encode

__all__ = [
    "BadGatewayPage",
    "CustomAnswer",
    "DropConnection",
    "Fault",
    "FaultQueue",
    "GatewayTimeout",
    "NeverAnswer",
    "RefuseConnection",
    "fault_result",
]

_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Base of the faults [`FakeBingX.inject`][bingx_async.testing.FakeBingX.inject] accepts.

    Faults whose ``after_executing`` is true let the request go through everything BingX does
    (rate limits, verification, the endpoint itself) and then replace the answer; the others
    strike before the exchange sees the request.
    """

    @property
    def reaches_exchange(self) -> bool:
        """Whether the request is processed by the exchange before the fault strikes."""
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class BadGatewayPage(Fault):
    """A proxy's HTML "502 Bad Gateway" page (HTTP 502, ``text/html``)."""

    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayTimeout(Fault):
    """HTTP 504 with ``{"code": code, "msg": "unknown status"}``: the outcome is unknown."""

    after_executing: bool = False
    code: int = 100500

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomAnswer(Fault):
    """Any HTTP status with any JSON body, sent as given."""

    status_code: int
    body: Mapping[str, object]
    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class NeverAnswer(Fault):
    """No answer ever: the httpx transport raises ``httpx.ReadTimeout`` once the request's read
    timeout has passed on the clock; the server keeps the socket open until the client leaves."""

    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class DropConnection(Fault):
    """The connection closes without an answer (``httpx.RemoteProtocolError`` on the client)."""

    after_executing: bool = False

    @property
    def reaches_exchange(self) -> bool:
        return self.after_executing


@dataclass(frozen=True, slots=True, kw_only=True)
class RefuseConnection(Fault):
    """The connection is refused; nothing is executed or recorded.

    Through the httpx transport the client gets ``httpx.ConnectError``. A real TCP listener cannot
    refuse one connection, so [`FakeBingX.serve`][bingx_async.testing.FakeBingX.serve] closes the
    next new connection before reading from it (``path=None``) or closes the connection once it has
    read a request for ``path``; the client then sees the connection closed.
    """


def fault_result(fault: Fault) -> SimResponse | NoAnswer:
    """What the client gets from ``fault`` (a refusal is answered before this is asked)."""
    if isinstance(fault, BadGatewayPage):
        return SimResponse(502, _HTML_502, "text/html")
    if isinstance(fault, GatewayTimeout):
        return SimResponse(504, encode({"code": fault.code, "msg": "unknown status"}))
    if isinstance(fault, CustomAnswer):
        return SimResponse(fault.status_code, encode(fault.body))
    if isinstance(fault, NeverAnswer):
        return NoAnswer.HANG
    return NoAnswer.DROP


@dataclass(slots=True)
class _PendingFault:
    fault: Fault
    path: str | None
    remaining: int


class FaultQueue:
    """Injected faults waiting for requests, matched in the order injected."""

    def __init__(self) -> None:
        self._pending: list[_PendingFault] = []

    def add(self, fault: Fault, path: str | None, count: int) -> None:
        """Apply ``fault`` to the next ``count`` requests for ``path`` (any path if ``None``)."""
        self._pending.append(_PendingFault(fault, path, count))

    def remaining(self) -> int:
        """How many fault applications are still waiting for a request."""
        return sum(pending.remaining for pending in self._pending)

    def take(self, path: str) -> Fault | None:
        """The fault that strikes the next request for ``path``, if any (used up by it)."""
        for pending in self._pending:
            if pending.path is None or pending.path == path:
                return self._use(pending)
        return None

    def take_connection_refusal(self) -> bool:
        """Consume a pending path-less refusal if it is next in line (for the server)."""
        pending = next((p for p in self._pending if p.path is None), None)
        if pending is None or not isinstance(pending.fault, RefuseConnection):
            return False
        self._use(pending)
        return True

    def _use(self, pending: _PendingFault) -> Fault:
        pending.remaining -= 1
        if pending.remaining == 0:
            self._pending.remove(pending)
        return pending.fault
