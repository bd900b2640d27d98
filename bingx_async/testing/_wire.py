"""What the simulator's core reads and answers: a request as received, an answer as decided,
and the bytes that go back.

``SimResponse`` and ``NoAnswer`` are what ``FakeBingX.handle`` returns; the
transport and the server turn them into HTTP. ``Incoming`` and ``Answer`` are the
core's own view of one request and its JSON answer, in BingX's ``{"code", "msg", "timestamp",
"data"}`` envelope (``ok``, ``error``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = [
    "Answer",
    "Incoming",
    "NoAnswer",
    "SimResponse",
    "decode_query",
    "encode",
    "error",
    "last_value",
    "ok",
]


class NoAnswer(enum.Enum):
    """How a request can end without any HTTP answer."""

    #: The server never answers (the client's read timeout fires).
    HANG = "hang"
    #: The connection is closed without an answer.
    DROP = "drop"
    #: The connection is refused; the request never reaches the exchange.
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class SimResponse:
    """One HTTP answer: status, body bytes and their content type."""

    status_code: int
    body: bytes
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request as the core sees it: upper-case method, decoded params, lower-cased header
    names, arrival on ``clock.monotonic()`` and the server's clock in epoch ms."""

    method: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    arrived_at: float
    now_ms: int

    def value(self, name: str) -> str | None:
        """The last value received for query parameter ``name``."""
        return last_value(self.params, name)


@dataclass(frozen=True, slots=True)
class Answer:
    """A JSON answer decided by the core; ``during_block`` marks a disabled endpoint's answer."""

    status_code: int
    body: dict[str, object]
    during_block: bool = False

    @property
    def code(self) -> int:
        code = self.body["code"]
        assert isinstance(code, int)
        return code


def ok(data: object, incoming: Incoming) -> Answer:
    """HTTP 200, code 0, with ``data``."""
    return Answer(200, {"code": 0, "msg": "", "timestamp": incoming.now_ms, "data": data})


def error(
    code: int, msg: str, incoming: Incoming, *, status_code: int = 200, during_block: bool = False
) -> Answer:
    """An error answer: BingX code ``code`` and ``msg`` (HTTP 200 unless ``status_code``)."""
    body: dict[str, object] = {"code": code, "msg": msg, "timestamp": incoming.now_ms}
    return Answer(status_code, body, during_block)


def last_value(params: Sequence[tuple[str, str]], name: str) -> str | None:
    """The last value in ``params`` for ``name``, or ``None``."""
    found = [value for key, value in params if key == name]
    return found[-1] if found else None


def decode_query(query: str) -> list[tuple[str, str]]:
    """Query pairs decoded the BingX way: ``%XX`` escapes only, ``+`` stays a plus."""
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def encode(body: Mapping[str, object]) -> bytes:
    """A JSON body as BingX sends it: compact, no spaces."""
    return json.dumps(body, separators=(",", ":")).encode()
