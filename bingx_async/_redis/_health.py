"""What keeps a Redis from holding shared limits, in words an operator can act on.

Read from redis-py's errors (a refused credential, command or write) and from what Redis
says of itself (its eviction policy, its role). Nothing here changes Redis.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from bingx_async._exceptions import error_text

from ._scripts import ADMIT, FINISH, HOLD, PROBE

__all__ = ["eviction_problem", "problem", "replica_problem"]


def problem(error: BaseException, where: str) -> str:
    """What an error of redis-py says about the Redis at ``where``, for an operator."""
    from redis import exceptions

    text = error_text(error)
    if "can't run this command" in text:
        # A command refused inside a script: Redis names the script's line, not the command.
        text = f"{text} ({_command_at_line(text)})"
    if isinstance(error, exceptions.AuthenticationError):
        return (
            f"Redis at {where} refused the credentials ({text}); check the user and "
            "password of shared_limits"
        )
    if (
        isinstance(error, exceptions.NoPermissionError)
        or text.startswith("NOPERM")
        or "can't run this command" in text
    ):
        return (
            f"Redis at {where} refuses a command the shared limits need ({text}); allow "
            "the Redis user EVALSHA, SCRIPT LOAD, PUBLISH, SUBSCRIBE and the commands of "
            "the scripts (see the ACL in the docs)"
        )
    if isinstance(error, exceptions.ReadOnlyError) or text.startswith("READONLY"):
        return (
            f"Redis at {where} is a read-only replica ({text}); point shared_limits at the primary"
        )
    if isinstance(error, exceptions.ResponseError):
        return f"Redis at {where} refused the shared limits' work ({text})"
    return f"Redis at {where} is unreachable ({type(error).__name__})"


def _command_at_line(text: str) -> str:
    """The command a script runs at the line an error names (``@user_script:24``)."""
    found = re.search(r"@user_script:(\d+)", text)
    sha = re.search(r"script: ([0-9a-f]{40})", text)
    if found is None:
        return "a command of the scripts"
    number = int(found.group(1))
    for script in (PROBE, ADMIT, FINISH, HOLD):
        if sha is not None and hashlib.sha1(script.encode()).hexdigest() != sha.group(1):  # noqa: S324 - Redis's script id
            continue
        lines = script.splitlines()
        if 0 < number <= len(lines):
            command = re.search(r"redis\.call\('(\w+)'", lines[number - 1])
            if command is not None:
                return command.group(1).upper()
    return "a command of the scripts"


async def eviction_problem(redis: Any, where: str) -> str | None:
    """Refuse a Redis that evicts keys: losing a budget's keys lets a burst through."""
    from redis import exceptions

    try:
        found = await redis.execute_command("CONFIG", "GET", "maxmemory*")
        pairs = dict(zip(found[::2], found[1::2], strict=False)) if isinstance(found, list) else {}
        if isinstance(found, dict):
            pairs = found
        memory, policy = pairs.get("maxmemory"), pairs.get("maxmemory-policy")
    except exceptions.ResponseError:
        # CONFIG is often not allowed (managed Redis, ACL): INFO says the same.
        try:
            info = await redis.execute_command("INFO", "memory")
        except exceptions.ResponseError:
            return None  # nothing to check with; the epoch still finds lost state
        memory, policy = _info_field(info, "maxmemory"), _info_field(info, "maxmemory_policy")
    if policy is None or memory is None or str(memory) == "0" or policy == "noeviction":
        return None
    return (
        f"Redis at {where} evicts keys when full (maxmemory-policy {policy}, maxmemory "
        f"{memory}): an evicted budget lets bursts through to BingX. Set maxmemory-policy "
        "noeviction (or no maxmemory), or use a Redis of its own for shared limits"
    )


async def replica_problem(redis: Any, where: str) -> str | None:
    from redis import exceptions

    try:
        info = await redis.execute_command("INFO", "replication")
    except exceptions.ResponseError:
        return None  # a read-only replica still refuses the probe's writes
    role = _info_field(info, "role")
    if role in ("slave", "replica"):
        primary = _info_field(info, "master_host") or "?"
        port = _info_field(info, "master_port") or "?"
        return (
            f"Redis at {where} is a replica (of {primary}:{port}): what it is given is "
            "lost or refused. Point shared_limits at the primary"
        )
    return None


def _info_field(info: Any, name: str) -> str | None:
    if isinstance(info, dict):
        value = info.get(name)
        return None if value is None else str(value)
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return None
