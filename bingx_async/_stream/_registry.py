"""A session's account streams: one per account, shared by every client of that account.

A stream sends its listen-key requests through one of the clients using it (any that is
still open); when the last of them closes, the stream is closed and its key deleted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from bingx_async._exceptions import ClientClosedError

from ._listen_key import RestCall
from ._stream import AccountStream

__all__ = ["StreamRegistry"]


class _Entry:
    __slots__ = ("stream", "users")

    def __init__(self) -> None:
        #: The clients using the stream, and how each sends a listen-key request.
        self.users: dict[object, RestCall] = {}
        self.stream: AccountStream | None = None

    async def rest(self, method: str, path: str, params: Mapping[str, str]) -> Any:
        send = next(iter(self.users.values()), None)
        if send is None:
            raise ClientClosedError(
                "not sent: every client of the account stream is closed", may_have_executed=False
            )
        return await send(method, path, params)


class StreamRegistry:
    """Account streams by account, with the clients that use each."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def use(
        self,
        account: str,
        user: object,
        rest: RestCall,
        make: Callable[[RestCall], AccountStream],
    ) -> AccountStream:
        """The stream of ``account``, made (``make(rest)``) if there is none; ``user``
        uses it from now on, sending through ``rest`` when asked to."""
        entry = self._entries.get(account)
        if entry is None or entry.stream is None or entry.stream.closed:
            entry = self._entries[account] = _Entry()
            entry.users[user] = rest
            entry.stream = make(entry.rest)
        else:
            entry.users.setdefault(user, rest)
        return entry.stream

    def stream_of(self, account: str) -> AccountStream | None:
        """The stream of ``account``, if there is one."""
        entry = self._entries.get(account)
        return entry.stream if entry is not None else None

    async def release(self, user: object) -> None:
        """``user`` is closing: the streams only it used are closed (their listen keys
        deleted through it, while it can still send)."""
        ending: list[AccountStream] = []
        for account, entry in list(self._entries.items()):
            if user not in entry.users:
                continue
            if len(entry.users) == 1:
                del self._entries[account]
                if entry.stream is not None:
                    ending.append(entry.stream)
            else:
                del entry.users[user]
        if ending:
            await asyncio.gather(*(stream.aclose() for stream in ending))

    async def aclose(self) -> None:
        """Close every stream."""
        entries, self._entries = list(self._entries.values()), {}
        streams = [entry.stream for entry in entries if entry.stream is not None]
        if streams:
            await asyncio.gather(*(stream.aclose() for stream in streams))
