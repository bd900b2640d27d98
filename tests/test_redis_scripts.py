"""The Lua scripts of shared limits, run one by one against a real ``redis-server``: what
each returns, every key, member, score and expiry it writes, and every message it publishes.

Every call gives ``now`` (ARGV[1]) so that results are exact; HOLD's ``now`` is the real
time, since it sets expiries at absolute times. Each test works under a prefix of its own,
listens on that prefix's channel, and gives the scripts every key they may touch (a claim's,
a guard's, a host ban's), so that what a script must leave alone is seen left alone.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bingx_async._redis._scripts import ADMIT, COMMANDS, FINISH, HOLD, PROBE

NOW = 100_000
WINDOW = 1_000
LEASE = 500
KEEP = 60_000
GRACE = 250
TRANSIT = 300
GUARD_WINDOW = 60_000
#: Published by the test itself after a script ran: the messages before it are the script's.
END = "end of messages"


def ttl(ms: float) -> Any:
    """A PTTL read just after a script set it to ``ms`` (up to 100 ms later)."""
    return pytest.approx(ms - 50, abs=50)


def ok(*counts: int, inherited: int = 0, now: int = NOW, guard_room: int | str = "") -> list[Any]:
    """ADMIT's answer to an admission: what the error guard still admits, and the requests
    each budget's window holds now."""
    return ["ok", str(now), inherited, guard_room, *counts]


def waits(until: int, why: str = "full", reason: str = "", now: int = NOW) -> list[Any]:
    """ADMIT's answer to a caller that must wait until ``until``."""
    return ["wait", str(until), why, str(now), reason]


@dataclass(frozen=True)
class B:
    """A budget as the scripts see it: its id, limit and window (ms)."""

    id: str
    limit: int
    window: int = WINDOW


class Lua:
    """The scripts on the session's Redis, under a prefix of one test's own."""

    # Any: redis-py's types know neither decode_responses nor ACL's commands.
    def __init__(self, redis: Any, pubsub: Any) -> None:
        self.redis = redis
        self.pubsub = pubsub
        self.prefix = "{t" + uuid.uuid4().hex[:12] + "}:"
        self.channel = self.prefix + "events"
        self._admit = self.redis.register_script(ADMIT)
        self._finish = self.redis.register_script(FINISH)
        self._hold = self.redis.register_script(HOLD)
        self._probe = self.redis.register_script(PROBE)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def admit(
        self,
        now: int | str,
        *budgets: B,
        pid: str = "A",
        permit: str = "p1",
        lease: int = LEASE,
        token: str = "",
        guard: tuple[int, int] | None = None,
        epoch: str = "E",
    ) -> list[Any]:
        keys = [
            self.key(name)
            for name in ("epoch", "w:L", "x:L", "c:K", "o:K", "cw:K", "e:G", "ef:G", "ban:H")
        ]
        args: list[object] = [now, epoch, "N", permit, lease, pid, GRACE, self.channel, "L"]
        args += [token, KEEP, *(guard if guard is not None else ("", 0))]
        for budget in budgets:
            keys += [self.key(f"{kind}:{budget.id}") for kind in ("s", "f", "h", "l")]
            args += [budget.limit, budget.window]
        answer: list[Any] = await self._admit(keys=keys, args=args)
        return answer

    async def finish(
        self,
        now: int,
        *budgets: B,
        permit: str = "p1",
        how: str = "answered",
        age: int = 0,
        code: str = "",
        guard: bool = False,
        token: str = "",
        state: str = "",
        final: bool = False,
        result: str = "",
        epoch: str = "E",
    ) -> list[Any]:
        keys = [self.key(name) for name in ("epoch", "c:K", "o:K", "cw:K", "e:G", "ef:G")]
        args: list[object] = [now, epoch, permit, how, age, TRANSIT, self.channel, code]
        args += [GUARD_WINDOW if guard else "", token, state, "1" if final else "0", result]
        args += [LEASE, KEEP, "K"]
        for budget in budgets:
            keys += [self.key(f"s:{budget.id}"), self.key(f"f:{budget.id}")]
            args += [budget.limit, budget.window, budget.id]
        answer: list[Any] = await self._finish(keys=keys, args=args)
        return answer

    async def hold(
        self,
        now: int,
        wait: int,
        reason: str,
        holds: Sequence[str] = ("b1",),
        *,
        ban: bool = False,
        learned: Sequence[tuple[str, int, int]] = (),
        epoch: str = "E",
    ) -> list[Any]:
        keys = [self.key("epoch"), *(self.key(f"h:{bid}") for bid in holds)]
        ids = list(holds)
        if ban:
            keys.append(self.key("ban:H"))
            ids.append("ban@H")
        args: list[object] = [now, epoch, wait, reason, self.channel, *ids]
        for bid, limit, keep in learned:
            keys.append(self.key(f"l:{bid}"))
            args += [limit, keep]
        answer: list[Any] = await self._hold(keys=keys, args=args)
        return answer

    async def probe(self, new_epoch: str = "N", redis: Any = None) -> Any:
        keys = [self.key(name) for name in ("epoch", "probe:z", "probe:h", "probe:s")]
        script = self._probe if redis is None else redis.register_script(PROBE)
        return await script(keys=keys, args=[new_epoch, self.channel])

    # --- what Redis holds ---------------------------------------------------------------

    async def zadd(self, name: str, members: dict[str, float]) -> None:
        await self.redis.zadd(self.key(name), members)

    async def dump(self) -> dict[str, Any]:
        """Every key under the prefix, by its name after the prefix: a sorted set as
        ``{member: score}``, a hash as a dict, a string as itself."""
        found: dict[str, Any] = {}
        for key in sorted(await self.redis.keys(self.prefix + "*")):
            name = key.removeprefix(self.prefix)
            kind = await self.redis.type(key)
            if kind == "zset":
                found[name] = dict(await self.redis.zrange(key, 0, -1, withscores=True))
            elif kind == "hash":
                found[name] = await self.redis.hgetall(key)
            else:
                found[name] = await self.redis.get(key)
        return found

    async def ttls(self) -> dict[str, int]:
        """Every key's PTTL (-1: no expiry)."""
        return {
            key.removeprefix(self.prefix): await self.redis.pttl(key)
            for key in sorted(await self.redis.keys(self.prefix + "*"))
        }

    async def published(self) -> list[str]:
        """The messages published on the channel since the last call."""
        await self.redis.publish(self.channel, END)
        messages: list[str] = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is None:
                continue
            if message["data"] == END:
                return messages
            messages.append(message["data"])
        raise AssertionError(f"the end marker never came (after {messages})")


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def lua(redis: aioredis.Redis) -> AsyncIterator[Lua]:
    """The scripts, listened to on the channel, with the epoch "E" written."""
    pubsub = redis.pubsub()
    try:
        scripts = Lua(redis, pubsub)
        await pubsub.subscribe(scripts.channel)
        for _ in range(100):
            if (await pubsub.get_message(timeout=1) or {}).get("type") == "subscribe":
                break
        else:
            raise AssertionError("the subscription was never confirmed")
        await redis.set(scripts.key("epoch"), "E")
        yield scripts
    finally:
        await pubsub.aclose()


# --- ADMIT: the epoch ---------------------------------------------------------------------


async def test_admit_writes_the_new_epoch_where_there_is_none_and_nothing_else(lua: Lua) -> None:
    await lua.redis.delete(lua.key("epoch"))

    assert await lua.admit(NOW, B("b1", 5)) == ["epoch", "N"]
    assert await lua.dump() == {"epoch": "N"}
    assert await lua.ttls() == {"epoch": -1}
    assert await lua.admit(NOW, B("b1", 5), epoch="N") == ok(1)


async def test_admit_names_another_epoch_and_changes_nothing(lua: Lua) -> None:
    await lua.redis.set(lua.key("epoch"), "X")
    await lua.zadd("f:b1", {"old": NOW - 10})
    before = await lua.dump()

    assert await lua.admit(NOW, B("b1", 5), token="T1", guard=(GUARD_WINDOW, 1)) == ["epoch", "X"]
    assert await lua.dump() == before
    assert await lua.published() == []


# --- ADMIT: budgets -------------------------------------------------------------------------


async def test_an_admission_takes_a_slot_in_each_budget_for_its_lease(lua: Lua) -> None:
    await lua.zadd("s:b2", {"a": NOW - 100})

    answer = await lua.admit(NOW, B("b1", 2), B("b2", 3, 3_000))

    assert answer == ok(1, 2)
    assert await lua.dump() == {
        "epoch": "E",
        "f:b1": {"p1": NOW + LEASE},
        "f:b2": {"p1": NOW + LEASE},
        "s:b2": {"a": NOW - 100},
    }
    assert await lua.ttls() == {
        "epoch": -1,
        "f:b1": ttl(LEASE + WINDOW + 1000),
        "f:b2": ttl(LEASE + 3_000 + 1000),
        "s:b2": ttl(LEASE + 3_000 + 1000),
    }
    assert await lua.published() == []


async def test_an_admission_counts_answers_and_requests_in_flight(lua: Lua) -> None:
    await lua.zadd("s:b1", {"a": NOW - 900, "b": NOW - 10})
    await lua.zadd("f:b1", {"q": NOW + 400})

    assert await lua.admit(NOW, B("b1", 4)) == ok(4)
    assert await lua.admit(NOW, B("b1", 4), permit="p2") == waits(NOW + 100)


@pytest.mark.parametrize(
    ("flying", "until"),
    [
        # limit 3, four answers: one too many, so the second oldest must leave first.
        ({}, NOW - 800 + WINDOW),
        # and one in flight: the third oldest.
        ({"q": NOW + 400}, NOW - 700 + WINDOW),
    ],
)
async def test_a_full_budget_waits_for_the_answer_that_frees_a_slot(
    lua: Lua, flying: dict[str, float], until: int
) -> None:
    await lua.zadd("s:b1", {"a": NOW - 900, "b": NOW - 800, "c": NOW - 700, "d": NOW - 600})
    if flying:
        await lua.zadd("f:b1", flying)

    assert await lua.admit(NOW, B("b1", 3)) == waits(until)


@pytest.mark.parametrize("answered", [{}, {"a": NOW - 500}])
async def test_a_budget_whose_slots_are_all_in_flight_waits_for_the_first_lease(
    lua: Lua, answered: dict[str, float]
) -> None:
    await lua.zadd("f:b1", {"q2": NOW + 400, "q1": NOW + 300})
    if answered:
        await lua.zadd("s:b1", answered)

    answer = await lua.admit(NOW, B("b1", 2))

    assert answer == waits(NOW + 300 + WINDOW)


async def test_the_budget_that_frees_last_says_when(lua: Lua) -> None:
    await lua.zadd("s:b1", {"a": NOW - 600})
    await lua.zadd("s:b2", {"a": NOW - 200})
    await lua.zadd("s:b3", {"a": NOW - 900})
    budgets = (B("b1", 1), B("b2", 1), B("b3", 1), B("b4", 5))

    assert await lua.admit(NOW, *budgets) == waits(NOW + 800)


async def test_each_budget_keeps_its_own_window(lua: Lua) -> None:
    await lua.zadd("s:b2", {"a": NOW - 2_000})

    assert await lua.admit(NOW, B("b1", 1), B("b2", 1, 3_000)) == waits(NOW + 1_000)


async def test_an_answer_leaves_the_window_exactly_one_window_after_it_came(lua: Lua) -> None:
    await lua.zadd("s:b1", {"a": NOW - WINDOW + 1})
    assert await lua.admit(NOW, B("b1", 1)) == waits(NOW + 1)

    assert await lua.admit(NOW + 1, B("b1", 1)) == ok(1, now=NOW + 1)
    assert await lua.dump() == {"epoch": "E", "f:b1": {"p1": NOW + 1 + LEASE}}


async def test_an_expired_lease_counts_as_an_answer_dated_at_its_end(lua: Lua) -> None:
    await lua.zadd("f:b1", {"gone": NOW - WINDOW, "old": NOW - 10, "ends": NOW, "live": NOW + 1})

    assert await lua.admit(NOW, B("b1", 5)) == ok(4)
    assert await lua.dump() == {
        "epoch": "E",
        "s:b1": {"old": NOW - 10, "ends": NOW},
        "f:b1": {"live": NOW + 1, "p1": NOW + LEASE},
    }


async def test_an_expired_lease_holds_its_slot_one_more_window(lua: Lua) -> None:
    await lua.zadd("f:b1", {"old": NOW - 10})

    answer = await lua.admit(NOW, B("b1", 1))

    assert answer == waits(NOW - 10 + WINDOW)
    assert (await lua.dump())["s:b1"] == {"old": NOW - 10}
    assert "f:b1" not in await lua.dump()


async def test_a_limit_learned_lower_applies(lua: Lua) -> None:
    await lua.redis.set(lua.key("l:b1"), "1")
    await lua.zadd("s:b1", {"a": NOW - 500})

    assert await lua.admit(NOW, B("b1", 3)) == waits(NOW + 500)


async def test_a_limit_learned_higher_does_not_raise_the_budget(lua: Lua) -> None:
    await lua.redis.set(lua.key("l:b1"), "5")
    await lua.zadd("s:b1", {"a": NOW - 500, "b": NOW - 400})

    assert await lua.admit(NOW, B("b1", 2)) == waits(NOW + 500)


# --- ADMIT: holds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget_hold", "ban", "expected"),
    [
        ((NOW + 700, "r1"), (NOW + 900, "rb"), (NOW + 900, "rb")),
        ((NOW + 900, "r1"), (NOW + 700, "rb"), (NOW + 900, "r1")),
        ((NOW + 700, "r1"), None, (NOW + 700, "r1")),
        (None, (NOW + 700, "rb"), (NOW + 700, "rb")),
    ],
)
async def test_the_longest_hold_on_a_budget_or_the_host_wins(
    lua: Lua,
    budget_hold: tuple[int, str] | None,
    ban: tuple[int, str] | None,
    expected: tuple[int, str],
) -> None:
    for name, hold in (("h:b2", budget_hold), ("ban:H", ban)):
        if hold is not None:
            await lua.redis.hset(lua.key(name), mapping={"until": hold[0], "reason": hold[1]})

    answer = await lua.admit(NOW, B("b1", 5), B("b2", 5))

    assert answer == waits(expected[0], "hold", expected[1])


async def test_a_hold_wins_over_a_full_budget_that_frees_later(lua: Lua) -> None:
    await lua.redis.hset(lua.key("h:b1"), mapping={"until": NOW + 300, "reason": "r"})
    await lua.zadd("s:b1", {"a": NOW - 100})

    assert await lua.admit(NOW, B("b1", 1)) == waits(NOW + 300, "hold", "r")


@pytest.mark.parametrize("until", [NOW, NOW - 1])
async def test_a_hold_that_ended_is_ignored(lua: Lua, until: int) -> None:
    await lua.redis.hset(lua.key("h:b1"), mapping={"until": until, "reason": "r"})
    await lua.redis.hset(lua.key("ban:H"), mapping={"until": until, "reason": "rb"})

    assert await lua.admit(NOW, B("b1", 5)) == ok(1)


# --- ADMIT: turns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("until", "back"),
    [(NOW + 700, NOW + 700 + GRACE), (NOW + 5_000, NOW + 2_000 + GRACE)],
)
async def test_a_waiter_takes_its_place_and_says_when_it_will_be_back(
    lua: Lua, until: int, back: int
) -> None:
    await lua.redis.hset(lua.key("h:b1"), mapping={"until": until, "reason": "r"})

    await lua.admit(NOW, B("b1", 5))

    assert await lua.dump() == {
        "epoch": "E",
        "h:b1": {"until": str(until), "reason": "r"},
        "w:L": {"A": NOW},
        "x:L": {"A": back},
    }
    assert await lua.ttls() == {
        "epoch": -1,
        "h:b1": -1,
        "w:L": ttl(back - NOW + 60_000),
        "x:L": ttl(back - NOW + 60_000),
    }
    assert await lua.published() == []


async def test_a_waiter_keeps_its_place_and_its_latest_return(lua: Lua) -> None:
    hold = lua.key("h:b1")
    await lua.redis.hset(hold, mapping={"until": NOW + 5_000, "reason": "r"})
    await lua.admit(NOW, B("b1", 5))
    await lua.redis.hset(hold, mapping={"until": NOW + 500})
    await lua.admit(NOW + 100, B("b1", 5))

    assert await lua.dump() == {
        "epoch": "E",
        "h:b1": {"until": str(NOW + 500), "reason": "r"},
        "w:L": {"A": NOW},
        "x:L": {"A": NOW + 2_000 + GRACE},
    }

    await lua.redis.hset(hold, mapping={"until": NOW + 5_000})
    await lua.admit(NOW + 1_000, B("b1", 5))

    assert (await lua.dump())["x:L"] == {"A": NOW + 3_000 + GRACE}


@pytest.mark.parametrize(
    ("back", "until"),
    [(NOW + 500, NOW + 500), (NOW + 1, NOW + 1), (None, NOW)],
)
async def test_a_process_waits_for_the_turn_of_one_that_waited_longer(
    lua: Lua, back: int | None, until: int
) -> None:
    await lua.zadd("w:L", {"B": NOW - 100})
    if back is not None:
        await lua.zadd("x:L", {"B": back})

    answer = await lua.admit(NOW, B("b1", 5))

    assert answer == waits(until, "turn")
    state = await lua.dump()
    assert state["w:L"] == {"B": NOW - 100, "A": NOW}
    assert state["x:L"] == {"A": until + GRACE, **({"B": back} if back is not None else {})}
    assert "f:b1" not in state


async def test_a_process_gone_past_its_time_loses_its_place(lua: Lua) -> None:
    await lua.zadd("w:L", {"B": NOW - 100})
    await lua.zadd("x:L", {"B": NOW})

    assert await lua.admit(NOW, B("b1", 5)) == ok(1)
    assert await lua.dump() == {"epoch": "E", "f:b1": {"p1": NOW + LEASE}}
    assert await lua.published() == []


async def test_an_admission_hands_the_turn_to_the_next_waiter(lua: Lua) -> None:
    # A's own time passed (it is back late): its place is kept.
    await lua.zadd("w:L", {"A": NOW - 200, "C": NOW - 50, "B": NOW - 100})
    await lua.zadd("x:L", {"A": NOW - 50, "B": NOW + 500, "C": NOW + 600})

    assert await lua.admit(NOW, B("b1", 5)) == ok(1)
    state = await lua.dump()
    assert state["w:L"] == {"B": NOW - 100, "C": NOW - 50}
    assert state["x:L"] == {"B": NOW + 500, "C": NOW + 600}
    assert await lua.published() == ["t L/B"]


# --- ADMIT: the error guard -----------------------------------------------------------------


async def test_the_guard_refuses_at_its_threshold_of_the_worst_code_and_flights(
    lua: Lua,
) -> None:
    await lua.zadd(
        "e:G",
        {
            "100410:a": NOW - 900,
            "429:c": NOW - 800,
            "100410:b": NOW - 500,
            "429:gone": NOW - GUARD_WINDOW,
        },
    )
    await lua.zadd("ef:G", {"q": NOW + 100, "gone": NOW})
    before = await lua.dump()

    answer = await lua.admit(NOW, B("b1", 5), guard=(GUARD_WINDOW, 3))

    assert answer == ["refuse", "100410", 2, 1, "900"]
    del before["e:G"]["429:gone"], before["ef:G"]["gone"]
    assert await lua.dump() == before


async def test_the_guard_admits_below_its_threshold_and_counts_the_flight(lua: Lua) -> None:
    await lua.zadd("e:G", {"100410:a": NOW - 900, "429:c": NOW - 800, "100410:b": NOW - 500})
    await lua.zadd("ef:G", {"q": NOW + 100})

    answer = await lua.admit(NOW, B("b1", 5), guard=(GUARD_WINDOW, 5))

    # Two errors of the worst code and two flights (this one included): one more fits.
    assert answer == ok(1, guard_room=1)
    assert (await lua.dump())["ef:G"] == {"q": NOW + 100, "p1": NOW + LEASE}
    assert (await lua.ttls())["ef:G"] == ttl(LEASE + 1000)


async def test_the_guard_counts_flights_without_errors(lua: Lua) -> None:
    await lua.zadd("ef:G", {"q": NOW + 100, "r": NOW + 200})

    answer = await lua.admit(NOW, B("b1", 5), guard=(GUARD_WINDOW, 2))

    assert answer == ["refuse", None, 0, 2, "0"]


async def test_without_a_guard_its_keys_are_left_alone(lua: Lua) -> None:
    await lua.zadd("e:G", {"100410:a": NOW - GUARD_WINDOW})
    await lua.zadd("ef:G", {"q": NOW})
    before = await lua.dump()

    assert await lua.admit(NOW, B("b1", 5)) == ok(1)
    state = await lua.dump()
    assert (state["e:G"], state["ef:G"]) == (before["e:G"], before["ef:G"])


# --- ADMIT: claims --------------------------------------------------------------------------


async def test_a_claim_held_by_another_says_for_how_long_and_notes_a_waiter(lua: Lua) -> None:
    await lua.redis.set(lua.key("c:K"), "T2", px=3_000)

    answer = await lua.admit(NOW, B("b1", 5), token="T1")

    assert answer[0::2] == ["claimed", str(NOW)]
    assert int(answer[1]) == ttl(3_000)
    assert await lua.dump() == {"epoch": "E", "c:K": "T2", "cw:K": "1"}
    assert await lua.ttls() == {"epoch": -1, "c:K": ttl(3_000), "cw:K": ttl(8_000)}


async def test_a_claim_without_expiry_is_said_so(lua: Lua) -> None:
    await lua.redis.set(lua.key("c:K"), "T2")

    assert await lua.admit(NOW, B("b1", 5), token="T1") == ["claimed", "-1", str(NOW)]
    assert (await lua.ttls())["cw:K"] == ttl(5_000)


async def test_a_claim_with_a_result_is_settled(lua: Lua) -> None:
    outcome = 'result T2 {"filled": 1}'
    await lua.redis.set(lua.key("o:K"), outcome)
    await lua.zadd("s:b1", {"a": NOW - 100})
    before = await lua.dump()

    assert await lua.admit(NOW, B("b1", 1), token="T1") == ["settled", outcome]
    assert await lua.dump() == before


@pytest.mark.parametrize(
    ("outcome", "inherited"),
    [
        ("sending T2", 1),
        ("unknown T2", 1),
        ("pending T2", 0),
        ("sending T1", 0),
        ("unknown T1", 0),
        (None, 0),
    ],
)
async def test_a_claim_takes_over_and_inherits_an_unknown_outcome(
    lua: Lua, outcome: str | None, inherited: int
) -> None:
    if outcome is not None:
        await lua.redis.set(lua.key("o:K"), outcome)

    assert await lua.admit(NOW, B("b1", 5), token="T1") == ok(1, inherited=inherited)
    state = await lua.dump()
    assert (state["c:K"], state["o:K"]) == ("T1", "sending T1")
    ttls = await lua.ttls()
    assert (ttls["c:K"], ttls["o:K"]) == (ttl(LEASE), ttl(KEEP))


async def test_its_own_claim_is_taken_again(lua: Lua) -> None:
    await lua.redis.set(lua.key("c:K"), "T1", px=100)

    assert await lua.admit(NOW, B("b1", 5), token="T1") == ok(1)
    assert (await lua.ttls())["c:K"] == ttl(LEASE)


async def test_without_a_token_the_claim_is_left_alone(lua: Lua) -> None:
    await lua.redis.set(lua.key("c:K"), "T2")
    await lua.redis.set(lua.key("o:K"), "result T2 x")

    assert await lua.admit(NOW, B("b1", 5)) == ok(1)
    state = await lua.dump()
    assert (state["c:K"], state["o:K"]) == ("T2", "result T2 x")


async def test_a_claim_waits_its_turn_and_for_its_budget_without_being_taken(lua: Lua) -> None:
    await lua.zadd("s:b1", {"a": NOW - 100})

    assert await lua.admit(NOW, B("b1", 1), token="T1") == waits(NOW + 900)
    state = await lua.dump()
    assert "c:K" not in state
    assert "o:K" not in state


async def test_admit_reads_redis_time_when_not_given_now(lua: Lua) -> None:
    before = time.time() * 1000
    answer = await lua.admit("", B("b1", 5))
    after = time.time() * 1000

    assert answer[0] == "ok"
    assert before - 1000 < float(answer[1]) < after + 1000
    assert (await lua.dump())["f:b1"]["p1"] == pytest.approx(float(answer[1]) + LEASE, abs=1)


# --- FINISH -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "answered"),
    [
        ("answered", {"s:b1": {"p1": NOW - 30}}),
        ("abandoned", {"s:b1": {"p1": NOW - 30 + TRANSIT}}),
        ("not_sent", {}),
    ],
)
async def test_finish_dates_the_slot_by_how_the_request_ended(
    lua: Lua, how: str, answered: dict[str, Any]
) -> None:
    await lua.zadd("f:b1", {"p1": NOW + LEASE, "q": NOW + 600})

    assert await lua.finish(NOW, B("b1", 5), how=how, age=30) == [1, 0]
    assert await lua.dump() == {"epoch": "E", "f:b1": {"q": NOW + 600}, **answered}
    if answered:
        assert (await lua.ttls())["s:b1"] == ttl(WINDOW + TRANSIT + 1000)
    assert await lua.published() == []


@pytest.mark.parametrize(
    ("limit", "flying", "answered", "how", "news"),
    [
        # Every slot was in flight: the first answer is news.
        (2, {"q": NOW + 100}, {}, "answered", True),
        (2, {"q": NOW + 100}, {}, "abandoned", True),
        # Full with an answer in the window: its waiters know when it leaves, so only a
        # slot freed at once is news.
        (2, {}, {"a": NOW - 100}, "answered", False),
        (2, {}, {"a": NOW - 100}, "abandoned", False),
        (2, {}, {"a": NOW - 100}, "not_sent", True),
        # Not full: nobody waits.
        (3, {}, {"a": NOW - 100}, "not_sent", False),
        (2, {}, {"a": NOW - WINDOW - 1}, "not_sent", False),
    ],
)
async def test_finish_tells_the_waiters_of_a_full_budget(
    lua: Lua,
    limit: int,
    flying: dict[str, float],
    answered: dict[str, float],
    how: str,
    news: bool,
) -> None:
    await lua.zadd("f:b1", {"p1": NOW + LEASE, **flying})
    if answered:
        await lua.zadd("s:b1", answered)

    assert await lua.finish(NOW, B("b1", limit), how=how) == [1, int(news)]
    assert await lua.published() == (["n b1"] if news else [])


async def test_finish_names_every_budget_it_frees(lua: Lua) -> None:
    for bid in ("b1", "b2", "b3"):
        await lua.zadd(f"f:{bid}", {"p1": NOW + LEASE})
    await lua.zadd("s:b1", {"a": NOW - 100})
    await lua.zadd("s:b3", {"a": NOW - 100})

    answer = await lua.finish(NOW, B("b1", 2), B("b2", 2), B("b3", 2), how="not_sent")

    assert answer == [1, 2]
    assert await lua.published() == ["n b1 b3"]


async def test_finish_of_a_permit_no_longer_in_flight_changes_nothing(lua: Lua) -> None:
    await lua.zadd("f:b1", {"q": NOW + 100})
    before = await lua.dump()

    assert await lua.finish(NOW, B("b1", 1), how="not_sent") == [1, 0]
    assert await lua.dump() == before
    assert await lua.published() == []


@pytest.mark.parametrize(("code", "errors"), [("100410", {"100410:p1": NOW}), ("", None)])
async def test_finish_ends_the_guards_flight_and_counts_its_error(
    lua: Lua, code: str, errors: dict[str, float] | None
) -> None:
    await lua.zadd("ef:G", {"p1": NOW + LEASE, "q": NOW + LEASE})

    assert await lua.finish(NOW, code=code, guard=True) == [1, 0]
    assert await lua.dump() == {
        "epoch": "E",
        "ef:G": {"q": NOW + LEASE},
        **({"e:G": errors} if errors else {}),
    }
    if errors:
        assert (await lua.ttls())["e:G"] == ttl(GUARD_WINDOW + 1000)


async def test_finish_without_a_guard_leaves_its_keys_alone(lua: Lua) -> None:
    await lua.zadd("ef:G", {"p1": NOW + LEASE})
    before = await lua.dump()

    assert await lua.finish(NOW, code="100410") == [1, 0]
    assert await lua.dump() == before


@pytest.mark.parametrize(
    ("state", "final", "result", "outcome", "claim_ttl"),
    [
        ("result", True, "R", "result T1 R", None),
        ("result", False, "R", "result T1 R", LEASE),
        ("unknown", True, "", "unknown T1", None),
        ("pending", True, "", "pending T1", None),
        ("pending", False, "", "pending T1", LEASE),
        ("unknown", False, "", "unknown T1", LEASE),
    ],
)
async def test_finish_records_how_its_own_claim_stands(
    lua: Lua, state: str, final: bool, result: str, outcome: str, claim_ttl: int | None
) -> None:
    await lua.redis.set(lua.key("c:K"), "T1", px=100)
    await lua.redis.set(lua.key("o:K"), "sending T1", px=100)

    answer = await lua.finish(NOW, token="T1", state=state, final=final, result=result)

    assert answer == [1, 0]
    state_now = await lua.dump()
    assert state_now["o:K"] == outcome
    ttls = await lua.ttls()
    assert ttls["o:K"] == ttl(KEEP)
    if claim_ttl is None:
        assert "c:K" not in state_now
    else:
        assert (state_now["c:K"], ttls["c:K"]) == ("T1", ttl(claim_ttl))


@pytest.mark.parametrize(
    ("state", "final", "told"),
    [("result", False, True), ("unknown", True, True), ("pending", False, False)],
)
async def test_finish_tells_a_claims_waiters_once(
    lua: Lua, state: str, final: bool, told: bool
) -> None:
    await lua.redis.set(lua.key("c:K"), "T1")
    await lua.redis.set(lua.key("cw:K"), "1")

    answer = await lua.finish(NOW, token="T1", state=state, final=final, result="R")

    assert answer == [1, int(told)]
    assert await lua.published() == (["n K"] if told else [])
    assert ("cw:K" in await lua.dump()) is not told


async def test_finish_tells_no_claim_waiters_when_there_are_none(lua: Lua) -> None:
    await lua.redis.set(lua.key("c:K"), "T1")

    assert await lua.finish(NOW, token="T1", state="result", final=True, result="R") == [1, 0]
    assert await lua.published() == []


async def test_finish_leaves_a_claim_another_took_except_for_a_result(lua: Lua) -> None:
    await lua.redis.set(lua.key("c:K"), "T2", px=3_000)
    await lua.redis.set(lua.key("o:K"), "sending T2", px=3_000)

    assert await lua.finish(NOW, token="T1", state="unknown", final=False) == [1, 0]
    assert await lua.finish(NOW, token="T1", state="pending", final=True) == [1, 0]
    assert await lua.dump() == {"epoch": "E", "c:K": "T2", "o:K": "sending T2"}
    assert await lua.ttls() == {"epoch": -1, "c:K": ttl(3_000), "o:K": ttl(3_000)}

    assert await lua.finish(NOW, token="T1", state="result", final=True, result="R") == [1, 0]
    assert await lua.dump() == {"epoch": "E", "c:K": "T2", "o:K": "result T1 R"}
    assert (await lua.ttls())["c:K"] == ttl(3_000)


async def test_finish_records_the_outcome_of_a_claim_that_lapsed(lua: Lua) -> None:
    assert await lua.finish(NOW, token="T1", state="unknown", final=False) == [1, 0]
    assert await lua.dump() == {"epoch": "E", "o:K": "unknown T1"}


@pytest.mark.parametrize(("token", "state"), [("", "result"), ("T1", "")])
async def test_finish_without_a_claim_state_leaves_the_claim_alone(
    lua: Lua, token: str, state: str
) -> None:
    await lua.redis.set(lua.key("c:K"), "T1", px=3_000)
    await lua.redis.set(lua.key("cw:K"), "1")

    assert await lua.finish(NOW, token=token, state=state, final=True, result="R") == [1, 0]
    assert await lua.dump() == {"epoch": "E", "c:K": "T1", "cw:K": "1"}
    assert await lua.published() == []


async def test_finish_publishes_budgets_and_claim_in_one_message(lua: Lua) -> None:
    await lua.zadd("f:b1", {"p1": NOW + LEASE})
    await lua.redis.set(lua.key("c:K"), "T1")
    await lua.redis.set(lua.key("cw:K"), "1")

    answer = await lua.finish(
        NOW, B("b1", 1), how="answered", token="T1", state="result", final=True, result="R"
    )

    assert answer == [1, 2]
    assert await lua.published() == ["n b1 K"]


@pytest.mark.parametrize("epoch", ["X", None])
async def test_finish_says_the_epoch_changed_and_still_frees_its_slots(
    lua: Lua, epoch: str | None
) -> None:
    if epoch is None:
        await lua.redis.delete(lua.key("epoch"))
    else:
        await lua.redis.set(lua.key("epoch"), epoch)
    await lua.zadd("f:b1", {"p1": NOW + LEASE})

    assert await lua.finish(NOW, B("b1", 5), how="not_sent") == [0, 0]
    assert await lua.dump() == ({"epoch": epoch} if epoch else {})


# --- HOLD ---------------------------------------------------------------------------------


def real_now() -> int:
    """HOLD sets expiries at absolute times: its ``now`` must be Redis's."""
    return int(time.time() * 1000)


async def test_hold_holds_each_budget_and_the_host_and_says_so(lua: Lua) -> None:
    now = real_now()

    answer = await lua.hold(now, 5_000, "why", ("b1", "b2"), ban=True)

    assert answer == [1, str(now + 5_000)]
    held = {"until": str(now + 5_000), "reason": "why"}
    assert await lua.dump() == {"epoch": "E", "h:b1": held, "h:b2": held, "ban:H": held}
    for name in ("h:b1", "h:b2", "ban:H"):
        assert await lua.redis.pexpiretime(lua.key(name)) == now + 5_000
    assert await lua.published() == ["h b1 b2 ban@H"]


async def test_a_longer_hold_replaces_a_shorter_one(lua: Lua) -> None:
    now = real_now()
    await lua.hold(now, 1_000, "short")

    assert await lua.hold(now, 5_000, "long") == [1, str(now + 5_000)]
    assert (await lua.dump())["h:b1"] == {"until": str(now + 5_000), "reason": "long"}
    assert await lua.redis.pexpiretime(lua.key("h:b1")) == now + 5_000


@pytest.mark.parametrize("wait", [5_000, 9_000])
async def test_a_hold_never_shortens_another(lua: Lua, wait: int) -> None:
    now = real_now()
    await lua.hold(now, 9_000, "long")

    assert await lua.hold(now, wait, "other") == [1, str(now + wait)]
    assert (await lua.dump())["h:b1"] == {"until": str(now + 9_000), "reason": "long"}
    assert await lua.redis.pexpiretime(lua.key("h:b1")) == now + 9_000
    assert await lua.published() == ["h b1", "h b1"]


async def test_hold_learns_limits_only_ever_lower(lua: Lua) -> None:
    now = real_now()
    learned = [("b1", 5, 30_000), ("b2", 4, 30_000)]
    await lua.redis.set(lua.key("l:b2"), "3", px=10_000)

    assert await lua.hold(now, 0, "r", (), learned=learned) == [1, str(now)]
    assert await lua.dump() == {"epoch": "E", "l:b1": "5", "l:b2": "3"}
    assert await lua.ttls() == {"epoch": -1, "l:b1": ttl(30_000), "l:b2": ttl(10_000)}
    assert await lua.published() == ["h "]

    learned = [("b1", 5, 60_000), ("b2", 2, 60_000)]
    await lua.hold(now, 0, "r", (), learned=learned)

    assert await lua.dump() == {"epoch": "E", "l:b1": "5", "l:b2": "2"}
    assert await lua.ttls() == {"epoch": -1, "l:b1": ttl(30_000), "l:b2": ttl(60_000)}


async def test_hold_with_holds_and_learned_limits_keeps_them_apart(lua: Lua) -> None:
    now = real_now()

    answer = await lua.hold(now, 2_000, "r", ("b1",), ban=True, learned=[("b1", 7, 30_000)])

    assert answer == [1, str(now + 2_000)]
    held = {"until": str(now + 2_000), "reason": "r"}
    assert await lua.dump() == {"epoch": "E", "h:b1": held, "ban:H": held, "l:b1": "7"}
    assert await lua.published() == ["h b1 ban@H"]


@pytest.mark.parametrize("epoch", ["X", None])
async def test_hold_says_the_epoch_changed_and_still_holds(lua: Lua, epoch: str | None) -> None:
    if epoch is None:
        await lua.redis.delete(lua.key("epoch"))
    else:
        await lua.redis.set(lua.key("epoch"), epoch)
    now = real_now()

    assert await lua.hold(now, 1_000, "r") == [0, str(now + 1_000)]
    assert (await lua.dump())["h:b1"] == {"until": str(now + 1_000), "reason": "r"}
    assert ("epoch" in await lua.dump()) is (epoch is not None)


# --- PROBE --------------------------------------------------------------------------------


async def test_probe_writes_the_epoch_only_if_missing_and_leaves_nothing_else(
    lua: Lua,
) -> None:
    await lua.redis.delete(lua.key("epoch"))

    assert await lua.probe("N1") == "N1"
    assert await lua.probe("N2") == "N1"
    assert await lua.dump() == {"epoch": "N1"}
    assert await lua.ttls() == {"epoch": -1}
    assert await lua.published() == ["p", "p"]


async def test_probe_runs_every_command_the_scripts_need(lua: Lua, redis_url: str) -> None:
    """A Redis user denied any one of the commands fails the probe."""
    user = "probe-" + uuid.uuid4().hex[:8]
    acl = ["on", "nopass", "~*", "&*", "+@all"]
    await lua.redis.execute_command("ACL", "SETUSER", user, *acl)
    limited: Any = aioredis.Redis.from_url(redis_url, decode_responses=True, username=user)
    try:
        assert await lua.probe(redis=limited) == "E"
        for command in COMMANDS:
            await lua.redis.execute_command(
                "ACL", "SETUSER", user, "reset", *acl, f"-{command.lower()}"
            )
            # Redis names the command, or (7.0) the script's line that runs it.
            line = PROBE[: PROBE.index(f"redis.call('{command}'")].count("\n") + 1
            denied = rf"'{command.lower()}'|@user_script:{line}\."
            with pytest.raises(ResponseError, match=denied):
                await lua.probe(redis=limited)
    finally:
        await limited.aclose()
        await lua.redis.execute_command("ACL", "DELUSER", user)


_CALL = re.compile(r"redis\.call\('([A-Z]+)'")


def test_every_command_the_scripts_run_is_listed_and_probed() -> None:
    scripts = ADMIT + FINISH + HOLD
    used = set(_CALL.findall(scripts))
    # No call names its command any other way (a variable), nor fails softly.
    assert len(_CALL.findall(scripts)) == scripts.count("redis.call(")
    assert "pcall" not in scripts + PROBE
    assert used == set(COMMANDS)
    assert len(COMMANDS) == len(set(COMMANDS))
    assert set(_CALL.findall(PROBE)) == set(COMMANDS)
    assert len(_CALL.findall(PROBE)) == PROBE.count("redis.call(")
