"""What FakeBingX holds and shows to tests: accounts, open positions, and recorded requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ._faults import Fault
from ._wire import last_value

__all__ = ["PositionSide", "RecordedRequest", "SimAccount", "SimPosition"]

PositionSide = Literal["LONG", "SHORT", "BOTH"]


@dataclass(frozen=True, slots=True)
class SimAccount:
    """An API key pair and the account (UID) it belongs to."""

    api_key: str
    secret_key: str = field(repr=False)
    uid: str


@dataclass(frozen=True, slots=True)
class SimPosition:
    """An open position held by the simulator. Decimals are strings, as BingX sends them."""

    position_id: str
    symbol: str
    position_side: PositionSide
    quantity: str
    avg_price: str = "60000.0"
    leverage: int = 10
    isolated: bool = True


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the simulator saw it, and what it answered.

    ``params`` are the decoded query pairs in the order received (``signature`` included);
    ``headers`` have lower-cased names; ``arrived_at`` is ``clock.monotonic()`` at arrival
    (after any jitter); ``status_code`` and ``code`` are ``None`` when there was no HTTP
    answer or no JSON code; ``account`` is the UID the API key belongs to, if known.
    ``during_block`` is true when the request arrived while its endpoint was disabled.
    """

    method: str
    path: str
    params: list[tuple[str, str]]
    headers: dict[str, str]
    arrived_at: float
    status_code: int | None
    code: int | None
    msg: str | None
    account: str | None
    during_block: bool = False
    fault: Fault | None = None

    def param(self, name: str) -> str | None:
        """The last value received for query parameter ``name``."""
        return last_value(self.params, name)

    @property
    def reached_exchange(self) -> bool:
        """False when an injected fault stopped the request before the exchange saw it."""
        return self.fault is None or self.fault.reaches_exchange
