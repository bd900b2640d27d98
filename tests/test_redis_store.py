"""RedisLimits as an operator meets it: what each fault of Redis is called, in the warning
and in the error of a refused call; the URL check; the repr; what a closing session still
sends to Redis, and a RedisLimits serving a new session after it closed.

Everything here runs in real time against real ``redis-server`` processes on 127.0.0.1;
each test takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import math
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from redis import exceptions

from bingx_async import (
    DEFAULT_RATE_LIMITS,
    BingXClient,
    BingXSession,
    Budget,
    ConfigurationError,
    IPBannedError,
    RedisLimits,
    RetryPolicy,
    SharedLimitsUnavailableError,
)
from bingx_async._redis._health import _command_at_line, _info_field
from bingx_async._redis._health import eviction_problem as _eviction_problem
from bingx_async._redis._health import problem as _problem
from bingx_async._redis._health import replica_problem as _replica_problem
from bingx_async._redis._scripts import ADMIT, HOLD, PROBE
from bingx_async._redis._store import MillisecondsSince, SharedStateDown, check_redis_url
from bingx_async.testing import CustomAnswer, FakeBingX, FakeClock, SimAccount

from .conftest import MakeRedisServer, case_id
from .redis_server import AclUser, RedisServer, send_command

CLOSE_PATH = "/openApi/swap/v1/trade/closePosition"
#: closePosition at 5 per rolling 0.25 s per account (BingX's budget, four times faster).
WINDOW = 0.25
FAST = DEFAULT_RATE_LIMITS.with_endpoint(
    f"POST {CLOSE_PATH}", per_account=(Budget(5, WINDOW),), ip_group=2
)
HOST = "open-api.bingx.com"

WHERE = "10.0.0.7:6379/0"
REFUSED_COMMAND = (
    "; allow the Redis user EVALSHA, SCRIPT LOAD, PUBLISH, SUBSCRIBE and the commands of "
    "the scripts (see the ACL in the docs)"
)
LOCAL = "; going on under in-process limits (0.25 of each budget)"
FAIL = "; refusing calls until it is fixed"
PROBE_SHA = hashlib.sha1(PROBE.encode()).hexdigest()  # noqa: S324 - Redis's script id
ADMIT_SHA = hashlib.sha1(ADMIT.encode()).hexdigest()  # noqa: S324 - Redis's script id
#: What Redis 7 says when a script runs a command the user may not (redis-py drops "ERR ").
SCRIPT_REFUSED = (
    "The user executing the script can't run this command or subcommand "
    f"script: {PROBE_SHA}, on @user_script:6."
)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The shared limits' warnings on the library's logger, in order."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "bingx_async"
        and record.levelno >= logging.WARNING
        and record.getMessage().startswith("shared limits:")
    ]


def where(server: RedisServer) -> str:
    return f"127.0.0.1:{server.port}/0"


def prefix() -> str:
    return uuid.uuid4().hex[:8]


def client_of(
    session: BingXSession, account: SimAccount, transport: httpx.AsyncBaseTransport
) -> BingXClient:
    return BingXClient(
        api_key=account.api_key,
        secret_key=account.secret_key,
        session=session,
        transport=transport,
        rate_limits=FAST,
        retry=RetryPolicy(attempts=1),
    )


@asynccontextmanager
async def serving(limits: RedisLimits) -> AsyncIterator[BingXSession]:
    """A session that uses ``limits``, once its first check of Redis is done."""
    async with BingXSession(shared_limits=limits) as session:
        await limits._store.ready()
        yield session


async def wait_for(condition: Callable[[], bool], seconds: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while not condition():
        if loop.time() > until:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.005)


async def keys_under(redis: aioredis.Redis, pattern: str) -> list[str]:
    return sorted([key async for key in redis.scan_iter(pattern)])


def evicting(make_redis_server: MakeRedisServer) -> RedisServer:
    return make_redis_server(config={"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru"})


def allow_eviction_no_more(server: RedisServer) -> None:
    send_command(server.port, "CONFIG", "SET", "maxmemory-policy", "noeviction")


# --- what each error of Redis is called -----------------------------------------------------


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (
            exceptions.AuthenticationError("invalid username-password pair or user is disabled."),
            f"Redis at {WHERE} refused the credentials (invalid username-password pair or user "
            "is disabled.); check the user and password of shared_limits",
        ),
        (
            exceptions.NoPermissionError("this user has no permissions to run the 'zadd' command"),
            f"Redis at {WHERE} refuses a command the shared limits need (this user has no "
            f"permissions to run the 'zadd' command){REFUSED_COMMAND}",
        ),
        (
            exceptions.ResponseError(
                "NOPERM this user has no permissions to access one of the channels"
            ),
            f"Redis at {WHERE} refuses a command the shared limits need (NOPERM this user has "
            f"no permissions to access one of the channels){REFUSED_COMMAND}",
        ),
        # Redis names the script's line: the message names the command on it.
        (
            exceptions.ResponseError(SCRIPT_REFUSED),
            f"Redis at {WHERE} refuses a command the shared limits need ({SCRIPT_REFUSED} "
            f"(ZADD)){REFUSED_COMMAND}",
        ),
        (
            exceptions.ResponseError(
                "The user executing the script can't run this command or subcommand"
            ),
            f"Redis at {WHERE} refuses a command the shared limits need (The user executing "
            "the script can't run this command or subcommand (a command of the scripts))"
            f"{REFUSED_COMMAND}",
        ),
        (
            exceptions.ReadOnlyError("You can't write against a read only replica."),
            f"Redis at {WHERE} is a read-only replica (You can't write against a read only "
            "replica.); point shared_limits at the primary",
        ),
        (
            exceptions.ResponseError("READONLY You can't write against a read only replica."),
            f"Redis at {WHERE} is a read-only replica (READONLY You can't write against a read "
            "only replica.); point shared_limits at the primary",
        ),
        (
            exceptions.ResponseError("OOM command not allowed when used memory > 'maxmemory'."),
            f"Redis at {WHERE} refused the shared limits' work (OOM command not allowed when "
            "used memory > 'maxmemory'.)",
        ),
        (
            exceptions.ResponseError("  "),
            f"Redis at {WHERE} refused the shared limits' work (ResponseError)",
        ),
        (
            exceptions.ConnectionError("Error 111 connecting to 10.0.0.7:6379. Connect refused."),
            f"Redis at {WHERE} is unreachable (ConnectionError)",
        ),
        (
            exceptions.TimeoutError("Timeout reading from socket"),
            f"Redis at {WHERE} is unreachable (TimeoutError)",
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_each_error_of_redis_is_told_to_the_operator_with_what_to_change(
    error: Exception, says: str
) -> None:
    assert _problem(error, WHERE) == says


@pytest.mark.parametrize(
    ("text", "command"),
    [
        (f"script: {PROBE_SHA}, on @user_script:6.", "ZADD"),
        (f"script: {PROBE_SHA}, on @user_script:25.", "GET"),  # its last line
        # The script Redis names, not another with a command on that line.
        (f"script: {ADMIT_SHA}, on @user_script:12.", "SET"),
        # No script named: the first with a command on that line.
        ("on @user_script:39.", "ZREMRANGEBYSCORE"),
        (f"script: {PROBE_SHA}, on @user_script:1.", "a command of the scripts"),
        (f"script: {PROBE_SHA}, on @user_script:0.", "a command of the scripts"),
        (f"script: {PROBE_SHA}, on @user_script:26.", "a command of the scripts"),
        (f"script: {'0' * 40}, on @user_script:6.", "a command of the scripts"),
    ],
)
def test_a_refusal_inside_a_script_is_traced_to_the_command_on_its_line(
    text: str, command: str
) -> None:
    assert _command_at_line(f"The user executing the script can't run this command {text}") == (
        command
    )


class Answering:
    """A Redis client that answers commands from a table (an exception is raised)."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers

    async def execute_command(self, *args: str) -> object:
        answer = self.answers.get(" ".join(args), exceptions.ResponseError("unknown command"))
        if isinstance(answer, Exception):
            raise answer
        return answer


EVICTS = (
    f"Redis at {WHERE} evicts keys when full (maxmemory-policy volatile-ttl, maxmemory "
    "2097152): an evicted budget lets bursts through to BingX. Set maxmemory-policy "
    "noeviction (or no maxmemory), or use a Redis of its own for shared limits"
)
CONFIG = "CONFIG GET maxmemory*"
INFO_MEMORY = "INFO memory"


@pytest.mark.parametrize(
    ("answers", "says"),
    [
        # CONFIG GET as a flat list (a client that does not parse it).
        (
            {
                CONFIG: [
                    *("maxmemory", "2097152", "maxmemory-clients", "0"),
                    *("maxmemory-eviction-tenacity", "10", "maxmemory-policy", "volatile-ttl"),
                    *("maxmemory-samples", "5"),
                ]
            },
            EVICTS,
        ),
        ({CONFIG: {"maxmemory": "2097152", "maxmemory-policy": "volatile-ttl"}}, EVICTS),
        ({CONFIG: {"maxmemory": "0", "maxmemory-policy": "allkeys-lru"}}, None),
        ({CONFIG: {"maxmemory": "2097152", "maxmemory-policy": "noeviction"}}, None),
        ({CONFIG: {"maxmemory": "2097152"}}, None),
        ({CONFIG: {"maxmemory-policy": "allkeys-lru"}}, None),
        # CONFIG refused: INFO says the same.
        (
            {INFO_MEMORY: "# Memory\r\nmaxmemory:2097152\r\nmaxmemory_policy:volatile-ttl\r\n"},
            EVICTS,
        ),
        ({INFO_MEMORY: {"maxmemory": 0, "maxmemory_policy": "allkeys-lru"}}, None),
        # Neither allowed: nothing to check with.
        ({}, None),
    ],
)
async def test_an_evicting_redis_is_found_from_config_or_info(
    answers: dict[str, object], says: str | None
) -> None:
    assert await _eviction_problem(Answering(answers), WHERE) == says


@pytest.mark.parametrize(
    ("info", "says"),
    [
        (
            "# Replication\r\nrole:replica\r\nmaster_host:10.0.0.1\r\nmaster_port:6380\r\n",
            f"Redis at {WHERE} is a replica (of 10.0.0.1:6380): what it is given is lost or "
            "refused. Point shared_limits at the primary",
        ),
        (
            "# Replication\r\nrole:slave\r\n",
            f"Redis at {WHERE} is a replica (of ?:?): what it is given is lost or refused. Point "
            "shared_limits at the primary",
        ),
        ("# Replication\r\nrole:master\r\nconnected_slaves:1\r\n", None),
        (exceptions.ResponseError("NOPERM this user has no permissions to run 'info'"), None),
    ],
)
async def test_a_replica_is_found_from_info(info: object, says: str | None) -> None:
    assert await _replica_problem(Answering({"INFO replication": info}), WHERE) == says


# --- names and ages ---------------------------------------------------------------------------


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def test_the_keys_are_named_as_every_process_sharing_the_redis_names_them() -> None:
    # The names are what processes sharing one Redis agree on, whatever version each runs.
    limits = RedisLimits("redis://10.0.0.7:6379/0", prefix="desk", egress="nat-a")
    account, endpoint = short_hash("acct-1"), "POST /openApi/swap/v1/trade/closePosition"
    assert limits._store.host_ban_key(HOST) == f"{{desk}}:ban:nat-a@{HOST}"
    assert limits._store.guard_keys("acct-1", endpoint) == [
        f"{{desk}}:e:{account}|{endpoint}",
        f"{{desk}}:ef:{account}|{endpoint}",
    ]
    claim = short_hash("close 123")
    assert limits._store.claim_keys("close 123") == (
        claim,
        [f"{{desk}}:c:{claim}", f"{{desk}}:o:{claim}", f"{{desk}}:cw:{claim}"],
    )
    assert limits._store.lane_id(["ip|b", "account|a"]) == short_hash("account|a ip|b")
    default = RedisLimits("redis://10.0.0.7:6379/0")
    assert (
        default.prefix,
        default._store.channel,
        default._store.epoch_key,
        default._store.unused_key,
    ) == (
        "{bingx_async}:",
        "{bingx_async}:events",
        "{bingx_async}:epoch",
        "{bingx_async}:-",
    )


def test_the_age_of_an_answer_is_in_milliseconds_and_never_negative() -> None:
    assert MillisecondsSince(10.0).at(12.5) == 2500.0
    assert MillisecondsSince(10.0).at(10.0005) == pytest.approx(0.5)
    assert MillisecondsSince(10.0).at(9.0) == 0.0


@pytest.mark.parametrize(
    ("given", "prefix"),
    [
        ("desk", "{desk}:"),
        ("{desk}", "{desk}:"),
        ("{desk}:", "{desk}:"),
        ("bots:{desk}", "bots:{desk}:"),
        # Redis's rule: the first "{", and the first "}" after it.
        ("{desk{a}", "{desk{a}:"),
        ("{desk}{", "{desk}{:"),
        ("a}{b}", "a}{b}:"),
        ("{a}", "{a}:"),
        # Braces that make no hash tag: the whole prefix becomes one.
        ("desk{", "{desk{}:"),
        ("desk}{", "{desk}{}:"),
        ("{}", "{{}}:"),
        ("{}desk", "{{}desk}:"),
        ("{}b}", "{{}b}}:"),
    ],
)
def test_the_prefix_gets_a_hash_tag_if_it_has_none(given: str, prefix: str) -> None:
    assert RedisLimits("redis://10.0.0.7:6379/0", prefix=given).prefix == prefix


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://bot:pw-s3cret@10.0.0.7:6390/2", "10.0.0.7:6390/2"),
        ("rediss://redis.internal:6380", "redis.internal:6380/0"),
        ("redis://redis.internal/1", "redis.internal:?/1"),
        ("redis://:6380/1", "?:6380/1"),
        ("unix:///run/redis/redis.sock?db=2", "/run/redis/redis.sock"),
    ],
)
def test_where_redis_is_is_named_without_credentials(url: str, where: str) -> None:
    assert RedisLimits(url).where == where


def test_a_client_that_returns_bytes_is_refused_when_the_limits_are_made() -> None:

    with pytest.raises(ConfigurationError) as caught:
        RedisLimits(aioredis.Redis.from_url("redis://10.0.0.7:6379/0"))
    assert str(caught.value) == (
        "shared_limits: the redis.asyncio.Redis client must be made with decode_responses=True"
    )
    given = aioredis.Redis.from_url("redis://10.0.0.7:6379/0", decode_responses=True)
    assert RedisLimits(given).where == "10.0.0.7:6379/0"


def test_a_client_with_no_connection_pool_is_named_by_its_type() -> None:
    class Cluster:
        def register_script(self, text: str) -> object:
            return object()

        def pubsub(self) -> object:
            return object()

        async def execute_command(self, *args: object) -> object:
            return None

    assert RedisLimits(Cluster()).where == "Cluster"


def test_what_is_not_redis_is_refused_when_the_limits_are_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisLimits(object())
    assert str(caught.value) == (
        "shared_limits must be a redis:// URL, a redis.asyncio.Redis client or a RedisLimits"
    )
    with pytest.raises(ConfigurationError) as caught:
        RedisLimits("redis://10.0.0.7:port/0")
    assert str(caught.value) == (
        "shared_limits: not a Redis URL (Port could not be cast to integer value as 'port')"
    )
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)  # import redis.asyncio fails
    with pytest.raises(ConfigurationError) as caught:
        RedisLimits("redis://10.0.0.7:6379/0")
    assert str(caught.value) == 'shared_limits needs redis-py: pip install "bingx-async[redis]"'


def test_a_field_of_info_is_read_from_its_text_or_its_parsed_form() -> None:
    text = "# Replication\r\nrole:slave\r\nmaster_host:fe80::1\r\nmaster_port:6379\r\n"
    assert _info_field(text, "role") == "slave"
    assert _info_field(text, "master_host") == "fe80::1"
    assert _info_field(text.encode(), "master_port") == "6379"
    assert _info_field(text, "master") is None
    assert _info_field({"maxmemory": 0, "maxmemory_policy": "noeviction"}, "maxmemory") == "0"
    assert _info_field({"role": "master"}, "master_host") is None


async def test_the_options_default_as_documented_and_nothing_is_checked_before_use() -> None:
    limits = RedisLimits("redis://10.0.0.7:6379/0")
    options = (limits.egress, limits.lease, limits.on_outage, limits.outage_share)
    assert options == (socket.gethostname(), 15.0, "local", 0.25)
    assert (limits.outage_retry, limits.time_source) == (1.0, "redis")
    assert re.fullmatch(
        rf"{re.escape(socket.gethostname())}:\d+:[0-9a-f]{{8}}", limits._store.process_id
    )
    assert limits.available is False
    assert limits.problem == "not checked yet"
    assert (limits._store.epoch, limits._store.outages, limits._store.recovered_at) == (
        "",
        0,
        -math.inf,
    )
    await asyncio.wait_for(limits._store.ready(), 0.1)  # nothing to wait for before a session
    chosen = RedisLimits("redis://10.0.0.7:6379/0", lease=1.5, outage_share=1, time_source="clock")
    assert (chosen.lease, chosen.outage_share, chosen.time_source) == (1.5, 1.0, "clock")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"prefix": ""}, "RedisLimits: prefix must be a non-empty string"),
        ({"prefix": 5}, "RedisLimits: prefix must be a non-empty string"),
        ({"egress": " "}, "RedisLimits: egress must be a non-empty string"),
        ({"egress": 5}, "RedisLimits: egress must be a non-empty string"),
        ({"lease": 0}, "RedisLimits: lease must be seconds > 0, got 0"),
        ({"lease": math.inf}, "RedisLimits: lease must be seconds > 0, got inf"),
        ({"lease": "20"}, "RedisLimits: lease must be seconds > 0, got '20'"),
        ({"outage_retry": 0}, "RedisLimits: outage_retry must be seconds > 0, got 0"),
        ({"lease": 1.0}, "RedisLimits: lease must be longer than 1 s"),
        ({"outage_share": 0}, "RedisLimits: outage_share must be in (0, 1], got 0"),
        ({"outage_share": 1.5}, "RedisLimits: outage_share must be in (0, 1], got 1.5"),
        ({"outage_share": "0.5"}, "RedisLimits: outage_share must be in (0, 1], got '0.5'"),
        ({"on_outage": "panic"}, 'RedisLimits: on_outage must be "local" or "fail"'),
        ({"time_source": "ntp"}, 'RedisLimits: time_source must be "redis" or "clock"'),
    ],
    ids=case_id,
)
def test_a_bad_option_is_refused_by_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisLimits("redis://10.0.0.7:6379/0", **options)
    assert str(caught.value) == message


async def test_a_redis_limits_serves_one_session_at_a_time(redis_url: str) -> None:
    limits = RedisLimits(redis_url, prefix=prefix())
    async with serving(limits):
        with pytest.raises(ConfigurationError) as caught:
            async with BingXSession(shared_limits=limits):
                pass
    assert str(caught.value) == "a RedisLimits serves one session; make one per session"


# --- the URL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://bot:secret@redis.internal:6380/1",
        "unix:///run/redis/redis.sock",
        "REDIS://127.0.0.1:6379/0",
    ],
)
def test_a_redis_url_passes_the_check(url: str) -> None:
    check_redis_url(url)


@pytest.mark.parametrize(
    ("url", "got"),
    [
        ("http://127.0.0.1:6379/0", "a URL with scheme 'http'"),
        ("http://proxy.internal/?next=redis://127.0.0.1", "a URL with scheme 'http'"),
        ("127.0.0.1:6379", "no scheme"),
        ("localhost", "no scheme"),
    ],
)
def test_a_url_that_is_not_redis_is_refused_saying_what_it_got(url: str, got: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_redis_url(url)
    assert str(caught.value) == (
        f"shared_limits must be a redis://, rediss:// or unix:// URL (got {got})"
    )


def test_a_client_refuses_a_shared_limits_url_without_a_scheme() -> None:
    with pytest.raises(ConfigurationError) as caught:
        BingXClient(api_key="k", secret_key="s", shared_limits="127.0.0.1:6379")
    assert str(caught.value) == (
        "shared_limits must be a redis://, rediss:// or unix:// URL (got no scheme)"
    )


def test_the_url_check_names_the_option_it_was_given_as() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_redis_url("localhost:6379", "--shared-limits")
    assert str(caught.value) == (
        "--shared-limits must be a redis://, rediss:// or unix:// URL (got no scheme)"
    )


def test_without_redis_py_the_url_check_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis: ImportError
    with pytest.raises(ConfigurationError) as caught:
        check_redis_url("redis://127.0.0.1:6379/0")
    assert str(caught.value) == 'shared_limits needs redis-py: pip install "bingx-async[redis]"'


# --- the repr ---------------------------------------------------------------------------------


def test_the_repr_says_where_and_never_the_password() -> None:
    limits = RedisLimits("redis://bot:pw-s3cret@10.0.0.7:6390/2", prefix="desk", egress="nat-a")
    assert (
        repr(limits) == "<RedisLimits 10.0.0.7:6390/2 prefix='{desk}:' egress='nat-a' not in use>"
    )


async def test_the_repr_says_whether_redis_is_in_use(redis_url: str) -> None:
    name = prefix()
    limits = RedisLimits(redis_url, prefix=name, egress="nat-a")
    at = redis_url.removeprefix("redis://")
    async with serving(limits):
        in_use = repr(limits), repr(limits._store)
    assert in_use == (
        f"<RedisLimits {at} prefix='{{{name}}}:' egress='nat-a' up>",
        f"<RedisStore {at} prefix='{{{name}}}:' egress='nat-a' up>",
    )
    assert repr(limits) == f"<RedisLimits {at} prefix='{{{name}}}:' egress='nat-a' not in use>"
    assert (
        repr(limits._store) == f"<RedisStore {at} prefix='{{{name}}}:' egress='nat-a' not in use>"
    )


async def first_problem(url: str) -> str | None:
    """What a RedisLimits at ``url`` finds wrong when a session first uses it."""
    limits = RedisLimits(url, prefix=prefix())
    async with serving(limits):
        return limits.problem


async def test_an_evicting_redis_is_named_with_what_to_change(
    make_redis_server: MakeRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    user = AclUser("bot", f"pw-{uuid.uuid4().hex}", ("+@all", "-config"))
    no_info = AclUser("nosy", f"pw-{uuid.uuid4().hex}", ("+@all", "-info"))
    server = make_redis_server(
        config={"maxmemory": "2mb", "maxmemory-policy": "allkeys-lru"}, users=[user, no_info]
    )
    evicting = (
        f"Redis at {where(server)} evicts keys when full (maxmemory-policy allkeys-lru, "
        "maxmemory 2097152): an evicted budget lets bursts through to BingX. Set "
        "maxmemory-policy noeviction (or no maxmemory), or use a Redis of its own for shared "
        "limits"
    )
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        assert await first_problem(server.url) == evicting
        # A user without CONFIG: INFO says the same; without INFO, CONFIG says it.
        assert await first_problem(server.url_for(user)) == evicting
        assert await first_problem(server.url_for(no_info)) == evicting
        wrong = server.url_for(user).replace(user.password, "pw-wrong")
        assert await first_problem(wrong) == (
            f"Redis at {where(server)} refused the credentials (invalid username-password pair "
            "or user is disabled.); check the user and password of shared_limits"
        )

        # No maxmemory: nothing is evicted, whatever the policy.
        send_command(server.port, "CONFIG", "SET", "maxmemory", "0")
        assert await first_problem(server.url) is None

    assert len(warnings_of(caplog)) == 4
    for warning in warnings_of(caplog):
        assert warning.endswith(LOCAL)
    assert user.password not in caplog.text


async def test_a_replica_is_named_with_what_to_change(
    make_redis_server: MakeRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    user = AclUser("bot", f"pw-{uuid.uuid4().hex}", ("+@all", "-info"))
    primary = make_redis_server()
    server = make_redis_server(replica_of=primary, users=[user])
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        assert await first_problem(server.url) == (
            f"Redis at {where(server)} is a replica (of 127.0.0.1:{primary.port}): what it is "
            "given is lost or refused. Point shared_limits at the primary"
        )
        # A user without INFO: the probe's first write finds the replica.
        assert await first_problem(server.url_for(user)) == (
            f"Redis at {where(server)} is a read-only replica (You can't write against a read "
            f"only replica. script: {PROBE_SHA}, on @user_script:2.); point shared_limits at "
            "the primary"
        )

    assert len(warnings_of(caplog)) == 2


# --- refused, and checked again ----------------------------------------------------------------


async def test_a_refused_redis_is_warned_of_once_and_checked_again_after_outage_retry(
    make_redis_server: MakeRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = evicting(make_redis_server)
    limits = RedisLimits(server.url, prefix=prefix(), outage_retry=0.2)
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with serving(limits):
            refused_at = loop.time()
            problem = limits.problem
            assert limits.available is False
            allow_eviction_no_more(server)
            await wait_for(lambda: limits.available)
            back_after = loop.time() - refused_at

    assert problem is not None
    assert problem.startswith(f"Redis at {where(server)} evicts keys when full")
    # Not checked again before outage_retry has passed (a little less: the check began a
    # moment before it was seen to end).
    assert 0.15 <= back_after < 1.0
    assert warnings_of(caplog) == [
        f"shared limits: {problem}{LOCAL}",
        f"shared limits: Redis at {where(server)} is back; sharing limits again",
    ]
    assert limits._store.outages == 1


async def test_when_told_to_fail_a_refused_redis_is_named_in_the_warning_and_each_error(
    make_redis_server: MakeRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The probe's ZADD is refused inside the script: Redis names its line, not the command.
    user = AclUser("bot", f"pw-{uuid.uuid4().hex}", ("+@all", "-zadd"))
    deaf = AclUser("deaf", f"pw-{uuid.uuid4().hex}", ("+@all", "-subscribe"))
    server = make_redis_server(users=[user, deaf])
    limits = RedisLimits(server.url_for(user), prefix=prefix(), on_outage="fail")
    sim = FakeBingX(rate_limits=FAST, seed=61)
    account = sim.add_account()
    position = sim.add_position(account).position_id
    problem = (
        f"Redis at {where(server)} refuses a command the shared limits need ({SCRIPT_REFUSED} "
        f"(ZADD)){REFUSED_COMMAND}"
    )
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with serving(limits) as session:
            with pytest.raises(SharedLimitsUnavailableError) as caught:
                await client_of(session, account, sim.transport()).close_position(position)
            assert limits.problem == problem
            assert limits.available is False
        # Refused outside the scripts: the command is named by Redis itself.
        deaf_problem = await first_problem(server.url_for(deaf))

    assert caught.value.message == (
        f"not sent: {problem}; shared limits are required (on_outage='fail')"
    )
    assert sim.requests == []
    assert deaf_problem == (
        f"Redis at {where(server)} refuses a command the shared limits need (this user has no "
        f"permissions to run the 'subscribe' command){REFUSED_COMMAND}"
    )
    assert warnings_of(caplog) == [
        f"shared limits: {problem}{FAIL}",
        f"shared limits: {deaf_problem}{LOCAL}",
    ]
    assert user.password not in caplog.text


async def test_redis_gone_mid_session_is_named_once_and_used_again_when_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=60)
    account = sim.add_account()
    position = sim.add_position(account).position_id
    limits = RedisLimits(redis_server.url, prefix=prefix(), outage_retry=0.05)
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with serving(limits) as session:
            assert limits.available
            redis_server.stop()
            await wait_for(lambda: not limits.available)
            problem = limits.problem
            await asyncio.sleep(0.15)  # checked again, refused again: not told again
            redis_server.start()
            await wait_for(lambda: limits.available)
            # Listening again for the other processes' news.
            listeners = send_command(redis_server.port, "PUBSUB", "NUMSUB", limits._store.channel)
            result = await client_of(session, account, sim.transport()).close_position(position)

    assert result.position_id == position
    assert listeners == [limits._store.channel.encode(), 1]
    assert problem == f"Redis at {where(redis_server)} is unreachable (ConnectionError)"
    # Restarted without persistence: empty.
    assert warnings_of(caplog) == [
        f"shared limits: {problem}{LOCAL}",
        f"shared limits: Redis at {where(redis_server)} lost the shared state (flushed, "
        "evicted or restarted empty); keeping to 0.25 of each budget until the windows it "
        "held have passed",
        f"shared limits: Redis at {where(redis_server)} is back; sharing limits again",
    ]
    # The outage, and the loss it hid.
    assert limits._store.outages == 2


class RevokingMidRequest(httpx.AsyncBaseTransport):
    """The simulator's transport, taking EVALSHA from the user while the close is at BingX."""

    def __init__(self, sim: FakeBingX, revoke: Callable[[], object]) -> None:
        self.inner = sim.transport()
        self.revoke = revoke
        self.revoked = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == CLOSE_PATH and not self.revoked:
            self.revoked = True
            self.revoke()
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("when", ["before the close", "while the close is at BingX"])
async def test_a_user_refused_evalsha_mid_session_is_named_once_and_calls_go_on(
    make_redis_server: MakeRedisServer, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    user = AclUser("bot", f"pw-{uuid.uuid4().hex}", ("+@all",))
    server = make_redis_server(users=[user])
    limits = RedisLimits(server.url_for(user), prefix=prefix())
    sim = FakeBingX(rate_limits=FAST, seed=66)
    account = sim.add_account()
    position = sim.add_position(account).position_id

    def revoke() -> None:
        send_command(server.port, "ACL", "SETUSER", "bot", "-evalsha")

    transport = RevokingMidRequest(sim, revoke)
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with serving(limits) as session:
            if when == "before the close":
                transport.revoked = True
                revoke()
            result = await client_of(session, account, transport).close_position(position)
            await wait_for(lambda: not limits.available)  # the finish, in the background

    assert result.position_id == position
    assert warnings_of(caplog) == [
        f"shared limits: Redis at {where(server)} refuses a command the shared limits need "
        f"(this user has no permissions to run the 'evalsha' command){REFUSED_COMMAND}{LOCAL}"
    ]
    assert user.password not in caplog.text


async def script_loads(redis: aioredis.Redis) -> int:
    stats: Any = await redis.info("commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


async def test_a_queued_script_refused_in_a_write_with_others_is_named(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    limits = RedisLimits(redis_url, prefix=prefix())
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with caplog.at_level(logging.INFO, logger="bingx_async"):
            async with serving(limits):
                await redis.script_load(HOLD)
                keys = [limits._store.epoch_key, limits._store.key("h", "probe")]
                now, epoch, channel = (
                    limits._store.now_arg(),
                    limits._store.epoch,
                    limits._store.channel,
                )
                limits._store.send_later(
                    "hold", keys, [now, epoch, "soon", "test", channel, "probe"]
                )
                limits._store.send_later(
                    "hold", keys, [now, epoch, 60_000, "test", channel, "probe"]
                )
                await wait_for(lambda: not limits.available)
                held = await redis.hget(keys[1], "reason")
    finally:
        await redis.aclose()

    assert held == "test"
    assert warnings_of(caplog) == [
        f"shared limits: Redis at {redis_url.removeprefix('redis://')} refused the shared "
        "limits' work (user_script:14: attempt to perform arithmetic on a nil value script: "
        f"{hashlib.sha1(HOLD.encode()).hexdigest()}, on @user_script:14.){LOCAL}"  # noqa: S324
    ]


async def test_a_script_refused_in_a_write_with_others_is_named_and_the_others_are_done(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    limits = RedisLimits(redis_url, prefix=prefix())
    hold = limits._store.key("h", "probe")
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with caplog.at_level(logging.INFO, logger="bingx_async"):
            async with serving(limits):
                for script in (ADMIT, HOLD):  # known, as after any admission and hold
                    await redis.script_load(script)
                loads = await script_loads(redis)
                args = [
                    limits._store.now_arg(),
                    limits._store.epoch,
                    60_000,
                    "test",
                    limits._store.channel,
                    "probe",
                ]
                limits._store.send_later("hold", [limits._store.epoch_key, hold], args)
                # An admission Redis cannot run (its arguments cut short): it goes in the
                # same write as the hold queued before it.
                cut_short = [limits._store.now_arg(), limits._store.epoch]
                with pytest.raises(SharedStateDown):
                    await limits._store.run_many("admit", [([limits._store.epoch_key], cut_short)])
                held = await redis.hget(hold, "reason")
                available = limits.available
                loaded_again = await script_loads(redis) - loads
    finally:
        await redis.aclose()

    assert held == "test"
    assert available is False
    assert loaded_again == 0
    (warning,) = warnings_of(caplog)
    assert warning.startswith(
        f"shared limits: Redis at {redis_url.removeprefix('redis://')} refused the shared "
        "limits' work (Lua redis lib command arguments must be strings or integers script: "
    )
    assert warning.endswith(LOCAL)


async def test_a_message_on_the_channel_wakes_whoever_waits_on_what_it_names(
    redis_url: str,
) -> None:
    limits = RedisLimits(redis_url, prefix=prefix())
    budget = "account|a|POST_/x|0.25"
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with serving(limits):
            waiting = limits._store.watch([budget, "lane/p"])
            elsewhere = limits._store.watch(["account|b|POST_/x|0.25"])
            gave_up = limits._store.watch([budget])
            limits._store.unwatch([budget], gave_up)
            # "n": news of budgets, by id, after the kind of message.
            await redis.publish(limits._store.channel, f"n {budget} ip|c")
            await asyncio.wait_for(waiting.wait(), 1.0)
            await asyncio.sleep(0.02)  # the message has reached every watcher by now
            others = (elsewhere.is_set(), gave_up.is_set())
    finally:
        await redis.aclose()

    assert others == (False, False)


async def test_scripts_are_dated_by_the_clients_clock_only_when_told(redis_url: str) -> None:
    clock = FakeClock()
    told = RedisLimits(redis_url, prefix=prefix(), time_source="clock")
    told._store.start(clock)
    await told._store.ready()
    default = RedisLimits(redis_url, prefix=prefix())
    default._store.start(clock)
    await default._store.ready()
    try:
        # In milliseconds; "" lets the scripts read Redis's own clock.
        assert (told._store.now_arg(), default._store.now_arg()) == ("1700000000000.0", "")
    finally:
        await told._store.aclose()
        await default._store.aclose()


# --- lost state -------------------------------------------------------------------------------


async def test_each_loss_between_closes_is_found_by_the_next_admission(
    redis_server: RedisServer,
) -> None:
    """Redis flushed before each close: every admission finds its loss, the second one too
    (the epoch this process wrote after the first loss is not proposed again)."""
    sim = FakeBingX(rate_limits=FAST, seed=63)
    account = sim.add_account()
    positions = [sim.add_position(account).position_id for _ in range(3)]
    limits = RedisLimits(redis_server.url, prefix=prefix())
    async with serving(limits) as session:
        client = client_of(session, account, sim.transport())
        await client.close_position(positions[0])
        epochs = [limits._store.epoch]
        for position in positions[1:]:
            send_command(redis_server.port, "FLUSHALL")
            await client.close_position(position)
            epochs.append(limits._store.epoch)

    assert limits._store.outages == 2
    assert len(set(epochs)) == 3


def test_a_finish_answered_after_a_loss_was_found_does_not_count_it_again() -> None:
    """A finish admitted under an epoch whose loss an admission already found says nothing
    new; one made under the epoch relied on says that its state is gone."""
    store = RedisLimits("redis://10.0.0.7:6379/0")._store
    store._clock = FakeClock()
    store.lost_state("e0")  # the first epoch learned: nothing was lost
    store.lost_state("e1")  # an admission found another: e0's state is gone
    store.suspect_lost_state("e0")
    assert store.outages == 1
    store.suspect_lost_state("e1")
    assert store.outages == 2
    store.lost_state("e2")  # e1's loss, noted already
    store.suspect_lost_state("e0")  # a finish from two losses ago
    assert store.outages == 2


class FlushingMidRequest(httpx.AsyncBaseTransport):
    """The simulator's transport, flushing Redis while each close is at BingX."""

    def __init__(self, sim: FakeBingX, port: int) -> None:
        self.inner = sim.transport()
        self.port = port
        self.flushes = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == CLOSE_PATH:
            self.flushes += 1
            send_command(self.port, "FLUSHALL")
        return await self.inner.handle_async_request(request)


async def test_state_lost_mid_request_is_told_once_per_loss_and_the_next_close_keeps_to_the_share(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=62)
    account = sim.add_account()
    first, second = (sim.add_position(account).position_id for _ in range(2))
    limits = RedisLimits(redis_server.url, prefix=prefix())
    transport = FlushingMidRequest(sim, redis_server.port)
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with serving(limits) as session:
            client = client_of(session, account, transport)
            await client.close_position(first)
            # Its finish finds the state gone.
            await wait_for(lambda: limits._store.outages == 1)
            # The second close's admission finds the new state (the same loss); the state
            # is lost again while it is at BingX, and its finish finds that.
            await client.close_position(second)
            await wait_for(lambda: limits._store.outages == 2)
            # As the finish of another close admitted before this loss would.
            limits._store.suspect_lost_state(limits._store.epoch)
            assert limits.available

    assert transport.flushes == 2
    lost = (
        f"shared limits: Redis at {where(redis_server)} lost the shared state (flushed, "
        "evicted or restarted empty); keeping to 0.25 of each budget until the windows it "
        "held have passed"
    )
    assert warnings_of(caplog) == [lost, lost]
    assert limits._store.outages == 2
    # A quarter of 5 per window, counting the close Redis had seen: the second waits a window.
    arrivals = sim.arrivals(CLOSE_PATH)
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= WINDOW * 0.95


# --- holds --------------------------------------------------------------------------------------


async def test_an_ip_ban_is_kept_per_egress_and_host(redis_url: str) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=63)
    account = sim.add_account()
    first, second = (sim.add_position(account).position_id for _ in range(2))
    name = prefix()
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with (
            serving(RedisLimits(redis_url, prefix=name, egress="nat-a")) as banned,
            serving(RedisLimits(redis_url, prefix=name, egress="nat-b")) as other,
        ):
            banned_answer = CustomAnswer(status_code=418, body={"code": 418, "msg": "banned"})
            sim.inject(banned_answer, path=CLOSE_PATH)
            with pytest.raises(IPBannedError):
                await client_of(banned, account, sim.transport()).close_position(first)
            expected = [f"{{{name}}}:ban:nat-a@{HOST}"]
            found: list[str] = []
            for _ in range(200):
                found = await keys_under(redis, f"{{{name}}}:*ban*")
                if found:
                    break
                await asyncio.sleep(0.005)
            # Another address is not banned: its close is sent.
            result = await client_of(other, account, sim.transport()).close_position(second)
    finally:
        await redis.aclose()

    assert found == expected
    assert result.position_id == second


# --- closing, and serving again ----------------------------------------------------------------


async def test_the_finish_of_the_last_close_reaches_redis_before_it_closes(
    redis_url: str,
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=64)
    account = sim.add_account()
    position = sim.add_position(account).position_id
    name = prefix()
    limits = RedisLimits(redis_url, prefix=name)
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with serving(limits) as session:
            await client_of(session, account, sim.transport()).close_position(position)
            await limits._store.aclose()  # at once: the finish may still be on its way
            in_flight = await keys_under(redis, f"{{{name}}}:f:*")
            answered = await keys_under(redis, f"{{{name}}}:s:account*")
            counts = [await redis.zcard(key) for key in answered]
    finally:
        await redis.aclose()

    assert in_flight == []
    assert counts == [1]
    # Account keys are hashed: no API key or UID in Redis; no space in a budget's name.
    (key,) = answered
    assert re.fullmatch(
        rf"\{{{name}\}}:s:account\|[0-9a-f]{{20}}\|POST_{CLOSE_PATH}\|0\.25", key
    ), key


async def test_aclose_sends_what_is_owed_and_closes_even_if_an_answer_cannot_be_taken(
    redis_url: str,
) -> None:
    name = prefix()
    limits = RedisLimits(redis_url, prefix=name)
    hold = limits._store.key("h", "probe")

    def take(answer: Any) -> None:
        raise RuntimeError("cannot take the answer")

    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with serving(limits):
            args = [
                limits._store.now_arg(),
                limits._store.epoch,
                60_000,
                "test",
                limits._store.channel,
                "probe",
            ]
            limits._store.send_later("hold", [limits._store.epoch_key, hold], args, take)
            await limits._store.aclose()
            held = await redis.hget(hold, "reason")
            clients = await redis.client_list()
    finally:
        await redis.aclose()

    assert held == "test"
    assert len(clients) == 1, "the limits' own connections are still open"


async def test_a_redis_limits_serves_a_new_session_as_it_did_the_first(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    limits = RedisLimits(redis_url, prefix=prefix())
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with caplog.at_level(logging.INFO, logger="bingx_async"):
            async with serving(limits):
                assert limits.available is True
            assert limits.available is False
            assert limits.problem == "not checked yet"
            await asyncio.wait_for(limits._store.ready(), 0.1)  # nothing to wait for
            async with serving(limits):
                assert limits.available is True
                assert limits.problem is None
                # Listening again for the other processes' news.
                listeners = await redis.pubsub_numsub(limits._store.channel)
    finally:
        await redis.aclose()

    assert listeners == [(limits._store.channel, 1)]
    assert warnings_of(caplog) == []
    assert limits._store.outages == 0


async def test_a_refused_redis_is_checked_again_in_the_next_session_too(
    make_redis_server: MakeRedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = evicting(make_redis_server)
    limits = RedisLimits(server.url, prefix=prefix(), outage_retry=0.05)
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with serving(limits):
            assert not limits.available
        async with serving(limits):
            assert not limits.available
            allow_eviction_no_more(server)
            await wait_for(lambda: limits.available)

    warnings = warnings_of(caplog)
    # Told again in the new session, then back.
    assert len(warnings) == 3
    assert warnings[0] == warnings[1]
    assert warnings[2] == f"shared limits: Redis at {where(server)} is back; sharing limits again"


async def test_a_redis_client_passed_in_is_left_open_and_usable(redis_server: RedisServer) -> None:
    redis = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    mine = redis.pubsub()
    try:
        await mine.subscribe("desk-news")  # the client's owner listens on it too
        limits = RedisLimits(redis, prefix=prefix())
        async with serving(limits):
            assert limits.available
        await asyncio.sleep(0.02)  # whatever was closed is gone from Redis
        listeners = send_command(redis_server.port, "PUBSUB", "NUMSUB", "desk-news")
        assert await redis.ping() is True
    finally:
        await mine.aclose()
        await redis.aclose()

    assert listeners == [b"desk-news", 1]


async def test_a_connection_redis_closed_is_replaced_without_an_outage(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sim = FakeBingX(rate_limits=FAST, seed=67)
    account = sim.add_account()
    first, second = (sim.add_position(account).position_id for _ in range(2))
    limits = RedisLimits(redis_url, prefix=prefix())
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    with caplog.at_level(logging.INFO, logger="bingx_async"):
        async with serving(limits) as session:
            client = client_of(session, account, sim.transport())
            await client.close_position(first)
            # An idle timeout or a proxy closes the pooled connections (not the listener's).
            send_command(port, "CLIENT", "KILL", "TYPE", "normal")
            await client.close_position(second)
            assert limits.available

    assert warnings_of(caplog) == []


async def test_a_finish_refused_as_the_session_closes_leaves_nothing_running(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    limits = RedisLimits(redis_server.url, prefix=prefix(), outage_retry=0.05)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        with caplog.at_level(logging.INFO, logger="bingx_async"):
            async with serving(limits):
                args = [
                    limits._store.now_arg(),
                    limits._store.epoch,
                    60_000,
                    "test",
                    limits._store.channel,
                    "probe",
                ]
                limits._store.send_later(
                    "hold", [limits._store.epoch_key, limits._store.key("h", "probe")], args
                )
                redis_server.stop()  # before it is sent
                await limits._store.aclose()
                # The check due outage_retry after the refusal would come after the close.
                await asyncio.sleep(0.15)
                gc.collect()
    finally:
        loop.set_exception_handler(None)

    assert errors == []
    assert warnings_of(caplog) == [
        f"shared limits: Redis at {where(redis_server)} is unreachable (ConnectionError){LOCAL}"
    ]
